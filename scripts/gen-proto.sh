#!/usr/bin/env bash
# Regenerates the Go code of server/proto from its .proto files (run by `make proto`).
# Needs protoc (Debian: apt-get install protobuf-compiler) and the two Go plugins at the
# versions pinned below; they are installed with `go install` when missing or different.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12     # matches google.golang.org/protobuf in go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2  # google.golang.org/grpc/cmd/protoc-gen-go-grpc

command -v protoc >/dev/null || { echo "gen-proto: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }

gobin="$(go env GOPATH)/bin"
export PATH="$gobin:$PATH"
if [[ "$(protoc-gen-go --version 2>/dev/null || true)" != "protoc-gen-go ${PROTOC_GEN_GO_VERSION}" ]]; then
  GOFLAGS=-mod=mod go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
fi
if [[ "$(protoc-gen-go-grpc --version 2>/dev/null || true)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]]; then
  GOFLAGS=-mod=mod go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
fi

for proto in server/proto/*/*.proto; do
  protoc -I server/proto \
    --go_out=server/proto --go_opt=paths=source_relative \
    --go-grpc_out=server/proto --go-grpc_opt=paths=source_relative \
    "$proto"
  echo "gen-proto: $proto"
done
