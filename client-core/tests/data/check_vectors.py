#!/usr/bin/env python3
"""Independent check of handover_vectors.json, written from the specifications and
docs/PROTOCOL.md (§5-§9) with Python's `cryptography` package, not from the Rust code.

Every value is recomputed or verified: X25519, HKDF, HMAC, ChaCha20-Poly1305, Ed25519 and
ML-KEM-768 key generation and decapsulation with `cryptography`; ML-KEM-768 encapsulation from
the recorded message `m` (FIPS 203 ML-KEM.Encaps_internal, which `cryptography` does not expose)
with `kyber-py`, a pure-Python FIPS 203 implementation. scripts/check-vectors.sh installs both
(pinned) and runs this file; any mismatch raises and exits non-zero.
"""
import hashlib
import hmac
import json
import os
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from kyber_py.ml_kem import ML_KEM_768
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

V = json.load(open(os.path.join(os.path.dirname(__file__), "handover_vectors.json")))
b = lambda k: bytes.fromhex(V[k])


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


def hkdf(salt, ikm, info, n):
    return hkdf_expand(hkdf_extract(salt, ikm), info, n)


def pub(sk):
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(sk, pk):
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


CHECKED = set()


def check(name, value):
    assert value == b(name), f"{name}: {value.hex()} != {V[name]}"
    CHECKED.add(name)
    print("ok", name)


# §6 PQXDH
for who in ["ik_a", "ek_a", "ik_b", "spk_b", "opk_b"]:
    check(f"pqxdh.{who}", pub(b(f"pqxdh.{who}_secret")))
check("pqxdh.dh1", dh(b("pqxdh.ik_a_secret"), b("pqxdh.spk_b")))
check("pqxdh.dh2", dh(b("pqxdh.ek_a_secret"), b("pqxdh.ik_b")))
check("pqxdh.dh3", dh(b("pqxdh.ek_a_secret"), b("pqxdh.spk_b")))
check("pqxdh.dh4", dh(b("pqxdh.ek_a_secret"), b("pqxdh.opk_b")))
F = b"\xff" * 32
INFO = b"Handover_X25519_SHA-256_ML-KEM-768"
# ML-KEM-768 (FIPS 203): the key pair from the 64-byte seed d || z, encapsulation with the
# recorded m, decapsulation with the derived private key.
kem_seed = b("pqxdh.kem_seed")
kem_dk = MLKEM768PrivateKey.from_seed_bytes(kem_seed)
check("pqxdh.kem_public_key", kem_dk.public_key().public_bytes_raw())
ek, _ = ML_KEM_768._keygen_internal(kem_seed[:32], kem_seed[32:])
check("pqxdh.kem_public_key", ek)
kem_ss, kem_ct = ML_KEM_768._encaps_internal(ek, b("pqxdh.kem_encaps_m"))
check("pqxdh.kem_ciphertext", kem_ct)
check("pqxdh.kem_shared_secret", kem_ss)
check("pqxdh.kem_shared_secret_bob", kem_dk.decapsulate(b("pqxdh.kem_ciphertext")))
km = b("pqxdh.dh1") + b("pqxdh.dh2") + b("pqxdh.dh3") + b("pqxdh.dh4") + b("pqxdh.kem_shared_secret")
check("pqxdh.sk", hkdf(b"\x00" * 32, F + km, INFO, 32))
km3 = b("pqxdh.dh1") + b("pqxdh.dh2") + b("pqxdh.dh3") + b("pqxdh.kem_shared_secret")
check("pqxdh.sk_without_opk", hkdf(b"\x00" * 32, F + km3, INFO, 32))
# §6.1 AD = IK_A || IK_B || CH(cert_A) || CH(cert_B), CH(cert) = SHA-256("handover/1
# ad-certificate" || the SignedDeviceCertificate.certificate bytes); cert_A and cert_B certify
# IK_A and IK_B (their fields are checked against the signatures in §5.2 below).
assert b("cert.a.identity_key") == b("pqxdh.ik_a") and b("cert.b.identity_key") == b("pqxdh.ik_b")
ch = lambda c: hashlib.sha256(b"handover/1 ad-certificate" + c).digest()
check("pqxdh.cert_hash_a", ch(b("cert.a.certificate")))
check("pqxdh.cert_hash_b", ch(b("cert.b.certificate")))
check("pqxdh.ad", b("pqxdh.ik_a") + b("pqxdh.ik_b") + ch(b("cert.a.certificate")) + ch(b("cert.b.certificate")))
assert len(b("pqxdh.ad")) == 128
assert len(b("pqxdh.kem_public_key")) == 1184 and len(b("pqxdh.kem_ciphertext")) == 1088

# §7 Double Ratchet
check("ratchet.alice_ratchet_key", pub(b("ratchet.alice_ratchet_secret")))
check("ratchet.dh_out", dh(b("ratchet.alice_ratchet_secret"), b("pqxdh.spk_b")))
okm = hkdf(b("pqxdh.sk"), b("ratchet.dh_out"), b"Handover_DoubleRatchet_RootKey_v1", 64)
check("ratchet.root_key_1", okm[:32])
check("ratchet.chain_key_0", okm[32:])
mac = lambda k, c: hmac.new(k, bytes([c]), hashlib.sha256).digest()
check("ratchet.message_key_0", mac(b("ratchet.chain_key_0"), 1))
check("ratchet.chain_key_1", mac(b("ratchet.chain_key_0"), 2))
check("ratchet.message_key_1", mac(b("ratchet.chain_key_1"), 1))
check("ratchet.chain_key_2", mac(b("ratchet.chain_key_1"), 2))
for n in (0, 1):
    header = b("ratchet.alice_ratchet_key") + struct.pack(">II", 0, n)
    check(f"ratchet.header_{n}", header)
    m = hkdf(b"\x00" * 32, b(f"ratchet.message_key_{n}"), b"Handover_DoubleRatchet_MessageKeys_v1", 44)
    if n == 0:
        check("ratchet.aead_key_0", m[:32])
        check("ratchet.aead_nonce_0", m[32:])
    pt = b("ratchet.plaintext_0") if n == 0 else b""
    check(f"ratchet.ciphertext_{n}", ChaCha20Poly1305(m[:32]).encrypt(m[32:], pt, b("pqxdh.ad") + header))

# §7 Bob's reply: a DH ratchet step (KDF_RK with the new DH output), then his sending chain.
check("ratchet.bob_ratchet_key", pub(b("ratchet.bob_ratchet_secret")))
check("ratchet.bob_dh_out", dh(b("ratchet.bob_ratchet_secret"), b("ratchet.alice_ratchet_key")))
okm = hkdf(b("ratchet.root_key_1"), b("ratchet.bob_dh_out"), b"Handover_DoubleRatchet_RootKey_v1", 64)
check("ratchet.root_key_2", okm[:32])
check("ratchet.bob_chain_key_0", okm[32:])
check("ratchet.bob_message_key_0", mac(b("ratchet.bob_chain_key_0"), 1))
check("ratchet.bob_chain_key_1", mac(b("ratchet.bob_chain_key_0"), 2))
header = b("ratchet.bob_ratchet_key") + struct.pack(">II", 0, 0)
check("ratchet.bob_header_0", header)
m = hkdf(b"\x00" * 32, b("ratchet.bob_message_key_0"), b"Handover_DoubleRatchet_MessageKeys_v1", 44)
check("ratchet.bob_ciphertext_0", ChaCha20Poly1305(m[:32]).encrypt(m[32:], b("ratchet.bob_plaintext_0"), b("pqxdh.ad") + header))

# §8 Sealed sender: RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256)=0x0020, HKDF-SHA256=0x0001,
# ChaCha20Poly1305=0x0003.
KEM_ID = b"KEM" + struct.pack(">H", 0x0020)
HPKE_ID = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0003)
lx = lambda sid, salt, label, ikm: hkdf_extract(salt, b"HPKE-v1" + sid + label + ikm)
le = lambda sid, prk, label, info, n: hkdf_expand(prk, struct.pack(">H", n) + b"HPKE-v1" + sid + label + info, n)
check("sealed.recipient_public", pub(b("sealed.recipient_secret")))
sk_e = le(KEM_ID, lx(KEM_ID, b"", b"dkp_prk", b("sealed.ikm_e")), b"sk", b"", 32)
enc = pub(sk_e)
pk_r = b("sealed.recipient_public")
eae = lx(KEM_ID, b"", b"eae_prk", dh(sk_e, pk_r))
shared = le(KEM_ID, eae, b"shared_secret", enc + pk_r, 32)
info = b"handover/1 sealed-sender"
check("sealed.info", info)
ctx = b"\x00" + lx(HPKE_ID, b"", b"psk_id_hash", b"") + lx(HPKE_ID, b"", b"info_hash", info)
secret = lx(HPKE_ID, shared, b"secret", b"")
key = le(HPKE_ID, secret, b"key", ctx, 32)
nonce = le(HPKE_ID, secret, b"base_nonce", ctx, 12)
aad = b("sealed.envelope_id") + b("sealed.expires_at_be")
check("sealed.aad", aad)
msg = b("sealed.encoded_sealed")
bucket = next(x for x in [1024 << i for i in range(8)] + [256 * 1024 - 48] if x > len(msg))
padded = msg + b"\x80" + b"\x00" * (bucket - len(msg) - 1)
check("sealed.envelope_ciphertext", enc + ChaCha20Poly1305(key).encrypt(nonce, padded, aad))

# §9 STREAM
SEG = 64 * 1024
n = struct.unpack(">Q", b("stream.plaintext_len_be"))[0]
pt = bytes(i % 251 for i in range(n))
check("stream.plaintext_sha256", hashlib.sha256(pt).digest())
segs = [pt[i:i + SEG] for i in range(0, len(pt), SEG)] or [b""]
ct = b""
for i, s in enumerate(segs):
    last = i == len(segs) - 1
    nonce = b"\x00" * 7 + struct.pack(">I", i) + bytes([1 if last else 0])
    if i < 2:
        check(f"stream.nonce_{i}", nonce)
    else:
        check("stream.nonce_2_last", nonce)
    ct += ChaCha20Poly1305(b("stream.key")).encrypt(nonce, s, b"")
check("stream.ciphertext_len_be", struct.pack(">Q", len(ct)))
check("stream.ciphertext_sha256", hashlib.sha256(ct).digest())
check("stream.segment_0_tag", ct[SEG:SEG + 16])
check("stream.segment_1_tag", ct[2 * SEG + 16:2 * SEG + 32])
check("stream.segment_2", ct[2 * (SEG + 16):])
# §5.1 Signatures and §5.2 certificates: the root signs "handover/1 device-cert" || certificate;
# the certificate starts with fields 1-4 (org_root_key, device_id, signing_key, identity_key).
def verify(key, label, message, signature, name):
    Ed25519PublicKey.from_public_bytes(key).verify(signature, label + message)
    CHECKED.add(name)
    print("ok", name)


for d in ("a", "b"):
    p = f"cert.{d}."
    cert = b(p + "certificate")
    prefix = (b"\x0a\x20" + b(p + "org_root_key") + b"\x12\x10" + b(p + "device_id")
              + b"\x1a\x20" + b(p + "signing_key") + b"\x22\x20" + b(p + "identity_key"))
    assert cert.startswith(prefix), f"{p}certificate fields"
    CHECKED.update(p + f for f in ("certificate", "org_root_key", "device_id", "signing_key", "identity_key"))
    print("ok", p + "certificate fields")
    verify(b(p + "org_root_key"), b"handover/1 device-cert", cert, b(p + "signature"), p + "signature")
verify(b("cert.b.signing_key"), b"handover/1 signed-prekey",
       b("prekey_sig.signed_prekey_id") + b("pqxdh.spk_b"),
       b("prekey_sig.signed_prekey_signature"), "prekey_sig.signed_prekey_signature")
verify(b("cert.b.signing_key"), b"handover/1 kem-prekey",
       b("prekey_sig.kem_prekey_id") + b("pqxdh.kem_public_key"),
       b("prekey_sig.kem_prekey_signature"), "prekey_sig.kem_prekey_signature")


# §5.4 Safety number and QR payload.
def fingerprint(p):
    k = b(p + "signing_key") + b(p + "identity_key")
    h = hashlib.sha512(struct.pack(">H", 0) + k + b(p + "org_root_key") + b(p + "device_id")).digest()
    for _ in range(1, 5200):
        h = hashlib.sha512(h + k).digest()
    return h


def digits(fp):
    return "".join("%05d" % (int.from_bytes(fp[i:i + 5], "big") % 100000) for i in range(0, 30, 5))


fp_a, fp_b = fingerprint("cert.a."), fingerprint("cert.b.")
check("safety.digits", "".join(sorted([digits(fp_a), digits(fp_b)])).encode())
check("safety.qr_payload_a", b"\x01" + fp_a[:32] + fp_b[:32])

# Inputs: secrets, seeds, plaintexts, ids and encodings the checks above start from.
INPUTS = {
    "pqxdh.ik_a_secret", "pqxdh.ek_a_secret", "pqxdh.ik_b_secret", "pqxdh.spk_b_secret",
    "pqxdh.opk_b_secret", "pqxdh.kem_seed", "pqxdh.kem_encaps_m",
    "ratchet.alice_ratchet_secret", "ratchet.bob_ratchet_secret", "ratchet.plaintext_0",
    "ratchet.bob_plaintext_0", "sealed.recipient_secret", "sealed.envelope_id",
    "sealed.expires_at_be", "sealed.encoded_sealed", "sealed.ikm_e", "stream.key",
    "stream.plaintext_len_be", "prekey_sig.signed_prekey_id", "prekey_sig.kem_prekey_id",
}
check("stream.blobref_sha256", hashlib.sha256(pt).digest())
missing = [k for k in V if k not in CHECKED and k not in INPUTS]
assert not missing, f"vectors not checked: {missing}"
print(f"all {len(V)} vectors verified independently")
