//! The service messages' byte encoding: explicit little-endian integers and length-prefixed
//! strings and byte strings, written by [`Writer`] and read by [`Reader`].
//!
//! A length prefix is a `u32`. [`Reader`] checks it against the field's maximum and against the
//! bytes left in the input *before* allocating, so a parser costs at most the size of the input
//! it was given. Nothing here can panic on any input.

use std::fmt;

/// The largest string or byte string any service message field may hold (64 KiB).
pub const MAX_STRING: usize = 64 << 10;

/// Why a service message could not be decoded (or encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The input ended inside a field.
    Truncated {
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// A length prefix is larger than the field allows.
    TooLong {
        /// The field.
        field: &'static str,
        /// Its announced length.
        len: u64,
        /// Its maximum.
        max: usize,
    },
    /// A count (of list entries) is larger than allowed.
    TooMany {
        /// The list.
        field: &'static str,
        /// Its announced count.
        count: u64,
        /// Its maximum.
        max: usize,
    },
    /// A string field is not UTF-8.
    NotUtf8(&'static str),
    /// An enumeration or flag byte has a value this version does not know.
    BadValue {
        /// The field.
        field: &'static str,
        /// The value seen.
        value: u64,
    },
    /// Bytes are left after the last field.
    TrailingBytes(usize),
    /// The message is well formed but breaks a rule (empty argv, NUL in a string, ...).
    Invalid(String),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Truncated { needed, left } => {
                write!(f, "truncated: needed {needed} bytes, {left} left")
            }
            MessageError::TooLong { field, len, max } => {
                write!(f, "{field} is {len} bytes long, at most {max} allowed")
            }
            MessageError::TooMany { field, count, max } => {
                write!(f, "{field} has {count} entries, at most {max} allowed")
            }
            MessageError::NotUtf8(field) => write!(f, "{field} is not UTF-8"),
            MessageError::BadValue { field, value } => write!(f, "unknown {field} value {value}"),
            MessageError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
            MessageError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MessageError {}

/// Builds a message: appends little-endian fields to a byte vector.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty message.
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Writer {
        self.buf.push(v);
        self
    }

    /// Appends a `u16`, little-endian.
    pub fn u16(&mut self, v: u16) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a `u32`, little-endian.
    pub fn u32(&mut self, v: u32) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends an `i32`, little-endian two's complement.
    pub fn i32(&mut self, v: i32) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a `u64`, little-endian.
    pub fn u64(&mut self, v: u64) -> &mut Writer {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a `u32` length and the bytes. Longer than `u32::MAX` is cut (never happens
    /// for a message a reader would accept).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Writer {
        let len = v.len().min(u32::MAX as usize);
        self.u32(len as u32);
        self.buf.extend_from_slice(&v[..len]);
        self
    }

    /// Appends a `u32` length and the UTF-8 bytes of `v`.
    pub fn str(&mut self, v: &str) -> &mut Writer {
        self.bytes(v.as_bytes())
    }

    /// Appends raw bytes with no length (a fixed-size field).
    pub fn raw(&mut self, v: &[u8]) -> &mut Writer {
        self.buf.extend_from_slice(v);
        self
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The finished message.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Reads a message's fields in order; every accessor checks the length first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `input` from its start.
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if n > self.input.len() {
            return Err(MessageError::Truncated {
                needed: n,
                left: self.input.len(),
            });
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `i32`.
    pub fn i32(&mut self) -> Result<i32, MessageError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a `0`/`1` byte as a bool; any other value is an error.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, MessageError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(MessageError::BadValue {
                field,
                value: u64::from(v),
            }),
        }
    }

    /// Reads a `u32` length (at most `max`, at most what is left) and that many bytes.
    pub fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], MessageError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(MessageError::TooLong {
                field,
                len: len as u64,
                max,
            });
        }
        self.take(len)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max` bytes.
    pub fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, MessageError> {
        let bytes = self.bytes(field, max)?;
        std::str::from_utf8(bytes).map_err(|_| MessageError::NotUtf8(field))
    }

    /// Reads a `u32` count of list entries, at most `max`, and at most one entry per
    /// `min_entry` bytes left (so a list cannot announce more entries than the input holds).
    pub fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_entry: usize,
    ) -> Result<usize, MessageError> {
        let count = self.u32()? as usize;
        if count > max {
            return Err(MessageError::TooMany {
                field,
                count: count as u64,
                max,
            });
        }
        let need = count.saturating_mul(min_entry.max(1));
        if need > self.input.len() {
            return Err(MessageError::Truncated {
                needed: need,
                left: self.input.len(),
            });
        }
        Ok(count)
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), MessageError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(MessageError::TrailingBytes(self.input.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn integers_are_little_endian() {
        let bytes = Writer::new()
            .u8(1)
            .u16(0x0302)
            .u32(0x0706_0504)
            .u64(0x0f0e_0d0c_0b0a_0908)
            .i32(-1)
            .finish();
        assert_eq!(
            bytes,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xff, 0xff, 0xff, 0xff]
        );
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0302));
        assert_eq!(r.u32(), Ok(0x0706_0504));
        assert_eq!(r.u64(), Ok(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(r.i32(), Ok(-1));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn strings_are_length_prefixed() {
        let bytes = Writer::new().str("ab").finish();
        assert_eq!(bytes, [2, 0, 0, 0, b'a', b'b']);
        assert_eq!(Reader::new(&bytes).str("s", 10), Ok("ab"));
    }

    #[test]
    fn huge_length_prefix_is_rejected_before_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0x7f, b'x'];
        assert_eq!(
            Reader::new(&bytes).bytes("path", MAX_STRING),
            Err(MessageError::TooLong {
                field: "path",
                len: 0x7fff_ffff,
                max: MAX_STRING
            })
        );
        let bytes = [10, 0, 0, 0, b'x'];
        assert_eq!(
            Reader::new(&bytes).bytes("path", MAX_STRING),
            Err(MessageError::Truncated {
                needed: 10,
                left: 1
            })
        );
    }

    #[test]
    fn counts_larger_than_the_input_are_rejected() {
        let bytes = [200, 0, 0, 0, 1, 2, 3];
        assert_eq!(
            Reader::new(&bytes).count("argv", 1000, 4),
            Err(MessageError::Truncated {
                needed: 800,
                left: 3
            })
        );
        assert!(matches!(
            Reader::new(&bytes).count("argv", 10, 4),
            Err(MessageError::TooMany { count: 200, .. })
        ));
    }

    #[test]
    fn non_utf8_strings_and_bad_bools_are_errors() {
        let bytes = [1, 0, 0, 0, 0xff];
        assert_eq!(
            Reader::new(&bytes).str("cwd", 10),
            Err(MessageError::NotUtf8("cwd"))
        );
        assert_eq!(
            Reader::new(&[2]).bool("stdin"),
            Err(MessageError::BadValue {
                field: "stdin",
                value: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.finish(), Err(MessageError::TrailingBytes(1)));
    }

    #[test]
    fn message_errors_display_one_line() {
        let cases = [
            (
                MessageError::TooLong {
                    field: "cwd",
                    len: 70000,
                    max: 65536,
                },
                "cwd is 70000 bytes long, at most 65536 allowed",
            ),
            (
                MessageError::TooMany {
                    field: "env",
                    count: 9000,
                    max: 4096,
                },
                "env has 9000 entries, at most 4096 allowed",
            ),
            (MessageError::NotUtf8("path"), "path is not UTF-8"),
            (
                MessageError::BadValue {
                    field: "copy op",
                    value: 9,
                },
                "unknown copy op value 9",
            ),
            (
                MessageError::TrailingBytes(3),
                "3 unexpected bytes after the message",
            ),
            (
                MessageError::Invalid("argv is empty".into()),
                "argv is empty",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }

    proptest! {
        #[test]
        fn reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&bytes);
            let _ = r.u8();
            let _ = r.str("s", 16);
            let _ = r.count("c", 8, 1);
            let _ = r.bytes("b", MAX_STRING);
            let _ = r.u64();
        }
    }
}
