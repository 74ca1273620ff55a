#!/usr/bin/env bash
# Runs the Python tests of the generated bindings (ffi/tests/python) with pytest, in a venv
# cached under the target directory.
#
#   scripts/ffi-python-test.sh [--no-build] [pytest args...]
#
# --no-build  do not run cargo: use the library, uniffi-bindgen and relay already built in the
#             target directory (how `cargo test -p handover-ffi` runs this script).
# The relay tests start the real relay binary: $HANDOVER_RELAY_BIN, else handover-relay or
# relay-under-test from the target directory; they are skipped with a message if none exists.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

no_build=()
if [ "${1:-}" = "--no-build" ]; then
    no_build=(--no-build)
    shift
fi

target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/ffi-venv
pytest_version="8.3.5"
if ! "$venv/bin/python" -c "import pytest, sys; sys.exit(pytest.__version__ != '$pytest_version')" 2>/dev/null; then
    echo "ffi-python-test: creating $venv with pytest $pytest_version" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pytest==$pytest_version"
fi

if [ ${#no_build[@]} -eq 0 ]; then
    # Build the relay too, so the relay tests run (it is a workspace member).
    cargo build -p handover-relay
fi

bindings=$target/ffi-bindings
scripts/ffi-bindings.sh "${no_build[@]}" --lang python --out "$bindings"

export HANDOVER_FFI_PYTHON_BINDINGS=$bindings/python
export HANDOVER_TARGET_DIR=$target
cd ffi/tests/python
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
