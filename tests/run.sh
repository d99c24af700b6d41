#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine.
#
# Installs the Python reference clients (fastapi-poe, openai; pinned in
# tests/python/requirements.txt, from PyPI) into target/py-venv once, and Synapse, the Matrix
# homeserver the Matrix tests run against (pinned in tests/python/synapse-requirements.txt),
# into target/synapse-venv once, then runs every Rust test. Extra arguments go to `cargo test`
# (e.g. `tests/run.sh --test poe_client`).
set -euo pipefail
cd "$(dirname "$0")/.."

# install_venv VENV REQUIREMENTS WHAT: (re)creates VENV from REQUIREMENTS unless it was last
# built from exactly that file.
install_venv() {
  local venv=$1 requirements=$2 what=$3
  if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/.installed-requirements"; then
    echo "installing $what into $venv" >&2
    python3 -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/.installed-requirements"
  fi
}

install_venv target/py-venv tests/python/requirements.txt "the Python reference clients"
export POE_RELAY_TEST_PYTHON="$PWD/target/py-venv/bin/python"

install_venv target/synapse-venv tests/python/synapse-requirements.txt "Synapse"
export POE_RELAY_TEST_SYNAPSE="$PWD/target/synapse-venv/bin/python"

# The dependency audit, offline against the RustSec snapshot in ../shared: any vulnerability,
# and any unmaintained, unsound or yanked crate, that .cargo/audit.toml does not list with its
# reason fails the run. cargo-audit is pinned and built from crates.io into target/cargo-tools
# once (about 3 minutes on 2 cores).
AUDIT_VERSION=0.22.2
AUDIT="$PWD/target/cargo-tools/bin/cargo-audit"
if ! "$AUDIT" --version 2>/dev/null | grep -qx "cargo-audit $AUDIT_VERSION"; then
  echo "installing cargo-audit $AUDIT_VERSION into target/cargo-tools" >&2
  cargo install --quiet --locked cargo-audit --version "$AUDIT_VERSION" --root "$PWD/target/cargo-tools"
fi
"$AUDIT" audit --db "${POE_RELAY_SHARED:-../shared}/advisory-db" --no-fetch

cargo test --locked --no-fail-fast "$@"
