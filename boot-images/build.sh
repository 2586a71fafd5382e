#!/usr/bin/env bash
# Builds the Ironpool boot ramdisk: a Debian kernel, the storage/network modules listed in
# ramdisk/modules.txt (with their dependencies), busybox-static, the machine agent as a
# static musl binary, and dropbear (the SSH server of rescue mode) with the shared libraries
# it needs from Debian's packages, packed into a deterministic compressed cpio (newc, sorted, fixed
# mtimes and owners). Output: ~/.cache/ironpool/boot-images/<hash-of-inputs>/{vmlinuz,
# initramfs,manifest}; an existing output with the same inputs is reused. The last line
# printed is "ramdisk: <dir>".
#
# Inputs of the hash: the package versions apt resolves (written to the manifest), the
# files under boot-images/ramdisk/, this script, and the agent binary.
# Environment: IRONPOOL_KERNEL_PACKAGE (default linux-image-amd64: Debian's generic kernel,
# which carries AHCI and the Intel/Broadcom NIC drivers that the cloud kernel lacks);
# IRONPOOL_RAMDISK_PROFILE (cargo profile of the agent, default release; the tests use dev,
# which shares its static build of the agents crate with e2e/scripts/build-images.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ironpool/boot-images"
kernel_meta="${IRONPOOL_KERNEL_PACKAGE:-linux-image-amd64}"
export SOURCE_DATE_EPOCH=1700000000
say() { echo "boot-images: $*" >&2; }

"$repo/e2e/scripts/install-boot-image-tools.sh" >&2
mkdir -p "$cache/debs"

# 1. Resolve packages to the versions apt would install now.
if [[ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]]; then
  apt-get update -qq
fi
candidate() { apt-cache policy "$1" | awk '/Candidate:/ {print $2}'; }
kernel_pkg=$(apt-cache depends "$kernel_meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n "$kernel_pkg" ]] || { say "cannot resolve $kernel_meta to a kernel package"; exit 1; }
manifest=$(mktemp)
trap 'rm -f "$manifest"' EXIT
# dropbear's libraries come from the same release's packages (its NEEDED entries are
# resolved against them below; a missing one fails the build).
for pkg in "$kernel_pkg" busybox-static dropbear-bin libc6 libcrypt1 libgmp10 libtomcrypt1 libtommath1 zlib1g; do
  ver=$(candidate "$pkg")
  [[ -n "$ver" && "$ver" != "(none)" ]] || { say "apt has no candidate for $pkg"; exit 1; }
  echo "$pkg=$ver" >> "$manifest"
done
say "packages: $(tr '\n' ' ' < "$manifest")"

# 2. The machine agent, static.
profile="${IRONPOOL_RAMDISK_PROFILE:-release}"
say "building ironpool-machine-agent for x86_64-unknown-linux-musl ($profile)"
(cd "$repo" && CC_x86_64_unknown_linux_musl=musl-gcc \
  cargo build -q --profile "$profile" --locked --target x86_64-unknown-linux-musl \
  -p ironpool-agents --bin ironpool-machine-agent)
target_dir=$(cd "$repo" && cargo metadata --format-version 1 --no-deps \
  | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
agent="$target_dir/x86_64-unknown-linux-musl/$([[ $profile == dev ]] && echo debug || echo "$profile")/ironpool-machine-agent"
[[ -x "$agent" ]] || { say "no agent binary at $agent"; exit 1; }

# 3. The cache key.
key=$( {
  cat "$manifest"
  sha256sum "$here/build.sh" "$here"/ramdisk/* | awk '{print $1}'
  sha256sum "$agent" | awk '{print $1}'
} | sha256sum | cut -c1-16)
out="$cache/$key"
if [[ -s "$out/initramfs" && -s "$out/vmlinuz" && -s "$out/manifest" ]]; then
  say "inputs unchanged: reusing $out ($(du -b "$out/initramfs" | cut -f1) bytes initramfs)"
  echo "ramdisk: $out"
  exit 0
fi

# 4. Download and unpack.
work=$(mktemp -d)
trap 'rm -f "$manifest"; rm -rf "$work"' EXIT
while IFS='=' read -r pkg ver; do
  deb="$cache/debs/${pkg}_${ver//:/%3a}_amd64.deb"
  if [[ ! -s "$deb" ]]; then
    say "downloading $pkg $ver"
    (cd "$cache/debs" && apt-get download -q "$pkg=$ver" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  fi
  [[ -s "$deb" ]] || { say "download of $pkg=$ver failed ($deb missing)"; exit 1; }
  dpkg-deb -x "$deb" "$work/pkgs"
done < "$manifest"
kver=$(ls "$work/pkgs/lib/modules")
say "kernel $kver"
depmod -b "$work/pkgs" "$kver"
mods="$work/pkgs/lib/modules/$kver"

# 5. Modules with their dependencies, in load order (dependencies first).
declare -A path_of deps_of seen
while IFS= read -r line; do
  ko=${line%%:*}
  name=$(basename "$ko" .ko); name=${name//-/_}
  path_of[$name]=$ko
  deps_of[$ko]=${line#*:}
done < "$mods/modules.dep"
order=()
visit() {
  local ko=$1 d
  [[ -n "${seen[$ko]:-}" ]] && return
  seen[$ko]=1
  for d in ${deps_of[$ko]}; do visit "$d"; done
  order+=("$ko")
}
missing=()
while read -r m; do
  m=${m%%#*}; m=${m//[[:space:]]/}; [[ -n "$m" ]] || continue
  m=${m//-/_}
  if [[ -n "${path_of[$m]:-}" ]]; then
    visit "${path_of[$m]}"
  elif grep -q "/${m//_/[-_]}.ko$" "$mods/modules.builtin"; then
    :
  else
    missing+=("$m")
  fi
done < "$here/ramdisk/modules.txt"
((${#missing[@]} == 0)) || say "not in kernel $kver (skipped): ${missing[*]}"
say "${#order[@]} modules (with dependencies)"

# 6. The initramfs tree.
root="$work/root"
mkdir -p "$root"/{bin,dev,etc/ironpool,lib/modules,proc,sys,tmp,run}
cp "$work/pkgs/bin/busybox" "$root/bin/busybox"
install -m 0755 "$agent" "$root/bin/ironpool-machine-agent"
strip "$root/bin/ironpool-machine-agent" 2>/dev/null || true
install -m 0755 "$here/ramdisk/init" "$root/init"
install -m 0755 "$here/ramdisk/udhcpc.script" "$root/etc/ironpool/udhcpc.script"
for ko in "${order[@]}"; do
  mkdir -p "$root/lib/modules/$(dirname "$ko")"
  cp "$mods/$ko" "$root/lib/modules/$ko"
  echo "$ko" >> "$root/etc/ironpool/modules.order"
done
cp "$manifest" "$root/etc/ironpool/manifest"
ln -s /bin/busybox "$root/bin/sh"

# 6b. Rescue mode's SSH server and the libraries it links, from the unpacked packages
#     (never the build host's), and the root account it logs in to.
libdir=lib/x86_64-linux-gnu
mkdir -p "$root/usr/sbin" "$root/$libdir" "$root/lib64" "$root/etc/dropbear" "$root/root"
install -m 0755 "$work/pkgs/usr/sbin/dropbear" "$root/usr/sbin/dropbear"
# The file a package path names, following symlinks inside the unpacked tree.
unpacked() {
  local p=$1 t
  while [[ -L "$p" ]]; do
    t=$(readlink "$p")
    if [[ $t == /* ]]; then p="$work/pkgs$t"; else p="$(dirname "$p")/$t"; fi
  done
  echo "$p"
}
copy_needed() {
  local lib src d
  for lib in $(readelf -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    [[ -e "$root/$libdir/$lib" ]] && continue
    src=""
    for d in "$work/pkgs/$libdir" "$work/pkgs/usr/$libdir"; do
      [[ -e "$d/$lib" || -L "$d/$lib" ]] && { src=$(unpacked "$d/$lib"); break; }
    done
    [[ -n "$src" && -f "$src" ]] || { say "dropbear needs $lib, which none of the packages provides"; exit 1; }
    install -m 0755 "$src" "$root/$libdir/$lib"
    copy_needed "$root/$libdir/$lib"
  done
}
copy_needed "$root/usr/sbin/dropbear"
install -m 0755 "$(unpacked "$work/pkgs/$libdir/ld-linux-x86-64.so.2")" "$root/$libdir/ld-linux-x86-64.so.2"
ln -s "/$libdir/ld-linux-x86-64.so.2" "$root/lib64/ld-linux-x86-64.so.2"
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo '/bin/sh' > "$root/etc/shells"
printf 'passwd: files\ngroup: files\nshadow: files\n' > "$root/etc/nsswitch.conf"

# 7. Pack deterministically: sorted names, fixed mtimes, root-owned, zstd.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
stage="$out.tmp.$$"  # per process: concurrent builds of the same inputs do not collide
rm -rf "$stage"; mkdir -p "$stage"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
  | cpio -o -H newc -R 0:0 --reproducible --quiet) | zstd -q -19 -T0 > "$stage/initramfs"
cp "$work/pkgs/boot/vmlinuz-$kver" "$stage/vmlinuz"
{
  cat "$manifest"
  echo "kernel-version=$kver"
  echo "machine-agent-sha256=$(sha256sum "$agent" | cut -d' ' -f1)"
  echo "machine-agent-bytes=$(du -b "$root/bin/ironpool-machine-agent" | cut -f1)"
  echo "modules=${#order[@]}"
  echo "dropbear-libraries=$(ls "$root/$libdir" | tr '\n' ' ')"
  echo "initramfs-sha256=$(sha256sum "$stage/initramfs" | cut -d' ' -f1)"
} > "$stage/manifest"
# Publish atomically; if another build of the same inputs got there first, keep theirs.
if ! mv -T "$stage" "$out" 2>/dev/null; then
  if [[ -s "$out/initramfs" && -s "$out/vmlinuz" && -s "$out/manifest" ]]; then
    rm -rf "$stage"
  else  # a leftover of an interrupted build
    rm -rf "$out" && mv -T "$stage" "$out"
  fi
fi
say "built $out: vmlinuz $(du -b "$out/vmlinuz" | cut -f1) bytes, initramfs $(du -b "$out/initramfs" | cut -f1) bytes (agent $(du -b "$root/bin/ironpool-machine-agent" | cut -f1) bytes)"
echo "ramdisk: $out"
