#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine.
#
# Installs the Python reference clients (fastapi-poe, openai; pinned in
# tests/python/requirements.txt, from PyPI) into target/py-venv once, then runs every Rust
# test. Extra arguments go to `cargo test` (e.g. `tests/run.sh --test poe_client`).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/py-venv
requirements=tests/python/requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.installed-requirements"; then
  echo "installing the Python reference clients into $venv" >&2
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.installed-requirements"
fi
export POE_RELAY_TEST_PYTHON="$PWD/$venv/bin/python"

cargo test --locked --no-fail-fast "$@"
