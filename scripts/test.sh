#!/usr/bin/env bash
# Runs every test of the workspace against the services `scripts/services.sh` started,
# and ends with one line totalling all test binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Doctests are left out: the crates have none, and their empty runs would only add
# noise to the summary.
cargo test --workspace --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($i == "passed;") p += $(i - 1)
            if ($i == "failed;") f += $(i - 1)
            if ($i == "ignored;") s += $(i - 1)
        }
     }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
