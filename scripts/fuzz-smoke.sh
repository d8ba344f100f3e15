#!/usr/bin/env bash
# Short fuzzing run of every cargo-fuzz target in fuzz/fuzz_targets/.
#
# Each target starts from a temporary copy of its committed seed corpus
# (fuzz/corpus/<target>/), so the committed corpus is never polluted, and runs for
# FUZZ_SECONDS (default 20) seconds. Any crash, leak, timeout or failed round-trip
# assertion fails the script; the reproducer lands in fuzz/artifacts/<target>/.
#
# FUZZ_TARGETS="signal control" limits the run to those targets.
#
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz when missing.
# Build output goes to CARGO_TARGET_DIR, by default fuzz/target (gitignored).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-20}
rss_limit_mb=${FUZZ_RSS_LIMIT_MB:-2048}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/fuzz/target}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz-smoke: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 2
fi

targets=()
if [ -n "${FUZZ_TARGETS:-}" ]; then
    for target in $FUZZ_TARGETS; do
        if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
            echo "fuzz-smoke: no target $target in fuzz/fuzz_targets" >&2
            exit 2
        fi
        targets+=("$target")
    done
else
    for file in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz-smoke: no targets in fuzz/fuzz_targets" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/cyphonic-fuzz-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT

# One build of every target up front; the runs below reuse it. -a: debug assertions
# (and so overflow checks) on, as the run uses.
echo "fuzz-smoke: building ${#targets[@]} targets"
(cd fuzz && cargo +nightly fuzz build -a) >"$work/build.log" 2>&1 || {
    tail -n 50 "$work/build.log" >&2
    echo "fuzz-smoke: build failed" >&2
    exit 1
}

failed=0
for target in "${targets[@]}"; do
    corpus="$work/corpus-$target"
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    seeds=$(find "$corpus" -type f | wc -l)
    log="$work/$target.log"
    if (cd fuzz && cargo +nightly fuzz run -a "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" -print_final_stats=1) \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
        found=$(find "$corpus" -type f | wc -l)
        line=$(printf '%-16s ok    %10s runs  cov %-5s corpus %s -> %s' \
            "$target" "${runs:-?}" "${cov:-?}" "$seeds" "$found")
    else
        failed=1
        artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -n 1 || true)
        [ -n "$artifact" ] || artifact=$(grep -o 'artifacts/[^ ]*' "$log" | tail -n 1 || true)
        echo "---- $target failed; last lines of its log:" >&2
        tail -n 40 "$log" >&2
        line=$(printf '%-16s FAIL  %s' "$target" "${artifact:-see log above}")
    fi
    echo "$line"
done

if [ "$failed" -ne 0 ]; then
    echo "fuzz-smoke: FAILED (${#targets[@]} targets, ${seconds}s each)" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} targets passed (${seconds}s each)"
