#!/usr/bin/env bash
# Builds the peer `make bench` compares the gateway with: grpc-gateway v1 (Go),
# from Debian's packages alone (no module download), generated from this repo's
# inventory protos and proxying their google.api.http routes to one backend.
#
#   scripts/grpc-gateway-peer.sh   -> prints the binary's path on stdout
#
# Exit status 3 (with the reason on stderr) when the packages cannot be installed
# here: the benchmark then says so and skips its peer section.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${CARGO_TARGET_DIR:-target}/grpc-gateway-peer
BIN="$OUT/shop-grpc-gateway"
PACKAGES=(golang-go protobuf-compiler protoc-gen-go-1-3 golang-grpc-gateway
    golang-github-grpc-ecosystem-grpc-gateway-dev golang-google-grpc-dev golang-google-genproto-dev)

if ! command -v go >/dev/null || ! command -v protoc-gen-grpc-gateway >/dev/null \
    || [ ! -d /usr/share/gocode/src/github.com/grpc-ecosystem/grpc-gateway/runtime ]; then
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    if ! command -v apt-get >/dev/null \
        || ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PACKAGES[@]}"; } >&2; then
        echo "grpc-gateway peer: Debian's packages (${PACKAGES[*]}) cannot be installed here" >&2
        exit 3
    fi
fi

# Rebuilt only when a proto it is made from changes.
STAMP=$(cat proto/shop/inventory/v1/inventory_service.proto proto/shop/common/v1/money.proto \
    proto/shop/api/v1/http_response.proto proto/buf/validate/validate.proto "$0" | sha256sum | cut -c1-16)
if [ -x "$BIN" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$STAMP" ]; then
    echo "$BIN"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/grpc-gateway-peer.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
GEN=shopmesh.local/gen
SRC="$WORK/go/src"
mkdir -p "$SRC/$GEN" "$SRC/shopmesh.local/peer" "$OUT"

# Where each imported .proto's Go package lives: ours generated here, Google's
# from Debian's Go packages.
MAP=Mbuf/validate/validate.proto=$GEN/buf/validate
MAP+=,Mshop/api/v1/http_response.proto=$GEN/shop/api/v1
MAP+=,Mshop/common/v1/money.proto=$GEN/shop/common/v1
MAP+=,Mshop/inventory/v1/inventory_service.proto=$GEN/shop/inventory/v1
MAP+=,Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations
MAP+=,Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations
MAP+=,Mgoogle/api/field_behavior.proto=google.golang.org/genproto/googleapis/api/annotations
MAP+=,Mgoogle/api/httpbody.proto=google.golang.org/genproto/googleapis/api/httpbody
MAP+=,Mgoogle/protobuf/descriptor.proto=github.com/golang/protobuf/protoc-gen-go/descriptor
MAP+=,Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp
MAP+=,Mgoogle/protobuf/duration.proto=github.com/golang/protobuf/ptypes/duration
MAP+=,Mgoogle/protobuf/field_mask.proto=google.golang.org/genproto/protobuf/field_mask

# One protoc run per Go package (protoc-gen-go 1.3 wants one package per run).
# protoc-gen-go writes by the .proto's path, grpc-gateway by the import path: the
# two meet under $GEN.
for file in buf/validate/validate.proto shop/api/v1/http_response.proto shop/common/v1/money.proto; do
    protoc -I proto -I /usr/include --go_out="$MAP:$SRC/$GEN" "$file"
done
protoc -I proto -I /usr/include --go_out="plugins=grpc,$MAP:$SRC/$GEN" \
    --grpc-gateway_out="$MAP:$SRC" shop/inventory/v1/inventory_service.proto

cat > "$SRC/shopmesh.local/peer/main.go" <<'GO'
// The inventory service's REST routes through grpc-gateway's runtime: one
// plaintext connection to the backend, HTTP/1.1 on the listener.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"

	inventory "shopmesh.local/gen/shop/inventory/v1"
)

func main() {
	backend := flag.String("backend", "127.0.0.1:50052", "the inventory service, plaintext gRPC")
	listen := flag.String("listen", "127.0.0.1:8090", "where to serve HTTP")
	flag.Parse()
	mux := runtime.NewServeMux()
	dial := []grpc.DialOption{grpc.WithInsecure()}
	if err := inventory.RegisterInventoryServiceHandlerFromEndpoint(context.Background(), mux, *backend, dial); err != nil {
		log.Fatalf("registering the inventory routes: %v", err)
	}
	log.Fatal(http.ListenAndServe(*listen, mux))
}
GO

(cd "$SRC/shopmesh.local/peer" && GO111MODULE=off GOFLAGS= GOPATH="$WORK/go:/usr/share/gocode" \
    GOCACHE="$WORK/cache" go build -o "$PWD/peer" .) >&2
mv "$SRC/shopmesh.local/peer/peer" "$BIN"
echo "$STAMP" > "$OUT/stamp"
echo "$BIN"
