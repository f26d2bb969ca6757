//! The proposer's in-memory WAL: a contiguous range `[base, end)` of bytes that some
//! safekeeper may still need, held as the chunks they arrived in (zero-copy slices out).
//!
//! New WAL is appended at `end`; WAL fetched from a donor for a lagging safekeeper is
//! prepended at `base`; bytes every streaming safekeeper has acknowledged are trimmed.
//! Must never: hold a gap (appends and prepends must touch the range).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use utils::Lsn;

/// Why bytes could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The bytes do not touch the window.
    #[error("WAL at {lsn} does not adjoin the window [{base}, {end})")]
    NotAdjacent {
        /// Start of the offered bytes.
        lsn: Lsn,
        /// Window start.
        base: Lsn,
        /// Window end.
        end: Lsn,
    },
}

/// A contiguous range of WAL in memory.
#[derive(Debug, Default)]
pub struct WalWindow {
    base: Lsn,
    end: Lsn,
    chunks: VecDeque<Bytes>,
}

impl WalWindow {
    /// An empty window positioned at `lsn`.
    pub fn new(lsn: Lsn) -> Self {
        WalWindow {
            base: lsn,
            end: lsn,
            chunks: VecDeque::new(),
        }
    }

    /// First byte held.
    pub fn base(&self) -> Lsn {
        self.base
    }

    /// End of the bytes held.
    pub fn end(&self) -> Lsn {
        self.end
    }

    /// Bytes held.
    pub fn len(&self) -> u64 {
        self.end.0 - self.base.0
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.base == self.end
    }

    /// Appends `data` at `lsn`, which must be the end.
    pub fn append(&mut self, lsn: Lsn, data: Bytes) -> Result<(), WindowError> {
        if lsn != self.end {
            return Err(self.not_adjacent(lsn));
        }
        if !data.is_empty() {
            self.end = Lsn(self.end.0 + data.len() as u64);
            self.chunks.push_back(data);
        }
        Ok(())
    }

    /// Prepends `data`, which must end at the base.
    pub fn prepend(&mut self, lsn: Lsn, data: Bytes) -> Result<(), WindowError> {
        if Lsn(lsn.0 + data.len() as u64) != self.base {
            return Err(self.not_adjacent(lsn));
        }
        if !data.is_empty() {
            self.base = lsn;
            self.chunks.push_front(data);
        }
        Ok(())
    }

    fn not_adjacent(&self, lsn: Lsn) -> WindowError {
        WindowError::NotAdjacent {
            lsn,
            base: self.base,
            end: self.end,
        }
    }

    /// Up to `max` bytes starting at `lsn` (inside the window), as one slice: zero-copy
    /// when they lie in one chunk.
    pub fn read(&self, lsn: Lsn, max: usize) -> Option<Bytes> {
        if lsn < self.base || lsn >= self.end {
            return None;
        }
        let want = max.min((self.end.0 - lsn.0) as usize);
        let mut pos = self.base.0;
        let mut out: Option<BytesMut> = None;
        for c in &self.chunks {
            let c_end = pos + c.len() as u64;
            if c_end <= lsn.0 {
                pos = c_end;
                continue;
            }
            let from = (lsn.0.max(pos) - pos) as usize;
            let have = out.as_ref().map_or(0, |o| o.len());
            let take = (c.len() - from).min(want - have);
            if out.is_none() && take == want {
                return Some(c.slice(from..from + take));
            }
            out.get_or_insert_with(|| BytesMut::with_capacity(want))
                .extend_from_slice(&c[from..from + take]);
            if out.as_ref().map_or(0, |o| o.len()) == want {
                break;
            }
            pos = c_end;
        }
        out.map(BytesMut::freeze)
    }

    /// Drops everything below `lsn` (clamped to the window).
    pub fn trim(&mut self, lsn: Lsn) {
        let target = lsn.min(self.end);
        while self.base < target {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let c_end = self.base.0 + front.len() as u64;
            if c_end <= target.0 {
                self.base = Lsn(c_end);
                self.chunks.pop_front();
            } else {
                let cut = (target.0 - self.base.0) as usize;
                *front = front.slice(cut..);
                self.base = target;
            }
        }
        if self.chunks.is_empty() {
            self.base = self.end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_trim_prepend() {
        let mut w = WalWindow::new(Lsn(100));
        w.append(Lsn(100), Bytes::from_static(b"abcd")).unwrap();
        w.append(Lsn(104), Bytes::from_static(b"efgh")).unwrap();
        assert!(w.append(Lsn(100), Bytes::from_static(b"x")).is_err());
        assert_eq!(&w.read(Lsn(102), 4).unwrap()[..], b"cdef");
        assert_eq!(&w.read(Lsn(104), 100).unwrap()[..], b"efgh");
        assert_eq!(w.read(Lsn(108), 1), None);
        w.trim(Lsn(103));
        assert_eq!(w.base(), Lsn(103));
        assert_eq!(&w.read(Lsn(103), 3).unwrap()[..], b"def");
        w.prepend(Lsn(101), Bytes::from_static(b"BC")).unwrap();
        assert_eq!(&w.read(Lsn(101), 4).unwrap()[..], b"BCde");
        assert!(w.prepend(Lsn(90), Bytes::from_static(b"zz")).is_err());
        w.trim(Lsn(1000));
        assert!(w.is_empty());
        assert_eq!(w.base(), Lsn(108));
    }
}
