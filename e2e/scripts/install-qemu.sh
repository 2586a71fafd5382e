#!/usr/bin/env bash
# Installs what the QEMU PXE tests (and the lab's virtual machines) need from Debian:
# qemu-system-x86 (run with -accel tcg; /dev/kvm cannot run guests on the CI machines),
# ipxe-qemu (the iPXE option ROMs QEMU's virtio NIC boots from under SeaBIOS and OVMF),
# ovmf (UEFI firmware) and ipxe (undionly.kpxe / ipxe.efi that the agent serves over TFTP).
# Idempotent: apt-get runs only when a file is missing.
set -euo pipefail

# file => package
declare -A need=(
  [/usr/bin/qemu-system-x86_64]=qemu-system-x86
  [/usr/lib/ipxe/qemu/efi-virtio.rom]=ipxe-qemu
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [/usr/lib/ipxe/undionly.kpxe]=ipxe
  [/usr/lib/ipxe/ipxe.efi]=ipxe
)

missing=()
for path in "${!need[@]}"; do
  [[ -e "$path" ]] || missing+=("${need[$path]}")
done
if ((${#missing[@]} == 0)); then
  echo "install-qemu: all present"
  exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-qemu: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
echo "install-qemu: done"
