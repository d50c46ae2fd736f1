#!/usr/bin/env bash
# Builds every policy module as a wasm32-wasip2 component into target/modules/<name>.wasm.
# Idempotent; `make guests` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
modules=(tenant-map ipam-policy route-dns rainbond-egress
         hostile-loop hostile-memory hostile-trap hostile-plan hostile-import
         hostile-boundary hostile-host-extra hostile-log-signature)
args=()
for m in "${modules[@]}"; do args+=(-p "$m"); done
cargo build --quiet --profile guest --target wasm32-wasip2 "${args[@]}"
mkdir -p target/modules
for m in "${modules[@]}"; do
  src="target/wasm32-wasip2/guest/${m//-/_}.wasm"
  # Publish by rename so a running test never sees a half-copied module.
  cp "$src" "target/modules/.$m.wasm.tmp"
  mv -f "target/modules/.$m.wasm.tmp" "target/modules/$m.wasm"
  printf '%-22s %7d bytes\n' "$m" "$(stat -c %s "target/modules/$m.wasm")"
done
