#!/usr/bin/env python3
"""Independent computation of the referral and consent known-answer vectors
(docs/PROTOCOL.md §11.2, §11.5, §12.2).

Uses only the Python standard library and `cryptography` (ChaCha20-Poly1305, RFC 8439). The
Rust unit tests in client-core/src/referral/seal.rs, referral/timeline.rs and
consent/receipt.rs assert the same values: each value computed here must appear in the Rust file
named beside it, or the script exits non-zero (scripts/check-vectors.sh runs it in CI).
"""
import hashlib
import pathlib
import struct
import sys

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"
failures = []


def check(name, value, rust_file):
    """Prints a value and checks that the Rust unit test in `rust_file` asserts the same."""
    print(name, value)
    if value not in (SRC / rust_file).read_text():
        failures.append(f"{name}: {value} is not the value asserted in client-core/src/{rust_file}")

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305


def lp(data):
    """u32be(len(data)) || data"""
    return struct.pack(">I", len(data)) + data


referral_id = bytes(range(16))
key = bytes([0x42]) * 32
section = 7  # SECTION_RISK
# BodySection { risk: RiskSection { level: RISK_LEVEL_HIGH } }: field 7 (LEN) -> field 1 = 3.
plaintext = bytes([0x3A, 0x02, 0x08, 0x03])
nonce = bytes(12)
ad = b"handover/1 section" + referral_id + struct.pack(">I", section)
ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)
print("section_ad", ad.hex())
check("section_ciphertext", ciphertext.hex(), "referral/seal.rs")
commitment = hashlib.sha256(
    b"handover/1 section-commitment" + key + nonce + ad + ciphertext
).hexdigest()
check("section_commitment", commitment, "referral/seal.rs")

prev = bytes([0x11]) * 32
payload = b"payload"
signature = bytes([0x22]) * 64
signer_certificate = b"certificate"
signer_signature = bytes([0x33]) * 64
summary = b'{"action":"ACCEPT","actor":null,"at":1795251600}'
entry = (
    b"handover/1 timeline"
    + struct.pack(">Q", 1)
    + prev
    + hashlib.sha256(payload).digest()
    + lp(signature)
    + lp(signer_certificate)
    + lp(signer_signature)
    + hashlib.sha256(summary).digest()
)
check("timeline_entry_hash", hashlib.sha256(entry).hexdigest(), "referral/timeline.rs")

receipt = b"receipt"
receipt_signature = bytes([0x44]) * 64
receipt_hash = hashlib.sha256(
    b"handover/1 consent-receipt-hash"
    + lp(receipt)
    + lp(signer_certificate)
    + lp(signer_signature)
    + lp(receipt_signature)
).hexdigest()
check("receipt_hash", receipt_hash, "consent/receipt.rs")

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print("referral and consent vectors agree with the Rust unit tests")
