//! The snapshot stream a safekeeper sends a peer pulling one of its timelines
//! (`GET /v1/tenant/{t}/timeline/{tl}/snapshot`), sans-IO.
//!
//! ```text
//! header   b"SKSNAP01"
//!          u32 BE  n = length of the control file (at most 1 MiB)
//!          n bytes the control file (`control_file::encode`: magic, version, CRC-32C)
//!          u64 BE  wal_start: where the WAL below starts (a segment boundary)
//!          u64 BE  flush_lsn: where it ends (a record boundary; 0 = no WAL)
//! wal      flush_lsn - wal_start raw bytes, the segments' contents in order
//! trailer  b"SKSNAPOK"
//!          u32 BE  CRC-32C of the WAL bytes
//! ```
//!
//! The trailer tells a whole stream from one cut short (a donor that died mid-way ends
//! the HTTP body early, which the receiver may not otherwise notice).
//!
//! Owns: the encoding and the checks of the header. Must never: allocate from a length
//! the peer sent without its cap.

use std::path::Path;

use utils::Lsn;

use crate::control_file::{self, MAX_CONTROL_FILE_SIZE};
use crate::state::TimelineState;

/// First bytes of a snapshot.
pub const MAGIC: &[u8; 8] = b"SKSNAP01";
/// First bytes of the trailer.
pub const TRAILER_MAGIC: &[u8; 8] = b"SKSNAPOK";
/// Length of the trailer.
pub const TRAILER_LEN: usize = 12;

/// What a snapshot begins with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The timeline's state, as its control file on the donor would hold it now.
    pub state: TimelineState,
    /// Where the WAL sent starts (a segment boundary).
    pub wal_start: Lsn,
    /// Where it ends (the donor's flush_lsn; 0 when the timeline has no WAL).
    pub flush_lsn: Lsn,
}

/// A snapshot that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not a snapshot.
    #[error("not a snapshot stream (bad magic)")]
    BadMagic,
    /// The control file length is above the cap.
    #[error("the snapshot's control file is {0} bytes long, more than any valid one")]
    ControlTooLong(u32),
    /// The control file failed its checks.
    #[error("the snapshot's control file: {0}")]
    Control(#[from] control_file::ControlFileError),
    /// The positions do not make sense.
    #[error("the snapshot's positions: {0}")]
    Positions(String),
    /// The trailer is wrong: the stream is damaged or was cut short.
    #[error("the snapshot's trailer: {0}")]
    Trailer(String),
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let control = control_file::encode(&self.state);
        let mut out = Vec::with_capacity(8 + 4 + control.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(control.len() as u32).to_be_bytes());
        out.extend_from_slice(&control);
        out.extend_from_slice(&self.wal_start.0.to_be_bytes());
        out.extend_from_slice(&self.flush_lsn.0.to_be_bytes());
        out
    }

    /// Decodes a header from the front of `buf`: `Ok(None)` when more bytes are needed,
    /// else the header and how many bytes it took. Checks the control file's CRC and that
    /// the positions are consistent (see [`Header::check`]).
    pub fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, FormatError> {
        if buf.len() < 12 {
            return Ok(None);
        }
        if &buf[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let n = u32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        if u64::from(n) > MAX_CONTROL_FILE_SIZE {
            return Err(FormatError::ControlTooLong(n));
        }
        let total = 12 + n as usize + 16;
        if buf.len() < total {
            return Ok(None);
        }
        let control = &buf[12..12 + n as usize];
        let state = control_file::decode(control, Path::new("<snapshot>"))?;
        let at = 12 + n as usize;
        let wal_start = Lsn(u64::from_be_bytes(
            buf[at..at + 8].try_into().expect("8 bytes"),
        ));
        let flush_lsn = Lsn(u64::from_be_bytes(
            buf[at + 8..at + 16].try_into().expect("8 bytes"),
        ));
        let h = Header {
            state,
            wal_start,
            flush_lsn,
        };
        h.check()?;
        Ok(Some((h, total)))
    }

    /// The control file the puller writes once the WAL is in and flushed: the donor's
    /// state with the durable-flush watermark at the end of the WAL sent (the puller
    /// fsynced all of it, and the restart path checked it, before writing the file).
    pub fn pulled_state(&self) -> TimelineState {
        TimelineState {
            durable_flush_lsn: self.flush_lsn,
            ..self.state.clone()
        }
    }

    /// How many WAL bytes follow the header.
    pub fn wal_len(&self) -> u64 {
        self.flush_lsn.0 - self.wal_start.0
    }

    /// The positions make a timeline the restart path can open: no WAL at all, or WAL
    /// starting at a segment boundary at or below the commit position (the restart scan
    /// decodes from there) and ending at or above it.
    pub fn check(&self) -> Result<(), FormatError> {
        let bad = |s: String| Err(FormatError::Positions(s));
        let s = &self.state;
        let seg = s.server.wal_seg_size;
        if !utils::xlog::is_valid_seg_size(seg) {
            return bad(format!("wal_seg_size {seg} is not valid"));
        }
        if !self.flush_lsn.is_valid() {
            if self.wal_start.is_valid() || s.commit_lsn.is_valid() {
                return bad("no WAL, but a WAL start or a commit position".into());
            }
            return Ok(());
        }
        if self.wal_start.segment_offset(seg) != 0 {
            return bad(format!(
                "WAL start {} is not a segment boundary",
                self.wal_start
            ));
        }
        if !(self.wal_start <= s.commit_lsn && s.commit_lsn <= self.flush_lsn) {
            return bad(format!(
                "commit_lsn {} is not within the WAL sent [{}, {})",
                s.commit_lsn, self.wal_start, self.flush_lsn
            ));
        }
        if self.wal_start < s.timeline_start_lsn.segment_lsn(seg) {
            return bad(format!(
                "WAL start {} is below the timeline's start {}",
                self.wal_start, s.timeline_start_lsn
            ));
        }
        Ok(())
    }
}

/// The trailer's bytes for WAL whose CRC-32C is `crc`.
pub fn trailer(crc: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(TRAILER_MAGIC);
    t[8..].copy_from_slice(&crc.to_be_bytes());
    t
}

/// Checks a trailer against the CRC-32C of the WAL received.
pub fn check_trailer(t: &[u8], crc: u32) -> Result<(), FormatError> {
    if t.len() != TRAILER_LEN || &t[..8] != TRAILER_MAGIC {
        return Err(FormatError::Trailer("missing or malformed".into()));
    }
    let sent = u32::from_be_bytes(t[8..12].try_into().expect("4 bytes"));
    if sent != crc {
        return Err(FormatError::Trailer(format!(
            "WAL checksum mismatch: sent {sent:08x}, received bytes give {crc:08x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerInfo;
    use utils::{TenantId, TenantTimelineId, TimelineId};

    fn header() -> Header {
        let ttid = TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]));
        let mut state = TimelineState::new(
            ttid,
            ServerInfo {
                pg_version: 150000,
                system_id: 7,
                wal_seg_size: 16 << 20,
            },
        );
        state.timeline_start_lsn = Lsn(0x100_0028);
        state.local_start_lsn = Lsn(0x100_0028);
        state.commit_lsn = Lsn(0x200_0000);
        Header {
            state,
            wal_start: Lsn(0x100_0000),
            flush_lsn: Lsn(0x210_0000),
        }
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let h = header();
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            assert!(Header::decode(&bytes[..cut]).unwrap().is_none(), "{cut}");
        }
        let (back, n) = Header::decode(&bytes).unwrap().unwrap();
        assert_eq!((back, n), (h, bytes.len()));
    }

    #[test]
    fn damage_is_refused() {
        let mut bytes = header().encode();
        bytes[20] ^= 1;
        assert!(matches!(
            Header::decode(&bytes),
            Err(FormatError::Control(_))
        ));
        let mut big = header().encode();
        big[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Header::decode(&big),
            Err(FormatError::ControlTooLong(_))
        ));
        assert!(matches!(
            Header::decode(b"NOTASNAPSHOT"),
            Err(FormatError::BadMagic)
        ));
        let mut h = header();
        h.wal_start = Lsn(0x100_0028);
        assert!(h.check().is_err());
        let mut h = header();
        h.state.commit_lsn = Lsn(0x300_0000);
        assert!(h.check().is_err());
    }

    #[test]
    fn trailer_checks_the_crc() {
        check_trailer(&trailer(42), 42).unwrap();
        assert!(check_trailer(&trailer(42), 43).is_err());
        assert!(check_trailer(&trailer(42)[..11], 42).is_err());
    }
}
