#!/usr/bin/env bash
# Builds (once) the parts of a real Kubernetes node that the node tests run, from their Go
# modules, each into ${IRONPOOL_CACHE:-~/.cache/ironpool}/<name>-<version>/:
#   kubelet                   k8s.io/kubernetes cmd/kubelet, through a wrapper module like
#                             kube-apiserver's in build-control-plane.sh (the published go.mod
#                             replaces the k8s.io/* staging modules with ./staging/...). Built
#                             with cgo, as upstream does: hack/lib/golang.sh builds only its
#                             KUBE_STATIC_BINARIES with CGO_ENABLED=0, and kubelet is not one.
#   containerd, containerd-shim-runc-v2, ctr
#                             github.com/containerd/containerd/v2, as its Makefile's default
#                             build: containerd with cgo as a PIE, the shim static without cgo
#                             (no_grpc). The btrfs snapshotter needs only the kernel's UAPI
#                             headers (linux-libc-dev); no_btrfs is added where they are missing.
#   runc                      github.com/opencontainers/runc, the Makefile's `static` target (a
#                             static PIE, with cgo for nsenter) with seccomp, against Debian's
#                             libseccomp-dev (installed when missing). Without upstream's default
#                             libpathrs tag: libpathrs is a Rust library that Debian does not ship,
#                             so runc uses its pure-Go pathrs-lite fallback.
#   bridge, host-local, loopback, portmap
#                             github.com/containernetworking/plugins, as its release (static, no cgo)
#   crictl                    sigs.k8s.io/cri-tools cmd/crictl, as hack/release.sh (no cgo)
# Apart from kubernetes none of these modules has replace directives, so they are built with
# `go install pkg@version` against their own go.mod. Every binary gets upstream's version
# ldflags. Prints NAME=path lines on stdout; progress (with build times) goes to stderr.
set -euo pipefail

K8S_VERSION="${IRONPOOL_K8S_VERSION:-v1.37.2}"
CONTAINERD_VERSION="${IRONPOOL_CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${IRONPOOL_RUNC_VERSION:-v1.5.3}"
CNI_PLUGINS_VERSION="${IRONPOOL_CNI_PLUGINS_VERSION:-v1.10.0}"
CRICTL_VERSION="${IRONPOOL_CRICTL_VERSION:-v1.37.0}"
CACHE="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
CNI_PLUGINS=(bridge host-local loopback portmap)

log() { echo "[build-node] $*" >&2; }

need_go() { command -v go >/dev/null || { log "Go is required to build $1 (e2e/run installs it); install it and re-run"; exit 1; }; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# cached DIR NAME...: all the binaries are there.
cached() { local d=$1; shift; for b in "$@"; do [[ -x "$d/$b" ]] || return 1; done; }

# `go install` refuses a module whose go.mod has replace directives (then it needs a
# wrapper module, as kubelet has).
no_replaces() {
  local gomod; gomod="$(go mod download -json "$1" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  if grep -qE '^\s*replace|=>' "$gomod"; then log "$1: go.mod has replace directives; build it through a wrapper module"; exit 1; fi
}

# install_bin OUT NAME PKG@VERSION GOFLAGS...: go install into OUT/.tmp, then mv to OUT/NAME.
install_bin() {
  local out=$1 name=$2 pkg=$3; shift 3
  local t=$SECONDS tmp="$out/.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "building $name ($pkg, CGO_ENABLED=${CGO_ENABLED:-})"
  GOBIN="$tmp" go install -trimpath "$@" "$pkg"
  mv "$tmp/$(basename "${pkg%@*}")" "$out/$name"; rmdir "$tmp"
  log "$name: built in $((SECONDS - t))s, $(du -h "$out/$name" | cut -f1)"
}

build_kubelet() {
  local out="$CACHE/kubelet-$K8S_VERSION"
  if cached "$out" kubelet; then log "kubelet $K8S_VERSION: cached in $out"; return; fi
  need_go kubelet
  local sv="v0.${K8S_VERSION#v1.}"
  local work="$CACHE/build/kubelet-$K8S_VERSION"
  rm -rf "$work"; mkdir -p "$work" "$out"
  log "kubelet $K8S_VERSION: preparing wrapper module in $work (staging modules at $sv)"
  (
    cd "$work"
    go mod init ironpool.dev/kubelet-build >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    local mods; mods="$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)"
    [[ -n "$mods" ]] || { log "no staging replaces found in $gomod"; exit 1; }
    for m in $mods; do go mod edit -replace="$m=$m@$sv"; done
    printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' > tools.go
    log "kubelet: go mod tidy (downloads modules)"
    go mod tidy -e >&2
    # hack/lib/version.sh's ldflags, for both version packages; golang.sh's tags and -s -w.
    local major minor; major="$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v)"; minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
    local ld="-s -w" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
      ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    log "kubelet: building (several minutes on 2 cores)"
    local t=$SECONDS
    CGO_ENABLED=1 go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" \
      -o "$out/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet
    mv "$out/kubelet.tmp" "$out/kubelet"
    log "kubelet: built in $((SECONDS - t))s, $(du -h "$out/kubelet" | cut -f1)"
  )
  rm -rf "$work"
  log "kubelet $K8S_VERSION: built into $out"
}

build_containerd() {
  local out="$CACHE/containerd-$CONTAINERD_VERSION"
  if cached "$out" containerd containerd-shim-runc-v2 ctr; then log "containerd $CONTAINERD_VERSION: cached in $out"; return; fi
  need_go containerd
  local m=github.com/containerd/containerd/v2
  no_replaces "$m@$CONTAINERD_VERSION"
  mkdir -p "$out"
  local tags="urfave_cli_no_docs"
  [[ -f /usr/include/linux/btrfs.h ]] || { tags="$tags no_btrfs"; log "containerd: no <linux/btrfs.h>: building without btrfs (no_btrfs)"; }
  local ld="-X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m -s -w"
  CGO_ENABLED=1 install_bin "$out" containerd "$m/cmd/containerd@$CONTAINERD_VERSION" \
    -buildmode=pie -tags "$tags" -ldflags "$ld"
  CGO_ENABLED=0 install_bin "$out" containerd-shim-runc-v2 "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    -tags "$tags no_grpc" -ldflags "$ld -extldflags -static"
  # ctr imports the OCI archives of build-images.sh into the k8s.io namespace (no registry).
  CGO_ENABLED=0 install_bin "$out" ctr "$m/cmd/ctr@$CONTAINERD_VERSION" -tags "$tags" -ldflags "$ld"
  log "containerd $CONTAINERD_VERSION: built into $out"
}

build_runc() {
  local out="$CACHE/runc-$RUNC_VERSION"
  if cached "$out" runc; then log "runc $RUNC_VERSION: cached in $out"; return; fi
  need_go runc
  local m=github.com/opencontainers/runc
  no_replaces "$m@$RUNC_VERSION"
  # seccomp needs libseccomp (its static archive too); cgo needs a C compiler and pkg-config.
  apt_install gcc libc6-dev pkg-config libseccomp-dev
  mkdir -p "$out"
  CGO_ENABLED=1 install_bin "$out" runc "$m@$RUNC_VERSION" -buildmode=pie \
    -tags "seccomp urfave_cli_no_docs netgo osusergo" \
    -ldflags "-s -w -linkmode external -extldflags -static-pie"
  log "runc $RUNC_VERSION: built into $out"
}

build_cni_plugins() {
  local out="$CACHE/cni-plugins-$CNI_PLUGINS_VERSION"
  if cached "$out" "${CNI_PLUGINS[@]}"; then log "CNI plugins $CNI_PLUGINS_VERSION: cached in $out"; return; fi
  need_go "the CNI plugins"
  local m=github.com/containernetworking/plugins
  no_replaces "$m@$CNI_PLUGINS_VERSION"
  mkdir -p "$out"
  local p dir
  for p in "${CNI_PLUGINS[@]}"; do
    case "$p" in host-local) dir=ipam;; portmap) dir=meta;; *) dir=main;; esac
    CGO_ENABLED=0 install_bin "$out" "$p" "$m/plugins/$dir/$p@$CNI_PLUGINS_VERSION" \
      -ldflags "-s -w -extldflags -static -X $m/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
  done
  log "CNI plugins $CNI_PLUGINS_VERSION: built into $out"
}

build_crictl() {
  local out="$CACHE/crictl-$CRICTL_VERSION"
  if cached "$out" crictl; then log "crictl $CRICTL_VERSION: cached in $out"; return; fi
  need_go crictl
  local m=sigs.k8s.io/cri-tools
  no_replaces "$m@$CRICTL_VERSION"
  mkdir -p "$out"
  CGO_ENABLED=0 install_bin "$out" crictl "$m/cmd/crictl@$CRICTL_VERSION" \
    -ldflags "-s -w -X $m/pkg/version.Version=$CRICTL_VERSION"
  log "crictl $CRICTL_VERSION: built into $out"
}

# What the node runs beside these: iptables (the kubernetes Service DNAT, the bridge
# plugin's masquerading), nsenter and mount tools (util-linux), pkill (procps), ss (iproute2).
apt_install iptables util-linux procps iproute2
build_crictl
build_cni_plugins
build_runc
build_containerd
build_kubelet
echo "KUBELET=$CACHE/kubelet-$K8S_VERSION/kubelet"
echo "CONTAINERD=$CACHE/containerd-$CONTAINERD_VERSION/containerd"
echo "CONTAINERD_SHIM_RUNC_V2=$CACHE/containerd-$CONTAINERD_VERSION/containerd-shim-runc-v2"
echo "RUNC=$CACHE/runc-$RUNC_VERSION/runc"
echo "CNI_BIN_DIR=$CACHE/cni-plugins-$CNI_PLUGINS_VERSION"
echo "CTR=$CACHE/containerd-$CONTAINERD_VERSION/ctr"
echo "CRICTL=$CACHE/crictl-$CRICTL_VERSION/crictl"
