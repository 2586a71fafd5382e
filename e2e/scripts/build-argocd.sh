#!/usr/bin/env bash
# Builds (once) Argo CD for the GitOps tests, into
# ${IRONPOOL_CACHE:-~/.cache/ironpool}/argocd-<version>/:
#   argocd      github.com/argoproj/argo-cd/v3 ./cmd. Upstream ships one binary that acts as
#               argocd-server, argocd-repo-server, argocd-application-controller, ... by the
#               name it is run as (filepath.Base(argv[0]), or $ARGOCD_BINARY_NAME; see
#               cmd/main.go), so the tests run this file with ARGOCD_BINARY_NAME set.
#   crds/       the module's manifests/crds/*.yaml (Application, AppProject, ApplicationSet).
#   git-verify-wrapper.sh, gpg-wrapper.sh
#               the module's hack/ scripts that upstream's Dockerfile copies next to the
#               binary (/usr/local/bin): the repo server runs git-verify-wrapper.sh for every
#               manifest generation (a deprecated signature check kept for API
#               compatibility, run even with GPG disabled) and answers "permission denied"
#               when it is not on its PATH. Put this directory on the repo server's PATH.
# Three things differ from `go install pkg@version`:
#   - The module's go.mod replaces github.com/argoproj/argo-cd/gitops-engine/v3 with
#     ./gitops-engine (and pins k8s.io/* and a few others with replaces), and `go install`
#     refuses modules with replace directives. So it is built through a wrapper module, as
#     kubelet is in build-node.sh: the wrapper copies every non-relative replace and takes
#     gitops-engine at the same published version (it is tagged gitops-engine/vX.Y.Z at each
#     release and served by the module proxy).
#   - Its go.mod says `go 1.27.0`. When the local Go is older, the go command fetches that
#     toolchain from the module proxy (module golang.org/toolchain) via GOTOOLCHAIN.
#   - argocd-server embeds the UI from ui/dist/app (ui/embed.go). The module zip has no built
#     UI, but it carries the tracked placeholder ui/dist/app/gitkeep that upstream keeps so
#     that backend-only builds (`make build-local` without `make build-ui`) compile; so the
#     build needs no copied tree and no placeholder of ours. The tests do not run
#     argocd-server anyway (the controller and repo server need no UI or API server).
# Built as upstream's Makefile builds it: CGO_ENABLED=0 (its default on Linux) with its
# version ldflags (common.version, gitCommit, gitTreeState, kubectlVersion, buildDate).
# Redis (the controller's and repo server's cache) is Debian's redis-server, installed when
# missing. Prints ARGOCD=, ARGOCD_CRDS= and REDIS_SERVER= lines on stdout; progress (with
# build times) goes to stderr.
set -euo pipefail

ARGOCD_VERSION="${IRONPOOL_ARGOCD_VERSION:-v3.6.2}"
# The toolchain used when the local go is older than the module's `go` line.
ARGOCD_GO="${IRONPOOL_ARGOCD_GO:-go1.27.4}"
CACHE="${IRONPOOL_CACHE:-$HOME/.cache/ironpool}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
MODULE=github.com/argoproj/argo-cd/v3
OUT="$CACHE/argocd-$ARGOCD_VERSION"

log() { echo "[build-argocd] $*" >&2; }

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

# version_lt A B: Go version A (1.26.8) is older than B (1.27.0).
version_lt() { [[ "$1" != "$2" && "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" == "$1" ]]; }

# module_json KEY: a field of `go mod download -json` for the Argo CD module. The download
# itself works with any Go; only building needs the newer toolchain.
module_json() {
  { go mod download -json "$MODULE@$ARGOCD_VERSION" 2>/dev/null || true; } | sed -n "s/.*\"$1\": \"\(.*\)\".*/\1/p"
}

SUPPORT_FILES=(crds/application-crd.yaml git-verify-wrapper.sh gpg-wrapper.sh)

# The module's go.mod and extracted source directory, downloaded when missing.
module_paths() {
  GOMOD="$(module_json GoMod)"; DIR="$(module_json Dir)"
  if [[ -z "$DIR" ]]; then
    # `go mod download` leaves Dir empty when the module needs a newer go than the local one,
    # though it has fetched the zip: extract it through the newer toolchain.
    DIR="$(GOTOOLCHAIN="$ARGOCD_GO" go mod download -json "$MODULE@$ARGOCD_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  fi
  [[ -f "$GOMOD" && -d "$DIR" ]] || { log "could not download $MODULE@$ARGOCD_VERSION (GoMod=$GOMOD Dir=$DIR)"; exit 1; }
}

# The CRDs and the hack/ scripts the repo server runs, copied from the module source.
install_support() {
  local f missing=0
  for f in "${SUPPORT_FILES[@]}"; do [[ -f "$OUT/$f" ]] || missing=1; done
  ((missing)) || return 0
  need_go "Argo CD"
  module_paths
  log "argocd: copying manifests/crds and hack/{git-verify,gpg}-wrapper.sh from $DIR"
  rm -rf "$OUT/crds.tmp"; mkdir -p "$OUT/crds.tmp"
  cp "$DIR"/manifests/crds/*-crd.yaml "$OUT/crds.tmp/"
  chmod -R u+w "$OUT/crds.tmp"
  rm -rf "$OUT/crds"; mv "$OUT/crds.tmp" "$OUT/crds"
  for f in git-verify-wrapper.sh gpg-wrapper.sh; do
    install -m 0755 "$DIR/hack/$f" "$OUT/$f"
  done
}

build_argocd() {
  if [[ -x "$OUT/argocd" ]]; then
    log "argocd $ARGOCD_VERSION: cached in $OUT"; return
  fi
  need_go "Argo CD"
  local t0=$SECONDS
  log "argocd $ARGOCD_VERSION: downloading $MODULE"
  module_paths
  local gomod="$GOMOD"
  local want have
  want="$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod")"; have="$(go env GOVERSION | sed 's/^go//')"
  if version_lt "$have" "$want"; then
    log "argocd: $MODULE needs go $want (local go is $have): using $ARGOCD_GO from the module proxy"
    export GOTOOLCHAIN="$ARGOCD_GO"
  fi

  local work="$CACHE/build/argocd-$ARGOCD_VERSION"
  rm -rf "$work" "$OUT/.tmp"; mkdir -p "$work" "$OUT/.tmp"
  (
    cd "$work"
    log "argocd: preparing wrapper module in $work"
    go mod init ironpool.dev/argocd-build >/dev/null 2>&1
    go mod edit -go="$want" -require="$MODULE@$ARGOCD_VERSION"
    # Every replace of the published go.mod: `old => new version` ones are copied; a
    # relative one (`old => ./dir`) becomes the same module at its published version.
    local line old new ver n=0
    while read -r line; do
      line="${line#replace }"; line="${line%%//*}"
      [[ "$line" == *"=>"* ]] || continue
      old="$(echo "${line%%=>*}" | awk '{print $1}')"
      read -r new ver _ <<<"${line#*=>}"
      if [[ "$new" == ./* || "$new" == ../* ]]; then
        ver="$(sed -n "s|^\s*${old//./\\.} \(v[^ ]*\).*|\1|p" "$gomod" | head -1)"
        [[ -n "$ver" ]] || { log "no required version of $old in $gomod"; exit 1; }
        go mod edit -require="$old@$ver"
      else
        go mod edit -replace="$old=$new@$ver"
      fi
      n=$((n + 1))
    done < <(sed -n '/^replace (/,/^)/p; /^replace [^(]/p' "$gomod" | grep '=>')
    log "argocd: $n replace directives carried over"
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd"\n' "$MODULE" > tools.go
    log "argocd: go mod tidy (downloads modules)"
    local t=$SECONDS
    go mod tidy -e >&2
    log "argocd: go mod tidy took $((SECONDS - t))s"
    local kubectl_version
    kubectl_version="$(go list -m k8s.io/client-go | awk '{print $NF}')"
    local p="$MODULE/common"
    local ld="-s -w -X $p.version=${ARGOCD_VERSION#v} -X $p.buildDate=1970-01-01T00:00:00Z"
    ld="$ld -X $p.gitTag=$ARGOCD_VERSION -X $p.gitTreeState=clean -X $p.kubectlVersion=$kubectl_version"
    log "argocd: building (10+ minutes on 2 cores)"
    t=$SECONDS
    CGO_ENABLED=0 GODEBUG="tarinsecurepath=0,zipinsecurepath=0" \
      go build -trimpath -ldflags "$ld" -o "$OUT/.tmp/argocd" "$MODULE/cmd"
    log "argocd: built in $((SECONDS - t))s, $(du -h "$OUT/.tmp/argocd" | cut -f1)"
  )
  mv "$OUT/.tmp/argocd" "$OUT/argocd"; rmdir "$OUT/.tmp"
  rm -rf "$work"
  log "argocd $ARGOCD_VERSION: built into $OUT in $((SECONDS - t0))s"
}

build_argocd
install_support
apt_install redis-server
echo "ARGOCD=$OUT/argocd"
echo "ARGOCD_CRDS=$OUT/crds"
echo "REDIS_SERVER=$(command -v redis-server || echo /usr/bin/redis-server)"
