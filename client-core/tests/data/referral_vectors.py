#!/usr/bin/env python3
"""Independent computation of the referral known-answer vectors (docs/PROTOCOL.md §11.2, §11.5).

Uses only the Python standard library and `cryptography` (ChaCha20-Poly1305, RFC 8439). The
Rust unit tests in client-core/src/referral/seal.rs and timeline.rs hold the printed values.
"""
import hashlib
import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

referral_id = bytes(range(16))
key = bytes([0x42]) * 32
section = 7  # SECTION_RISK
# BodySection { risk: RiskSection { level: RISK_LEVEL_HIGH } }: field 7 (LEN) -> field 1 = 3.
plaintext = bytes([0x3A, 0x02, 0x08, 0x03])
ad = b"handover/1 section" + referral_id + struct.pack(">I", section)
ciphertext = ChaCha20Poly1305(key).encrypt(bytes(12), plaintext, ad)
print("section_ad", ad.hex())
print("section_ciphertext", ciphertext.hex())
print("section_commitment", hashlib.sha256(ciphertext).hexdigest())

prev = bytes([0x11]) * 32
payload = b"payload"
signature = bytes([0x22]) * 64
entry = (
    b"handover/1 timeline"
    + struct.pack(">Q", 1)
    + prev
    + hashlib.sha256(payload).digest()
    + signature
)
print("timeline_entry_hash", hashlib.sha256(entry).hexdigest())
