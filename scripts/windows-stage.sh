#!/usr/bin/env bash
# The Windows stage of the README test command (scripts/test.sh calls it):
#   1. installs mingw-w64 and Wine (Debian packages) and the rustup target
#      x86_64-pc-windows-gnu; a target that cannot be downloaded is a loud SKIPPED, not a
#      failure;
#   2. clippy for the whole workspace on the Windows target (warnings are errors);
#   3. builds the workspace for Windows and runs its unit and integration tests under
#      Wine (cargo's runner is scripts/wine/run.sh);
#   4. builds the release cyphonicd.exe, cyphonic.exe and plugin DLLs, checks they
#      import only system DLLs, and runs them under Wine against the Linux cloud and a
#      Linux node on 127.0.0.1 inside a network namespace (host/tests/windows_node.rs).
#
# TEST-ONLY pieces (never shipped): the ProcessPrng shim Wine 8 needs
# (scripts/wine/bcryptprimitives_shim.c), the stub wintun.dll and the udp-vif plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-pc-windows-gnu
step() { printf '\n=== windows: %s\n' "$*"; }
skip() {
    printf '\n%s\n' "######################################################################"
    printf 'SKIPPED: the Windows stage did not run: %s\n' "$*"
    printf '%s\n\n' "######################################################################"
    exit 0
}

step "packages"
need=()
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
[ -x /usr/lib/wine/wine64 ] || need+=(wine64)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

step "rustup target $TARGET"
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    if ! rustup target add "$TARGET"; then
        skip "rustup could not download the $TARGET target (no network to static.rust-lang.org?)"
    fi
fi

export CYPHONIC_WINEPREFIX="${CYPHONIC_WINEPREFIX:-$PWD/target/wine-prefix}"
step "Wine prefix $CYPHONIC_WINEPREFIX"
# shellcheck source=wine/env.sh
. scripts/wine/env.sh
"$WINE" --version

# One persistent wineserver for all test executables: otherwise each one may start just
# as the previous one's server is shutting down, and Wine then fails to start it at all.
"${WINE%/*}/wineserver" -k 2>/dev/null || true
"${WINE%/*}/wineserver" -p
trap '"${WINE%/*}/wineserver" -k 2>/dev/null || true' EXIT

step "clippy (Windows target)"
cargo clippy --workspace --all-targets --locked --target "$TARGET" -- -D warnings

step "build (Windows target, debug: the cdylibs the tests load)"
cargo build --workspace --locked --target "$TARGET"

step "unit and integration tests under Wine"
# The cloud is a Linux service (its tests check Unix file modes and it is not shipped
# for Windows); the bench crate drives Linux namespaces. Everything else runs.
cargo test --workspace --locked --target "$TARGET" \
    --exclude cyphonic-cloud --exclude cyphonic-bench -- --test-threads=2

step "release build (Windows target)"
cargo build --release --locked --target "$TARGET" \
    -p cyphonic-host -p cyphonic-aes-gcm-plugin -p cyphonic-chacha20-poly1305-plugin \
    -p cyphonic-ctr-hmac-plugin -p cyphonic-wintun-plugin -p cyphonic-win-mobility-plugin \
    -p cyphonic-test-udp-vif -p cyphonic-test-wintun-stub
release="target/$TARGET/release"
bin="target/windows-e2e"
rm -rf "$bin" && mkdir -p "$bin/stub"
for f in cyphonicd.exe cyphonic.exe cyphonic_aes_gcm.dll cyphonic_chacha20_poly1305.dll \
    cyphonic_ctr_hmac.dll cyphonic_wintun.dll cyphonic_win_mobility.dll cyphonic_test_udp_vif.dll; do
    cp "$release/$f" "$bin/"
done
cp "$release/wintun.dll" "$bin/stub/wintun.dll"

step "imports of the shipped binaries"
# Only Windows' own DLLs (and, for the wintun plugin, nothing: it loads wintun.dll at
# run time from its own directory).
allowed='^(kernel32|ntdll|advapi32|ws2_32|userenv|bcrypt|bcryptprimitives|iphlpapi|secur32|ole32|oleaut32|combase|shell32|user32|dnsapi|api-ms-win-[a-z0-9-]+|msvcrt|ucrtbase|crypt32|shlwapi|netapi32|rpcrt4|sechost|fwpuclnt|powrprof|synchronization)\.dll$'
for f in cyphonicd.exe cyphonic.exe cyphonic_wintun.dll cyphonic_win_mobility.dll cyphonic_aes_gcm.dll; do
    bad=$(x86_64-w64-mingw32-objdump -p "$bin/$f" | awk '/DLL Name:/ {print tolower($3)}' | grep -Ev "$allowed" || true)
    if [ -n "$bad" ]; then
        echo "$f imports non-system DLLs: $bad" >&2
        exit 1
    fi
done
echo "ok: only system DLLs"

step "the release cyphonicd.exe under Wine against a Linux cloud and node"
# The template prefix is copied per test; its wineserver must have written everything.
"${WINE%/*}/wineserver" -k 2>/dev/null || true
"${WINE%/*}/wineserver" -w 2>/dev/null || true
cargo build --workspace --locked
CYPHONIC_WINDOWS_BIN="$PWD/$bin" CYPHONIC_WINE_TEMPLATE="$WINEPREFIX" \
    cargo test --locked -p cyphonic-host --test windows_node -- --ignored --test-threads=1

step "done"
