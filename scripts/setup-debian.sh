#!/usr/bin/env bash
# Install what swarmcc's build, tests and demos need on Debian/Ubuntu (as root).
# Rust itself comes from rustup (Debian's packaged cargo is too old).
set -euo pipefail
need=()
for pkg in bubblewrap gcc g++ clang make iproute2 nftables procps ca-certificates; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "swarmcc setup: missing packages ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "swarmcc setup: cargo not found; install Rust 1.88+ with rustup (https://rustup.rs)" >&2
  exit 1
fi
