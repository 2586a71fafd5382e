#!/usr/bin/env bash
# Builds (once) the real Cluster API parts the Cluster API tests run, from the Go module
# sigs.k8s.io/cluster-api, into ${IRONPOOL_CACHE:-~/.cache/ironpool}/cluster-api-<version>/:
#   cluster-api-manager          the core manager (core/main.go)
#   kubeadm-bootstrap-manager    the kubeadm bootstrap provider, CABPK (bootstrap/kubeadm)
#   clusterctl                   the CLI (cmd/clusterctl)
#   core-components.yaml, bootstrap-components.yaml, metadata.yaml
#                                the two providers' clusterctl components, rendered by
#                                kustomize (kubectl kustomize) from the module's own config/
#   cert-manager-crds.yaml       cert-manager's CRDs (github.com/cert-manager/cert-manager):
#                                clusterctl init refuses to run until the cert-manager API
#                                answers; cert-manager's controllers are not served as Go
#                                modules, so the tests issue the certificates themselves.
# The module's go.mod replaces sigs.k8s.io/cluster-api/api with ./api (a module of its own),
# which `go install pkg@version` refuses, so the build goes through a wrapper module that
# pins it to its published version. Prints NAME=path lines on stdout; progress on stderr.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"

CAPI_VERSION="${IRONPOOL_CAPI_VERSION:-v1.14.2}"
CERT_MANAGER_VERSION="${IRONPOOL_CERT_MANAGER_VERSION:-v1.21.2}"
CACHE="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

log() { echo "[build-capi] $*" >&2; }
command -v go >/dev/null || { log "Go is required (e2e/run installs it); install it and re-run"; exit 1; }

out="$CACHE/cluster-api-$CAPI_VERSION"
bins=(cluster-api-manager kubeadm-bootstrap-manager clusterctl)
files=(core-components.yaml bootstrap-components.yaml metadata.yaml cert-manager-crds.yaml)

cached() {
  for f in "${bins[@]}"; do [[ -x "$out/$f" ]] || return 1; done
  for f in "${files[@]}"; do [[ -s "$out/$f" ]] || return 1; done
}

build() {
  local work="$CACHE/build/cluster-api-$CAPI_VERSION"
  rm -rf "$work"; mkdir -p "$work" "$out"
  cd "$work"
  go mod init ironpool.dev/capi-build >/dev/null 2>&1
  go mod edit -require="sigs.k8s.io/cluster-api@$CAPI_VERSION"
  local gomod; gomod="$(go mod download -json "sigs.k8s.io/cluster-api@$CAPI_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  # Every relative replace of the published go.mod (./api, ...) -> the published module.
  local mods; mods="$(grep -oE '^\s*(replace\s+)?sigs\.k8s\.io/cluster-api/[a-z0-9/]+ => \./' "$gomod" | sed -E 's/^\s*(replace\s+)?//' | awk '{print $1}' | sort -u)"
  for m in $mods; do go mod edit -replace="$m=$m@$CAPI_VERSION"; done
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "sigs.k8s.io/cluster-api/bootstrap/kubeadm"
	_ "sigs.k8s.io/cluster-api/cmd/clusterctl"
	_ "sigs.k8s.io/cluster-api/core"
)
GO
  log "cluster-api $CAPI_VERSION: go mod tidy (downloads modules)"
  go mod tidy -e >&2
  # The version ldflags of the project's hack/version.sh: clusterctl compares its own
  # version with the providers' metadata to pick contracts.
  local v="sigs.k8s.io/cluster-api/version"
  local major minor; major="$(echo "$CAPI_VERSION" | cut -d. -f1 | tr -d v)"; minor="$(echo "$CAPI_VERSION" | cut -d. -f2)"
  local ld="-s -w -X $v.gitVersion=$CAPI_VERSION -X $v.gitMajor=$major -X $v.gitMinor=$minor"
  ld="$ld -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
  local pkgs=(sigs.k8s.io/cluster-api/core sigs.k8s.io/cluster-api/bootstrap/kubeadm sigs.k8s.io/cluster-api/cmd/clusterctl)
  for i in 0 1 2; do
    log "cluster-api: building ${bins[$i]} (${pkgs[$i]})"
    go build -trimpath -ldflags "$ld" -o "$out/${bins[$i]}.tmp" "${pkgs[$i]}"
    mv "$out/${bins[$i]}.tmp" "$out/${bins[$i]}"
  done

  local src; src="$(go mod download -json "sigs.k8s.io/cluster-api@$CAPI_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  local kubectl; kubectl="$("$repo/e2e/scripts/build-control-plane.sh" | sed -n 's/^KUBECTL=//p')"
  [[ -x "$kubectl" ]] || { log "build-control-plane.sh gave no kubectl"; exit 1; }
  # kustomize writes nothing, but the module cache is read-only: render from a copy.
  cp -r "$src" "$work/src"; chmod -R u+w "$work/src"
  log "cluster-api: rendering the core and kubeadm bootstrap components (kubectl kustomize)"
  "$kubectl" kustomize "$work/src/core/config/default" > "$out/core-components.yaml.tmp"
  "$kubectl" kustomize "$work/src/bootstrap/kubeadm/config/default" > "$out/bootstrap-components.yaml.tmp"
  # install, not cp: the module cache's files are read-only (0444) and so would be the copy.
  install -m 0644 "$src/metadata.yaml" "$out/metadata.yaml.tmp"
  local cm; cm="$(go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  [[ -d "$cm/deploy/crds" ]] || { log "cert-manager $CERT_MANAGER_VERSION has no deploy/crds"; exit 1; }
  for f in "$cm"/deploy/crds/*.yaml; do echo "---"; cat "$f"; done > "$out/cert-manager-crds.yaml.tmp"
  for f in "${files[@]}"; do mv "$out/$f.tmp" "$out/$f"; done
  cd "$repo"
  rm -rf "$work"
}

if cached; then
  log "cluster-api $CAPI_VERSION: cached in $out"
else
  build
  log "cluster-api $CAPI_VERSION: built into $out"
fi
echo "CLUSTERCTL=$out/clusterctl"
echo "CAPI_MANAGER=$out/cluster-api-manager"
echo "CABPK_MANAGER=$out/kubeadm-bootstrap-manager"
echo "CAPI_DIR=$out"
