#!/usr/bin/env bash
# Builds a small step-ca server (Smallstep's certificate authority) from the Go sources Debian ships,
# for the step-ca gateway's tests. Debian packages no step-ca binary, but golang-github-smallstep-
# certificates-dev carries the library; the `main` below is what upstream's cmd/step-ca does, minus
# the CLI. The build runs in GOPATH mode against /usr/share/gocode, so it needs no network.
#
# Usage: scripts/build-step-ca.sh [CACHE_DIR]   (default: .cache/step-ca, or $STEP_CA_CACHE)
# Prints the path of the binary. A second run with the same sources and toolchain only prints it.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${1:-${STEP_CA_CACHE:-$root/.cache/step-ca}}"
packages=(golang-go golang-github-smallstep-certificates-dev gcc libc6-dev)
source_dir=/usr/share/gocode/src/github.com/smallstep/certificates

mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
binary="$cache/bin/step-ca"

read -r -d '' main_go <<'EOF' || true
// step-ca for SSL-CLM's tests: load a ca.json, start the authority, serve until SIGTERM/SIGINT.
package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"unicode"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/ca"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: step-ca CA_JSON [PASSWORD_FILE]")
		os.Exit(2)
	}
	cfg, err := config.LoadConfiguration(os.Args[1])
	if err != nil {
		fail(err)
	}
	var password []byte
	if len(os.Args) == 3 {
		if password, err = os.ReadFile(os.Args[2]); err != nil {
			fail(err)
		}
		password = bytes.TrimRightFunc(password, unicode.IsSpace)
	}
	srv, err := ca.New(cfg, ca.WithConfigFile(os.Args[1]), ca.WithPassword(password), ca.WithQuiet(true))
	if err != nil {
		fail(err)
	}
	go ca.StopReloaderHandler(srv)
	if err := srv.Run(); err != nil && err != http.ErrServerClosed {
		fail(err)
	}
}
EOF

# Only one build at a time per cache; a waiting run then finds the binary built.
exec 9>"$cache/.lock"
flock 9

if ! command -v go >/dev/null || [ ! -d "$source_dir" ]; then
  "$root/scripts/system-deps.sh" "${packages[@]}"
fi
if ! command -v go >/dev/null || [ ! -d "$source_dir" ]; then
  echo "build-step-ca: missing Debian packages: ${packages[*]} (install them as root)" >&2
  exit 1
fi

# The binary is current when the main, the toolchain and the packaged sources are the ones it was built from.
stamp="$( {
  printf '%s\n' "$main_go"
  go version
  dpkg-query -W golang-github-smallstep-certificates-dev golang-step-cli-utils-dev golang-step-crypto-dev \
    golang-github-smallstep-nosql-dev 2>/dev/null || true
} | sha256sum | cut -d' ' -f1)"
if [ -x "$binary" ] && [ "$(cat "$cache/bin/.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$binary"
  exit 0
fi

gopath="$cache/gopath"
mkdir -p "$gopath/src/sslclm-step-ca" "$cache/bin"
printf '%s\n' "$main_go" >"$gopath/src/sslclm-step-ca/main.go"
start=$(date +%s)
# The zstd binding calls a function its header marks deprecated; that warning is noise here.
GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$gopath:/usr/share/gocode" GOCACHE="$cache/go-build" \
  CGO_CFLAGS="-g -O2 -Wno-deprecated-declarations" go build -ldflags='-s -w' -o "$binary.tmp" sslclm-step-ca
mv -f "$binary.tmp" "$binary"
printf '%s\n' "$stamp" >"$cache/bin/.stamp"
echo "build-step-ca: built $binary in $(( $(date +%s) - start )) s" >&2
echo "$binary"
