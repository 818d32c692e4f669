#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from the Go module proxy.
#
# k8s.io/kubernetes replaces every k8s.io/* staging module with ./staging/..., so `go install` of its
# commands fails. The upstream-endorsed workaround (kubernetes/kubernetes#79384) is a wrapper module that
# requires k8s.io/kubernetes and replaces each staging module with its published v0.Y.Z release.
# Usage: build-kube.sh VERSION OUT_DIR WORK_DIR [COMMAND...]   (VERSION like v1.33.13)
#   COMMANDs (default: all four) are the ones to build, so a cache that lacks only one builds only
#   that one and never rewrites a binary a running testenv executes.
set -euo pipefail
version=$1 out=$2 work=$3
shift 3
commands=("$@")
[ ${#commands[@]} -gt 0 ] || commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
staging_version="v0.${version#v1.}"
mkdir -p "$work" "$out"
cd "$work"
rm -f go.mod go.sum
go mod init gitops-agent.test/kube-build >/dev/null 2>&1
gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
[ -f "$gomod" ] || { echo "could not download the go.mod of k8s.io/kubernetes@$version" >&2; exit 1; }
go mod edit -require "k8s.io/kubernetes@$version"
# Take the staging modules from the release's own go.mod: lines like `k8s.io/api => ./staging/src/k8s.io/api`.
grep -E '=> \./staging/' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
  go mod edit -replace "$m=$m@$staging_version"
done
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
go mod tidy -e >/dev/null
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$version" | cut -d. -f2)"
packages=()
for c in "${commands[@]}"; do packages+=("k8s.io/kubernetes/cmd/$c"); done
go build -trimpath -ldflags "$ldflags" -o "$out/" "${packages[@]}"
