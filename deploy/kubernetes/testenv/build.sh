#!/usr/bin/env bash
# Build (once) a real Kubernetes control plane for the Kubernetes backend's tests: kube-apiserver and
# kube-controller-manager 1.20.2 from Debian bookworm's source package (it carries its vendor/ tree, so it
# builds offline with Debian's Go), plus etcd from Debian's package. Everything lands in a cache directory
# outside the checkout and is reused when present:  ~/.cache/modelserve/k8s-1.20.2/bin/{kube-apiserver,...}
# Cold: ~10 min on 2 cores (1.4 GB RSS); warm Go cache: ~25 s; cached binaries: instant.
set -euo pipefail

VERSION="1.20.5+really1.20.2-1.1+deb12u1"
CACHE="${MODELSERVE_K8S_CACHE:-$HOME/.cache/modelserve/k8s-1.20.2}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

have() { [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && [ -x "$BIN/etcd" ]; }
if have; then echo "$BIN"; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
need_pkgs=()
command -v openssl >/dev/null || need_pkgs+=(openssl)
[ -x /usr/lib/go-1.19/bin/go ] || need_pkgs+=(golang-1.19-go golang-1.19-src)
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || need_pkgs+=(etcd-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt-get update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi
ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$BIN/etcd"

# The source package, through a private apt configuration (the machine's own apt set-up stays untouched).
SRC="$CACHE/src"
if [ ! -d "$SRC/kubernetes/cmd/kube-apiserver" ]; then
  rm -rf "$SRC"
  work="$(mktemp -d)"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  uris="$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')"
  uris="${uris:-http://deb.debian.org/debian}"
  echo "deb-src $uris bookworm main" > "$work/sources.list"
  cat > "$work/apt.conf" <<CONF
Dir::Etc::SourceList "$work/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$work/lists";
Dir::Cache "$work/cache";
CONF
  export APT_CONFIG="$work/apt.conf"
  apt-get update -qq >&2
  mkdir -p "$SRC/dl"
  (cd "$SRC/dl" && apt-get source --download-only "kubernetes=$VERSION" >&2)
  unset APT_CONFIG
  # The upstream tarball holds the tree (with vendor/); the Debian tarball only packaging files.
  (cd "$SRC/dl" && for f in *.orig.tar.*; do tar -xf "$f"; done)
  tree="$(dirname "$(find "$SRC/dl" -maxdepth 3 -path '*/cmd/kube-apiserver' -type d | head -1)")"
  tree="$(dirname "$tree")"
  [ -d "$tree/vendor" ] || { echo "no Kubernetes tree with vendor/ in the source package" >&2; exit 1; }
  mv "$tree" "$SRC/kubernetes"
  rm -rf "$work" "$SRC/dl"
fi

export GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
export PATH="/usr/lib/go-1.19/bin:$PATH"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$SRC/kubernetes" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
# The API server's OpenAPI definitions are generated code that the source package does not carry (upstream's
# `make` generates them): build openapi-gen from vendor/ and run it the way Makefile.generated_files does.
OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$OPENAPI" ]; then
  go build -o "$CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2
  dirs="$( { grep -rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin; grep -Rl --include='*.go' '+k8s:openapi-gen=' vendor; } \
    | grep -v -e '_test\.go$' -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
    | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)"
  "$CACHE/openapi-gen" --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$CACHE/openapi-violations.report" >&2
fi
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
LDFLAGS="-s -w -X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
for cmd in kube-apiserver kube-controller-manager; do
  [ -x "$BIN/$cmd" ] || go build -trimpath -ldflags "$LDFLAGS" -o "$BIN/$cmd" "./cmd/$cmd" >&2
done
have
echo "$BIN"
