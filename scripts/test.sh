#!/usr/bin/env bash
# Every test: formatting, lints, unit tests and the integration tests with
# real node processes, real gcc and real bubblewrap. Run as root (the sandbox
# tests use per-job uids).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
# Headless Chromium for the dashboard test.
if ! dpkg -s chromium >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
# The real sccache client for the compatibility tests (kept in ~/.cargo/bin
# between runs; installed once).
if ! "${CARGO_HOME:-$HOME/.cargo}/bin/sccache" --version 2>/dev/null | grep -q '^sccache 0.19.0'; then
  cargo install --quiet --locked sccache --version 0.19.0 --no-default-features --features dist-client
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
rm -f "${CARGO_TARGET_DIR:-target}/tmp/simulations-report.md"
cargo test --workspace
# The office model (1,000 simulated nodes on a virtual clock) runs optimized;
# a debug build skips its large scenarios.
cargo test --release --test model
if [ -f "${CARGO_TARGET_DIR:-target}/tmp/simulations-report.md" ]; then
  echo "== network simulations: figures =="
  cat "${CARGO_TARGET_DIR:-target}/tmp/simulations-report.md"
fi
