//! Building and reading message bodies: big-endian integers, length-prefixed bytes and strings.
//!
//! Upper layers define what a body means (the group handshake, `core-layer/src/wire.rs`);
//! this module only gives them a checked cursor, so that no decoder indexes a slice by hand.
//! Every read checks the remaining length first and fails with [`BodyError`], never panics.

use byteorder::{BigEndian, ByteOrder};

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body ended before the field.
    #[error("body truncated: {field} needs {needed} bytes, {left} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// Bytes were left over after the last field.
    #[error("{left} unexpected trailing bytes in body")]
    Trailing {
        /// Bytes left over.
        left: usize,
    },
    /// A string field was not UTF-8.
    #[error("{field} is not valid UTF-8")]
    Utf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A field held a value outside its domain.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
}

/// Appends fields to a body. Lengths of byte strings are u32, of text u16.
#[derive(Debug, Default)]
pub struct BodyWriter {
    buf: Vec<u8>,
}

impl BodyWriter {
    /// An empty body.
    pub fn new() -> BodyWriter {
        BodyWriter::default()
    }

    /// An empty body with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> BodyWriter {
        BodyWriter { buf: Vec::with_capacity(capacity) }
    }

    /// The finished body.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Appends a byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.buf.push(value);
        self
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a bool as one byte, 0 or 1.
    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.u8(u8::from(value))
    }

    /// Appends bytes of a fixed, known length (no length prefix).
    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends a u32 length, then the bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).expect("byte field longer than u32::MAX");
        self.u32(len).fixed(bytes)
    }

    /// Appends a u16 length, then the UTF-8 text. Text fields are names and messages, never
    /// data, and their makers bound them (paths at 4,096 bytes); should one be longer than a
    /// u16 can say anyway, it is cut at the last character boundary that fits, never a panic.
    pub fn str(&mut self, text: &str) -> &mut Self {
        let mut end = text.len().min(usize::from(u16::MAX));
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16).fixed(&text.as_bytes()[..end])
    }
}

/// Reads fields from a body, front to back.
#[derive(Debug)]
pub struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// A reader over `body`.
    pub fn new(body: &'a [u8]) -> BodyReader<'a> {
        BodyReader { rest: body }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), BodyError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(BodyError::Trailing { left: self.rest.len() })
        }
    }

    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], BodyError> {
        if self.rest.len() < n {
            return Err(BodyError::Truncated { field, needed: n, left: self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Reads a byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        Ok(self.take(field, 1)?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        Ok(BigEndian::read_u16(self.take(field, 2)?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        Ok(BigEndian::read_u32(self.take(field, 4)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        Ok(BigEndian::read_u64(self.take(field, 8)?))
    }

    /// Reads a bool; any byte but 0 or 1 is an error.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, BodyError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(BodyError::Invalid { field, value: u64::from(other) }),
        }
    }

    /// Reads exactly `N` bytes.
    pub fn fixed<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BodyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(field, N)?);
        Ok(out)
    }

    /// Reads a u32 length and that many bytes. The length is checked against what is left
    /// before anything is copied, so a lying length cannot allocate.
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], BodyError> {
        let len = self.u32(field)? as usize;
        self.take(field, len)
    }

    /// Reads a u16 length and that much UTF-8 text.
    pub fn str(&mut self, field: &'static str) -> Result<&'a str, BodyError> {
        let len = usize::from(self.u16(field)?);
        std::str::from_utf8(self.take(field, len)?).map_err(|_| BodyError::Utf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip() {
        let mut w = BodyWriter::new();
        w.u8(1).u16(2).u32(3).u64(4).bool(true).fixed(b"xy").bytes(b"data").str("naïve");
        let body = w.finish();
        let mut r = BodyReader::new(&body);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.u32("c").unwrap(), 3);
        assert_eq!(r.u64("d").unwrap(), 4);
        assert!(r.bool("e").unwrap());
        assert_eq!(&r.fixed::<2>("f").unwrap(), b"xy");
        assert_eq!(r.bytes("g").unwrap(), b"data");
        assert_eq!(r.str("h").unwrap(), "naïve");
        r.finish().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut r = BodyReader::new(&[0, 0, 0, 9, 1]);
        assert_eq!(
            r.bytes("payload"),
            Err(BodyError::Truncated { field: "payload", needed: 9, left: 1 })
        );
        let mut r = BodyReader::new(&[7]);
        assert_eq!(r.bool("flag"), Err(BodyError::Invalid { field: "flag", value: 7 }));
        let mut r = BodyReader::new(&[0, 2, 0xff, 0xfe]);
        assert_eq!(r.str("name"), Err(BodyError::Utf8 { field: "name" }));
        assert_eq!(BodyReader::new(&[1]).finish(), Err(BodyError::Trailing { left: 1 }));
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = BodyReader::new(&bytes);
            let _ = r.u8("a").and_then(|_| r.str("b")).and_then(|_| r.bytes("c").map(|_| ()))
                .and_then(|_| r.u64("d").map(|_| ()));
        }
    }

    #[test]
    fn text_too_long_for_its_length_field_is_cut_at_a_character_never_a_panic() {
        let long = "é".repeat(40_000); // 80,000 bytes
        let mut w = BodyWriter::new();
        w.str(&long).u8(7);
        let body = w.finish();
        let mut r = BodyReader::new(&body);
        let cut = r.str("long").unwrap();
        assert_eq!(cut.len(), 65_534, "the last whole character under 65,535 bytes");
        assert!(long.starts_with(cut));
        assert_eq!(r.u8("after").unwrap(), 7);
    }
}
