#!/usr/bin/env bash
# Installs the BMC emulators and peer clients the ironpool-agents tests and the bmc-bench
# program use, and prints the venv's bin directory on stdout:
#   - Python venv under ${IRONPOOL_CACHE:-~/.cache/ironpool}/venv-bmc-<key> with
#     sushy-tools (sushy-emulator, sushy-static), pyghmi (fakebmc) and sushy (peer client),
#     keyed by the pinned versions so a version bump makes a fresh venv;
#   - Debian ipmitool, via apt-get only when it is missing.
# Idempotent; when everything is installed it returns in well under a second.
#
#   bin=$(e2e/scripts/install-bmc-emulators.sh)   # e.g. ~/.cache/ironpool/venv-bmc-.../bin
#   export IRONPOOL_BMC_VENV_BIN=$bin              # the tests look here (or in the cache)
set -euo pipefail

SUSHY_TOOLS_VERSION=2.2.0
PYGHMI_VERSION=1.6.19
SUSHY_VERSION=5.14.0

cache="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
key="st${SUSHY_TOOLS_VERSION}-pg${PYGHMI_VERSION}-s${SUSHY_VERSION}"
venv="$cache/venv-bmc-$key"
log() { echo "[install-bmc-emulators] $*" >&2; }

if ! command -v ipmitool >/dev/null 2>&1; then
  log "installing Debian ipmitool"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends ipmitool >&2
fi

if [[ ! -f "$venv/.complete" ]]; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || { log "python3 is required"; exit 1; }
  log "creating $venv"
  rm -rf "$venv"   # a half-built venv from an interrupted run
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "sushy-tools==$SUSHY_TOOLS_VERSION" "pyghmi==$PYGHMI_VERSION" "sushy==$SUSHY_VERSION" >&2
  touch "$venv/.complete"
  ln -sfn "venv-bmc-$key" "$cache/venv-bmc"
fi
echo "$venv/bin"
