#!/usr/bin/env bash
# Builds (once) the helm CLI from the helm.sh/helm/v3 Go module; the chart tests use it.
# It lands in ${IRONPOOL_CACHE:-~/.cache/ironpool}/helm-<version>/helm and is reused.
# Prints HELM=<path> on stdout; progress goes to stderr.
set -euo pipefail

HELM_VERSION="${IRONPOOL_HELM_VERSION:-v3.22.0}"
CACHE="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

log() { echo "[build-helm] $*" >&2; }

out="$CACHE/helm-$HELM_VERSION"
if [[ -x "$out/helm" ]]; then
  log "helm $HELM_VERSION: cached in $out"
else
  command -v go >/dev/null || { log "Go is required to build helm (e2e/run installs it); install it and re-run"; exit 1; }
  mkdir -p "$out"
  # helm.sh/helm/v3's go.mod has no replace directives, so `go install pkg@version` works.
  # The ldflags are those of helm's Makefile: the version `helm version` reports, and the
  # Kubernetes version `helm template`/`lint` assume (client-go v0.X.Y -> Kubernetes 1.X),
  # without which helm assumes 1.20 and refuses charts that need newer.
  gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  k8s_minor="$(sed -n 's/^\s*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -1)"
  [[ -n "$k8s_minor" ]] || { log "cannot read the client-go version from $gomod"; exit 1; }
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  log "helm $HELM_VERSION: building for Kubernetes 1.$k8s_minor (a few minutes on 2 cores)"
  GOBIN="$out/bin.tmp" go install -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$out/bin.tmp/helm" "$out/helm"
  rmdir "$out/bin.tmp"
  log "helm $HELM_VERSION: built into $out"
fi
echo "HELM=$out/helm"
