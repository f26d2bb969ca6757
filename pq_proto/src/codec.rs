//! Byte-level building blocks shared by every codec of the crate: a bounds-checked reader
//! over a message body, the tagged-frame splitter, and the length back-patching writer.
//!
//! Owns: the only code that indexes into peer bytes. Must never: panic on short or
//! malformed input (every read checks the remaining length first and returns a
//! [`ProtocolError`]), copy a body it can slice, or reserve memory from an unchecked length.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

/// Size of a tagged frame's header: tag byte plus the i32 length.
pub(crate) const TAGGED_HEADER_LEN: usize = 5;

/// A cursor over one message body. Every read names the message and field so a short body
/// yields a precise [`ProtocolError::Truncated`].
pub(crate) struct Reader {
    data: Bytes,
    message: &'static str,
}

macro_rules! read_int {
    ($(#[$doc:meta] $name:ident => $ty:ty, $get:ident;)*) => {$(
        #[$doc]
        pub(crate) fn $name(&mut self, field: &'static str) -> Result<$ty, ProtocolError> {
            self.need(std::mem::size_of::<$ty>(), field)?;
            Ok(self.data.$get())
        }
    )*};
}

impl Reader {
    /// A reader over `data`, a body of the message named `message`.
    pub(crate) fn new(data: Bytes, message: &'static str) -> Self {
        Reader { data, message }
    }

    /// Name of the message being read (for errors raised by callers).
    pub(crate) fn message(&self) -> &'static str {
        self.message
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), ProtocolError> {
        if self.data.len() < n {
            return Err(ProtocolError::Truncated {
                message: self.message,
                field,
            });
        }
        Ok(())
    }

    read_int! {
        /// One byte.
        u8 => u8, get_u8;
        /// Big-endian u16.
        u16 => u16, get_u16;
        /// Big-endian i16.
        i16 => i16, get_i16;
        /// Big-endian u32.
        u32 => u32, get_u32;
        /// Big-endian i32.
        i32 => i32, get_i32;
        /// Big-endian u64.
        u64 => u64, get_u64;
        /// Big-endian i64.
        i64 => i64, get_i64;
        /// Little-endian u32.
        u32_le => u32, get_u32_le;
        /// Little-endian u64.
        u64_le => u64, get_u64_le;
        /// Little-endian i64.
        i64_le => i64, get_i64_le;
    }

    /// The next `n` bytes as a zero-copy slice.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, ProtocolError> {
        self.need(n, field)?;
        Ok(self.data.split_to(n))
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ProtocolError> {
        self.need(N, field)?;
        let mut out = [0u8; N];
        self.data.copy_to_slice(&mut out);
        Ok(out)
    }

    /// A NUL-terminated string's bytes, without the NUL (which is consumed).
    pub(crate) fn cstr_bytes(&mut self, field: &'static str) -> Result<Bytes, ProtocolError> {
        let Some(nul) = self.data.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::UnterminatedString {
                message: self.message,
                field,
            });
        };
        let s = self.data.split_to(nul);
        self.data.advance(1);
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstring(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let raw = self.cstr_bytes(field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| ProtocolError::InvalidUtf8 {
            message: self.message,
            field,
        })
    }

    /// Everything not read yet, as a zero-copy slice.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }

    /// Fails with [`ProtocolError::TrailingBytes`] unless the body was read entirely.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if !self.data.is_empty() {
            return Err(ProtocolError::TrailingBytes {
                message: self.message,
                count: self.data.len(),
            });
        }
        Ok(())
    }

    /// Fails unless `count` entries of at least `min_entry` bytes each can still fit. Call it
    /// before reserving room for `count` entries: a hostile count then cannot make us
    /// allocate more than the body's own size.
    pub(crate) fn check_count(
        &self,
        count: usize,
        min_entry: usize,
        field: &'static str,
    ) -> Result<(), ProtocolError> {
        match count.checked_mul(min_entry) {
            Some(n) if n <= self.data.len() => Ok(()),
            _ => Err(ProtocolError::invalid(
                self.message,
                field,
                format!(
                    "{count} entries cannot fit in the {} remaining bytes",
                    self.data.len()
                ),
            )),
        }
    }
}

/// Reads the length word at `buf[at..at + 4]` (big-endian, counting itself) and checks it
/// against `min` and `max`. `Ok(None)` if the four bytes have not arrived yet.
pub(crate) fn checked_len(
    buf: &[u8],
    at: usize,
    min: usize,
    max: usize,
    message: &'static str,
) -> Result<Option<usize>, ProtocolError> {
    let Some(word) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    if (len as usize) < min {
        return Err(ProtocolError::InvalidLength { len, message });
    }
    if len as usize > max {
        return Err(ProtocolError::MessageTooLong {
            len: len as usize,
            max,
        });
    }
    Ok(Some(len as usize))
}

/// Splits one tagged frame (`tag`, i32 length counting itself, body) off the front of `buf`.
///
/// `Ok(None)` (nothing consumed) until the whole frame is there. The tag is checked with
/// `known` as soon as it arrives and the length as soon as the header is complete, so
/// garbage and oversized frames fail before their body is awaited. On success exactly the
/// frame is consumed and the body is a zero-copy slice of it.
pub(crate) fn split_tagged(
    buf: &mut BytesMut,
    max_len: usize,
    known: impl Fn(u8) -> bool,
    context: &'static str,
) -> Result<Option<(u8, Bytes)>, ProtocolError> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    if !known(tag) {
        return Err(ProtocolError::UnknownTag { tag, context });
    }
    let Some(len) = checked_len(buf, 1, 4, max_len, context)? else {
        return Ok(None);
    };
    if buf.len() < 1 + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(1 + len).freeze();
    frame.advance(TAGGED_HEADER_LEN);
    Ok(Some((tag, frame)))
}

/// How many more bytes the tagged frame at the front of `buf` needs (at least 1 while the
/// header is incomplete). Only call it after [`split_tagged`] returned `Ok(None)`: the
/// length has then been checked against the maximum.
pub(crate) fn tagged_missing(buf: &[u8]) -> usize {
    match buf.get(1..TAGGED_HEADER_LEN) {
        Some(w) => {
            let len = u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize;
            (1 + len).saturating_sub(buf.len())
        }
        None => TAGGED_HEADER_LEN - buf.len(),
    }
}

/// Writes `tag`, a length placeholder, the body written by `body`, then back-patches the
/// length (which counts itself but not the tag).
///
/// # Panics
/// If the body exceeds `i32::MAX` bytes: no caller builds such a message (peer data is
/// bounded by the read limits long before), so this is a programming error.
pub(crate) fn write_tagged(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    write_len_prefixed(buf, body);
}

/// Writes a length placeholder, the body, and back-patches the length (counting itself).
/// Same panic rule as [`write_tagged`].
pub(crate) fn write_len_prefixed(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = buf.len() - at;
    assert!(
        len <= i32::MAX as usize,
        "message of {len} bytes is too long"
    );
    buf[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Writes `s` NUL-terminated. The wire format cannot carry an embedded NUL, so `s` is
/// written only up to its first NUL (keeping the frame well-formed whatever the caller had).
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    buf.put_slice(&s[..end]);
    buf.put_u8(0);
}

/// Converts a count to the i16 the wire uses.
///
/// # Panics
/// Above `i16::MAX` (32767 columns or formats): a programming error.
pub(crate) fn count_i16(n: usize, what: &str) -> i16 {
    i16::try_from(n).unwrap_or_else(|_| panic!("too many {what}: {n}"))
}

/// Converts a byte count to the i32 the wire uses.
///
/// # Panics
/// Above `i32::MAX`: see [`write_tagged`].
pub(crate) fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| panic!("value of {n} bytes is too long"))
}
