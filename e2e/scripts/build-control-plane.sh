#!/usr/bin/env bash
# Builds (once) the real control-plane binaries the tests and the lab use:
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver, kubectl, kube-controller-manager
#   and kube-scheduler (k8s.io/kubernetes).
# They land in ${IRONPOOL_CACHE:-~/.cache/ironpool}/<name>-<version>/ and are reused.
# Prints the directory of each binary set on stdout; progress goes to stderr.
set -euo pipefail

K8S_VERSION="${IRONPOOL_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${IRONPOOL_ETCD_VERSION:-v3.6.16}"
CACHE="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

log() { echo "[build-control-plane] $*" >&2; }

need_go() { command -v go >/dev/null || { log "Go is required to build $1 (e2e/run installs it); install it and re-run"; exit 1; }; }

# Staging version: v1.37.2 -> v0.37.2
staging_version() { echo "v0.${1#v1.}"; }

# The binaries built from k8s.io/kubernetes: the apiserver and kubectl, and the
# controller manager and scheduler that run Deployments and DaemonSets on the node tests'
# kubelet (and publish kube-root-ca.crt for service-account token volumes).
K8S_BINARIES=(kube-apiserver kubectl kube-controller-manager kube-scheduler)

build_kubernetes() {
  local out="$CACHE/kubernetes-$K8S_VERSION" missing=() b
  for b in "${K8S_BINARIES[@]}"; do [[ -x "$out/$b" ]] || missing+=("$b"); done
  if ((${#missing[@]} == 0)); then log "kubernetes $K8S_VERSION: cached in $out"; return; fi
  need_go kubernetes
  local sv; sv="$(staging_version "$K8S_VERSION")"
  local work="$CACHE/build/kubernetes-$K8S_VERSION"
  mkdir -p "$out"
  (
    if [[ ! -f "$work/.ready" ]]; then
      rm -rf "$work"; mkdir -p "$work"; cd "$work"
      log "kubernetes $K8S_VERSION: preparing wrapper module in $work (staging modules at $sv)"
      go mod init ironpool.dev/k8s-build >/dev/null 2>&1
      go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
      # Every k8s.io/* module the published go.mod replaces with ./staging/... gets its
      # published version instead.
      local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
      local mods; mods="$(grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u)"
      [[ -n "$mods" ]] || { log "no staging replaces found in $gomod"; exit 1; }
      for m in $mods; do go mod edit -replace="$m=$m@$sv"; done
      { printf '//go:build tools\n\npackage tools\n\nimport (\n'
        for b in "${K8S_BINARIES[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
        printf ')\n'; } > tools.go
      log "kubernetes: go mod tidy (downloads modules)"
      go mod tidy -e >&2
      touch .ready
    fi
    cd "$work"
    # A wrapper module from before the controller manager and scheduler were built here
    # lacks their dependencies in go.sum.
    for b in "${missing[@]}"; do
      grep -q "cmd/$b\"" tools.go || { log "kubernetes: adding cmd/$b to the wrapper module"; sed -i "s|^)\$|\t_ \"k8s.io/kubernetes/cmd/$b\"\n)|" tools.go; go mod tidy -e >&2; }
    done
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
    local major minor; major="$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v)"; minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
    ld="$ld -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$minor"
    ld="$ld -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    ld="$ld -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
    for b in "${missing[@]}"; do
      log "kubernetes: building $b (minutes on 2 cores)"
      local t=$SECONDS
      go build -trimpath -ldflags "$ld" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b"
      mv "$out/$b.tmp" "$out/$b"
      log "kubernetes: $b built in $((SECONDS - t))s"
    done
  )
  log "kubernetes $K8S_VERSION: built into $out"
}

build_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION"
  if [[ -x "$out/etcd" ]]; then log "etcd $ETCD_VERSION: cached in $out"; return; fi
  need_go etcd
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  rm -rf "$work"; mkdir -p "$work" "$out"
  (
    cd "$work"
    go mod init ironpool.dev/etcd-build >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    local gomod; gomod="$(go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    # The published go.mod replaces sibling etcd modules with relative paths; pin each
    # to the same published version instead.
    local mods; mods="$(grep -oE 'go\.etcd\.io/etcd/[a-z0-9/]+ => \.\./' "$gomod" | awk '{print $1}' | sort -u)"
    for m in $mods; do go mod edit -replace="$m=$m@$ETCD_VERSION"; done
    cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    log "etcd: go mod tidy"
    go mod tidy -e >&2
    log "etcd: building"
    go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$out/etcd.tmp" "$out/etcd"
  )
  log "etcd $ETCD_VERSION: built into $out"
}

build_etcd
build_kubernetes
echo "ETCD=$CACHE/etcd-$ETCD_VERSION/etcd"
echo "KUBE_APISERVER=$CACHE/kubernetes-$K8S_VERSION/kube-apiserver"
echo "KUBECTL=$CACHE/kubernetes-$K8S_VERSION/kubectl"
echo "KUBE_CONTROLLER_MANAGER=$CACHE/kubernetes-$K8S_VERSION/kube-controller-manager"
echo "KUBE_SCHEDULER=$CACHE/kubernetes-$K8S_VERSION/kube-scheduler"
