//! One behavioural suite, run against both `KvStore` implementations (in-memory and sled).

// Helpers outside #[test] functions are test code too (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use handover_core::store::{
    Credential, InMemoryStore, KdfParams, KvStore, MAX_KEY_LEN, MAX_VALUE_LEN, Namespace,
    Passphrase, SledStore, StoreError, WriteBatch,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn cheap() -> KdfParams {
    KdfParams::new(8, 1, 1).unwrap()
}

fn pass() -> Credential {
    Credential::from(Passphrase::from("suite passphrase"))
}

/// Runs `check` against a fresh in-memory store, a fresh sled store, and finally reopens the
/// sled store and runs `after_reopen` on it (to check persistence and the rebuilt index).
fn for_both(check: impl Fn(&mut dyn KvStore), after_reopen: impl Fn(&mut dyn KvStore)) {
    let mut mem = InMemoryStore::new();
    check(&mut mem);
    after_reopen(&mut mem);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut sled = SledStore::create(&path, &pass(), cheap(), StdRng::seed_from_u64(1)).unwrap();
    check(&mut sled);
    sled.close().unwrap();
    let mut sled = SledStore::open(&path, &pass(), StdRng::seed_from_u64(2)).unwrap();
    after_reopen(&mut sled);
}

fn get(s: &dyn KvStore, ns: Namespace, k: &[u8]) -> Option<Vec<u8>> {
    s.get(ns, k).unwrap().map(|v| v.to_vec())
}

#[test]
fn get_put_overwrite_delete() {
    for_both(
        |s| {
            assert_eq!(get(s, Namespace::Contacts, b"alice"), None);
            assert!(!s.contains(Namespace::Contacts, b"alice").unwrap());
            s.put(Namespace::Contacts, b"alice", b"v1").unwrap();
            assert_eq!(
                get(s, Namespace::Contacts, b"alice").as_deref(),
                Some(&b"v1"[..])
            );
            s.put(Namespace::Contacts, b"alice", b"v2").unwrap();
            assert_eq!(
                get(s, Namespace::Contacts, b"alice").as_deref(),
                Some(&b"v2"[..])
            );
            assert!(s.contains(Namespace::Contacts, b"alice").unwrap());
            s.put(Namespace::Contacts, b"bob", b"b").unwrap();
            assert!(s.delete(Namespace::Contacts, b"bob").unwrap());
            assert!(!s.delete(Namespace::Contacts, b"bob").unwrap());
            assert_eq!(get(s, Namespace::Contacts, b"bob"), None);
            // Empty names and empty values are ordinary records.
            s.put(Namespace::Settings, b"", b"").unwrap();
            assert_eq!(get(s, Namespace::Settings, b"").as_deref(), Some(&b""[..]));
            s.flush().unwrap();
        },
        |s| {
            assert_eq!(
                get(s, Namespace::Contacts, b"alice").as_deref(),
                Some(&b"v2"[..])
            );
            assert_eq!(get(s, Namespace::Contacts, b"bob"), None);
            assert!(!s.contains(Namespace::Contacts, b"bob").unwrap());
            assert_eq!(get(s, Namespace::Settings, b"").as_deref(), Some(&b""[..]));
        },
    );
}

#[test]
fn namespaces_are_separate_key_spaces() {
    for_both(
        |s| {
            for ns in Namespace::ALL {
                s.put(ns, b"same-name", &[ns.id()]).unwrap();
            }
            for ns in Namespace::ALL {
                assert_eq!(get(s, ns, b"same-name"), Some(vec![ns.id()]));
                assert_eq!(s.scan_prefix(ns, b"").unwrap().len(), 1);
            }
            s.delete(Namespace::Messages, b"same-name").unwrap();
            assert_eq!(get(s, Namespace::Messages, b"same-name"), None);
            assert!(get(s, Namespace::Referrals, b"same-name").is_some());
        },
        |s| {
            assert_eq!(get(s, Namespace::Messages, b"same-name"), None);
            assert_eq!(
                get(s, Namespace::Outbox, b"same-name"),
                Some(vec![Namespace::Outbox.id()])
            );
        },
    );
}

fn msg_key(conv: &[u8], seq: u64) -> Vec<u8> {
    let mut k = conv.to_vec();
    k.push(b'/');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[test]
fn prefix_scans_are_ordered_and_bounded() {
    let check_scans = |s: &mut dyn KvStore| {
        let got = s.scan_prefix(Namespace::Messages, b"conv-a/").unwrap();
        let keys: Vec<Vec<u8>> = got.iter().map(|(k, _)| k.clone()).collect();
        let want: Vec<Vec<u8>> = [1u64, 2, 255, 256, 70_000]
            .iter()
            .map(|n| msg_key(b"conv-a", *n))
            .collect();
        assert_eq!(keys, want);
        for (k, v) in &got {
            assert_eq!(v.as_slice(), &k[..]);
        }
        assert_eq!(
            s.keys_with_prefix(Namespace::Messages, b"conv-a/").unwrap(),
            want
        );
        // "conv-a" also matches "conv-ab/..." but not "conv-b/...".
        assert_eq!(
            s.keys_with_prefix(Namespace::Messages, b"conv-a")
                .unwrap()
                .len(),
            6
        );
        assert_eq!(
            s.keys_with_prefix(Namespace::Messages, b"").unwrap().len(),
            8
        );
        assert!(
            s.scan_prefix(Namespace::Messages, b"conv-c")
                .unwrap()
                .is_empty()
        );
        assert!(s.scan_prefix(Namespace::Referrals, b"").unwrap().is_empty());
        // Prefixes ending in 0xFF and names that are all 0xFF.
        let ff = s.keys_with_prefix(Namespace::Expiry, &[0xFF]).unwrap();
        assert_eq!(ff, vec![vec![0xFF], vec![0xFF, 0x00], vec![0xFF, 0xFF]]);
        assert_eq!(
            s.keys_with_prefix(Namespace::Expiry, &[0xFF, 0xFF])
                .unwrap(),
            vec![vec![0xFF, 0xFF]]
        );
    };
    for_both(
        |s| {
            for n in [256u64, 1, 70_000, 2, 255] {
                let k = msg_key(b"conv-a", n);
                s.put(Namespace::Messages, &k, &k).unwrap();
            }
            let k = msg_key(b"conv-ab", 1);
            s.put(Namespace::Messages, &k, b"x").unwrap();
            let k = msg_key(b"conv-b", 1);
            s.put(Namespace::Messages, &k, b"x").unwrap();
            s.put(Namespace::Messages, b"a", b"x").unwrap();
            for k in [&[0xFF, 0xFF][..], &[0xFF], &[0xFF, 0x00], &[0xFE, 0xFF]] {
                s.put(Namespace::Expiry, k, b"x").unwrap();
            }
            check_scans(s);
        },
        check_scans,
    );
}

#[test]
fn batches_apply_in_order_and_atomically() {
    for_both(
        |s| {
            s.put(Namespace::Outbox, b"m1", b"pending").unwrap();
            // "store decrypted message + advance ratchet + ack" as one write.
            let mut b = WriteBatch::new();
            b.put(Namespace::Messages, b"c/1", b"hello")
                .put(Namespace::Sessions, b"c", b"ratchet-2")
                .delete(Namespace::Outbox, b"m1")
                .put(Namespace::Settings, b"twice", b"first")
                .put(Namespace::Settings, b"twice", b"second")
                .put(Namespace::Settings, b"gone", b"x")
                .delete(Namespace::Settings, b"gone");
            assert_eq!(b.len(), 7);
            s.apply_batch(b).unwrap();
            assert_eq!(
                get(s, Namespace::Messages, b"c/1").as_deref(),
                Some(&b"hello"[..])
            );
            assert_eq!(
                get(s, Namespace::Sessions, b"c").as_deref(),
                Some(&b"ratchet-2"[..])
            );
            assert_eq!(get(s, Namespace::Outbox, b"m1"), None);
            assert_eq!(
                get(s, Namespace::Settings, b"twice").as_deref(),
                Some(&b"second"[..])
            );
            assert!(!s.contains(Namespace::Settings, b"gone").unwrap());

            // An invalid operation anywhere rejects the whole batch.
            let mut bad = WriteBatch::new();
            bad.put(Namespace::Messages, b"c/2", b"never")
                .delete(Namespace::Sessions, b"c")
                .put(Namespace::Messages, &vec![b'k'; MAX_KEY_LEN + 1], b"v");
            assert!(matches!(
                s.apply_batch(bad),
                Err(StoreError::TooLarge { .. })
            ));
            assert_eq!(get(s, Namespace::Messages, b"c/2"), None);
            assert_eq!(
                get(s, Namespace::Sessions, b"c").as_deref(),
                Some(&b"ratchet-2"[..])
            );

            let mut bad = WriteBatch::new();
            bad.delete(Namespace::Messages, b"c/1").put(
                Namespace::Messages,
                b"big",
                &vec![0u8; MAX_VALUE_LEN + 1],
            );
            assert!(matches!(
                s.apply_batch(bad),
                Err(StoreError::TooLarge { .. })
            ));
            assert!(s.contains(Namespace::Messages, b"c/1").unwrap());

            s.apply_batch(WriteBatch::new()).unwrap();
        },
        |s| {
            assert_eq!(
                get(s, Namespace::Sessions, b"c").as_deref(),
                Some(&b"ratchet-2"[..])
            );
            assert_eq!(get(s, Namespace::Messages, b"c/2"), None);
            assert_eq!(get(s, Namespace::Outbox, b"m1"), None);
        },
    );
}

#[test]
fn limits_are_enforced_everywhere() {
    for_both(
        |s| {
            let long = vec![0u8; MAX_KEY_LEN + 1];
            let max = vec![7u8; MAX_KEY_LEN];
            assert!(matches!(
                s.get(Namespace::Messages, &long),
                Err(StoreError::TooLarge { .. })
            ));
            assert!(matches!(
                s.put(Namespace::Messages, &long, b""),
                Err(StoreError::TooLarge { .. })
            ));
            assert!(matches!(
                s.delete(Namespace::Messages, &long),
                Err(StoreError::TooLarge { .. })
            ));
            assert!(s.scan_prefix(Namespace::Messages, &long).is_err());
            s.put(Namespace::Messages, &max, b"ok").unwrap();
            assert_eq!(
                get(s, Namespace::Messages, &max).as_deref(),
                Some(&b"ok"[..])
            );
        },
        |s| {
            assert!(
                s.contains(Namespace::Messages, &vec![7u8; MAX_KEY_LEN])
                    .unwrap()
            );
        },
    );
}

/// Random operations against a `BTreeMap` model; the store must agree with the model after
/// every batch and after reopening.
#[test]
fn random_operations_match_a_model() {
    type Op = (bool, Namespace, Vec<u8>, Vec<u8>);
    fn model_ops(seed: u64) -> Vec<Vec<Op>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let nss = [Namespace::Messages, Namespace::Sessions, Namespace::Outbox];
        (0..60)
            .map(|_| {
                let n = rng.random_range(1..5usize);
                (0..n)
                    .map(|_| {
                        let put = rng.random_bool(0.7);
                        let ns = nss[rng.random_range(0..nss.len())];
                        let klen = rng.random_range(0..4usize);
                        let key: Vec<u8> = (0..klen).map(|_| rng.random_range(0..4u8)).collect();
                        let vlen = rng.random_range(0..100usize);
                        let val: Vec<u8> = (0..vlen).map(|_| rng.random()).collect();
                        (put, ns, key, val)
                    })
                    .collect()
            })
            .collect()
    }
    fn check_against(s: &dyn KvStore, model: &BTreeMap<(Namespace, Vec<u8>), Vec<u8>>) {
        for ns in [Namespace::Messages, Namespace::Sessions, Namespace::Outbox] {
            let got: Vec<(Vec<u8>, Vec<u8>)> = s
                .scan_prefix(ns, b"")
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, v.to_vec()))
                .collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|((n, _), _)| *n == ns)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(got, want);
            for prefix in [&[0u8][..], &[1, 2]] {
                let got = s.keys_with_prefix(ns, prefix).unwrap();
                let want: Vec<Vec<u8>> = want
                    .iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| k.starts_with(prefix))
                    .collect();
                assert_eq!(got, want);
            }
        }
    }
    let build_model = || {
        let mut model = BTreeMap::new();
        for batch in model_ops(42) {
            for (put, ns, k, v) in batch {
                if put {
                    model.insert((ns, k), v);
                } else {
                    model.remove(&(ns, k));
                }
            }
        }
        model
    };
    for_both(
        |s| {
            let mut model = BTreeMap::new();
            for batch in model_ops(42) {
                let mut b = WriteBatch::new();
                for (put, ns, k, v) in batch {
                    if put {
                        b.put(ns, &k, &v);
                        model.insert((ns, k), v);
                    } else {
                        b.delete(ns, &k);
                        model.remove(&(ns, k));
                    }
                }
                s.apply_batch(b).unwrap();
                check_against(s, &model);
            }
        },
        |s| check_against(s, &build_model()),
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, Vec<u8>, Vec<u8>),
        Delete(u8, Vec<u8>),
        Batch(Vec<(bool, u8, Vec<u8>, Vec<u8>)>),
    }

    fn ns(i: u8) -> Namespace {
        [Namespace::Messages, Namespace::Sessions, Namespace::Outbox][usize::from(i % 3)]
    }

    fn name() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..3, 0..4)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                any::<u8>(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..70)
            )
                .prop_map(|(n, k, v)| Op::Put(n, k, v)),
            (any::<u8>(), name()).prop_map(|(n, k)| Op::Delete(n, k)),
            proptest::collection::vec(
                (
                    any::<bool>(),
                    any::<u8>(),
                    name(),
                    proptest::collection::vec(any::<u8>(), 0..10)
                ),
                0..5
            )
            .prop_map(Op::Batch),
        ]
    }

    fn apply(s: &mut dyn KvStore, op: &Op) -> bool {
        match op {
            Op::Put(n, k, v) => {
                s.put(ns(*n), k, v).unwrap();
                true
            }
            Op::Delete(n, k) => s.delete(ns(*n), k).unwrap(),
            Op::Batch(ops) => {
                let mut b = WriteBatch::new();
                for (put, n, k, v) in ops {
                    if *put {
                        b.put(ns(*n), k, v);
                    } else {
                        b.delete(ns(*n), k);
                    }
                }
                s.apply_batch(b).unwrap();
                true
            }
        }
    }

    fn dump(s: &dyn KvStore) -> Vec<(Namespace, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for n in 0..3 {
            for (k, v) in s.scan_prefix(ns(n), b"").unwrap() {
                out.push((ns(n), k, v.to_vec()));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The sled store and the in-memory store agree on every operation's result and on the
        /// full contents, before and after a reopen.
        #[test]
        fn sled_agrees_with_in_memory(ops in proptest::collection::vec(op(), 1..30)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s");
            let mut mem = InMemoryStore::new();
            let mut sled =
                SledStore::create(&path, &pass(), cheap(), StdRng::seed_from_u64(3)).unwrap();
            for op in &ops {
                prop_assert_eq!(apply(&mut mem, op), apply(&mut sled, op));
            }
            prop_assert_eq!(dump(&mem), dump(&sled));
            sled.close().unwrap();
            let sled = SledStore::open(&path, &pass(), StdRng::seed_from_u64(4)).unwrap();
            prop_assert_eq!(dump(&mem), dump(&sled));
        }
    }
}

/// The engine may move stores between threads (the FFI wraps them in a mutex).
#[test]
fn stores_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<InMemoryStore>();
    assert_send::<SledStore<StdRng>>();
    assert_send::<WriteBatch>();
    assert_send::<StoreError>();
}
