#!/usr/bin/env bash
# Prints the absolute path of the signed wintun.dll that the `wintun` crate's package
# ships (wintun/bin/<arch>/wintun.dll in the cargo registry), for the release and CI
# scripts to copy next to cyphonic_wintun.dll. Exits non-zero, saying why, if absent.
#
#   plugins/wintun/find-signed-dll.sh [amd64|arm64|x86|arm]    # default amd64
#
# The crate version is the one in the workspace's Cargo.lock. Run `cargo fetch` first on
# a machine that has not built the workspace for Windows yet.
set -euo pipefail

arch="${1:-amd64}"
case "$arch" in
    amd64 | arm64 | x86 | arm) ;;
    *)
        echo "find-signed-dll.sh: unknown architecture '$arch' (amd64, arm64, x86, arm)" >&2
        exit 2
        ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
version=""
if [ -f "$root/Cargo.lock" ]; then
    version="$(awk '/^name = "wintun"$/ { getline; gsub(/version = |"/, ""); print; exit }' \
        "$root/Cargo.lock")"
fi
if [ -z "$version" ]; then
    echo "find-signed-dll.sh: no wintun package in $root/Cargo.lock" >&2
    exit 1
fi

registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
for dll in "$registry"/*/"wintun-$version"/wintun/bin/"$arch"/wintun.dll; do
    if [ -f "$dll" ]; then
        echo "$(cd "$(dirname "$dll")" && pwd)/wintun.dll"
        exit 0
    fi
done
echo "find-signed-dll.sh: no wintun-$version/wintun/bin/$arch/wintun.dll under $registry" \
    "(run cargo fetch)" >&2
exit 1
