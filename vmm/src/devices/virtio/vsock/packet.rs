//! virtio-vsock packets: the 44-byte little-endian header and the parser of
//! what the guest transmits (a readable chain: header, then `len` bytes of
//! payload). Payloads are bounded by [`MAX_PAYLOAD`].

use crate::devices::virtio::queue::Chain;
use crate::memory::GuestMemory;

pub const HDR_SIZE: usize = 44;
/// The largest payload we take from or give to the guest in one packet.
pub const MAX_PAYLOAD: usize = 64 << 10;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("transmit chain has a device-writable buffer")]
    Writable,
    #[error("transmit chain shorter than a header")]
    Short,
    #[error("payload length {0} is past the chain or over the limit")]
    BadLength(u32),
}

/// Parses a packet the guest transmitted.
pub fn parse_tx(chain: &Chain, mem: &GuestMemory) -> Result<(Header, Vec<u8>), PacketError> {
    if chain.writable_len() != 0 {
        return Err(PacketError::Writable);
    }
    let mut raw = [0u8; HDR_SIZE];
    if chain.read_at(mem, 0, &mut raw) != HDR_SIZE {
        return Err(PacketError::Short);
    }
    let hdr = Header::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD || (HDR_SIZE + len) as u64 > chain.readable_len() {
        return Err(PacketError::BadLength(hdr.len));
    }
    let mut payload = vec![0u8; len];
    if chain.read_at(mem, HDR_SIZE as u64, &mut payload) != len {
        return Err(PacketError::BadLength(hdr.len));
    }
    Ok((hdr, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::Desc;
    use vm_memory::{Bytes, GuestAddress};

    fn d(addr: u64, len: u32, writable: bool) -> Desc {
        Desc {
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 1 << 30,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 262144,
            fwd_cnt: 77,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn crafted_packets() {
        let mem = crate::memory::create(64).unwrap();
        let h = Header {
            len: 5,
            op: OP_RW,
            type_: TYPE_STREAM,
            ..Default::default()
        };
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
        let chain = |descs| Chain { head: 0, descs };
        let (got, payload) = parse_tx(
            &chain(vec![d(0x1000, 44, false), d(0x2000, 5, false)]),
            &mem,
        )
        .unwrap();
        assert_eq!((got, payload.as_slice()), (h, &b"hello"[..]));
        // The header split over two descriptors parses the same.
        let (got, _) = parse_tx(
            &chain(vec![
                d(0x1000, 20, false),
                d(0x1014, 24, false),
                d(0x2000, 5, false),
            ]),
            &mem,
        )
        .unwrap();
        assert_eq!(got, h);
        // Payload past the chain, a short header, a writable buffer.
        assert_eq!(
            parse_tx(
                &chain(vec![d(0x1000, 44, false), d(0x2000, 4, false)]),
                &mem
            ),
            Err(PacketError::BadLength(5))
        );
        assert_eq!(
            parse_tx(&chain(vec![d(0x1000, 40, false)]), &mem),
            Err(PacketError::Short)
        );
        assert_eq!(
            parse_tx(&chain(vec![d(0x1000, 44, false), d(0x2000, 5, true)]), &mem),
            Err(PacketError::Writable)
        );
        // A length over the limit, even with a chain that long.
        let big = Header {
            len: (MAX_PAYLOAD + 1) as u32,
            ..h
        };
        mem.write_slice(&big.to_bytes(), GuestAddress(0x1000))
            .unwrap();
        assert!(matches!(
            parse_tx(
                &chain(vec![d(0x1000, 44, false), d(0x10000, 1 << 20, false)]),
                &mem
            ),
            Err(PacketError::BadLength(_))
        ));
    }
}
