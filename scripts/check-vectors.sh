#!/usr/bin/env bash
# Independent check of the known-answer vectors (client-core/tests/data/handover_vectors.json,
# and the referral and consent values of client-core/tests/data/referral_vectors.py):
# client-core/tests/data/check_vectors.py recomputes every construction from the specs with
# Python's `cryptography` (X25519, HKDF, HMAC, ChaCha20-Poly1305, Ed25519, ML-KEM-768 key
# generation and decapsulation) and `kyber-py` (FIPS 203 ML-KEM-768 encapsulation from a given
# message), installed at pinned versions into a venv cached under the target directory.
#
#   scripts/check-vectors.sh
#
# Exits non-zero if python3, the venv or the packages cannot be had, or if any vector differs.
# `cargo test -p handover-core --test vectors` runs this script and fails with it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cryptography_version="48.0.0"
kyber_py_version="1.2.0"

if ! command -v python3 >/dev/null 2>&1; then
    echo "check-vectors: python3 is not installed; it is needed to check the vectors" >&2
    exit 2
fi
target=${CARGO_TARGET_DIR:-$root/target}
venv=$target/vectors-venv
want="cryptography==$cryptography_version kyber-py==$kyber_py_version"
if [ "$(cat "$venv/.pinned" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c \
    "import cryptography, kyber_py, sys; sys.exit(cryptography.__version__ != '$cryptography_version')" \
    2>/dev/null; then
    echo "check-vectors: creating $venv with $want" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want
    echo "$want" > "$venv/.pinned"
fi
"$venv/bin/python" client-core/tests/data/check_vectors.py
"$venv/bin/python" client-core/tests/data/referral_vectors.py
