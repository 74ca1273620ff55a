//! Known-answer tests: RFC 9180 (HPKE) through the `hpke` crate, RFC 5869 (HKDF), and
//! Handover's own constructions against `tests/data/handover_vectors.json`.
//!
//! The JSON file was produced by `known_answer_vectors()` and is cross-checked by
//! `tests/data/check_vectors.py`, an independent implementation written from the specs and
//! docs/PROTOCOL.md with Python's `cryptography` and `kyber-py` packages, every step included
//! (ML-KEM-768 key generation, encapsulation and decapsulation too).
//! [`python_checker_recomputes_every_vector`] runs it through `scripts/check-vectors.sh`
//! (which installs the pinned packages) and fails, never skips, when Python or the packages are
//! missing. Regenerate only for an intended construction change:
//! `HANDOVER_WRITE_VECTORS=1 cargo test -p handover-core --test vectors`.

// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::convert::Infallible;

use handover_core::testing::known_answer_vectors;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use rand_core::{TryCryptoRng, TryRng};
use serde_json::Value;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Yields fixed bytes (the RFC's ikmE), then nothing.
struct FixedRng(Vec<u8>);

impl TryRng for FixedRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unimplemented!()
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unimplemented!()
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.0.len(), "fixed randomness exhausted");
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}
impl TryCryptoRng for FixedRng {}

#[test]
fn rfc9180_a_2_1_hpke_base_x25519_sha256_chacha20poly1305() {
    let v = load("rfc9180_a21.json");
    let f = |k: &str| unhex(v[k].as_str().unwrap());
    let pk_r = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&f("pkRm")).unwrap();
    let sk_r = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&f("skRm")).unwrap();
    // The crate derives the ephemeral key with DeriveKeyPair(ikmE), as the RFC's vectors do.
    let mut rng = FixedRng(f("ikmE"));
    let (enc, ct) =
        hpke::single_shot_seal_with_rng::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeS::Base,
            &pk_r,
            &f("info"),
            &f("pt"),
            &f("aad"),
            &mut rng,
        )
        .unwrap();
    assert_eq!(enc.to_bytes().to_vec(), f("enc"));
    assert_eq!(ct, f("ct"));
    let pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk_r,
        &enc,
        &f("info"),
        &ct,
        &f("aad"),
    )
    .unwrap();
    assert_eq!(pt, f("pt"));
    assert_eq!(
        X25519HkdfSha256::sk_to_pk(&sk_r).to_bytes().to_vec(),
        f("pkRm")
    );
}

#[test]
fn rfc5869_hkdf_sha256() {
    let cases = load("rfc5869.json");
    for case in cases.as_array().unwrap() {
        let f = |k: &str| unhex(case[k].as_str().unwrap());
        let salt = f("salt");
        let (prk, hk) = hkdf::Hkdf::<sha2::Sha256>::extract(
            if salt.is_empty() { None } else { Some(&salt) },
            &f("ikm"),
        );
        assert_eq!(prk.to_vec(), f("prk"), "{}", case["name"]);
        let mut okm = vec![0u8; f("okm").len()];
        hk.expand(&f("info"), &mut okm).unwrap();
        assert_eq!(okm, f("okm"), "{}", case["name"]);
    }
}

#[test]
fn handover_constructions_match_vectors() {
    let computed: BTreeMap<String, String> = known_answer_vectors()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let path = format!(
        "{}/tests/data/handover_vectors.json",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("HANDOVER_WRITE_VECTORS").is_some() {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
    }
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(computed.len(), expected.len());
    for (k, v) in &expected {
        assert_eq!(computed.get(k), Some(v), "vector {k} changed");
    }
    // Internal consistency: both sides of the KEM agree.
    assert_eq!(
        expected["pqxdh.kem_shared_secret"],
        expected["pqxdh.kem_shared_secret_bob"]
    );
    assert_eq!(
        expected["stream.plaintext_sha256"],
        expected["stream.blobref_sha256"]
    );
}

/// The independent Python check of every vector, as CI runs it. No skip: a machine without
/// python3, venv or the pinned packages fails here, so the check cannot silently stop running.
#[test]
fn python_checker_recomputes_every_vector() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let output = std::process::Command::new("bash")
        .arg(root.join("scripts/check-vectors.sh"))
        .output()
        .expect("run scripts/check-vectors.sh (bash is needed)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/check-vectors.sh failed ({}): python3 and the pinned Python packages are \
         required\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: BTreeMap<String, String> = serde_json::from_str(
        &std::fs::read_to_string(root.join("client-core/tests/data/handover_vectors.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(
        stdout.contains(&format!(
            "all {} vectors verified independently",
            expected.len()
        )),
        "the checker did not cover every vector:\n{stdout}"
    );
}
