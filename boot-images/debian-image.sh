#!/usr/bin/env bash
# Builds the Debian image the lab and the e2e tests deploy to prove real cloud-init: Debian 12
# (bookworm) from the Debian archive by mmdebstrap, with the cloud kernel, systemd,
# cloud-init (NoCloud only), openssh-server, ifupdown/ifenslave/vlan/bridge-utils, mdadm and
# lvm2 (the packages in boot-images/debian/packages.txt), and Ironpool's check-in
# (boot-images/debian/ironpool-checkin*: after cloud-init's last stage it reports the boot and
# cloud-init's verdict with the static machine agent). The disk: MBR, partition 1 a 64 MiB
# FAT boot partition with the kernel and initrd, SYSLINUX for BIOS and systemd-boot for UEFI
# (as boot-images/os-image.sh); partition 2 the ext4 root (UUID fixed below), last, so the
# machine agent's GrowRoot grows it and cloud-init's resize_rootfs fills it; MBR slot 3 free
# for the agent's CIDATA seed.
#
# Output: ~/.cache/ironpool/boot-images/debian-<hash>/{debian.raw,debian.qcow2,SHA256SUMS,
# manifest}. Two caches: the root filesystem (the slow part, ~1 min of downloads and dpkg)
# is keyed by the suite, the package list and this script's rootfs hook, and kept as a
# tarball; the image by that and the machine agent binary. The last line printed is
# "debian-image: <dir>". Environment: as build.sh (IRONPOOL_RAMDISK_PROFILE), and
# IRONPOOL_DEBIAN_MIRROR (default http://deb.debian.org/debian) and
# IRONPOOL_DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security): the image
# gets bookworm, bookworm-updates and bookworm-security.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ironpool/boot-images"
suite=bookworm
mirror=${IRONPOOL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${IRONPOOL_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
root_uuid=8d1f3a52-6c3e-4a7b-9e0f-1b2c3d4e5f60
boot_mib=64
part_start=2048
cmdline="root=UUID=$root_uuid ro console=ttyS0,115200"
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
sdboot=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
say() { echo "debian-image: $*" >&2; }
fail() { say "$*"; exit 1; }

"$repo/e2e/scripts/install-boot-image-tools.sh" >&2

# 1. The machine agent (static), from the boot ramdisk's build.
ramdisk=$("$here/build.sh" | sed -n 's/^ramdisk: //p' | tail -n 1)
[[ -s "$ramdisk/initramfs" ]] || fail "build.sh gave no ramdisk"

# 2. The root filesystem, cached as a tarball by what goes into it.
packages=$(sed 's/#.*//' "$here/debian/packages.txt" | tr -s ' \t\n' ' ' | sed 's/^ //; s/ $//')
rootfs_key=$( {
  echo "$suite $packages"
  sed -n '/^ *# rootfs-hook-start/,/^ *# rootfs-hook-end/p' "$here/debian-image.sh"
} | sha256sum | cut -c1-16)
rootfs="$cache/debian-rootfs-$rootfs_key.tar"
mkdir -p "$cache"
if [[ -s "$rootfs" ]]; then
  say "root filesystem inputs unchanged: reusing $rootfs"
else
  say "building the $suite root filesystem from $mirror (about a minute): $packages"
  # rootfs-hook-start (this block is part of the root filesystem's cache key)
  # No documentation, manual pages or translations; SSH host keys and machine-id are made
  # on the deployed machine's first boot (cloud-init's ssh module, systemd), not shared by
  # every machine deployed from the image.
  mmdebstrap --mode=root --variant=minbase --include="${packages// /,}" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
    --customize-hook='echo "UUID='"$root_uuid"' / ext4 errors=remount-ro 0 1" > "$1/etc/fstab"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    --format=tar "$suite" "$rootfs.$$.tar" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" >&2 \
    || { rm -f "$rootfs.$$.tar"; fail "mmdebstrap failed (its log is above)"; }
  # rootfs-hook-end
  mv -f "$rootfs.$$.tar" "$rootfs"
fi

# 3. The image's cache key: the root filesystem, the agent, this script and its files.
key=$( {
  echo "$rootfs_key"
  cat "$ramdisk/manifest"
  sha256sum "$here/debian-image.sh" "$here"/debian/* | awk '{print $1}'
  for p in syslinux syslinux-common systemd-boot-efi mtools e2fsprogs; do
    echo "$p=$(dpkg-query -W -f='${Version}' "$p")"
  done
} | sha256sum | cut -c1-16)
out="$cache/debian-$key"
if [[ -s "$out/debian.raw" && -s "$out/debian.qcow2" && -s "$out/SHA256SUMS" && -s "$out/manifest" ]]; then
  say "inputs unchanged: reusing $out"
  echo "debian-image: $out"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work" "$out.tmp.$$"' EXIT
root="$work/root"
mkdir -p "$root"
tar -C "$root" -xpf "$rootfs"

# 4. Ironpool's check-in: the machine agent, its script and unit, enabled; cloud-init
# configuration.
zstd -dc "$ramdisk/initramfs" | (cd "$work" && cpio -id --quiet bin/ironpool-machine-agent)
install -m 0755 "$work/bin/ironpool-machine-agent" "$root/usr/local/sbin/ironpool-machine-agent"
install -m 0755 "$here/debian/ironpool-checkin" "$root/usr/local/sbin/ironpool-checkin"
install -m 0644 "$here/debian/ironpool-checkin.service" "$root/etc/systemd/system/ironpool-checkin.service"
mkdir -p "$root/etc/systemd/system/cloud-init.target.wants"
ln -sf /etc/systemd/system/ironpool-checkin.service \
  "$root/etc/systemd/system/cloud-init.target.wants/ironpool-checkin.service"
install -m 0644 "$here/debian/90-ironpool.cfg" "$root/etc/cloud/cloud.cfg.d/90-ironpool.cfg"

kver=$(ls "$root/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -n 1)
[[ -n "$kver" && -s "$root/boot/initrd.img-$kver" ]] || fail "no kernel and initrd in the root filesystem"
versions=$(chroot "$root" dpkg-query -W -f='${Package}=${Version}\n' \
  linux-image-cloud-amd64 systemd cloud-init openssh-server ifupdown mdadm lvm2)

# 5. The boot partition: kernel, initrd, SYSLINUX and systemd-boot configuration.
fs="$work/fs"
mkdir -p "$fs/EFI/BOOT" "$fs/loader/entries"
cp "$root/boot/vmlinuz-$kver" "$fs/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$fs/initrd"
cp "$sdboot" "$fs/EFI/BOOT/BOOTX64.EFI"
printf 'DEFAULT debian\nPROMPT 0\nTIMEOUT 0\nSERIAL 0 115200\nLABEL debian\n  KERNEL /vmlinuz\n  INITRD /initrd\n  APPEND %s\n' \
  "$cmdline" > "$fs/syslinux.cfg"
printf 'default debian.conf\ntimeout 0\n' > "$fs/loader/loader.conf"
printf 'title Debian %s (Ironpool image)\nlinux /vmlinuz\ninitrd /initrd\noptions %s\n' \
  "$suite" "$cmdline" > "$fs/loader/entries/debian.conf"

# 6. The root filesystem image: what it holds plus a quarter, at least 256 MiB free.
used_mib=$(du -sm "$root" | cut -f1)
root_mib=$((used_mib + used_mib / 4 + 256))
mkfs.ext4 -q -F -L debian-root -U "$root_uuid" -E "hash_seed=$root_uuid" -d "$root" \
  "$work/root.ext4" "${root_mib}M" || fail "mkfs.ext4 -d failed"

# 7. The disk: MBR, boot partition (EFI system type, bootable) and root; files copied in
# with mtools, SYSLINUX installed into the FAT, its MBR code; the root filesystem copied in.
boot_sectors=$((boot_mib << 11))
root_start=$((part_start + boot_sectors))
root_sectors=$((root_mib << 11))
raw="$work/debian.raw"
truncate -s $(((root_start + root_sectors) * 512)) "$raw"
printf 'label: dos\nlabel-id: 0xdeb1a0c1\nstart=%d, size=%d, type=ef, bootable\nstart=%d, size=%d, type=83\n' \
  "$part_start" "$boot_sectors" "$root_start" "$root_sectors" \
  | sfdisk --quiet --no-reread --no-tell-kernel "$raw"
img="$raw@@$((part_start * 512))"
export MTOOLS_SKIP_CHECK=1
mformat -i "$img" -T "$boot_sectors" -h 64 -s 32 -H "$part_start" -N deb1a0c1 -v DEBIANBOOT ::
(cd "$fs" && mcopy -i "$img" -s -m -Q ./* ::/)
syslinux --install --offset $((part_start * 512)) "$raw"
dd if="$mbr_bin" of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/root.ext4" of="$raw" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none
rm -f "$work/root.ext4"

# 8. QCOW2 (uncompressed: the machine agent's streaming reader refuses compressed
# clusters), checksums and the manifest.
stage="$out.tmp.$$"
rm -rf "$stage"
mkdir -p "$stage"
mv "$raw" "$stage/debian.raw"
qemu-img convert -f raw -O qcow2 "$stage/debian.raw" "$stage/debian.qcow2"
(cd "$stage" && sha256sum debian.raw debian.qcow2 > SHA256SUMS)
{
  echo "suite=$suite"
  echo "$versions"
  echo "kernel-version=$kver"
  echo "kernel-cmdline=$cmdline"
  echo "root-uuid=$root_uuid"
  echo "root-used-mib=$used_mib"
  echo "raw-bytes=$(du -b "$stage/debian.raw" | cut -f1)"
  echo "qcow2-bytes=$(du -b "$stage/debian.qcow2" | cut -f1)"
  sed "s/^/ramdisk-/" "$ramdisk/manifest"
} > "$stage/manifest"
if ! mv -T "$stage" "$out" 2>/dev/null; then
  rm -rf "$stage"
fi
say "built $out: debian.raw $(du -b "$out/debian.raw" | cut -f1) bytes (apparent), debian.qcow2 $(du -b "$out/debian.qcow2" | cut -f1) bytes"
echo "debian-image: $out"
