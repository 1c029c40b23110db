//! The bytes on an NRI plugin's socket: one stream multiplexed into
//! logical connections (frames of an 8-byte header: connection ID and
//! payload length, big-endian), each carrying ttrpc (messages of a 10-byte
//! header: length, stream ID, type, flags; then a protobuf `Request` or
//! `Response`). Connection 1 carries the plugin's service (crius calls
//! it), connection 2 crius's runtime service (the plugin calls it).
//!
//! Pure framing, no I/O: [`Reader`] takes the socket's bytes as they come
//! and gives back whole ttrpc messages per connection; [`frame`] makes the
//! bytes of one message. A plugin is another process: every length is
//! checked before anything is allocated for it.

use std::collections::HashMap;

/// The logical connection of the plugin's service.
pub const PLUGIN_CONN: u32 = 1;
/// The logical connection of the runtime's service.
pub const RUNTIME_CONN: u32 = 2;

const MUX_HEADER: usize = 8;
const TTRPC_HEADER: usize = 10;
/// ttrpc's bound on a message's data.
pub const MAX_MESSAGE: usize = 4 << 20;
/// The largest mux frame a peer may send (a whole ttrpc message).
const MAX_FRAME: usize = TTRPC_HEADER + MAX_MESSAGE;

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
/// A unary request's flag: the client sends nothing more on the stream.
pub const FLAG_REMOTE_CLOSED: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("mux frame of {0} bytes, over the {MAX_FRAME}-byte bound")]
    FrameTooLarge(usize),
    #[error("ttrpc message of {0} bytes, over the {MAX_MESSAGE}-byte bound")]
    MessageTooLarge(usize),
    #[error("data on unknown connection {0}")]
    UnknownConnection(u32),
    #[error("undecodable {0}")]
    Decode(&'static str),
}

/// One ttrpc message as read.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub conn: u32,
    pub stream: u32,
    pub kind: u8,
    pub flags: u8,
    pub data: Vec<u8>,
}

/// Reassembles ttrpc messages from the socket's bytes.
#[derive(Default)]
pub struct Reader {
    /// Socket bytes not yet a whole mux frame.
    pending: Vec<u8>,
    /// Per connection, payload bytes not yet a whole ttrpc message.
    conns: HashMap<u32, Vec<u8>>,
}

impl Reader {
    /// Takes bytes read from the socket; returns the messages they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Message>, WireError> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= MUX_HEADER {
            let conn = be32(&self.pending[at..]);
            let len = be32(&self.pending[at + 4..]) as usize;
            if len > MAX_FRAME {
                return Err(WireError::FrameTooLarge(len));
            }
            if self.pending.len() - at - MUX_HEADER < len {
                break;
            }
            if conn != PLUGIN_CONN && conn != RUNTIME_CONN {
                return Err(WireError::UnknownConnection(conn));
            }
            let payload = &self.pending[at + MUX_HEADER..at + MUX_HEADER + len];
            let buf = self.conns.entry(conn).or_default();
            buf.extend_from_slice(payload);
            at += MUX_HEADER + len;
            take_messages(conn, buf, &mut out)?;
        }
        self.pending.drain(..at);
        Ok(out)
    }
}

fn take_messages(conn: u32, buf: &mut Vec<u8>, out: &mut Vec<Message>) -> Result<(), WireError> {
    let mut at = 0;
    while buf.len() - at >= TTRPC_HEADER {
        let len = be32(&buf[at..]) as usize;
        if len > MAX_MESSAGE {
            return Err(WireError::MessageTooLarge(len));
        }
        if buf.len() - at - TTRPC_HEADER < len {
            break;
        }
        out.push(Message {
            conn,
            stream: be32(&buf[at + 4..]),
            kind: buf[at + 8],
            flags: buf[at + 9],
            data: buf[at + TTRPC_HEADER..at + TTRPC_HEADER + len].to_vec(),
        });
        at += TTRPC_HEADER + len;
    }
    buf.drain(..at);
    Ok(())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The socket bytes of one ttrpc message on a logical connection: one mux
/// frame (a message is never over ttrpc's bound, so never over the mux's).
pub fn frame(
    conn: u32,
    stream: u32,
    kind: u8,
    flags: u8,
    data: &[u8],
) -> Result<Vec<u8>, WireError> {
    if data.len() > MAX_MESSAGE {
        return Err(WireError::MessageTooLarge(data.len()));
    }
    let mut out = Vec::with_capacity(MUX_HEADER + TTRPC_HEADER + data.len());
    out.extend_from_slice(&conn.to_be_bytes());
    out.extend_from_slice(&((TTRPC_HEADER + data.len()) as u32).to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(data);
    Ok(out)
}

/// ttrpc's request envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
}

/// ttrpc's response envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `google.rpc.Status`, without its details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC status codes a plugin's answer is read by.
pub const CODE_OK: i32 = 0;
pub const CODE_INVALID_ARGUMENT: i32 = 3;
pub const CODE_UNIMPLEMENTED: i32 = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_split_anywhere_comes_out_whole() {
        let a = frame(PLUGIN_CONN, 1, TYPE_RESPONSE, 0, b"hello").unwrap();
        let b = frame(RUNTIME_CONN, 3, TYPE_REQUEST, FLAG_REMOTE_CLOSED, b"").unwrap();
        let all = [a, b].concat();
        for cut in 0..all.len() {
            let mut r = Reader::default();
            let mut got = r.feed(&all[..cut]).unwrap();
            got.extend(r.feed(&all[cut..]).unwrap());
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(got[0].data, b"hello");
            assert_eq!((got[0].conn, got[0].stream, got[0].kind), (1, 1, 2));
            assert_eq!((got[1].conn, got[1].stream, got[1].flags), (2, 3, 1));
        }
    }

    #[test]
    fn a_ttrpc_message_over_several_mux_frames_is_reassembled() {
        // The Go mux splits a write into frames of its own size: the
        // ttrpc header and data can arrive in pieces on one connection.
        let whole = frame(PLUGIN_CONN, 5, TYPE_RESPONSE, 0, b"0123456789").unwrap();
        let ttrpc = &whole[MUX_HEADER..];
        let mut bytes = Vec::new();
        for piece in ttrpc.chunks(7) {
            bytes.extend_from_slice(&PLUGIN_CONN.to_be_bytes());
            bytes.extend_from_slice(&(piece.len() as u32).to_be_bytes());
            bytes.extend_from_slice(piece);
        }
        let got = Reader::default().feed(&bytes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, b"0123456789");
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let mut bytes = PLUGIN_CONN.to_be_bytes().to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Reader::default().feed(&bytes),
            Err(WireError::FrameTooLarge(u32::MAX as usize))
        );
        let mut bytes = PLUGIN_CONN.to_be_bytes().to_vec();
        bytes.extend_from_slice(&10u32.to_be_bytes());
        bytes.extend_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
        bytes.extend_from_slice(&[0; 6]);
        assert_eq!(
            Reader::default().feed(&bytes),
            Err(WireError::MessageTooLarge(MAX_MESSAGE + 1))
        );
        assert!(frame(1, 1, 1, 0, &vec![0; MAX_MESSAGE + 1]).is_err());
    }

    #[test]
    fn an_unknown_connection_is_refused() {
        let mut bytes = 7u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            Reader::default().feed(&bytes),
            Err(WireError::UnknownConnection(7))
        );
    }
}
