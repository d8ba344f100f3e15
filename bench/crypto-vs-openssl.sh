#!/usr/bin/env bash
# Compares the crypto-suite plugins with OpenSSL on this machine, like for like:
# seal vs `openssl speed -evp <cipher>` (encrypt) and open vs `... -decrypt`, one size at a
# time (`-bytes` takes one size). Prints a table of MB/s (10^6 bytes/s) with the ratio
# cyphonic/openssl and a PASS/FAIL line for the bar: aes-gcm at 1400 B seals and opens at
# >= 0.5x OpenSSL.
#
# Usage: bench/crypto-vs-openssl.sh [seconds per measurement, default 2]
# The cyphonic side runs through the plugin safe wrapper over the statically linked
# headers (see bench/src/bin/crypto-throughput.rs); its open figure includes restoring
# the ciphertext (a memcpy) before each open, so it errs on the low side.
set -euo pipefail

SECONDS_PER_RUN="${1:-2}"
SIZES=(64 1400 9000)
BAR_RATIO=0.5
BAR_SIZE=1400
cd "$(dirname "$0")/.."

command -v openssl >/dev/null || { echo "openssl not found" >&2; exit 2; }

echo "building crypto-throughput (release)..." >&2
cargo build --release -p cyphonic-bench --bin crypto-throughput >&2
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="${target_dir}/release/crypto-throughput"

ours="$(mktemp)"
trap 'rm -f "$ours"' EXIT
echo "measuring cyphonic suites..." >&2
"$bin" --seconds "$SECONDS_PER_RUN" --sizes "$(IFS=,; echo "${SIZES[*]}")" | tee "$ours" >&2

# openssl_mbps CIPHER SIZE [-decrypt] -> MB/s from the machine-readable "+F" line
# (bytes per second for the one size asked).
openssl_mbps() {
    local cipher=$1 size=$2 dir=${3:-}
    # shellcheck disable=SC2086 # $dir is empty or one flag
    openssl speed -evp "$cipher" -bytes "$size" -seconds "$SECONDS_PER_RUN" -mr $dir 2>/dev/null \
        | awk -F: '/^\+F:/ { printf "%.1f", $4 / 1e6 }'
}

# ours_mbps SUITE SIZE OP -> MB/s from the "RESULT suite size op mbps" lines.
ours_mbps() {
    awk -v s="$1" -v n="$2" -v o="$3" '$1 == "RESULT" && $2 == s && $3 == n && $4 == o { print $5 }' "$ours"
}

printf '\n%-18s %6s %-5s %12s %12s %7s\n' suite bytes op cyphonic openssl ratio
pass=1
bar_line=""
for suite in aes-gcm chacha20-poly1305 ctr-hmac; do
    case $suite in
        aes-gcm) cipher=aes-256-gcm ;;
        chacha20-poly1305) cipher=chacha20-poly1305 ;;
        # OpenSSL has no AES-CTR + HMAC-SHA256 AEAD to compare with.
        *) cipher="" ;;
    esac
    for size in "${SIZES[@]}"; do
        for op in seal open; do
            mine="$(ours_mbps "$suite" "$size" "$op")"
            [[ -n $mine ]] || { echo "no cyphonic figure for $suite $size $op" >&2; exit 1; }
            if [[ -n $cipher ]]; then
                flag=""; [[ $op == open ]] && flag=-decrypt
                theirs="$(openssl_mbps "$cipher" "$size" $flag)"
                [[ -n $theirs ]] || { echo "no openssl figure for $cipher $size $op" >&2; exit 1; }
                ratio="$(awk -v a="$mine" -v b="$theirs" 'BEGIN { printf "%.2f", a / b }')"
            else
                theirs="-"; ratio="-"
            fi
            printf '%-18s %6s %-5s %12s %12s %7s\n' "$suite" "$size" "$op" "$mine" "$theirs" "$ratio"
            if [[ $suite == aes-gcm && $size == "$BAR_SIZE" ]]; then
                bar_line+=" $op=${ratio}x"
                if awk -v r="$ratio" -v b="$BAR_RATIO" 'BEGIN { exit !(r < b) }'; then pass=0; fi
            fi
        done
    done
done
# A full handshake costs each side four X25519 operations and one Ed25519 verification;
# OpenSSL's rates for those primitives put our handshake rate in context.
hs="$(awk '$1 == "RESULT" && $2 == "handshake" { print $5 }' "$ours")"
x25519="$(openssl speed -seconds "$SECONDS_PER_RUN" -mr ecdhx25519 2>/dev/null | awk -F: '/^\+F5:/ { printf "%.0f", $4; exit }')"
ed_verify="$(openssl speed -seconds "$SECONDS_PER_RUN" -mr ed25519 2>/dev/null | awk -F: '/^\+F6:/ { printf "%.0f", $6; exit }')"
echo
printf 'handshakes/s (initiator + responder on one core): %s\n' "${hs:-?}"
if [[ -n $x25519 && -n $ed_verify && -n $hs ]]; then
    bound="$(awk -v x="$x25519" -v v="$ed_verify" 'BEGIN { printf "%.0f", 1 / (8 / x + 2 / v) }')"
    ratio="$(awk -v h="$hs" -v b="$bound" 'BEGIN { printf "%.2f", h / b }')"
    printf 'openssl: x25519 %s ops/s, ed25519 verify %s/s -> 8 DH + 2 verifies bound %s/s; ours %sx of it\n' \
        "$x25519" "$ed_verify" "$bound" "$ratio"
fi
echo
if (( pass )); then
    echo "PASS: aes-gcm at ${BAR_SIZE} B >= ${BAR_RATIO}x openssl (${bar_line# })"
else
    echo "FAIL: aes-gcm at ${BAR_SIZE} B below ${BAR_RATIO}x openssl (${bar_line# })"
    exit 1
fi
