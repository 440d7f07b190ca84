#!/usr/bin/env bash
# Runs every test of the workspace against the services `scripts/services.sh` started,
# and ends with one line totalling all test binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/services.sh env)"
# Every PostgreSQL test makes a database of its own and leaves it for inspection. A full
# run drops the earlier runs' ones first: 500 of them made the server's start-up fsync
# take 5 minutes.
if [ $# -eq 0 ] && command -v psql >/dev/null; then
    psql -X -q "$SWITCHYARD_TEST_DATABASE_URL" -Atc \
        "select datname from pg_database where datname like 'sy\_test\_%'" 2>/dev/null |
        while read -r db; do
            psql -X -q "$SWITCHYARD_TEST_DATABASE_URL" -c "drop database if exists \"$db\" with (force)" || true
        done
fi
# Likewise the topics earlier runs made on the broker (each test makes its own, under a
# prefix of `t` and 10 hex digits, or `obs-` and 32): 1,500 of them left the broker busier
# and its metadata slower for every later run.
if [ $# -eq 0 ]; then
    scripts/services.sh kafka-topics --delete --if-exists --topic '(t[0-9a-f]{10}|obs-[0-9a-f]{32})[.].*' >/dev/null 2>&1 || true
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Doctests are left out: the crates have none, and their empty runs would only add
# noise to the summary.
cargo test --workspace --lib --bins --tests "$@" -- --skip fault:: 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The fault suite stops and starts PostgreSQL and Kafka, so it runs alone, after the rest
# (and only in a full run: with a filter given, run it yourself with `fault::`). Selected
# with `--workspace` like the run above, so cargo resolves the same features and reuses its
# build: `-p switchyard` alone rebuilt the host and the test binary (2 min 6 s on 2 cores).
if [ $# -eq 0 ]; then
    cargo test --workspace --test it fault:: 2>&1 | tee -a "$log"
    fault=${PIPESTATUS[0]}
    [ "$status" -ne 0 ] || status=$fault
fi
awk '/^test result:/ {
        for (i = 2; i <= NF; i++) {
            if ($i == "passed;") p += $(i - 1)
            if ($i == "failed;") f += $(i - 1)
            if ($i == "ignored;") s += $(i - 1)
        }
     }
     END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
