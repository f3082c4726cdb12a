//! Errors on the wire: a request the server could not serve gets [`Message::Error`]
//! (`u8 code, str message`) with a stable [`ErrorCode`]. Namespace refusals are not these:
//! they are [`MetaReply::Failed`](super::MetaReply::Failed) with a namespace error.
//!
//! [`Message::Error`]: super::Message::Error

use meshfs_net::body::{BodyError, BodyReader, BodyWriter};

use super::wire_codes;

wire_codes! {
    /// Stable error codes carried in [`Message::Error`](super::Message::Error). Numbers never
    /// change meaning.
    pub enum ErrorCode: u8 {
        /// The request kind is not served by this server.
        Unsupported = 1,
        /// The request body did not parse.
        BadRequest = 2,
        /// Something failed on the server; the message says what.
        Internal = 3,
        /// The request is not permitted: no token, or one forged, expired or for something
        /// else; the message says which.
        Forbidden = 4,
    }
}

/// Writes an error message's body.
pub(super) fn write_error(w: &mut BodyWriter, code: ErrorCode, message: &str) {
    w.u8(code as u8).str(message);
}

/// Reads an error message's body.
pub(super) fn read_error(r: &mut BodyReader<'_>) -> Result<(ErrorCode, String), BodyError> {
    let byte = r.u8("error code")?;
    let code = ErrorCode::from_repr(byte)
        .ok_or(BodyError::Invalid { field: "error code", value: u64::from(byte) })?;
    Ok((code, r.str("message")?.to_string()))
}
