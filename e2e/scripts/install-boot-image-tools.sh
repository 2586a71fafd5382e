#!/usr/bin/env bash
# Installs what boot-images/build.sh needs on the build host from Debian: musl-tools
# (musl-gcc, for ring's C code when the machine agent is built for x86_64-unknown-linux-musl),
# cpio (packs the initramfs, --reproducible), dpkg-dev tooling (dpkg-deb extracts the
# downloaded packages) and the Rust musl target. Idempotent: apt-get and rustup run only
# when something is missing.
set -euo pipefail

# command-or-file => package
declare -A need=(
  [/usr/bin/musl-gcc]=musl-tools
  [/usr/bin/cpio]=cpio
  [/usr/bin/dpkg-deb]=dpkg
  [/usr/bin/zstd]=zstd
)

missing=()
for path in "${!need[@]}"; do
  [[ -e "$path" ]] || missing+=("${need[$path]}")
done
if ((${#missing[@]} > 0)); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "install-boot-image-tools: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
fi
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "install-boot-image-tools: adding the Rust target x86_64-unknown-linux-musl"
  rustup target add x86_64-unknown-linux-musl
fi
echo "install-boot-image-tools: all present"
