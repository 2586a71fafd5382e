#!/usr/bin/env bash
# Installs the headless browser that operator/tests/web.rs drives over WebDriver: Debian's
# chromium and its chromedriver (same version, same package source). Fonts come with
# chromium's dependencies. Idempotent: apt-get runs only when a binary is missing.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)

if ((${#missing[@]} == 0)); then
  echo "install-browser: all present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
echo "install-browser: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [[ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]]; then
  $sudo apt-get update -qq
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
echo "install-browser: done"
