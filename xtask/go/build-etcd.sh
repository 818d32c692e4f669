#!/usr/bin/env bash
# Builds etcd from the Go module proxy. `go install go.etcd.io/etcd/server/v3@...` fails on its replace
# directives, so a tiny wrapper module calls etcdmain.Main, the same entry point as etcd's own main.
# Usage: build-etcd.sh VERSION OUT_DIR WORK_DIR   (VERSION like v3.5.21)
set -euo pipefail
version=$1 out=$2 work=$3
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$work" "$out"
cd "$work"
rm -f go.mod go.sum
go mod init gitops-agent.test/etcd-build >/dev/null 2>&1
cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go get "go.etcd.io/etcd/server/v3@$version" >/dev/null
go mod tidy >/dev/null
go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
