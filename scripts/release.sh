#!/usr/bin/env bash
# Builds every release artefact into dist/cyphonic-<version>/:
#   cyphonic-<version>-linux-x86_64.tar.gz    cyphonicd, cyphonic, cyphonic-cloud, the Linux
#                                             plugins, config/, scripts (Lua), docs, units
#   cyphonic-node_<version>-1_amd64.deb       (packaging/linux/build-debs.sh)
#   cyphonic-cloud_<version>-1_amd64.deb
#   cyphonic-<version>-windows-x86_64.zip     cyphonicd.exe, cyphonic.exe, the plugin DLLs,
#                                             the signed wintun.dll, node.yaml (Windows),
#                                             the Lua scripts, docs
#   cyphonic-<version>-windows-x86_64-setup.exe
#                                             only if packaging/windows/build-installer.sh
#                                             exists (called with the staged Windows
#                                             folder and the output path)
#   SHA256SUMS                                over all of the above
# The Windows part needs the rustup target x86_64-pc-windows-gnu and mingw-w64
# (scripts/windows-stage.sh installs both); without them it is skipped with a loud
# message, or the script fails with --require-windows.
#
#   scripts/release.sh [--require-windows | --linux-only]
#
# Binaries in the tarball and the zip have their debug info stripped (the release
# profile keeps it for profiling). SOURCE_DATE_EPOCH, if set, fixes the archives'
# file times.
set -euo pipefail
cd "$(dirname "$0")/.."

WIN_TARGET=x86_64-pc-windows-gnu
WIN_PACKAGES=(cyphonic-host cyphonic-aes-gcm-plugin cyphonic-chacha20-poly1305-plugin
    cyphonic-ctr-hmac-plugin cyphonic-wintun-plugin cyphonic-win-mobility-plugin)
WIN_FILES=(cyphonicd.exe cyphonic.exe cyphonic_wintun.dll cyphonic_win_mobility.dll
    cyphonic_aes_gcm.dll cyphonic_chacha20_poly1305.dll cyphonic_ctr_hmac.dll)
LINUX_BINS=(cyphonicd cyphonic cyphonic-cloud)
LINUX_PLUGINS=(libcyphonic_linux_tun.so libcyphonic_netlink_mobility.so libcyphonic_aes_gcm.so
    libcyphonic_chacha20_poly1305.so libcyphonic_ctr_hmac.so)
WINTUN_CRATE="wintun-0.5.1"

windows=auto
case "${1:-}" in
    "") ;;
    --require-windows) windows=require ;;
    --linux-only) windows=skip ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown option $1 (--require-windows, --linux-only)" >&2
        exit 2
        ;;
esac

START=$SECONDS
step() { printf '\n=== release: %s (t=%ds)\n' "$*" "$((SECONDS - START))"; }
die() {
    echo "release: $*" >&2
    exit 1
}
loud() {
    printf '\n%s\n' "######################################################################" >&2
    printf 'release: %s\n' "$@" >&2
    printf '%s\n\n' "######################################################################" >&2
}

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || die "no workspace version in Cargo.toml"
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
DIST="$PWD/dist/cyphonic-$VERSION"
STAGE="$TARGET_DIR/release-stage"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y Cargo.toml)}"

# Decide about Windows before the long Linux build, so a missing toolchain fails fast.
if [ "$windows" != skip ]; then
    why=""
    if ! rustup target list --installed 2>/dev/null | grep -qx "$WIN_TARGET"; then
        why="the rustup target $WIN_TARGET is not installed (rustup target add $WIN_TARGET)"
    elif ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
        why="mingw-w64 is not installed (apt-get install gcc-mingw-w64-x86-64)"
    fi
    if [ -n "$why" ]; then
        [ "$windows" = require ] && die "--require-windows, but $why"
        loud "WINDOWS ARTEFACTS SKIPPED: $why." \
            "Only the Linux tarball and .debs are built. scripts/windows-stage.sh installs both."
        windows=skip
    fi
fi

rm -rf "$DIST" "$STAGE"
mkdir -p "$DIST" "$STAGE"

# Portable archives: sorted, root-owned, fixed times.
tar_gz() { # out.tar.gz, dir (inside $STAGE)
    tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" -czf "$1" "$2"
}
zip_dir() { # out.zip, dir (inside $STAGE)
    find "$STAGE/$2" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    if command -v zip >/dev/null; then
        (cd "$STAGE" && find "$2" -type f | LC_ALL=C sort | zip -q -X -9 "$1" -@)
    elif command -v python3 >/dev/null; then
        (cd "$STAGE" && python3 -m zipfile -c "$1" "$2")
    else
        die "neither zip nor python3 to make $1 (apt-get install zip)"
    fi
}

# --- Linux ------------------------------------------------------------------------
step "Linux release build"
packaging/linux/build-debs.sh --build-only
rel="$TARGET_DIR/release"

step "Linux tarball"
name="cyphonic-$VERSION-linux-x86_64"
d="$STAGE/$name"
mkdir -p "$d/bin" "$d/lib/plugins" "$d/config" "$d/scripts" "$d/docs" "$d/systemd"
# strip -o: the unstripped copies (hundreds of MB with debug info) never hit the disk.
for f in "${LINUX_BINS[@]}" "${LINUX_PLUGINS[@]}"; do
    [ -f "$rel/$f" ] || die "the release build made no $rel/$f"
done
for b in "${LINUX_BINS[@]}"; do
    strip --strip-debug -o "$d/bin/$b" "$rel/$b"
    chmod 755 "$d/bin/$b"
done
for p in "${LINUX_PLUGINS[@]}"; do
    strip --strip-debug -o "$d/lib/plugins/$p" "$rel/$p"
    chmod 644 "$d/lib/plugins/$p"
done
install -m 644 config/node.yaml config/cloud.yaml "$d/config/"
install -m 644 scripts/dns_filter.lua scripts/config.lua "$d/scripts/"
install -m 644 docs/*.md "$d/docs/"
install -m 644 README.md "$d/"
install -m 644 packaging/linux/cyphonicd.service packaging/linux/cyphonic-cloud.service "$d/systemd/"
tar_gz "$DIST/$name.tar.gz" "$name"
rm -rf "$d"
echo "$DIST/$name.tar.gz"

step "Linux packages"
packaging/linux/build-debs.sh --no-build "$DIST"

# --- Windows ----------------------------------------------------------------------
signed_wintun_dll() {
    local found=""
    if [ -x plugins/wintun/find-signed-dll.sh ]; then
        found=$(plugins/wintun/find-signed-dll.sh) || found=""
    fi
    if [ -z "$found" ]; then
        found=$(find "${CARGO_HOME:-$HOME/.cargo}"/registry/src -maxdepth 6 \
            -path "*/$WINTUN_CRATE/wintun/bin/amd64/wintun.dll" 2>/dev/null | head -n 1 || true)
    fi
    [ -n "$found" ] && [ -f "$found" ] || return 1
    # Signed: the PE certificate table (data directory entry 4, "Security Directory")
    # is not empty. target/.../release/wintun.dll is the unsigned TEST stub: never that.
    local size
    size=$(x86_64-w64-mingw32-objdump -p "$found" | awk '/Security Directory/ {print $3; exit}')
    if [ -z "$size" ] || [ "$((16#$size))" -eq 0 ]; then
        echo "release: $found carries no Authenticode signature" >&2
        return 1
    fi
    echo "$found"
}

# packaging/windows/node.yaml.in (the installer's template) -> $1, with the plugin
# directory "." (relative paths are relative to the config file) and the cloud
# placeholders of config/node.yaml; CRLF line ends, like the installed file.
render_windows_config() {
    local template=packaging/windows/node.yaml.in as nms key
    [ -f "$template" ] || die "no $template (the Windows config template)"
    as=$(sed -n 's/^  as: "\(.*\)"$/\1/p' config/node.yaml)
    nms=$(sed -n 's/^  nms: "\(.*\)"$/\1/p' config/node.yaml)
    key=$(sed -n 's/^  key: "\(.*\)"$/\1/p' config/node.yaml)
    if [ -z "$as" ] || [ -z "$nms" ] || [ -z "$key" ]; then
        die "no cloud as/nms/key in config/node.yaml"
    fi
    sed -e "s|@PLUGIN_DIR@|.|g" -e "s|@CLOUD_AS@|$as|g" -e "s|@CLOUD_NMS@|$nms|g" \
        -e "s|@CLOUD_KEY@|$key|g" -e 's/\r\{0,1\}$/\r/' "$template" >"$1"
    if grep -q '@[A-Z_]*@' "$1"; then
        die "unreplaced tokens in $1: $(grep -o '@[A-Z_]*@' "$1" | sort -u | tr '\n' ' ')"
    fi
    chmod 644 "$1"
}

if [ "$windows" != skip ]; then
    step "Windows release build ($WIN_TARGET)"
    args=()
    for p in "${WIN_PACKAGES[@]}"; do args+=(-p "$p"); done
    cargo build --release --locked --target "$WIN_TARGET" "${args[@]}"
    wrel="$TARGET_DIR/$WIN_TARGET/release"
    wintun=$(signed_wintun_dll) || die "no signed wintun.dll (plugins/wintun/find-signed-dll.sh, or $WINTUN_CRATE in the cargo registry)"

    step "Windows zip"
    name="cyphonic-$VERSION-windows-x86_64"
    d="$STAGE/$name"
    mkdir -p "$d/docs"
    for f in "${WIN_FILES[@]}"; do
        [ -f "$wrel/$f" ] || die "the Windows build made no $wrel/$f"
        x86_64-w64-mingw32-strip --strip-debug -o "$d/$f" "$wrel/$f"
        chmod 644 "$d/$f"
    done
    install -m 644 "$wintun" "$d/wintun.dll"
    # The folder is a runnable node (`cyphonicd.exe --config node.yaml`, as
    # administrator) laid out like the installed one (%ProgramData%\cyphonic): node.yaml
    # and the scripts next to each other. config/node.yaml names Linux plugin files, so
    # node.yaml is the installer's Windows template with the plugins next to it and the
    # same placeholder cloud as config/node.yaml. (The installer takes the scripts from
    # the repository when the stage has no scripts/, and its own template.)
    render_windows_config "$d/node.yaml"
    install -m 644 scripts/dns_filter.lua scripts/config.lua "$d/"
    install -m 644 README.md "$d/"
    install -m 644 docs/*.md "$d/docs/"
    zip_dir "$DIST/$name.zip" "$name"
    echo "$DIST/$name.zip"

    if [ -x packaging/windows/build-installer.sh ]; then
        step "Windows installer"
        packaging/windows/build-installer.sh "$d" "$DIST/$name-setup.exe"
        [ -f "$DIST/$name-setup.exe" ] || die "build-installer.sh made no $DIST/$name-setup.exe"
    else
        loud "no Windows installer: packaging/windows/build-installer.sh does not exist yet"
    fi
fi

# --- checksums --------------------------------------------------------------------
step "SHA256SUMS"
sums=$(cd "$DIST" && find . -maxdepth 1 -type f -printf '%P\n' | LC_ALL=C sort |
    xargs -d '\n' sha256sum)
printf '%s\n' "$sums" >"$DIST/SHA256SUMS"
(cd "$DIST" && sha256sum --check --quiet SHA256SUMS)
cat "$DIST/SHA256SUMS"
rm -rf "$STAGE"

step "done"
ls -l "$DIST"
[ "$windows" = skip ] && loud "Linux artefacts only: the Windows zip and installer were NOT built."
echo "release: dist/cyphonic-$VERSION/ ($(find "$DIST" -type f | wc -l) files) in $((SECONDS - START))s"
