#!/usr/bin/env bash
# Installs what building and testing Switchyard needs on a fresh machine, idempotently:
# `just`, the system libraries the host links, and a Wasm toolchain for handlers/.
# Safe to run again; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bootstrap: %s\n' "$*" >&2; }

command -v cargo >/dev/null || { say "cargo not found: install Rust with rustup (https://rustup.rs) first"; exit 1; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        say "missing packages ${missing[*]} and no apt-get here: install them with your package manager"
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Build tools for librdkafka (compiled from source by rdkafka-sys) and sqlx.
if command -v apt-get >/dev/null; then
    apt_install build-essential pkg-config python3 python3-pip
    # A real SMTP server for the outbound-effects tests (host/tests/it/outbound.rs runs
    # Debian's python3 with it: /usr/bin/python3 -m aiosmtpd or a small handler script).
    apt_install python3-aiosmtpd
fi

# Headless Chromium and its WebDriver for the console's browser tests (host/tests/it/console.rs).
if command -v apt-get >/dev/null; then
    apt_install chromium chromium-driver
fi

# just: from crates.io's prebuilt-free route is slow, PyPI's `rust-just` wheel is fast.
if ! command -v just >/dev/null; then
    say "installing just"
    if python3 -m pip install -q rust-just 2>/dev/null || python3 -m pip install -q --break-system-packages rust-just 2>/dev/null; then
        hash -r
    else
        cargo install --locked just
    fi
fi
command -v just >/dev/null || { say "just was installed but is not on PATH (check ~/.local/bin or ~/.cargo/bin)"; exit 1; }

# Test tools from PyPI: PyJWT (an independent JWT implementation the gateway tests
# check tokens against) and schemathesis (fuzzes the gateway from its OpenAPI document).
if ! python3 -c 'import jwt, cryptography' 2>/dev/null || ! command -v schemathesis >/dev/null; then
    say "installing PyJWT and schemathesis"
    python3 -m pip install -q 'pyjwt[crypto]' schemathesis 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'pyjwt[crypto]' schemathesis
    hash -r
fi
command -v schemathesis >/dev/null || { say "schemathesis was installed but is not on PATH (check ~/.local/bin)"; exit 1; }

scripts/install-wasm-toolchain.sh
say "ready"
