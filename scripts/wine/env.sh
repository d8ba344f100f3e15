# Sourced, not run: prepares a headless Wine prefix for running the x86_64-pc-windows-gnu
# build of cyphonic (tests and binaries) on Linux, and exports the variables cargo and the
# tests use. TEST-ONLY: the ProcessPrng shim it installs into the prefix must never ship.
#
#   . scripts/wine/env.sh            # prefix in $CYPHONIC_WINEPREFIX or /tmp/cyphonic-wine
#
# Exports: WINEPREFIX, WINEDEBUG, WINEDLLOVERRIDES, WINE (the wine64 binary),
# CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER (runs test binaries under Wine).

_cy_wine_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export WINE="${WINE:-/usr/lib/wine/wine64}"
export WINEPREFIX="${CYPHONIC_WINEPREFIX:-/tmp/cyphonic-wine}"
export WINEDEBUG="${WINEDEBUG:--all}"
# No Mono/Gecko installer dialogs in a headless prefix.
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=}"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$_cy_wine_root/run.sh"

if [ ! -f "$WINEPREFIX/system.reg" ]; then
    mkdir -p "$WINEPREFIX"
    timeout 300 "$WINE" wineboot -i </dev/null >/dev/null 2>&1 || true
    timeout 120 "${WINE%/*}/wineserver" -w || true
fi
_cy_shim="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
if [ ! -f "$_cy_shim" ]; then
    x86_64-w64-mingw32-gcc -shared -O2 -o "$_cy_shim" \
        "$_cy_wine_root/bcryptprimitives_shim.c" -ladvapi32
fi
unset _cy_wine_root _cy_shim
