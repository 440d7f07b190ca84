#!/usr/bin/env bash
# Makes sure handlers/ can be built for wasm32-wasip1. With rustup's target installed
# there is nothing to do; otherwise installs Debian's matched rustc/cargo/std sources,
# lld and wasi-libc, with which `cargo xtask handlers` builds std from source.
set -euo pipefail
target=wasm32-wasip1
if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    exit 0
fi
pkgs=(rustc-web cargo-web rust-web-src lld-19 wasi-libc)
missing=()
for pkg in "${pkgs[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "install-wasm-toolchain: rustup has no $target target and this is not a Debian machine;" >&2
    echo "  run \`rustup target add $target\` where rustup can reach its servers" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-wasm-toolchain: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
