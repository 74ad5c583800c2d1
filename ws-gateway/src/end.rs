//! How a connection ends, shared by the in-band authentication of [`crate::connection`] and
//! the controller loop of [`crate::live`]; it lives below both so neither imports the other.

use tokio_tungstenite::tungstenite;

use crate::error::CloseCode;

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The gateway closes with this code, after what is already queued.
    Close(CloseCode),
    /// The close was already signalled (a revocation, a slow consumer): nothing to add.
    ClosedBy(CloseCode),
    /// The client sent a close frame.
    ClientClosed,
    /// The peer is gone: end of stream, an I/O error, or no sign of life after a ping.
    Gone,
}

/// What a read error means for the connection.
pub fn frame_error(err: axum::Error) -> End {
    let err = err.into_inner();
    match err.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(CloseCode::TooBig),
        Some(tungstenite::Error::Utf8(_)) => End::Close(CloseCode::InvalidPayload),
        Some(tungstenite::Error::Protocol(_)) => End::Close(CloseCode::ProtocolError),
        _ => End::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

    #[test]
    fn read_errors_close_with_their_codes() {
        let table = [
            (
                tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                End::Close(CloseCode::TooBig),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits),
                End::Close(CloseCode::ProtocolError),
            ),
            (
                tungstenite::Error::Utf8("bad".into()),
                End::Close(CloseCode::InvalidPayload),
            ),
            (tungstenite::Error::ConnectionClosed, End::Gone),
        ];
        for (err, end) in table {
            assert_eq!(frame_error(axum::Error::new(err)), end);
        }
    }
}
