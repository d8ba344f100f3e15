#!/usr/bin/env bash
# Builds the CYPHONIC Windows installer (NSIS 3, 64-bit Unicode) on Linux from a staged
# folder of Windows binaries.
#
#   packaging/windows/build-installer.sh <staged-dir> <out.exe>
#
# The staged folder (what scripts/release.sh zips, and what scripts/installer-test.sh
# stages the same way):
#   cyphonicd.exe, cyphonic.exe                  required
#   cyphonic_wintun.dll, wintun.dll (the SIGNED one from the wintun crate's package),
#   cyphonic_win_mobility.dll, cyphonic_aes_gcm.dll, cyphonic_chacha20_poly1305.dll,
#   cyphonic_ctr_hmac.dll                        required, in plugins/ or at the top level
#   scripts/dns_filter.lua, scripts/config.lua   optional (default: this repository's scripts/)
#   config/node.yaml.in                          optional (default: packaging/windows/node.yaml.in)
# Anything else (README.md, docs/, config/node.yaml) is ignored.
#
# The installer's behaviour (paths, switches, exit codes) is described in
# packaging/windows/README.md. The version comes from the workspace Cargo.toml.
#
# Environment:
#   CYPHONIC_NSIS_COMPRESSOR   lzma (default, solid) | zlib (fast; for tests) | bzip2
#   MAKENSIS                   the makensis binary (default: makensis)
# makensis comes from the Debian package `nsis`; run as root, this script installs it when
# it is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

die() {
    echo "build-installer.sh: $*" >&2
    exit 1
}

[ "$#" -eq 2 ] || die "usage: build-installer.sh <staged-dir> <out.exe>"
stage="$(cd "$1" && pwd)" || die "no staged folder $1"
out_dir="$(dirname "$2")"
mkdir -p "$out_dir"
out="$(cd "$out_dir" && pwd)/$(basename "$2")"

MAKENSIS="${MAKENSIS:-makensis}"
if ! command -v "$MAKENSIS" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build-installer.sh: installing the Debian package nsis" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nsis >/dev/null
    fi
    command -v "$MAKENSIS" >/dev/null 2>&1 || die "makensis not found (apt-get install nsis)"
fi

version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
[ -n "$version" ] || die "no [workspace.package] version in $root/Cargo.toml"
# VIProductVersion wants four numbers: 1.2.3-rc.1 -> 1.2.3.0.
numeric="$(printf '%s' "$version" | sed 's/[-+].*//')"
case "$numeric" in
    *.*.*.*) ;;
    *.*.*) numeric="$numeric.0" ;;
    *) die "version $version is not major.minor.patch" ;;
esac

compressor="${CYPHONIC_NSIS_COMPRESSOR:-lzma}"
case "$compressor" in
    lzma) compressor_line="/SOLID lzma" ;;
    zlib | bzip2) compressor_line="$compressor" ;;
    *) die "CYPHONIC_NSIS_COMPRESSOR must be lzma, zlib or bzip2, not $compressor" ;;
esac

# Reads a little-endian unsigned integer of $3 bytes at offset $2 of file $1.
le() {
    local bytes value=0 i
    read -r -a bytes <<<"$(od -An -tu1 -j "$2" -N "$3" "$1")"
    [ "${#bytes[@]}" -eq "$3" ] || return 1
    for ((i = $3 - 1; i >= 0; i--)); do value=$((value * 256 + bytes[i])); done
    echo "$value"
}

# Checks that $1 is a PE32+ x86-64 image; with $2 = signed, also that its Authenticode
# certificate table (data directory 4, "Security") is not empty.
check_pe() {
    local f="$1" pe magic opt
    [ "$(head -c 2 "$f")" = "MZ" ] || die "$f is not a Windows executable"
    pe="$(le "$f" 60 4)" || die "$f is truncated"
    [ "$(od -An -c -j "$pe" -N 4 "$f" | tr -d ' \n')" = 'PE\0\0' ] || die "$f has no PE header"
    [ "$(le "$f" $((pe + 4)) 2)" -eq $((0x8664)) ] || die "$f is not an x86-64 image"
    opt=$((pe + 24))
    magic="$(le "$f" "$opt" 2)"
    [ "$magic" -eq $((0x20b)) ] || die "$f is not a PE32+ image"
    if [ "${2:-}" = signed ]; then
        # PE32+: the data directories start 112 bytes into the optional header; entry 4's
        # size is at 112 + 4 * 8 + 4.
        [ "$(le "$f" $((opt + 148)) 4)" -gt 0 ] ||
            die "$f carries no Authenticode signature: ship the signed wintun.dll from the" \
                "wintun crate's package (plugins/wintun/find-signed-dll.sh), never the test stub"
    fi
}

payload="$(mktemp -d "${TMPDIR:-/tmp}/cyphonic-nsis.XXXXXX")"
trap 'rm -rf "$payload"' EXIT
mkdir -p "$payload/plugins" "$payload/scripts"

for f in cyphonicd.exe cyphonic.exe; do
    [ -f "$stage/$f" ] || die "$stage/$f is missing"
    check_pe "$stage/$f"
    ln -s "$stage/$f" "$payload/$f"
done
for f in cyphonic_wintun.dll wintun.dll cyphonic_win_mobility.dll cyphonic_aes_gcm.dll \
    cyphonic_chacha20_poly1305.dll cyphonic_ctr_hmac.dll; do
    src="$stage/plugins/$f"
    [ -f "$src" ] || src="$stage/$f"
    [ -f "$src" ] || die "$f is in neither $stage/plugins nor $stage"
    if [ "$f" = wintun.dll ]; then check_pe "$src" signed; else check_pe "$src"; fi
    ln -s "$src" "$payload/plugins/$f"
done
for f in dns_filter.lua config.lua; do
    src="$stage/scripts/$f"
    [ -f "$src" ] || src="$root/scripts/$f"
    [ -f "$src" ] || die "no $f in $stage/scripts or $root/scripts"
    ln -s "$src" "$payload/scripts/$f"
done
template="$stage/config/node.yaml.in"
[ -f "$template" ] || template="$here/node.yaml.in"
# The installer reads the template line by line as ANSI text and writes UTF-8.
LC_ALL=C grep -q '[^[:print:][:space:]]' "$template" && die "$template must be plain ASCII"
for token in @PLUGIN_DIR@ @CLOUD_AS@ @CLOUD_NMS@ @CLOUD_KEY@; do
    grep -q "$token" "$template" || die "$template lacks $token"
done
ln -s "$template" "$payload/node.yaml.in"

echo "build-installer.sh: CYPHONIC $version ($compressor) -> $out"
start=$SECONDS
"$MAKENSIS" -V2 -INPUTCHARSET UTF8 -NOCD \
    "-DVERSION=$version" "-DVERSION_NUMERIC=$numeric" "-DPAYLOAD=$payload" \
    "-DOUTFILE=$out" "-DCOMPRESSOR=$compressor_line" \
    "$here/cyphonic.nsi"
[ -s "$out" ] || die "makensis wrote no $out"
echo "build-installer.sh: $out ($(stat -c %s "$out") bytes, $((SECONDS - start)) s)"
