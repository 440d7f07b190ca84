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

# Benchmarks, printed as tables.
bench: handlers services
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench runtime
    eval "$(scripts/services.sh env)" && cargo bench -p switchyard --bench http
