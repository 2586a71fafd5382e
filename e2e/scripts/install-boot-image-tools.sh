#!/usr/bin/env bash
# Installs what boot-images/build.sh and the ramdisk test need from Debian: musl-tools
# (musl-gcc, for ring's C code in the static x86_64-unknown-linux-musl machine agent), cpio
# (packs the initramfs, --reproducible), kmod (depmod: the kernel .deb ships no modules.dep),
# dpkg (dpkg-deb unpacks the downloaded packages), binutils (readelf: dropbear's libraries),
# openssh-client (the lab logs in to rescue mode), zstd, qemu-system-x86 and qemu-utils
# (boot the ramdisk, make QCOW2 images), fdisk and mtools (check the cloud-init seed with
# independent tools), syslinux, syslinux-common, systemd-boot-efi and ovmf (the test OS
# image of boot-images/os-image.sh and its BIOS/UEFI boot test), mmdebstrap and e2fsprogs (the
# Debian image of boot-images/debian-image.sh), and the Rust musl target. Idempotent: apt-get and rustup run only
# when something is missing.
set -euo pipefail

# command-or-file => package
declare -A need=(
  [/usr/bin/musl-gcc]=musl-tools
  [/usr/bin/cpio]=cpio
  [/usr/bin/dpkg-deb]=dpkg
  [/usr/bin/zstd]=zstd
  [/usr/sbin/depmod]=kmod
  # readelf: which shared libraries rescue mode's dropbear needs in the ramdisk
  [/usr/bin/readelf]=binutils
  # the lab logs in to a machine in rescue mode
  [/usr/bin/ssh]=openssh-client
  [/usr/bin/ssh-keygen]=openssh-client
  # the ramdisk test boots it under QEMU and makes QCOW2 images with qemu-img
  [/usr/bin/qemu-system-x86_64]=qemu-system-x86
  [/usr/bin/qemu-img]=qemu-utils
  # ... and checks the cloud-init seed partition with independent tools
  [/usr/sbin/sfdisk]=fdisk
  [/usr/bin/mcopy]=mtools
  # boot-images/os-image.sh: the test OS image's boot loaders (SYSLINUX for BIOS,
  # systemd-boot for UEFI) and the UEFI firmware its test boots it with
  [/usr/bin/syslinux]=syslinux
  [/usr/lib/syslinux/mbr/mbr.bin]=syslinux-common
  [/usr/lib/systemd/boot/efi/systemd-bootx64.efi]=systemd-boot-efi
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  # boot-images/debian-image.sh: the Debian image's root filesystem and its ext4
  [/usr/bin/mmdebstrap]=mmdebstrap
  [/usr/sbin/mkfs.ext4]=e2fsprogs
)

missing=()
for path in "${!need[@]}"; do
  [[ -e "$path" || -e "${path/\/usr\/sbin/\/sbin}" ]] || missing+=("${need[$path]}")
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
