#!/usr/bin/env bash
# Cargo's runner for x86_64-pc-windows-gnu: runs one Windows executable under Wine with
# the exit code propagated. Wine misbehaves with a closed stdin, so stdin is /dev/null
# unless a terminal or pipe is attached; a hung start is cut by a timeout.
set -u
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if [ -t 0 ] || [ -p /dev/stdin ]; then
    exec timeout "${CYPHONIC_WINE_TIMEOUT:-900}" "$WINE" "$@"
fi
exec timeout "${CYPHONIC_WINE_TIMEOUT:-900}" "$WINE" "$@" </dev/null
