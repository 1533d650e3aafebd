//! Temporary stand-in for `qkd_core::wire` until the machine contract lands
//! on main; replaced by it at the merge.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub(crate) const HANDSHAKE: u8 = 0x40;
pub(crate) const SECURED_CHANNEL: u8 = 0x41;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("trailing bytes")]
    Trailing,
    #[error("wrong protocol {0}")]
    Protocol(u8),
    #[error("wrong version {0}")]
    Version(u8),
    #[error("unknown type {0}")]
    UnknownType(u8),
    #[error("invalid {0}")]
    InvalidValue(&'static str),
    #[error("count out of range")]
    Count,
}

pub(crate) fn envelope(out: &mut Vec<u8>, proto: u8, ty: u8) {
    out.extend_from_slice(&[proto, 1, ty]);
}

pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub fn envelope(&mut self, proto: u8, version: u8) -> Result<u8, WireError> {
        let p = self.u8()?;
        if p != proto {
            return Err(WireError::Protocol(p));
        }
        let v = self.u8()?;
        if v != version {
            return Err(WireError::Version(v));
        }
        self.u8()
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A u8 count of items of `item` bytes, at most `max`, checked against the rest.
    pub fn count_u8(&mut self, item: usize, max: usize) -> Result<usize, WireError> {
        let n = self.u8()? as usize;
        if n > max || n * item > self.b.len() {
            return Err(WireError::Count);
        }
        Ok(n)
    }
    pub fn remaining(&self) -> usize {
        self.b.len()
    }
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.b)
    }
    pub fn finish(self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}
