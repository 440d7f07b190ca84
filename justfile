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

# Benchmarks on the real services, printed as tables with the commit and durability
# settings: `just bench` for all, or some of: runtime throughput hop rss.
bench *TABLES: handlers services
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench runtime -- {{TABLES}}

# Open-loop load through the order saga: RATE orders/s for DURATION s, latency to the
# final status. Embedded broker + SQLite unless --brokers / --database-url are given
# (or SWITCHYARD_BROKERS / SWITCHYARD_DATABASE_URL), e.g. `just load 100 10 --brokers 127.0.0.1:59092`.
load RATE="100" DURATION="10" *ARGS: handlers
    cargo bench -p switchyard --bench load -- {{RATE}} {{DURATION}} {{ARGS}}
