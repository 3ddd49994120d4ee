#!/usr/bin/env bash
# Benchmarks: per-compile overhead (medians of 50 runs) and a whole Lua build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/release-env.sh
cargo bench --bench overhead
