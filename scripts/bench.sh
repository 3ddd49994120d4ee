#!/usr/bin/env bash
# Benchmarks: per-compile overhead (medians of 50 runs) and a whole Lua build;
# `bash scripts/bench.sh openssl`: OpenSSL's build_libs cold and warm against
# plain gcc, and a tiny cache hit against ccache's (about 20 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/release-env.sh
case "${1:-overhead}" in
  openssl)
    if ! command -v ccache >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq ccache >/dev/null
    fi
    cargo bench --bench openssl
    ;;
  *)
    cargo bench --bench overhead
    ;;
esac
