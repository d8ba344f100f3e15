#!/usr/bin/env bash
# The main job (README): builds everything in release mode, loads every crypto-suite plugin
# file through the C ABI loader, and compares seal/open throughput and the handshake rate
# with OpenSSL on this machine. Later issues grow this into the two-node demo.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v openssl >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

cargo build --release --workspace --locked
exec bench/crypto-vs-openssl.sh
