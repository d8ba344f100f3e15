#!/usr/bin/env bash
# The Windows installer under Wine (part of the README test command; root on a fresh
# Debian machine, after the Windows stage has built the binaries):
#   1. installs the Debian packages it needs (nsis, wine64, mingw-w64, iproute2);
#   2. stages the Windows build the way scripts/release.sh does (release binaries if
#      target/x86_64-pc-windows-gnu/release has them all, else debug; debug info
#      stripped; the SIGNED wintun.dll from plugins/wintun/find-signed-dll.sh) and builds
#      the installer with packaging/windows/build-installer.sh;
#   3. in a fresh copy of the Wine prefix (scripts/wine/env.sh), inside a private network
#      namespace so the installed service binds nothing on the host:
#        silent install with /DEVICEID /PASSWORD /CLOUDAS /CLOUDNMS /CLOUDKEY (no cloud
#        runs: the login must fail, and the installer must finish and say so) -> files,
#        configuration, shortcut (run-as-administrator bit), service registration,
#        uninstall key -> the installed cyphonicd.exe and cyphonic.exe run (--version,
#        check-config) -> an upgrade over it keeps the edited node.yaml and the state ->
#        silent uninstall (waited for with wineserver -w: NSIS relaunches the
#        uninstaller from a temporary copy) -> nothing left but %ProgramData%\cyphonic ->
#        install again (the kept configuration is reused), uninstall /S /PURGE -> nothing
#        left at all.
# Files and registry are what is checked (a broken installer, e.g. a 32-bit one, may
# still exit 0); besides, the first install must exit 3 (installed, login failed). Every
# Wine call has a timeout and stdin from /dev/null; the prefix's wineserver is killed at
# the end.
#
#   scripts/installer-test.sh
#
# Environment: CYPHONIC_WINDOWS_BUILD (folder with the built .exe/.dll files; default as
# above), CYPHONIC_WINEPREFIX (template prefix, default target/wine-prefix, shared with
# scripts/windows-stage.sh), CYPHONIC_NSIS_COMPRESSOR (default zlib here: fast),
# KEEP=1 (keep the work folder with the logs and the prefix).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-pc-windows-gnu
FILES=(cyphonicd.exe cyphonic.exe cyphonic_wintun.dll cyphonic_win_mobility.dll cyphonic_aes_gcm.dll
    cyphonic_chacha20_poly1305.dll cyphonic_ctr_hmac.dll)
PLUGINS=(cyphonic_wintun.dll wintun.dll cyphonic_win_mobility.dll cyphonic_aes_gcm.dll
    cyphonic_chacha20_poly1305.dll cyphonic_ctr_hmac.dll)
NRPT_KEY='HKLM\SYSTEM\CurrentControlSet\Services\Dnscache\Parameters\DnsPolicyConfig\{f5cbd4f2-b81a-4e3d-aad7-0f42f693fae5}'
SERVICE_KEY='HKLM\System\CurrentControlSet\Services\cyphonic'
UNINST_KEY='HKLM\Software\Microsoft\Windows\CurrentVersion\Uninstall\CYPHONIC'
# The ed25519 base point: a valid key that differs from node.yaml's placeholder.
TEST_KEY=cyphonic1:5866666666666666666666666666666666666666666666666666666666666666
TEST_PASSWORD='correct horse%battery'

export INSTALLER_TEST_T0="${INSTALLER_TEST_T0:-$(date +%s)}"
elapsed() { echo $(($(date +%s) - INSTALLER_TEST_T0)); }
step() { printf '\n=== installer: %s (t=%ds)\n' "$*" "$(elapsed)"; }
die() {
    echo "installer-test: $*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# Phase 2: runs inside the private network namespace (re-executed below).
# shellcheck disable=SC2317 # the small helpers inside are called through check()
wine_phase() {
    WORK="$1"
    export WINEPREFIX="$WORK/prefix"
    export WINEDEBUG=-all
    # No Mono/Gecko dialogs, and no .desktop files for the shortcut on the Linux host.
    export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
    WINE=/usr/lib/wine/wine64
    WINESERVER=/usr/lib/wine/wineserver
    local setup="$WORK/cyphonic-setup.exe" version
    version="$(cat "$WORK/version")"
    PF="$WINEPREFIX/drive_c/Program Files/CYPHONIC"
    PD="$WINEPREFIX/drive_c/ProgramData/cyphonic"
    LNK="$WINEPREFIX/drive_c/ProgramData/Microsoft/Windows/Start Menu/Programs/CYPHONIC.lnk"
    local WIN_PF='C:\Program Files\CYPHONIC' WIN_PD='C:\ProgramData\cyphonic'
    LOGS="$WORK/logs"
    mkdir -p "$LOGS"
    N=0
    PASSED=0
    FAILED=()
    trap 'timeout 60 "$WINESERVER" -k >/dev/null 2>&1 || true' EXIT

    if command -v ip >/dev/null 2>&1; then ip link set lo up; fi

    # wine_run NAME TIMEOUT ARGS...: output in $LOGS/NN-NAME.log, exit code in $RC.
    wine_run() {
        local name="$1" limit="$2"
        shift 2
        N=$((N + 1))
        OUT="$LOGS/$(printf '%02d' "$N")-$name.log"
        RC=0
        timeout "$limit" "$WINE" "$@" </dev/null >"$OUT" 2>&1 || RC=$?
        [ "$RC" -ne 124 ] || echo "installer-test: wine $* timed out after ${limit}s" >&2
    }
    # Waits for every process of the prefix to end (the relaunched uninstaller, the
    # service, Wine's own services).
    wine_wait() {
        local rc=0
        timeout "$1" "$WINESERVER" -w || rc=$?
        if [ "$rc" -ne 0 ]; then
            echo "installer-test: wineserver -w gave up after $1 s; still running:" >&2
            pgrep -af '\.exe' >&2 || true
            timeout 60 "$WINESERVER" -k || true
        fi
    }
    check() { # check DESCRIPTION COMMAND...
        local what="$1"
        shift
        if "$@"; then
            PASSED=$((PASSED + 1))
            printf '  ok    %s\n' "$what"
        else
            FAILED+=("$what")
            printf '  FAIL  %s\n' "$what"
        fi
    }
    has() { grep -qF -- "$2" "$1"; }           # file contains the text
    has_re() { grep -qE -- "$2" "$1"; }        # file matches the regex
    lacks() { ! grep -qF -- "$2" "$1"; }
    absent() { [ ! -e "$1" ]; }
    # reg_query NAME KEY: the key's values in $OUT, $RC 0 when it exists.
    reg_query() { wine_run "$1" 60 reg query "$2"; }
    key_absent() {
        reg_query "$1" "$2"
        [ "$RC" -ne 0 ] && ! grep -q 'REG_' "$OUT"
    }
    service_listening() { ss -Hltn 'sport = :7480' >"$LOGS/ss.txt" 2>&1 && [ -s "$LOGS/ss.txt" ]; }
    keep_log() { cp "$PD/install.log" "$LOGS/install.log-$1" 2>/dev/null || true; }
    same_size() { [ "$(stat -c %s "$1")" = "$(stat -c %s "$2")" ]; }
    runas_bit() {
        local byte
        byte="$(od -An -tu1 -j 21 -N 1 "$1" 2>/dev/null | tr -d ' ')"
        [ -n "$byte" ] && [ $((byte & 0x20)) -ne 0 ]
    }
    lnk_text() { tr -d '\0' <"$1" | grep -qaF -- "$2"; }

    step "Wine prefix $WINEPREFIX"
    local t=$SECONDS
    # Wine 8 reports Windows 7 by default; the installer wants Windows 10.
    wine_run winecfg 120 winecfg -v win10
    echo "Wine started and set to Windows 10 in $((SECONDS - t)) s"

    # --- 1. silent install with an unattended login that must fail -------------------
    step "silent install (/S /DEVICEID /PASSWORD /CLOUDAS /CLOUDNMS /CLOUDKEY)"
    t=$SECONDS
    wine_run install 300 "$setup" /S /DEVICEID=test-device "/PASSWORD=$TEST_PASSWORD" \
        /CLOUDAS=127.0.0.1:9 /CLOUDNMS=127.0.0.1:9 "/CLOUDKEY=$TEST_KEY"
    INSTALL_RC=$RC
    keep_log install
    INSTALL_S=$((SECONDS - t))
    echo "installer exit code $INSTALL_RC in $INSTALL_S s (3 = installed, login failed)"
    for f in cyphonicd.exe cyphonic.exe uninstall.exe; do
        check "Program Files: $f" test -s "$PF/$f"
    done
    for f in "${PLUGINS[@]}"; do
        check "Program Files: plugins\\$f (same as staged)" same_size "$PF/plugins/$f" "$WORK/stage/plugins/$f"
    done
    check "the signed wintun.dll, not the test stub" same_size "$PF/plugins/wintun.dll" "$WORK/signed-wintun.dll"
    for f in node.yaml dns_filter.lua config.lua install.log; do
        check "ProgramData: $f" test -s "$PD/$f"
    done
    check "node.yaml: plugin paths into Program Files" has "$PD/node.yaml" "'$WIN_PF\\plugins\\cyphonic_wintun.dll'"
    check "node.yaml: mobility plugin" has "$PD/node.yaml" "mobility: '$WIN_PF\\plugins\\cyphonic_win_mobility.dll'"
    check "node.yaml: /CLOUDAS and /CLOUDNMS" has "$PD/node.yaml" "nms: '127.0.0.1:9'"
    check "node.yaml: /CLOUDKEY" has "$PD/node.yaml" "key: '$TEST_KEY'"
    check "node.yaml: system DNS through NRPT" has "$PD/node.yaml" "  system: nrpt"
    check "node.yaml: the control pipe" has "$PD/node.yaml" "socket: '\\\\.\\pipe\\cyphonic'"
    check "node.yaml: state next to it" has "$PD/node.yaml" "state_dir: state"
    check "installer exit code 3 (installed, login failed)" test "$INSTALL_RC" -eq 3
    check "install.log: the login failed and was reported" has "$PD/install.log" "login: FAILED for device test-device"
    # Past reading the password (an empty one fails earlier) and at the /CLOUDAS address.
    check "install.log: login read the password and asked the AS" \
        has "$PD/install.log" "logging in at the AS 127.0.0.1:9"
    check "install.log: /PASSWORD with a space and % parsed (masked exactly)" \
        has "$PD/install.log" '"/PASSWORD=********"'
    check "install.log: the installation completed" has "$PD/install.log" "result: installed; the login FAILED"
    check "install.log: the password is not logged" lacks "$PD/install.log" "horse"
    check "the temporary password file is gone" absent "$PD/login-password.tmp"
    check "shortcut CYPHONIC.lnk in the all-users Start menu" test -s "$LNK"
    check "shortcut: run-as-administrator bit (byte 0x15, 0x20)" runas_bit "$LNK"
    check "shortcut: runs cyphonic.exe ui" lnk_text "$LNK" 'ui --config "C:\ProgramData\cyphonic\node.yaml"'
    reg_query service-key "$SERVICE_KEY"
    check "service key: ImagePath ... service run --config ...node.yaml" \
        has_re "$OUT" 'ImagePath +REG_(EXPAND_)?SZ +"C:\\Program Files\\CYPHONIC\\cyphonicd.exe" service run --config .*node\.yaml'
    check "service key: Start = 2 (automatic)" has_re "$OUT" 'Start +REG_DWORD +0x2'
    reg_query uninstall-key "$UNINST_KEY"
    check "uninstall key: DisplayName CYPHONIC" has_re "$OUT" 'DisplayName +REG_SZ +CYPHONIC'
    check "uninstall key: DisplayVersion $version" has_re "$OUT" "DisplayVersion +REG_SZ +$version"
    for v in Publisher UninstallString QuietUninstallString InstallLocation EstimatedSize NoModify NoRepair; do
        check "uninstall key: $v" has_re "$OUT" "^ +$v +REG_"
    done
    check "uninstall key: QuietUninstallString ends in /S" has_re "$OUT" 'QuietUninstallString +REG_SZ +".*uninstall.exe" /S'

    if [ ! -s "$PF/cyphonicd.exe" ] || [ ! -s "$PD/node.yaml" ]; then
        echo "installer-test: nothing was installed (installer exit code $INSTALL_RC): later steps skipped" >&2
        summary
        return 1
    fi

    step "the installed binaries run"
    wine_run version 60 "$WIN_PF\\cyphonicd.exe" --version
    check "cyphonicd.exe --version prints $version" has "$OUT" "cyphonicd $version"
    wine_run check-config 120 "$WIN_PF\\cyphonic.exe" check-config "$WIN_PD\\node.yaml"
    check "cyphonic.exe check-config: OK" has "$OUT" "node.yaml: OK"
    check "check-config loaded the wintun and win-mobility plugins" \
        bash -c "grep -q 'interface plugin wintun' '$OUT' && grep -q 'mobility plugin win-mobility' '$OUT'"
    wine_run sc-query 60 sc query cyphonic
    SERVICE_STATE="$(grep -o 'STATE *: *[0-9]* *[A-Z_]*' "$OUT" | sed 's/.*: *//' || true)"
    echo "service state after install: ${SERVICE_STATE:-unknown}"
    if service_listening; then
        echo "the service runs: its starter page listens on 127.0.0.1:7480 (network namespace)"
    fi

    # --- 2. upgrade in place -----------------------------------------------------------
    step "upgrade: install again over it"
    echo "# installer-test marker: keep me" >>"$PD/node.yaml"
    mkdir -p "$PD/state"
    echo marker >"$PD/state/installer-test-marker"
    : >"$PF/cyphonic.exe" # a damaged binary the upgrade must replace
    t=$SECONDS
    wine_run upgrade 300 "$setup" /S /CLOUDAS=192.0.2.99:1
    UPGRADE_RC=$RC
    keep_log upgrade
    UPGRADE_S=$((SECONDS - t))
    echo "installer exit code $UPGRADE_RC in $UPGRADE_S s"
    check "upgrade: the edited node.yaml is kept" has "$PD/node.yaml" "# installer-test marker: keep me"
    check "upgrade: /CLOUDAS ignored for an existing node.yaml" lacks "$PD/node.yaml" "192.0.2.99"
    check "upgrade: the state directory is kept" test -s "$PD/state/installer-test-marker"
    check "upgrade: cyphonic.exe replaced" same_size "$PF/cyphonic.exe" "$WORK/stage/cyphonic.exe"
    check "upgrade: the service was stopped first" has "$PD/install.log" "stopping the service"
    check "upgrade: install.log says upgrading" has "$PD/install.log" "upgrading the installation"
    reg_query service-key-upgraded "$SERVICE_KEY"
    check "upgrade: the service is still registered" has_re "$OUT" 'ImagePath +REG_'

    # --- 3. silent uninstall, keeping the configuration ---------------------------------
    step "silent uninstall (/S)"
    # A node that crashed would have left its NRPT rule: plant one.
    wine_run nrpt-plant 60 reg add "$NRPT_KEY" /v Name /t REG_MULTI_SZ /d .cyphonic /f
    t=$SECONDS
    wine_run uninstall 300 "$WIN_PF\\uninstall.exe" /S
    UNINSTALL_RC=$RC
    wine_wait 180
    UNINSTALL_S=$((SECONDS - t))
    echo "uninstaller exit code $UNINSTALL_RC; everything ended after $UNINSTALL_S s"
    check "uninstall: Program Files\\CYPHONIC is gone" absent "$PF"
    check "uninstall: the shortcut is gone" absent "$LNK"
    check "uninstall: the service key is gone" key_absent service-key-gone "$SERVICE_KEY"
    check "uninstall: the uninstall key is gone" key_absent uninstall-key-gone "$UNINST_KEY"
    check "uninstall: the NRPT rule key is gone" key_absent nrpt-gone "$NRPT_KEY"
    check "uninstall: nothing listens on the starter-page port" bash -c '! ss -Hltn "sport = :7480" | grep -q .'
    check "uninstall /S keeps %ProgramData%\\cyphonic (node.yaml with the marker)" \
        has "$PD/node.yaml" "# installer-test marker: keep me"
    check "uninstall /S keeps the state directory" test -s "$PD/state/installer-test-marker"
    local ulog
    ulog="$(find "$WINEPREFIX/drive_c/users" -name cyphonic-uninstall.log -print -quit)"
    if [ -n "$ulog" ]; then cp "$ulog" "$LOGS/uninstall-1.log"; fi
    if [ -n "$ulog" ] && grep -q 'removed a leftover NRPT rule' "$ulog"; then
        echo "(the planted NRPT rule was removed by the uninstaller, not by the stopping node)"
    fi
    check "uninstall log: the service was stopped and removed" \
        bash -c "[ -n '$ulog' ] && grep -q 'removing the service' '$ulog' && grep -q 'result: uninstalled' '$ulog'"

    # --- 4. reinstall (reuses the kept configuration), then uninstall /PURGE --------------
    step "reinstall, then silent uninstall with /PURGE"
    wine_run reinstall 300 "$setup" /S
    echo "installer exit code $RC"
    keep_log reinstall
    check "reinstall: the kept node.yaml is used again" has "$PD/node.yaml" "# installer-test marker: keep me"
    check "reinstall: the files are back" test -s "$PF/cyphonicd.exe"
    t=$SECONDS
    wine_run uninstall-purge 300 "$WIN_PF\\uninstall.exe" /S /PURGE
    wine_wait 180
    PURGE_S=$((SECONDS - t))
    check "uninstall /PURGE: %ProgramData%\\cyphonic is gone" absent "$PD"
    check "uninstall /PURGE: Program Files\\CYPHONIC is gone" absent "$PF"
    check "uninstall /PURGE: the shortcut is gone" absent "$LNK"
    check "uninstall /PURGE: the service key is gone" key_absent service-key-gone-2 "$SERVICE_KEY"
    check "uninstall /PURGE: the uninstall key is gone" key_absent uninstall-key-gone-2 "$UNINST_KEY"
    wine_wait 120

    summary
    [ "${#FAILED[@]}" -eq 0 ]
}

summary() {
    step "summary"
    cat <<EOF
installer:         $(stat -c %s "$WORK/cyphonic-setup.exe") bytes ($(cat "$WORK/compressor"), built in $(cat "$WORK/build-seconds") s)
binaries:          $(cat "$WORK/source")
install:           exit ${INSTALL_RC:-?} (3 = installed, login failed: expected), ${INSTALL_S:-?} s
service after it:  ${SERVICE_STATE:-unknown}
upgrade:           exit ${UPGRADE_RC:-?}, ${UPGRADE_S:-?} s
uninstall /S:      exit ${UNINSTALL_RC:-?}, ${UNINSTALL_S:-?} s until every process ended
uninstall /PURGE:  ${PURGE_S:-?} s
checks:            $PASSED passed, ${#FAILED[@]} failed
logs:              $LOGS
EOF
    if [ "${#FAILED[@]}" -gt 0 ]; then
        printf 'FAILED: %s\n' "${FAILED[@]}" >&2
        echo "(the logs are kept in $LOGS)" >&2
    fi
}

if [ "${1:-}" = --wine-phase ]; then
    PHASE2=1
fi
[ -z "${PHASE2:-}" ] || { wine_phase "$2"; exit $?; }
# Reached only if bash aborted wine_phase on an expansion error: never a pass.
[ -z "${PHASE2:-}" ] || die "the Wine phase stopped on a shell error"

# ---------------------------------------------------------------------------------------
# Phase 1: packages, staging, the installer.
step "packages"
need=()
command -v makensis >/dev/null 2>&1 || need+=(nsis)
[ -x /usr/lib/wine/wine64 ] || need+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
makensis -VERSION
echo

step "Windows binaries"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
complete() {
    local f
    for f in "${FILES[@]}"; do [ -f "$1/$f" ] || return 1; done
}
if [ -n "${CYPHONIC_WINDOWS_BUILD:-}" ]; then
    bin="$CYPHONIC_WINDOWS_BUILD"
elif complete "$target_dir/$TARGET/release"; then
    bin="$target_dir/$TARGET/release"
else
    bin="$target_dir/$TARGET/debug"
fi
missing=()
for f in "${FILES[@]}"; do [ -f "$bin/$f" ] || missing+=("$f"); done
[ "${#missing[@]}" -eq 0 ] || die "$bin lacks ${missing[*]}: build them first:
  cargo build --target $TARGET -p cyphonic-host -p cyphonic-aes-gcm-plugin \\
    -p cyphonic-chacha20-poly1305-plugin -p cyphonic-ctr-hmac-plugin \\
    -p cyphonic-wintun-plugin -p cyphonic-win-mobility-plugin"
echo "$bin"

signed="$(plugins/wintun/find-signed-dll.sh 2>/dev/null)" || {
    cargo fetch --locked >/dev/null
    signed="$(plugins/wintun/find-signed-dll.sh)"
} || die "no signed wintun.dll (plugins/wintun/find-signed-dll.sh)"
echo "signed wintun.dll: $signed"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cyphonic-installer-test.XXXXXX")"
cleanup() {
    local rc=$?
    if [ "${KEEP:-0}" = 1 ] || { [ "$rc" -ne 0 ] && [ -d "$WORK/logs" ]; }; then
        # Keep the logs of a failure, not the 700 MB prefix.
        [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK/prefix"
        echo "installer-test: work folder kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT

step "stage and build the installer"
stage="$WORK/stage"
mkdir -p "$stage/plugins" "$stage/scripts"
strip=x86_64-w64-mingw32-strip
for f in "${FILES[@]}"; do
    case "$f" in
        *.exe) dst="$stage/$f" ;;
        *) dst="$stage/plugins/$f" ;;
    esac
    if command -v "$strip" >/dev/null 2>&1; then
        "$strip" --strip-debug -o "$dst" "$bin/$f"
    else
        cp "$bin/$f" "$dst"
    fi
done
cp "$signed" "$stage/plugins/wintun.dll"
cp "$signed" "$WORK/signed-wintun.dll"
cp scripts/dns_filter.lua scripts/config.lua "$stage/scripts/"
compressor="${CYPHONIC_NSIS_COMPRESSOR:-zlib}"
t=$SECONDS
CYPHONIC_NSIS_COMPRESSOR="$compressor" packaging/windows/build-installer.sh "$stage" "$WORK/cyphonic-setup.exe"
echo "$((SECONDS - t))" >"$WORK/build-seconds"
echo "$compressor" >"$WORK/compressor"
echo "$bin" >"$WORK/source"
sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1 >"$WORK/version"

step "Wine prefix template"
export CYPHONIC_WINEPREFIX="${CYPHONIC_WINEPREFIX:-$PWD/target/wine-prefix}"
export WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
# shellcheck source=scripts/wine/env.sh
. scripts/wine/env.sh
# Copy it only when its wineserver has written everything out.
timeout 120 "${WINE%/*}/wineserver" -w || true
cp -a "$WINEPREFIX" "$WORK/prefix"
echo "fresh copy of $WINEPREFIX"

if unshare -n true 2>/dev/null; then
    unshare -n "$0" --wine-phase "$WORK"
else
    printf '\n%s\n' "######## installer-test: no private network namespace (unshare -n failed, not" \
        "######## root?): the installed service binds 127.0.0.1:7480 and UDP 7400 on this host"
    "$0" --wine-phase "$WORK"
fi
step "done in $(elapsed) s"
