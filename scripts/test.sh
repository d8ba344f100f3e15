#!/usr/bin/env bash
# The one test command (README): installs what the tests need, then runs formatting,
# lints, every test and the fuzz smoke. CI (.ci/run) calls exactly this.
#
# Knobs: FUZZ_SECONDS (per fuzz target, default 10), SKIP_FUZZ=1 to leave the fuzz smoke
# out of a local run, SKIP_WINDOWS=1 to leave the Windows stage out (CI sets neither).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

install_prerequisites() {
    local missing=()
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    # The end-to-end tests build namespaces and run real traffic through them.
    command -v ip >/dev/null || missing+=(iproute2)
    command -v ping >/dev/null || missing+=(iputils-ping)
    command -v iperf3 >/dev/null || missing+=(iperf3)
    command -v tcpdump >/dev/null || missing+=(tcpdump)
    command -v nft >/dev/null || missing+=(nftables)
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # The starter-page test drives Debian's Chromium with playwright-core.
    scripts/ui-test-deps.sh
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
}

install_prerequisites

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Plugin files (cdylibs) are not built by `cargo test`; the conformance and loader tests
# load them from target/debug.
log "cargo build (plugins as shared libraries)"
cargo build --workspace --locked

log "cargo test"
cargo test --workspace --locked

if [[ "${SKIP_WINDOWS:-0}" != 1 ]]; then
    log "Windows stage: cross-build, tests under Wine, cyphonicd.exe end to end"
    scripts/windows-stage.sh
    if [[ -x target/x86_64-pc-windows-gnu/release/cyphonicd.exe ]]; then
        log "Windows installer under Wine"
        scripts/installer-test.sh
    fi
fi

log "Linux packages (.deb): build, install, verify units, purge"
scripts/deb-test.sh

if [[ "${SKIP_FUZZ:-0}" != 1 ]]; then
    log "fuzz smoke"
    FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz-smoke.sh
fi

log "all checks passed"
