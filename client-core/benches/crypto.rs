//! Client-core cryptography benchmarks with peers in the same run (docs/PERFORMANCE.md,
//! "Client core cryptography"): vodozemac 0.11 Olm for the ratchet and session setup, raw
//! ChaCha20-Poly1305 for attachments. Each measurement is also recorded here so the binary
//! prints ratios at the end (`cargo bench -p handover-core`).

// Bench set-up failures should abort the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use criterion::{Criterion, Throughput};
use handover_core::attachment;
use handover_core::pqxdh::PrekeyBundle;
use handover_core::sealed;
use handover_core::session::{OutgoingMessage, Session};
use handover_core::testing::{Pair, Side, TestRng};
use handover_proto::decode;
use handover_proto::e2e::v1 as wire;
use prost::Message as _;
use sha2::{Digest, Sha256};
use vodozemac::olm::{Account, OlmMessage, SessionConfig};

const MESSAGE_LEN: usize = 1024;
const FILE_LEN: usize = 16 * 1024 * 1024;
const SMALL_FILE_LEN: usize = 4 * 1024;

/// (total iterations, total time) per benchmark id.
static TIMES: Mutex<BTreeMap<&'static str, (u64, Duration)>> = Mutex::new(BTreeMap::new());

fn record(id: &'static str, iters: u64, elapsed: Duration) -> Duration {
    let mut t = TIMES.lock().unwrap();
    let e = t.entry(id).or_insert((0, Duration::ZERO));
    e.0 += iters;
    e.1 += elapsed;
    elapsed
}

fn per_iter(id: &str) -> f64 {
    let t = TIMES.lock().unwrap();
    let (n, d) = t.get(id).copied().unwrap_or((1, Duration::ZERO));
    d.as_secs_f64() / n as f64
}

fn session_mut(pair: &mut Pair, side: Side) -> &mut Session {
    pair.party_mut(side).session.as_mut().unwrap()
}

fn ratchet_of(m: OutgoingMessage) -> wire::RatchetMessage {
    match m {
        OutgoingMessage::Ratchet(m) => m,
        OutgoingMessage::Prekey(p) => p.message.unwrap(),
    }
}

/// Encrypt, encode, decode, decrypt one message with the handover session.
fn handover_message(pair: &mut Pair, from: Side, rng: &mut TestRng, plaintext: &[u8]) {
    let now = pair.now;
    let m = ratchet_of(session_mut(pair, from).encrypt(plaintext).unwrap());
    let bytes = m.encode_to_vec();
    let m: wire::RatchetMessage = decode::message(&bytes).unwrap();
    let out = session_mut(pair, from.other())
        .decrypt(&m, now, rng)
        .unwrap();
    black_box(out);
}

fn olm_pair() -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .unwrap();
    let first = a.encrypt(b"hello").unwrap();
    let OlmMessage::PreKey(pre) = first else {
        panic!("expected a pre-key message")
    };
    let mut b = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &pre)
        .unwrap()
        .session;
    // One reply so both sides are established.
    let reply = b.encrypt(b"hi").unwrap();
    a.decrypt(&reply).unwrap();
    (a, b)
}

fn olm_message(from: &mut vodozemac::olm::Session, to: &mut vodozemac::olm::Session, pt: &[u8]) {
    let m = from.encrypt(pt).unwrap();
    let (t, bytes) = m.to_parts();
    let m = OlmMessage::from_parts(t, &bytes).unwrap();
    black_box(to.decrypt(&m).unwrap());
}

/// Times `ours` and `peer` alternately inside one criterion routine, so load changes on the
/// shared machine hit both equally; records each side separately.
fn interleaved(
    iters: u64,
    ours_id: &'static str,
    peer_id: &'static str,
    mut ours: impl FnMut() -> Duration,
    mut peer: impl FnMut() -> Duration,
) -> Duration {
    let (mut a, mut b) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..iters {
        a += ours();
        b += peer();
    }
    record(ours_id, iters, a);
    record(peer_id, iters, b);
    a + b
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn bench_ratchet(c: &mut Criterion) {
    let plaintext = vec![0x42u8; MESSAGE_LEN];
    let mut g = c.benchmark_group("ratchet_1KiB");
    g.throughput(Throughput::Elements(2));
    g.bench_function("one_direction/handover+vodozemac", |b| {
        let mut pair = Pair::established(1).unwrap();
        let mut rng = TestRng::seeded(2);
        let (mut a, mut bob) = olm_pair();
        b.iter_custom(|iters| {
            interleaved(
                iters,
                "one_direction/handover",
                "one_direction/vodozemac",
                || timed(|| handover_message(&mut pair, Side::Alice, &mut rng, &plaintext)),
                || timed(|| olm_message(&mut a, &mut bob, &plaintext)),
            )
        })
    });
    g.bench_function("alternating/handover+vodozemac", |b| {
        let mut pair = Pair::established(3).unwrap();
        let mut rng = TestRng::seeded(4);
        let mut from = Side::Alice;
        let (mut a, mut bob) = olm_pair();
        let mut alice_sends = true;
        b.iter_custom(|iters| {
            interleaved(
                iters,
                "alternating/handover",
                "alternating/vodozemac",
                || {
                    let d = timed(|| handover_message(&mut pair, from, &mut rng, &plaintext));
                    from = from.other();
                    d
                },
                || {
                    let d = timed(|| {
                        if alice_sends {
                            olm_message(&mut a, &mut bob, &plaintext);
                        } else {
                            olm_message(&mut bob, &mut a, &plaintext);
                        }
                    });
                    alice_sends = !alice_sends;
                    d
                },
            )
        })
    });
    g.finish();
}

fn handover_setup(
    pair: &Pair,
    bundle: &PrekeyBundle,
    rng: &mut TestRng,
    plaintext: &[u8],
) -> Duration {
    // A fresh copy of Bob's prekey store (outside the timed part): accepting consumes the
    // one-time prekey.
    let mut store = pair.party(Side::Bob).prekeys.clone();
    let start = Instant::now();
    let alice = pair.party(Side::Alice);
    // Alice: certificate and both prekey signatures checked, X25519 x4, ML-KEM encaps,
    // ratchet initialisation, first message.
    let (mut session, _) = Session::initiate(
        &alice.keys,
        &alice.certificate,
        &alice.peer_trust,
        bundle,
        pair.now,
        rng,
    )
    .unwrap();
    let OutgoingMessage::Prekey(first) = session.encrypt(plaintext).unwrap() else {
        panic!("expected an initial message")
    };
    let bytes = first.encode_to_vec();
    let bob = pair.party(Side::Bob);
    // Bob: sender certificate checked, X25519 x4, ML-KEM decaps, first decryption (a DH
    // ratchet step).
    let first: wire::PrekeyMessage = decode::message(&bytes).unwrap();
    let cert = bob
        .peer_trust
        .verify_certificate(&alice.certificate, pair.now)
        .unwrap();
    let out = Session::respond(
        &bob.keys,
        &bob.certificate,
        &mut store,
        &cert,
        &first,
        pair.now,
        rng,
    )
    .unwrap();
    let d = start.elapsed();
    black_box(out);
    d
}

fn olm_setup(alice: &Account, bob: &mut Account, plaintext: &[u8]) -> Duration {
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    bob.mark_keys_as_published();
    let start = Instant::now();
    let mut a = alice
        .create_outbound_session(SessionConfig::version_1(), bob.curve25519_key(), otk)
        .unwrap();
    let (t, bytes) = a.encrypt(plaintext).unwrap().to_parts();
    let OlmMessage::PreKey(pre) = OlmMessage::from_parts(t, &bytes).unwrap() else {
        panic!("expected a pre-key message")
    };
    let out = bob
        .create_inbound_session(SessionConfig::version_1(), alice.curve25519_key(), &pre)
        .unwrap();
    let d = start.elapsed();
    black_box(out.plaintext);
    d
}

fn bench_setup(c: &mut Criterion) {
    let plaintext = vec![0x42u8; MESSAGE_LEN];
    let mut g = c.benchmark_group("session_setup");
    g.throughput(Throughput::Elements(2));
    g.bench_function("handover_pqxdh+vodozemac_olm", |b| {
        let mut pair = Pair::new(5);
        let bundle = pair.bob_bundle().unwrap();
        let mut rng = TestRng::seeded(6);
        let alice = Account::new();
        let mut bob = Account::new();
        b.iter_custom(|iters| {
            interleaved(
                iters,
                "setup/handover",
                "setup/vodozemac",
                || handover_setup(&pair, &bundle, &mut rng, &plaintext),
                || olm_setup(&alice, &mut bob, &plaintext),
            )
        })
    });
    g.finish();
}

fn bench_sealed(c: &mut Criterion) {
    let mut pair = Pair::established(7).unwrap();
    let plaintext = vec![0x42u8; MESSAGE_LEN];
    let m = ratchet_of(
        session_mut(&mut pair, Side::Alice)
            .encrypt(&plaintext)
            .unwrap(),
    );
    let sealed_msg =
        OutgoingMessage::Ratchet(m).into_sealed(pair.party(Side::Alice).certificate.clone());
    let key = pair.party(Side::Bob).mailbox.public_key();
    let mut rng = TestRng::seeded(8);
    let mut g = c.benchmark_group("sealed_envelope_1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hpke_seal_open", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let ct = sealed::seal(&key, &sealed_msg, &[1; 16], 1, &mut rng).unwrap();
                let back = sealed::open(&pair.party(Side::Bob).mailbox, &[1; 16], 1, &ct).unwrap();
                black_box(back);
            }
            record("sealed/hpke", iters, start.elapsed())
        })
    });
    g.finish();
}

fn bench_attachment(c: &mut Criterion) {
    let data: Vec<u8> = (0..FILE_LEN).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("attachment_16MiB_seal_open");
    g.throughput(Throughput::Bytes(4 * 2 * FILE_LEN as u64));
    g.sample_size(10);
    // Criterion calls the routine below afresh for every sample, so buffers allocated inside
    // it would be faulted in (16 MiB of fresh pages each) inside the timed part of the first
    // iteration of every sample, on our side only: the raw peer works in `buf`, which the
    // clone already touched. Allocate and touch the output buffers once, here.
    let touched = |len: usize| {
        let mut v = vec![1u8; len];
        v.clear();
        v
    };
    let mut ct = touched(FILE_LEN + FILE_LEN / 1000);
    let mut out = touched(FILE_LEN);
    let mut buf = data.clone();
    g.bench_function("handover_stream+raw_aead+raw_aead_sha256", |b| {
        let mut rng = TestRng::seeded(9);
        let cipher = ChaCha20Poly1305::new(&[7u8; 32].into());
        let raw = |hash: bool, buf: &mut Vec<u8>| {
            timed(|| {
                let h1 = hash.then(|| Sha256::digest(&buf[..]));
                let tag = cipher
                    .encrypt_inout_detached(&[0u8; 12].into(), &[], buf.as_mut_slice().into())
                    .unwrap();
                cipher
                    .decrypt_inout_detached(&[0u8; 12].into(), &[], buf.as_mut_slice().into(), &tag)
                    .unwrap();
                let h2 = hash.then(|| Sha256::digest(&buf[..]));
                black_box((&buf, h1, h2));
            })
        };
        let mut seal_open = |hashing: attachment::Hashing| {
            timed(|| {
                ct.clear();
                out.clear();
                let key = attachment::FileKey::generate(&mut rng);
                let file =
                    attachment::encrypt_with_options(key, hashing, &mut &data[..], &mut ct, |_| {})
                        .unwrap();
                let blob = file.blob_ref([0; 16], String::new());
                attachment::decrypt_with_options(&blob, hashing, &mut &ct[..], &mut out, |_| {})
                    .unwrap();
                black_box(&out);
            })
        };
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Default: everything on the calling thread.
                let ours = seal_open(attachment::Hashing::CallingThread);
                let r = raw(false, &mut buf);
                // Opt-in: the plaintext SHA-256 on a second thread (files > 1 MiB).
                let ours2 = seal_open(attachment::Hashing::Background);
                let rh = raw(true, &mut buf);
                record("attachment/handover", 1, ours);
                record("attachment/handover_2threads", 1, ours2);
                record("attachment/raw", 1, r);
                record("attachment/raw_sha256", 1, rh);
                total += ours + ours2 + r + rh;
            }
            total
        })
    });
    g.finish();
}

/// A small file (4 KiB, the size of a typical fan-out packet): fixed costs dominate.
fn bench_small_attachment(c: &mut Criterion) {
    let data: Vec<u8> = (0..SMALL_FILE_LEN).map(|i| i as u8).collect();
    let mut g = c.benchmark_group("attachment_4KiB_seal_open");
    g.throughput(Throughput::Bytes(2 * SMALL_FILE_LEN as u64));
    g.bench_function("handover_stream", |b| {
        let mut rng = TestRng::seeded(12);
        let mut ct = Vec::with_capacity(2 * SMALL_FILE_LEN);
        let mut out = Vec::with_capacity(SMALL_FILE_LEN);
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                ct.clear();
                out.clear();
                let file = attachment::encrypt(&mut rng, &mut &data[..], &mut ct, |_| {}).unwrap();
                let blob = file.blob_ref([0; 16], String::new());
                attachment::decrypt(&blob, &mut &ct[..], &mut out, |_| {}).unwrap();
                black_box(&out);
            }
            record("attachment_small/handover", iters, start.elapsed())
        })
    });
    g.finish();
}

fn report() {
    fn us(id: &str) -> f64 {
        per_iter(id) * 1e6
    }
    println!("\n== Client core cryptography: ratios (same run) ==");
    let row = |name: &str, ours: &str, peer: &str, target: f64| {
        let ratio = per_iter(peer) / per_iter(ours);
        println!(
            "{name:<64} handover {:>10.2} us  peer {:>10.2} us  ratio {:>5.2}x  (target >= {target}x: {})",
            us(ours),
            us(peer),
            ratio,
            if ratio >= target { "met" } else { "MISSED" }
        );
    };
    row(
        "ratchet one direction, 1 KiB (vs vodozemac)",
        "one_direction/handover",
        "one_direction/vodozemac",
        2.5,
    );
    row(
        "ratchet alternating, 1 KiB (vs vodozemac)",
        "alternating/handover",
        "alternating/vodozemac",
        1.0,
    );
    row(
        "session setup (vs vodozemac Olm)",
        "setup/handover",
        "setup/vodozemac",
        0.65,
    );
    row(
        "attachment 16 MiB seal+open (vs raw AEAD)",
        "attachment/handover",
        "attachment/raw",
        0.8,
    );
    row(
        "attachment 16 MiB seal+open (vs raw AEAD+SHA-256)",
        "attachment/handover",
        "attachment/raw_sha256",
        0.8,
    );
    row(
        "attachment, hash on 2nd thread (2 threads vs 1-thread raw AEAD)",
        "attachment/handover_2threads",
        "attachment/raw",
        0.8,
    );
    let mib_s = |id: &str| 2.0 * FILE_LEN as f64 / per_iter(id) / (1024.0 * 1024.0);
    println!(
        "attachment throughput (seal+open bytes): handover {:.0} MiB/s (1 thread), {:.0} MiB/s (hash on a 2nd thread), raw ChaCha20-Poly1305 {:.0} MiB/s, raw ChaCha20-Poly1305 + SHA-256 {:.0} MiB/s",
        mib_s("attachment/handover"),
        mib_s("attachment/handover_2threads"),
        mib_s("attachment/raw"),
        mib_s("attachment/raw_sha256")
    );
    println!(
        "attachment 4 KiB seal+open (default, 1 thread): {:.2} us",
        us("attachment_small/handover")
    );
    println!(
        "sealed envelope (HPKE seal + open, 1 KiB message, 2 KiB bucket): {:.2} us",
        us("sealed/hpke")
    );
}

/// Mean cost of the primitives a session setup and a DH ratchet step use (simple loops).
fn primitive_costs() {
    use ed25519_dalek::{Signer, SigningKey};
    use ml_kem::kem::{Decapsulate, Encapsulate};
    use ml_kem::{DecapsulationKey, MlKem768};
    use x25519_dalek::{PublicKey, StaticSecret};
    const N: u32 = 200;
    let mut rng = TestRng::seeded(10);
    let mean = |name: &str, mut f: Box<dyn FnMut() + '_>| {
        let start = Instant::now();
        for _ in 0..N {
            f();
        }
        println!(
            "{name:<44} {:>10.2} us",
            start.elapsed().as_secs_f64() * 1e6 / f64::from(N)
        );
    };
    println!("\n== primitive costs on this machine ==");
    let a = StaticSecret::random_from_rng(&mut rng);
    let bp = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    mean(
        "X25519 DH (variable base)",
        Box::new(|| {
            black_box(a.diffie_hellman(&bp));
        }),
    );
    mean(
        "X25519 key generation (fixed base)",
        Box::new(|| {
            black_box(PublicKey::from(&StaticSecret::random_from_rng(&mut rng)));
        }),
    );
    let sk = SigningKey::from_bytes(&[3; 32]);
    let sig = sk.sign(b"message");
    let vk = sk.verifying_key();
    mean(
        "Ed25519 verify_strict",
        Box::new(|| {
            black_box(vk.verify_strict(b"message", &sig).is_ok());
        }),
    );
    let dk = DecapsulationKey::<MlKem768>::from_seed([5u8; 64].into());
    let ek = dk.encapsulation_key().clone();
    let mut rng2 = TestRng::seeded(11);
    let (ct, _) = ek.encapsulate_with_rng(&mut rng2);
    mean(
        "ML-KEM-768 encapsulate",
        Box::new(|| {
            black_box(ek.encapsulate_with_rng(&mut rng2));
        }),
    );
    mean(
        "ML-KEM-768 decapsulate",
        Box::new(|| {
            black_box(dk.decapsulate(&ct));
        }),
    );
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    bench_ratchet(&mut c);
    bench_setup(&mut c);
    bench_sealed(&mut c);
    bench_attachment(&mut c);
    bench_small_attachment(&mut c);
    c.final_summary();
    report();
    primitive_costs();
}
