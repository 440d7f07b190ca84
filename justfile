# Commands people type. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Run the whole system on one machine with the embedded defaults.
run *ARGS: handlers
    cargo run --release -p switchyard -- run {{ARGS}}

# Install the Wasm toolchain for handlers/ if this machine lacks one.
toolchain:
    scripts/install-wasm-toolchain.sh

# Build every crate under handlers/ into target/components/<name>.wasm.
handlers: toolchain
    cargo xtask handlers

# Validate topics.toml and every component it names.
check: handlers
    cargo run -p switchyard -- check

# Start PostgreSQL, Redis and Kafka on loopback (idempotent).
services:
    scripts/services.sh start all

# Stop them.
services-stop:
    scripts/services.sh stop all

# Every test: unit, handler logic, and integration against real services.
test *ARGS: handlers services
    scripts/test.sh {{ARGS}}

# Formatting and lints, as CI runs them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks on the real services as tables, with commit and durability settings (TABLES: runtime throughput hop rss).
# Without TABLES the HTTP table (POST /orders latency, embedded and real) follows.
bench *TABLES: handlers services
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench runtime -- {{TABLES}}
    if [ -z "{{TABLES}}" ]; then eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench http; fi
    if [ -z "{{TABLES}}" ]; then eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench observe; fi

# Embedded broker + SQLite unless --brokers / --database-url (or SWITCHYARD_BROKERS /
# SWITCHYARD_DATABASE_URL) are given; docs/benchmarks.md explains the figures.
# Open-loop load through the order saga: RATE orders/s for DURATION s, latency to the final status.
load RATE="100" DURATION="10" *ARGS: handlers
    cargo bench -p switchyard --bench load -- {{RATE}} {{DURATION}} {{ARGS}}

# What a read-only query costs beside an event of the same component, as a table.
bench-query: handlers services
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench query

# What an outbound effect (webhook) costs from the handler's call to its receipt.
bench-outbound: handlers services
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench outbound

# What metrics and tracing cost per event: off, metrics only, metrics + traces, in one run, embedded and real (also part of `just bench`).
bench-observe: handlers services
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench observe
