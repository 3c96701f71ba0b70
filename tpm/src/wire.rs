//! TPM 2.0 wire encoding: big-endian integers and `TPM2B` buffers (a u16
//! size, then the bytes). The reader never panics: a response that ends
//! early or says a size past its end is an error naming the field.

use crate::TpmError;

/// Builds a command or a structure.
#[derive(Debug, Default, Clone)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A `TPM2B`: `b` with its u16 size. Callers pass what the TPM bounds
    /// far below 64 KiB (digests, keys, sealed blobs); a longer one is an
    /// error rather than a truncated size.
    pub fn tpm2b(&mut self, b: &[u8]) -> Result<&mut Self, TpmError> {
        let n = u16::try_from(b.len()).map_err(|_| TpmError::TooLong(b.len()))?;
        self.u16(n);
        Ok(self.bytes(b))
    }
}

/// Reads a response or a stored structure.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TpmError> {
        let end = self.at.checked_add(n).ok_or(TpmError::Short(what))?;
        let b = self.buf.get(self.at..end).ok_or(TpmError::Short(what))?;
        self.at = end;
        Ok(b)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, TpmError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, TpmError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, TpmError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], TpmError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let b = self.buf.get(self.at..).unwrap_or(&[]);
        self.at = self.buf.len();
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_or_oversized_buffer_is_an_error_not_a_panic() {
        let mut r = Reader::new(&[0, 5, 1, 2]);
        assert!(matches!(r.tpm2b("blob"), Err(TpmError::Short("blob"))));
        let mut r = Reader::new(&[0xff]);
        assert!(matches!(r.u32("size"), Err(TpmError::Short("size"))));
        let mut r = Reader::new(&[0, 2, 7, 8, 9]);
        assert_eq!(r.tpm2b("x").unwrap(), &[7, 8]);
        assert_eq!(r.rest(), &[9]);
        assert!(Writer::default().tpm2b(&vec![0; 70_000]).is_err());
    }
}
