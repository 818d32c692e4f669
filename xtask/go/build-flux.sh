#!/usr/bin/env bash
# Builds one Flux controller from the Go module proxy, for the bench's side-by-side run.
# `go install github.com/fluxcd/<controller>@vX` fails on the module's `replace .../api => ./api`
# (the module zip has no api folder), so the module tree is copied out of the module cache, that
# line is dropped (the published api module of the same version is used instead) and the copy is
# built with -mod=mod. EXTRA_REPLACES are more `old=new@version` edits (source-controller 1.9.6
# needs github.com/fluxcd/pkg/artifact at v0.18.1: the proxy refuses v0.18.2 and v0.18.3).
# Usage: build-flux.sh VERSION OUT_DIR WORK_DIR CONTROLLER [EXTRA_REPLACE...]
set -euo pipefail
version=$1 out=$2 work=$3 controller=$4
shift 4
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
module="github.com/fluxcd/$controller"
dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "build-flux.sh: go mod download $module@$version gave no Dir" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work" "$out"
cp -r "$dir/." "$work/"
chmod -R u+w "$work"
cd "$work"
sed -i "\#^replace $module/api => ./api#d" go.mod
for r in "$@"; do
  go mod edit -replace "$r"
done
go build -trimpath -ldflags "-s -w" -o "$out/$controller" .
# The CRDs the controller serves, beside the binary (the bench installs them).
mkdir -p "$out/crds"
cp config/crd/bases/*.yaml "$out/crds/"
