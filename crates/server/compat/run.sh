#!/usr/bin/env bash
# Starts the example server on a free port with an in-memory store, installs the official
# SDK 4.8.3 into a temporary folder, and runs sdk-check.mjs against the server.
# Needs node and npm; not part of `cargo test` (it reaches the npm registry).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
port="${PORT:-3939}"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build -q -p trigger-server --example serve
target="${CARGO_TARGET_DIR:-$(cd "$here/../../.." && pwd)/target}"
"$target/debug/examples/serve" "$port" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 50); do grep -q ACCESS "$work/server.log" 2>/dev/null && break; sleep 0.1; done

(cd "$work" && npm init -y >/dev/null && npm install --silent @trigger.dev/sdk@4.8.3 @trigger.dev/core@4.8.3 >/dev/null)
cp "$here/sdk-check.mjs" "$work/"
cd "$work"
BASE="http://127.0.0.1:$port" \
PAT="$(grep ACCESS server.log | cut -d= -f2)" \
REF="$(grep 'project ref' server.log | cut -d' ' -f3)" \
node sdk-check.mjs
