//! End-to-end smoke test through the harness.

use handover_core::testing::{Pair, Side};

#[test]
fn established_pair_talks() {
    let mut pair = Pair::established(7).unwrap();
    for i in 0..5u8 {
        let env = pair.send(Side::Alice, &[i; 100]).unwrap();
        assert_eq!(pair.receive(Side::Bob, &env).unwrap(), vec![i; 100]);
        let env = pair.send(Side::Bob, &[i; 10]).unwrap();
        assert_eq!(pair.receive(Side::Alice, &env).unwrap(), vec![i; 10]);
    }
}
