#!/usr/bin/env bash
# Builds the two Linux packages into <out-dir>:
#   cyphonic-node_<version>-1_amd64.deb    (host/Cargo.toml [package.metadata.deb])
#   cyphonic-cloud_<version>-1_amd64.deb   (cloud/Cargo.toml [package.metadata.deb])
# First `cargo build --release` of the binaries and plugins they hold (a no-op when up
# to date), then `cargo deb --no-build --strip`: cargo-deb alone would build only the
# package's own crate, not the plugin cdylibs of the other workspace crates, and the
# release profile keeps debug info that the packages should not carry.
# Used by scripts/deb-test.sh and scripts/release.sh; needs cargo-deb (pinned below;
# installed when missing), dpkg-shlibdeps (dpkg-dev) and strip (binutils).
#
#   packaging/linux/build-debs.sh [--build-only | --no-build] <out-dir>
#   --build-only: only the release build (no out-dir);
#   --no-build:   only the packages, from the release build as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_DEB_VERSION=3.8.0
# The crates whose release artefacts the packages hold (and release.sh's tarball).
RELEASE_PACKAGES=(cyphonic-host cyphonic-cloud cyphonic-linux-tun-plugin
    cyphonic-netlink-mobility-plugin cyphonic-aes-gcm-plugin
    cyphonic-chacha20-poly1305-plugin cyphonic-ctr-hmac-plugin)

mode=all
case "${1:-}" in
    --build-only | --no-build)
        mode=${1#--}
        shift
        ;;
esac

if [ "$mode" != no-build ]; then
    args=()
    for p in "${RELEASE_PACKAGES[@]}"; do args+=(-p "$p"); done
    cargo build --release --locked "${args[@]}"
fi
[ "$mode" = build-only ] && exit 0

out=${1:?usage: build-debs.sh [--build-only | --no-build] <out-dir>}
mkdir -p "$out"
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    echo "installing cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi
for crate in cyphonic-host cyphonic-cloud; do
    cargo deb --locked --no-build --strip -p "$crate" -o "$out/"
done
