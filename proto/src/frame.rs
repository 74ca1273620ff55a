//! Length-delimited framing.
//!
//! Every message on a Handover QUIC stream is one frame: a 4-byte big-endian payload length
//! followed by exactly that many bytes holding one encoded protobuf message. A zero-length payload
//! is a valid frame (an all-default message). The reader enforces a maximum payload length
//! *before* buffering, so a peer cannot make it allocate more than the limit.
//!
//! [`FrameDecoder`] is sans-IO: feed it whatever bytes arrived, take whole frames out.

use prost::Message;
use thiserror::Error;

use crate::DecodeError;
use crate::limits::{FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// A message too large to send in one frame.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
pub struct EncodeError {
    /// Encoded message length.
    pub len: usize,
    /// The limit in force.
    pub max: usize,
}

/// Encodes `message` as one frame (header and payload), refusing payloads over
/// [`MAX_FRAME_LEN`].
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, EncodeError> {
    encode_with_limit(message, MAX_FRAME_LEN)
}

/// Encodes `message` as one frame, refusing payloads over `max`.
pub fn encode_with_limit<M: Message>(message: &M, max: usize) -> Result<Vec<u8>, EncodeError> {
    let len = message.encoded_len();
    let header = match u32::try_from(len) {
        Ok(header) if len <= max => header,
        _ => return Err(EncodeError { len, max }),
    };
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&header.to_be_bytes());
    message.encode_raw(&mut out);
    Ok(out)
}

/// Reads the payload length from a frame header.
pub fn header_len(header: [u8; FRAME_HEADER_LEN]) -> usize {
    // u32 always fits in usize on the 32- and 64-bit targets Handover supports.
    u32::from_be_bytes(header) as usize
}

/// Incremental, sans-IO frame reader with a payload limit.
///
/// After it returns an error the decoder is poisoned and keeps returning that error: the stream
/// cannot be resynchronised and must be reset.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max` bytes (at most [`MAX_FRAME_LEN`] is
    /// ever useful).
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            failed: None,
        }
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Takes the next whole frame's payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = header_len(*header);
        if len > self.max {
            let err = DecodeError::FrameTooLarge { len, max: self.max };
            self.failed = Some(err.clone());
            self.buf = Vec::new();
            return Err(err);
        }
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(FRAME_HEADER_LEN + len);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..FRAME_HEADER_LEN);
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Declares the end of the input: fails with [`DecodeError::Truncated`] if a partial frame is
    /// still buffered.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }
}

/// Splits one whole frame off the front of `input`, returning its payload and the rest.
pub fn split(input: &[u8], max: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    let header = input
        .first_chunk::<FRAME_HEADER_LEN>()
        .ok_or(DecodeError::Truncated)?;
    let len = header_len(*header);
    if len > max {
        return Err(DecodeError::FrameTooLarge { len, max });
    }
    let body = &input[FRAME_HEADER_LEN..];
    if body.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(body.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::v1 as relay;

    fn ping() -> relay::Request {
        relay::Request {
            protocol_version: 1,
            kind: Some(relay::request::Kind::Ping(relay::Ping {})),
        }
    }

    #[test]
    fn frames_split_across_pushes_and_back_to_back() {
        let one = encode(&ping()).unwrap();
        let mut stream = one.clone();
        stream.extend_from_slice(&one);
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        let mut frames = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], one[FRAME_HEADER_LEN..]);
        decoder.finish().unwrap();
    }

    #[test]
    fn oversized_header_is_refused_before_buffering_and_poisons() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&17u32.to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(DecodeError::FrameTooLarge { len: 17, max: 16 })
        );
        decoder.push(&[0; 4]);
        assert_eq!(decoder.buffered(), 0);
        assert!(decoder.next_frame().is_err());
        assert!(decoder.finish().is_err());
    }

    #[test]
    fn truncated_frame_is_reported_at_finish() {
        let bytes = encode(&ping()).unwrap();
        let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
        decoder.push(&bytes[..bytes.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.finish(), Err(DecodeError::Truncated));
        assert_eq!(
            split(&bytes[..bytes.len() - 1], MAX_FRAME_LEN),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            split(&bytes[..3], MAX_FRAME_LEN),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn encode_refuses_over_limit() {
        let chunk = relay::BlobChunk {
            data: vec![0; 100],
            last: true,
        };
        let err = encode_with_limit(&chunk, 50).unwrap_err();
        assert_eq!(err.max, 50);
        assert!(err.len > 100);
        let framed = encode(&chunk).unwrap();
        let (payload, rest) = split(&framed, MAX_FRAME_LEN).unwrap();
        assert!(rest.is_empty());
        assert_eq!(payload.len(), chunk.encoded_len());
    }
}
