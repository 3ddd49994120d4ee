#!/usr/bin/env bash
# Every test: formatting, lints, unit tests and the integration tests with
# real node processes, real gcc and real bubblewrap. Run as root (the sandbox
# tests use per-job uids).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
