//! A virtio-blk request, parsed from a checked chain: a 16-byte readable
//! header (type, reserved, sector), data buffers (readable for writes,
//! writable for reads and GET_ID), and a last 1-byte writable status.

use crate::devices::virtio::queue::{Chain, Desc};
use crate::memory::GuestMemory;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

pub const SECTOR_SIZE: u64 = 512;
/// GET_ID answers at most this many bytes.
pub const ID_BYTES: u32 = 20;
/// The most data one request moves (larger ones fail with IOERR).
pub const MAX_REQUEST_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<Desc>,
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("chain too short for a header and a status")]
    TooShort,
    #[error("header is not a readable descriptor of at least 16 bytes")]
    BadHeader,
    #[error("status is not a writable descriptor of at least 1 byte")]
    BadStatus,
    #[error("data buffers of the wrong direction for the request")]
    BadDataDirection,
    #[error("reading the header from guest memory")]
    Memory,
}

impl Request {
    /// Parses `chain`. A request whose sectors run past `capacity` (in
    /// sectors) still parses; [`Request::check_range`] refuses it.
    pub fn parse(chain: &Chain, mem: &GuestMemory) -> Result<Request, RequestError> {
        let (first, rest) = chain.descs.split_first().ok_or(RequestError::TooShort)?;
        let (last, data) = rest.split_last().ok_or(RequestError::TooShort)?;
        if first.writable || first.len < 16 {
            return Err(RequestError::BadHeader);
        }
        if !last.writable || last.len < 1 {
            return Err(RequestError::BadStatus);
        }
        let mut header = [0u8; 16];
        let one = Chain {
            head: chain.head,
            descs: vec![*first],
        };
        if one.read_at(mem, 0, &mut header) != 16 {
            return Err(RequestError::Memory);
        }
        let kind = match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        };
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);
        let want_writable = match kind {
            RequestType::In | RequestType::GetId => Some(true),
            RequestType::Out => Some(false),
            RequestType::Flush | RequestType::Unsupported(_) => None,
        };
        if let Some(w) = want_writable
            && data.iter().any(|d| d.writable != w)
        {
            return Err(RequestError::BadDataDirection);
        }
        let data_len = data.iter().map(|d| u64::from(d.len)).sum();
        Ok(Request {
            kind,
            sector,
            data: data.to_vec(),
            data_len,
            status: last.addr,
        })
    }

    /// Whether an IN or OUT stays inside a disk of `capacity` sectors, in
    /// whole sectors, and under [`MAX_REQUEST_BYTES`].
    pub fn check_range(&self, capacity: u64) -> bool {
        if !self.data_len.is_multiple_of(SECTOR_SIZE) || self.data_len > MAX_REQUEST_BYTES {
            return false;
        }
        self.sector
            .checked_add(self.data_len / SECTOR_SIZE)
            .is_some_and(|end| end <= capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn d(addr: u64, len: u32, writable: bool) -> Desc {
        Desc {
            addr,
            len,
            writable,
        }
    }

    fn header(mem: &GuestMemory, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(0x1000)).unwrap();
        mem.write_obj(sector, GuestAddress(0x1008)).unwrap();
    }

    #[test]
    fn crafted_requests() {
        let mem = crate::memory::create(64).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let chain = |descs| Chain { head: 0, descs };
        let r = Request::parse(
            &chain(vec![
                d(0x1000, 16, false),
                d(0x2000, 512, true),
                d(0x3000, 1, true),
            ]),
            &mem,
        )
        .unwrap();
        assert_eq!(r.kind, RequestType::In);
        assert_eq!((r.sector, r.data_len, r.status), (2, 512, 0x3000));
        assert!(r.check_range(3));
        assert!(!r.check_range(2), "past the end");
        // Header too short, writable, missing; status readable or empty.
        for bad in [
            vec![d(0x1000, 8, false), d(0x3000, 1, true)],
            vec![d(0x1000, 16, true), d(0x3000, 1, true)],
            vec![d(0x3000, 1, true)],
            vec![],
            vec![d(0x1000, 16, false), d(0x3000, 1, false)],
            vec![d(0x1000, 16, false), d(0x3000, 0, true)],
        ] {
            assert!(
                Request::parse(&chain(bad.clone()), &mem).is_err(),
                "{bad:?}"
            );
        }
        // A read into a readable buffer.
        assert_eq!(
            Request::parse(
                &chain(vec![
                    d(0x1000, 16, false),
                    d(0x2000, 512, false),
                    d(0x3000, 1, true)
                ]),
                &mem
            ),
            Err(RequestError::BadDataDirection)
        );
        // Sector arithmetic that would overflow, partial sectors, huge.
        header(&mem, VIRTIO_BLK_T_OUT, u64::MAX);
        let r = Request::parse(
            &chain(vec![
                d(0x1000, 16, false),
                d(0x2000, 512, false),
                d(0x3000, 1, true),
            ]),
            &mem,
        )
        .unwrap();
        assert!(!r.check_range(u64::MAX));
        let mut r2 = r.clone();
        r2.sector = 0;
        r2.data_len = 100;
        assert!(!r2.check_range(1 << 30));
        r2.data_len = MAX_REQUEST_BYTES + 512;
        assert!(!r2.check_range(u64::MAX));
        header(&mem, 77, 0);
        let r =
            Request::parse(&chain(vec![d(0x1000, 16, false), d(0x3000, 1, true)]), &mem).unwrap();
        assert_eq!(r.kind, RequestType::Unsupported(77));
    }
}
