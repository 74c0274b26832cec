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

# The real Helm engine for the chart tests (tests/tests/chart.rs): PyPI helm-python-sdk (it
# bundles Helm as a library; no helm binary, no cluster), in a virtualenv of its own.
venv=.venv-chart
if ! "$venv/bin/python" -c "import helm_python" >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1; then
    echo "installing python3 and python3-venv (apt-get)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv" || {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  echo "installing helm-python-sdk (pip, into $venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check helm-python-sdk==0.2.2
fi
export GENESIS_CHART_PYTHON="$PWD/$venv/bin/python"

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
