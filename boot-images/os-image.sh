#!/usr/bin/env bash
# Builds the small deployable OS image the tests and the lab deploy: an MBR disk with one
# bootable FAT partition holding the Debian kernel of the boot ramdisk and a small
# initramfs that is the whole OS (busybox, the virtio/SATA/e1000/vfat modules, the static
# machine agent for its first-boot step, boot-images/os/init). SYSLINUX boots it under
# legacy BIOS (mbr.bin + ldlinux.sys), systemd-boot (EFI/BOOT/BOOTX64.EFI) under UEFI; both
# pass console=ttyS0. The image has room after its end for the machine agent's CIDATA seed
# partition (MBR slot 2).
#
# Output: ~/.cache/ironpool/boot-images/os-<hash-of-inputs>/{os.raw,os.qcow2,SHA256SUMS,
# manifest}; an existing output with the same inputs is reused. The last line printed is
# "os-image: <dir>". Inputs of the hash: the boot ramdisk's manifest (kernel and busybox
# versions, agent binary; from boot-images/build.sh, run first), the versions of the
# boot loader and mtools packages, this script and the files under boot-images/os/.
# The build is reproducible: fixed timestamps (SOURCE_DATE_EPOCH), disk and volume ids.
# Environment: as build.sh (IRONPOOL_KERNEL_PACKAGE, IRONPOOL_RAMDISK_PROFILE).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ironpool/boot-images"
export SOURCE_DATE_EPOCH=1700000000
say() { echo "os-image: $*" >&2; }
fail() { say "$*"; exit 1; }

# The image: 32 MiB, one FAT16 partition from 1 MiB to the end.
image_mib=32
part_start=2048
part_sectors=$(((image_mib << 11) - part_start))
cmdline="console=ttyS0,115200 loglevel=4 panic=30"
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi

"$repo/e2e/scripts/install-boot-image-tools.sh" >&2

# 1. The boot ramdisk: kernel, modules, busybox and the machine agent, built and cached.
ramdisk=$("$here/build.sh" | sed -n 's/^ramdisk: //p' | tail -n 1)
[[ -s "$ramdisk/vmlinuz" && -s "$ramdisk/initramfs" ]] || fail "build.sh gave no ramdisk"

# 2. The cache key.
versions=$(for p in syslinux syslinux-common systemd-boot-efi mtools; do
  echo "$p=$(dpkg-query -W -f='${Version}' "$p")"
done)
key=$( {
  cat "$ramdisk/manifest"
  echo "$versions"
  sha256sum "$here/os-image.sh" "$here"/os/* | awk '{print $1}'
} | sha256sum | cut -c1-16)
out="$cache/os-$key"
if [[ -s "$out/os.raw" && -s "$out/os.qcow2" && -s "$out/SHA256SUMS" && -s "$out/manifest" ]]; then
  say "inputs unchanged: reusing $out"
  echo "os-image: $out"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work" "$out.tmp.$$"' EXIT

# 3. The OS initramfs from the ramdisk's files: busybox, the agent, a subset of modules.
mkdir -p "$work/rd"
zstd -dc "$ramdisk/initramfs" | (cd "$work/rd" && cpio -id --quiet)
kver=$(sed -n 's/^kernel-version=//p' "$ramdisk/manifest")
root="$work/root"
mkdir -p "$root"/{bin,dev,etc/ironpool,lib/modules,proc,sys,tmp,run,root,usr/bin}
cp "$work/rd/bin/busybox" "$root/bin/busybox"
cp "$work/rd/bin/ironpool-machine-agent" "$root/bin/ironpool-machine-agent"
ln -s /bin/busybox "$root/bin/sh"
install -m 0755 "$here/os/init" "$root/init"
install -m 0755 "$here/os/udhcpc.script" "$root/etc/ironpool/udhcpc.script"
# The `kubeadm join` stand-in for Cluster API labs (see the script: not kubeadm).
install -m 0755 "$here/os/kubeadm" "$root/usr/bin/kubeadm"
declare -A ko_of seen
while IFS= read -r ko; do
  name=$(basename "$ko" .ko); ko_of[${name//-/_}]=$ko
done < <(cd "$work/rd/lib/modules" && find . -name '*.ko' | sed 's|^\./||' | LC_ALL=C sort)
order=()
add() {
  local name=${1//-/_} ko dep
  [[ -n "${seen[$name]:-}" ]] && return
  seen[$name]=1
  ko=${ko_of[$name]:-}
  [[ -n "$ko" ]] || fail "module $name is not in the boot ramdisk (add it to boot-images/ramdisk/modules.txt)"
  for dep in $(modinfo -F depends "$work/rd/lib/modules/$ko" | tr ',' ' '); do add "$dep"; done
  order+=("$ko")
}
while read -r m; do
  m=${m%%#*}; m=${m//[[:space:]]/}
  [[ -n "$m" ]] && add "$m"
done < "$here/os/modules.txt"
for ko in "${order[@]}"; do
  mkdir -p "$root/lib/modules/$(dirname "$ko")"
  cp "$work/rd/lib/modules/$ko" "$root/lib/modules/$ko"
  echo "$ko" >> "$root/etc/ironpool/modules.order"
done
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
  | cpio -o -H newc -R 0:0 --reproducible --quiet) | zstd -q -19 -T0 > "$work/initrd"
say "kernel $kver, ${#order[@]} modules, initramfs $(du -b "$work/initrd" | cut -f1) bytes"

# 4. The boot partition's files.
fs="$work/fs"
mkdir -p "$fs/EFI/BOOT" "$fs/loader/entries"
cp "$ramdisk/vmlinuz" "$fs/vmlinuz"
cp "$work/initrd" "$fs/initrd"
cp "$sdboot" "$fs/EFI/BOOT/BOOTX64.EFI"
printf 'DEFAULT ironpool\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL ironpool\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND %s\n' \
  "$cmdline" > "$fs/syslinux.cfg"
printf 'default ironpool.conf\ntimeout 0\n' > "$fs/loader/loader.conf"
printf 'title Ironpool test OS\nlinux /vmlinuz\ninitrd /initrd\noptions %s\n' \
  "$cmdline" > "$fs/loader/entries/ironpool.conf"
find "$fs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# 5. The disk: MBR (fixed disk id) with one bootable EFI-system-type FAT16 partition, the
# files copied in with mtools, SYSLINUX installed into it, SYSLINUX's MBR code.
raw="$work/os.raw"
truncate -s "${image_mib}M" "$raw"
printf 'label: dos\nlabel-id: 0x1c0ffee5\nstart=%d, size=%d, type=ef, bootable\n' \
  "$part_start" "$part_sectors" | sfdisk --quiet --no-reread --no-tell-kernel "$raw"
img="$raw@@$((part_start * 512))"
export MTOOLS_SKIP_CHECK=1
mformat -i "$img" -T "$part_sectors" -h 64 -s 32 -H "$part_start" -N 1c0ffee5 -v IRONPOOLOS ::
(cd "$fs" && mcopy -i "$img" -s -m -Q ./* ::/)
syslinux --install --offset $((part_start * 512)) "$raw"
dd if="$mbr_bin" of="$raw" bs=440 count=1 conv=notrunc status=none
mdir -i "$img" -/ -b :: >/dev/null || fail "the boot partition does not read back"

# 6. QCOW2 (uncompressed: the machine agent's streaming reader refuses compressed
# clusters), checksums and the manifest.
# A private staging directory: another build (another engineer's test) may run at once.
stage="$out.tmp.$$"
rm -rf "$stage"
mkdir -p "$stage"
mv "$raw" "$stage/os.raw"
qemu-img convert -f raw -O qcow2 "$stage/os.raw" "$stage/os.qcow2"
(cd "$stage" && sha256sum os.raw os.qcow2 > SHA256SUMS)
{
  sed "s/^/ramdisk-/" "$ramdisk/manifest"
  echo "$versions"
  echo "kernel-version=$kver"
  echo "kernel-cmdline=$cmdline"
  echo "modules=${#order[@]}"
  echo "initrd-bytes=$(du -b "$work/initrd" | cut -f1)"
  echo "raw-bytes=$(du -b "$stage/os.raw" | cut -f1)"
  echo "qcow2-bytes=$(du -b "$stage/os.qcow2" | cut -f1)"
} > "$stage/manifest"
# Whoever finishes first publishes; the same inputs give the same bytes.
if ! mv -T "$stage" "$out" 2>/dev/null; then
  rm -rf "$stage"
fi
say "built $out: os.raw $(du -b "$out/os.raw" | cut -f1) bytes, os.qcow2 $(du -b "$out/os.qcow2" | cut -f1) bytes"
echo "os-image: $out"
