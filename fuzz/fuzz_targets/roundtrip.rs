//! decode → encode → decode: whatever a decoder accepts must re-encode to bytes that decode to
//! the same message and re-encode identically (prost's encoding of a decoded message is stable).
#![no_main]

use handover_proto::decode;
use prost::Message;

fn check<M: Message + PartialEq + std::fmt::Debug>(
    data: &[u8],
    decoder: fn(&[u8]) -> Result<M, handover_proto::DecodeError>,
) {
    if let Ok(first) = decoder(data) {
        let bytes = first.encode_to_vec();
        let second = decoder(&bytes).expect("a re-encoded valid message decodes");
        assert_eq!(first, second);
        assert_eq!(bytes, second.encode_to_vec());
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => check(data, decode::request),
        1 => check(data, decode::response),
        2 => check(data, decode::sealed),
        3 => check(data, decode::content),
        4 => check(data, decode::invitation),
        5 => check(data, decode::referral_offer),
        6 => check(data, decode::consent_receipt),
        _ => check(data, decode::referral_control),
    }
});
