use thiserror::Error;

/// Why bytes from a peer could not be turned into a valid message.
///
/// Messages name the offending field or limit, never the data itself, so they are safe to log
/// and to show.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame header announced more bytes than the limit allows.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The input ended inside a frame.
    #[error("input ended inside a frame")]
    Truncated,
    /// The bytes are not a valid protobuf encoding of the expected message.
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// Message type expected.
        message: &'static str,
        /// What the protobuf decoder reported.
        reason: String,
    },
    /// The message decoded but a field is missing or breaks a protocol rule.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Dotted path of the field (for example `send.envelope.envelope_id`).
        field: &'static str,
        /// The rule broken.
        reason: &'static str,
    },
}

impl DecodeError {
    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::Invalid { field, reason }
    }
}
