#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine, then runs
# the format check, clippy with warnings as errors, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests call: openssl (trust/tests/openssl_agrees.rs checks our CRLs and
# chains against `openssl verify -crl_check`), curl (tests/tests/line.rs fetches a page through
# the sidecar's CONNECT proxy with `curl -p`) and prometheus for promtool
# (tests/tests/metrics.rs checks the sidecar's real /metrics output).
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing ${missing[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rustfmt and clippy ship with the toolchain; add them where a minimal profile left them out.
if command -v rustup >/dev/null 2>&1; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binaries the end-to-end tests run as processes)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
