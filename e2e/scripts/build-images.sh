#!/usr/bin/env bash
# Builds Ironpool's three container images with buildah, without a daemon or a registry:
#   ironpool-operator, ironpool-agent    static musl binaries FROM scratch, non-root
#   ironpool-boot-assets                 iPXE binaries (Debian's ipxe) and the machine-agent
#                                        ramdisk (boot-images/build.sh, same cargo profile)
#   ironpool-pause                       the pod sandbox of the e2e test node (no registry)
# from containers/*.Containerfile, named localhost/ironpool/<name>:<tag> (the chart's
# default image.registry is localhost/ironpool), and writes each as an OCI archive:
#   ${IRONPOOL_CACHE:-~/.cache/ironpool}/images/<name>-<tag>.oci.tar
# Load an archive with `skopeo copy oci-archive:F docker://REGISTRY/ironpool/<name>:<tag>`
# or `ctr -n k8s.io images import F`.
#
# buildah uses vfs storage and chroot isolation (no overlayfs, no user namespaces, no
# daemon) and --timestamp 0, so the same binaries give the same image digests.
# Environment: IRONPOOL_IMAGE_TAG (default: the chart's appVersion),
# IRONPOOL_IMAGE_PROFILE (cargo profile, default release), IRONPOOL_IMAGE_BINARIES (a
# directory with prebuilt static ironpool-operator and ironpool-agent; skips cargo),
# IRONPOOL_IMAGE_REBUILD (non-empty: run buildah even for an archive whose inputs are
# unchanged; by default such an archive is reused).
# Prints IMAGE_<NAME>=<archive> lines on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
TARGET=x86_64-unknown-linux-musl
PROFILE="${IRONPOOL_IMAGE_PROFILE:-release}"
TAG="${IRONPOOL_IMAGE_TAG:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/ironpool/Chart.yaml)}"
[[ -n "$TAG" ]] || { echo "[build-images] no appVersion in charts/ironpool/Chart.yaml" >&2; exit 1; }

log() { echo "[build-images] $*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

apt_install buildah ipxe ca-certificates musl-tools binutils ipmitool
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" >&2

started=$(date +%s)
if [[ -n "${IRONPOOL_IMAGE_BINARIES:-}" ]]; then
  # Prebuilt static binaries (e.g. to check that the same binaries give the same images).
  bin_dir="$IRONPOOL_IMAGE_BINARIES"
  log "using the binaries in $bin_dir"
else
  log "cargo build --profile $PROFILE --target $TARGET (static binaries)"
  # The same C compiler as boot-images/build.sh: a different CC_* would make cargo rebuild
  # ring and everything above it each time the other script runs.
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build -q --profile "$PROFILE" --target "$TARGET" \
    -p ironpool-operator --bin ironpool-operator -p ironpool-agents --bin ironpool-agent \
    -p kubectl-ironpool --bin kubectl-ironpool >&2
  bin_dir="${CARGO_TARGET_DIR:-target}/$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")"
  log "binaries built in $(( $(date +%s) - started ))s"
fi

out="$CACHE/images"
ctx="$out/context"
rm -rf "$ctx"; mkdir -p "$ctx/operator" "$ctx/agent" "$ctx/pause" "$ctx/boot-assets/ipxe" "$ctx/boot-assets/assets"
# Symbols and debug info stay out of the images (a stripped binary strips to itself).
install -m 0755 "$bin_dir/ironpool-operator" "$ctx/operator/"
install -m 0755 "$bin_dir/ironpool-agent" "$ctx/agent/"
# The kubectl plugin ships beside the operator (copy it out of the image to a PATH).
install -m 0755 "$bin_dir/kubectl-ironpool" "$ctx/operator/"
strip --strip-all "$ctx/operator/ironpool-operator" "$ctx/operator/kubectl-ironpool" "$ctx/agent/ironpool-agent"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ctx/agent/"
# The IPMI power driver runs ipmitool (agents/src/bmc/ipmi.rs): Debian's, with the shared
# libraries ldd names and the dynamic loader, at their own paths under agent/rootfs/.
mkdir -p "$ctx/agent/rootfs/usr/bin"
install -m 0755 /usr/bin/ipmitool "$ctx/agent/rootfs/usr/bin/"
for lib in $(ldd /usr/bin/ipmitool | grep -o '/[^ ]*'); do
  real="$(readlink -f "$lib")"
  mkdir -p "$ctx/agent/rootfs$(dirname "$lib")"
  install -m 0755 "$real" "$ctx/agent/rootfs$lib"  # the loader must be executable
done
for f in undionly.kpxe ipxe.efi snponly.efi; do install -m 0644 "/usr/lib/ipxe/$f" "$ctx/boot-assets/ipxe/"; done
# The pod sandbox of the e2e node (containers/pause/pause.c), static like the others.
musl-gcc -static -Os -Wall -Werror -o "$ctx/pause/pause" containers/pause/pause.c
strip --strip-all "$ctx/pause/pause"
# The machine-agent ramdisk, cached by its inputs (boot-images/build.sh prints progress on
# stderr and "ramdisk: <dir>" last on stdout).
ramdisk="$(IRONPOOL_RAMDISK_PROFILE="$PROFILE" boot-images/build.sh | sed -n 's/^ramdisk: //p' | tail -n 1)"
[[ -s "$ramdisk/vmlinuz" && -s "$ramdisk/initramfs" ]] || { log "boot-images/build.sh gave no ramdisk"; exit 1; }
install -m 0644 "$ramdisk/vmlinuz" "$ramdisk/initramfs" "$ctx/boot-assets/assets/"

buildah_() {
  buildah --root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver vfs "$@"
}

for name in operator agent boot-assets pause; do
  image="localhost/ironpool/ironpool-$name:$TAG"
  archive="$out/ironpool-$name-$TAG.oci.tar"
  # An archive built from the same files is current: skip buildah (the tests call this
  # script once per test binary).
  # Contents, modes and paths of every file, and the Containerfile.
  inputs="$( (cd "$ctx/$name" && find . -type f | LC_ALL=C sort | xargs -r sha256sum; find . -printf '%m %p\n' | LC_ALL=C sort; sha256sum "$OLDPWD/containers/$name.Containerfile" | cut -d' ' -f1) | sha256sum | cut -d' ' -f1)"
  if [[ -z "${IRONPOOL_IMAGE_REBUILD:-}" && -f "$archive" && "$(cat "$archive.inputs" 2>/dev/null)" == "$inputs" ]]; then
    log "$image: current ($archive)"
    echo "IMAGE_$(echo "$name" | tr a-z- A-Z_)=$archive"
    continue
  fi
  log "building $image"
  buildah_ bud -q --isolation chroot --timestamp 0 --layers=false \
    -f "containers/$name.Containerfile" -t "$image" "$ctx/$name" >/dev/null
  rm -f "$archive"
  buildah_ push -q "$image" "oci-archive:$archive:$image" >&2
  # The archive is the product; vfs keeps full copies, so the store is emptied each time.
  buildah_ rmi "$image" >/dev/null
  echo "$inputs" > "$archive.inputs"
  log "$image -> $archive ($(du -h "$archive" | cut -f1))"
  echo "IMAGE_$(echo "$name" | tr a-z- A-Z_)=$archive"
done
log "done in $(( $(date +%s) - started ))s"
