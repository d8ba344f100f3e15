#!/bin/sh
# Runs the cloud load generator on a release build and prints each phase and the
# summary (PASS/FAIL against the issue's bar). Flags go to `cyphonic-cloud bench`:
#   cloud/bench.sh                                  # the full run: 100,000 nodes
#   cloud/bench.sh --nodes 2000 --directions 500    # a quick one
#   cloud/bench.sh --help
set -eu
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p cyphonic-cloud -- bench "$@"
