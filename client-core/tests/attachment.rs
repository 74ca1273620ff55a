//! Attachments (STREAM) and organisation fan-out packets.

// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;

use handover_core::attachment::{self, AttachmentError, SEGMENT_LEN, TAG_LEN};
use handover_core::fanout::{self, FanoutError};
use handover_core::testing::TestRng;
use handover_proto::e2e::v1 as wire;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

fn seal(pt: &[u8], seed: u64) -> (wire::BlobRef, Vec<u8>) {
    let mut rng = TestRng::seeded(seed);
    let mut ct = Vec::new();
    let file = attachment::encrypt(&mut rng, &mut &pt[..], &mut ct, |_| {}).unwrap();
    assert_eq!(file.size, pt.len() as u64);
    assert_eq!(file.plaintext_sha256, <[u8; 32]>::from(Sha256::digest(pt)));
    assert_eq!(ct.len() as u64, attachment::ciphertext_len(pt.len() as u64));
    (file.blob_ref([1; 16], String::new()), ct)
}

fn open(blob: &wire::BlobRef, ct: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    let mut out = Vec::new();
    attachment::decrypt(blob, &mut &ct[..], &mut out, |_| {})?;
    Ok(out)
}

#[test]
fn round_trips_at_segment_boundaries() {
    for len in [
        0,
        1,
        SEGMENT_LEN - 1,
        SEGMENT_LEN,
        SEGMENT_LEN + 1,
        3 * SEGMENT_LEN,
    ] {
        let pt = data(len);
        let (blob, ct) = seal(&pt, len as u64);
        assert_eq!(open(&blob, &ct).unwrap(), pt, "len {len}");
    }
}

#[test]
fn progress_is_reported_per_segment() {
    let pt = data(2 * SEGMENT_LEN + 5);
    let mut rng = TestRng::seeded(1);
    let mut seen = Vec::new();
    let mut ct = Vec::new();
    let file = attachment::encrypt(&mut rng, &mut &pt[..], &mut ct, |n| seen.push(n)).unwrap();
    assert_eq!(
        seen,
        vec![SEGMENT_LEN as u64, 2 * SEGMENT_LEN as u64, pt.len() as u64]
    );
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let blob = file.blob_ref([0; 16], String::new());
    attachment::decrypt(&blob, &mut &ct[..], &mut out, |n| seen.push(n)).unwrap();
    assert_eq!(seen.last(), Some(&(pt.len() as u64)));
}

/// A reader that returns at most 1000 bytes per call (streams need not fill buffers).
struct Trickle<'a>(&'a [u8]);
impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(1000);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn short_reads_are_handled() {
    let pt = data(SEGMENT_LEN * 2 + 17);
    let mut rng = TestRng::seeded(2);
    let mut ct = Vec::new();
    let file = attachment::encrypt(&mut rng, &mut Trickle(&pt), &mut ct, |_| {}).unwrap();
    let blob = file.blob_ref([0; 16], String::new());
    let mut out = Vec::new();
    attachment::decrypt(&blob, &mut Trickle(&ct), &mut out, |_| {}).unwrap();
    assert_eq!(out, pt);
}

#[test]
fn truncation_reordering_extension_and_tampering_are_detected() {
    let pt = data(3 * SEGMENT_LEN + 10);
    let (blob, ct) = seal(&pt, 3);
    let seg = SEGMENT_LEN + TAG_LEN;
    let fail = |c: &[u8]| {
        assert!(matches!(
            open(&blob, c),
            Err(AttachmentError::CouldNotDecrypt)
        ));
    };
    // Truncation at a segment boundary (the last remaining segment is not flagged last).
    fail(&ct[..seg]);
    fail(&ct[..2 * seg]);
    fail(&ct[..3 * seg]);
    // Truncation inside a segment, and dropping the tail.
    fail(&ct[..ct.len() - 1]);
    fail(&[]);
    // Reordering two segments.
    let mut r = ct.clone();
    r[..seg].copy_from_slice(&ct[seg..2 * seg]);
    r[seg..2 * seg].copy_from_slice(&ct[..seg]);
    fail(&r);
    // Extension: appending a segment or bytes.
    let mut e = ct.clone();
    e.extend_from_slice(&ct[..seg]);
    fail(&e);
    let mut e = ct.clone();
    e.push(0);
    fail(&e);
    // Bit flips anywhere.
    for i in [0, seg - 1, seg, ct.len() - 17, ct.len() - 1] {
        let mut t = ct.clone();
        t[i] ^= 1;
        fail(&t);
    }
    // Wrong key, hash or size in the reference.
    let mut b = blob.clone();
    b.key[0] ^= 1;
    assert!(open(&b, &ct).is_err());
    let mut b = blob.clone();
    b.plaintext_sha256[0] ^= 1;
    assert!(open(&b, &ct).is_err());
    let mut b = blob.clone();
    b.size -= 1;
    assert!(open(&b, &ct).is_err());
}

#[test]
fn fanout_packet_round_trip_and_hash_check() {
    let mut rng = TestRng::seeded(4);
    let content = wire::Content {
        message_id: vec![7; 16],
        sent_at: 1,
        expires_at: 0,
        body: Some(wire::content::Body::Chat(wire::ChatMessage {
            text: "referral for the intake team".into(),
            attachments: vec![],
        })),
    };
    let packet = fanout::encrypt_packet(&content, &mut rng).unwrap();
    let key = packet.fanout_key([3; 16], "relay.example:443".into());
    assert_eq!(
        fanout::decrypt_packet(&key, &packet.ciphertext).unwrap(),
        content
    );
    // The same key message works for every device; a wrong hash is refused.
    let mut bad = key.clone();
    bad.packet.as_mut().unwrap().plaintext_sha256[5] ^= 1;
    assert!(matches!(
        fanout::decrypt_packet(&bad, &packet.ciphertext),
        Err(FanoutError::CouldNotDecrypt)
    ));
    let mut ct = packet.ciphertext.clone();
    ct[3] ^= 1;
    assert!(fanout::decrypt_packet(&key, &ct).is_err());
    assert!(matches!(
        fanout::decrypt_packet(&wire::FanoutKey { packet: None }, &ct),
        Err(FanoutError::MalformedKey)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn stream_round_trip_any_length(len in 0usize..(2 * SEGMENT_LEN + 64), seed in any::<u64>()) {
        let pt = data(len);
        let (blob, ct) = seal(&pt, seed);
        prop_assert_eq!(open(&blob, &ct).unwrap(), pt);
    }
}
