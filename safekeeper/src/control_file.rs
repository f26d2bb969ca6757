//! The control file: a timeline's persistent state in one small file, replaced atomically.
//!
//! Layout: `magic u32 LE | format version u32 LE | body | CRC-32C u32 LE` where the body
//! is bincode 1.3 (little-endian, fixed-width integers) of the private `ControlFileV2`
//! struct and the CRC covers every preceding byte. Only this module knows the encoding,
//! so it can be swapped for a hand-written one without touching anything else.
//!
//! Versions: 2 (written) is version 1's body followed by the durable-flush watermark
//! (`u64`). Version 1 is still read; its watermark is taken as the persisted commit_lsn
//! (WAL there was durable on this safekeeper, and the restart scan starts there, so the
//! check it enables is a no-op until the next persist writes the real value).
//!
//! Persisting writes `safekeeper.control.partial`, fsyncs it, renames it over
//! `safekeeper.control` and fsyncs the directory: after a crash either the old or the new
//! file is there, whole. A bad magic, version, length or CRC is corruption, reported
//! with the file's path; such a timeline is not served.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bincode::Options;
use pq_proto::proposer::{Configuration, Generation, SafekeeperId};
use serde::{Deserialize, Serialize};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, Term, TermHistory, TermLsn, TimelineId};

use crate::durability::SyncMode;
use crate::state::{ServerInfo, TimelineState};

/// Name of the control file in a timeline directory.
pub const CONTROL_FILE_NAME: &str = "safekeeper.control";
const PARTIAL_NAME: &str = "safekeeper.control.partial";
/// "SKCF" read as a little-endian u32.
const MAGIC: u32 = u32::from_le_bytes(*b"SKCF");
const FORMAT_VERSION: u32 = 2;
/// The previous format, still read.
const FORMAT_VERSION_V1: u32 = 1;
/// No legitimate control file comes near this; a larger one is not read into memory.
pub const MAX_CONTROL_FILE_SIZE: u64 = 1024 * 1024;

/// Why a control file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlFileError {
    /// Reading failed.
    #[error("could not read control file \"{path}\": {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is there but its contents are not a valid control file.
    #[error("control file \"{path}\" is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct MemberV1 {
    id: u64,
    host: String,
    pg_port: u16,
}

#[derive(Serialize, Deserialize)]
struct ControlFileV1 {
    tenant_id: [u8; 16],
    timeline_id: [u8; 16],
    generation: u32,
    members: Vec<MemberV1>,
    new_members: Option<Vec<MemberV1>>,
    term: u64,
    term_history: Vec<(u64, u64)>,
    pg_version: u32,
    system_id: u64,
    wal_seg_size: u32,
    timeline_start_lsn: u64,
    local_start_lsn: u64,
    commit_lsn: u64,
    backup_lsn: u64,
    peer_horizon_lsn: u64,
    remote_consistent_lsn: u64,
}

/// Version 2: version 1's fields, then the watermark (bincode lays a nested struct's
/// fields out inline, so the body is exactly version 1's body plus one `u64`).
#[derive(Serialize, Deserialize)]
struct ControlFileV2 {
    v1: ControlFileV1,
    durable_flush_lsn: u64,
}

fn members_to_v1(m: &[SafekeeperId]) -> Vec<MemberV1> {
    m.iter()
        .map(|s| MemberV1 {
            id: s.id.0,
            host: s.host.clone(),
            pg_port: s.pg_port,
        })
        .collect()
}

fn members_from_v1(m: Vec<MemberV1>) -> Vec<SafekeeperId> {
    m.into_iter()
        .map(|s| SafekeeperId {
            id: NodeId(s.id),
            host: s.host,
            pg_port: s.pg_port,
        })
        .collect()
}

impl From<&TimelineState> for ControlFileV1 {
    fn from(s: &TimelineState) -> Self {
        ControlFileV1 {
            tenant_id: s.ttid.tenant_id.0,
            timeline_id: s.ttid.timeline_id.0,
            generation: s.mconf.generation.0,
            members: members_to_v1(&s.mconf.members),
            new_members: s.mconf.new_members.as_deref().map(members_to_v1),
            term: s.term.0,
            term_history: s
                .term_history
                .0
                .iter()
                .map(|e| (e.term.0, e.lsn.0))
                .collect(),
            pg_version: s.server.pg_version,
            system_id: s.server.system_id,
            wal_seg_size: s.server.wal_seg_size,
            timeline_start_lsn: s.timeline_start_lsn.0,
            local_start_lsn: s.local_start_lsn.0,
            commit_lsn: s.commit_lsn.0,
            backup_lsn: s.backup_lsn.0,
            peer_horizon_lsn: s.peer_horizon_lsn.0,
            remote_consistent_lsn: s.remote_consistent_lsn.0,
        }
    }
}

impl From<&TimelineState> for ControlFileV2 {
    fn from(s: &TimelineState) -> Self {
        ControlFileV2 {
            v1: s.into(),
            durable_flush_lsn: s.durable_flush_lsn.0,
        }
    }
}

impl From<ControlFileV2> for TimelineState {
    fn from(c: ControlFileV2) -> Self {
        TimelineState {
            durable_flush_lsn: Lsn(c.durable_flush_lsn),
            ..c.v1.into()
        }
    }
}

impl From<ControlFileV1> for TimelineState {
    /// A version-1 file: the watermark is the persisted commit_lsn (see the module doc).
    fn from(c: ControlFileV1) -> Self {
        TimelineState {
            durable_flush_lsn: Lsn(c.commit_lsn),
            ttid: TenantTimelineId::new(TenantId(c.tenant_id), TimelineId(c.timeline_id)),
            mconf: Configuration {
                generation: Generation(c.generation),
                members: members_from_v1(c.members),
                new_members: c.new_members.map(members_from_v1),
            },
            term: Term(c.term),
            term_history: TermHistory(
                c.term_history
                    .into_iter()
                    .map(|(t, l)| TermLsn {
                        term: Term(t),
                        lsn: Lsn(l),
                    })
                    .collect(),
            ),
            server: ServerInfo {
                pg_version: c.pg_version,
                system_id: c.system_id,
                wal_seg_size: c.wal_seg_size,
            },
            timeline_start_lsn: Lsn(c.timeline_start_lsn),
            local_start_lsn: Lsn(c.local_start_lsn),
            commit_lsn: Lsn(c.commit_lsn),
            backup_lsn: Lsn(c.backup_lsn),
            peer_horizon_lsn: Lsn(c.peer_horizon_lsn),
            remote_consistent_lsn: Lsn(c.remote_consistent_lsn),
        }
    }
}

/// bincode 1.x in its classic form: little-endian, fixed-width integers, u64 lengths;
/// trailing bytes rejected, and no allocation beyond the size of a control file.
fn bincode_options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_CONTROL_FILE_SIZE)
        .reject_trailing_bytes()
}

/// Encodes a state as the bytes of a control file.
pub fn encode(state: &TimelineState) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    // Serializing plain integers, vectors and strings into a Vec cannot fail.
    bincode_options()
        .serialize_into(&mut buf, &ControlFileV2::from(state))
        .expect("bincode serialization into a Vec is infallible for this struct");
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes the bytes of a control file; `path` is only used in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<TimelineState, ControlFileError> {
    let corrupt = |reason: String| ControlFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 12 {
        return Err(corrupt(format!("only {} bytes long", bytes.len())));
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored_crc = u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes"));
    let crc = crc32c::crc32c(body);
    if crc != stored_crc {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored_crc:08x}, computed {crc:08x}"
        )));
    }
    let magic = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(corrupt(format!("bad magic {magic:08x}")));
    }
    let version = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
    let undecodable = |e: bincode::Error| corrupt(format!("undecodable: {e}"));
    match version {
        FORMAT_VERSION => {
            let v2: ControlFileV2 = bincode_options()
                .deserialize(&body[8..])
                .map_err(undecodable)?;
            Ok(v2.into())
        }
        FORMAT_VERSION_V1 => {
            let v1: ControlFileV1 = bincode_options()
                .deserialize(&body[8..])
                .map_err(undecodable)?;
            Ok(v1.into())
        }
        _ => Err(corrupt(format!(
            "unsupported format version {version} (this build reads {FORMAT_VERSION_V1} \
             and {FORMAT_VERSION})"
        ))),
    }
}

/// Reads and checks the control file of the timeline in `dir`.
pub fn load(dir: &Path) -> Result<TimelineState, ControlFileError> {
    let path = dir.join(CONTROL_FILE_NAME);
    let io_err = |source| ControlFileError::Io {
        path: path.clone(),
        source,
    };
    let len = fs::metadata(&path).map_err(io_err)?.len();
    if len > MAX_CONTROL_FILE_SIZE {
        return Err(ControlFileError::Corrupt {
            path: path.clone(),
            reason: format!("{len} bytes long, larger than any valid control file"),
        });
    }
    let bytes = fs::read(&path).map_err(io_err)?;
    decode(&bytes, &path)
}

/// Durably replaces the control file in `dir` with `state` (see the module doc).
/// Errors are I/O errors of writing; a failed sync ends the process.
pub fn persist(dir: &Path, state: &TimelineState, sync: SyncMode) -> io::Result<()> {
    let tmp = dir.join(PARTIAL_NAME);
    let target = dir.join(CONTROL_FILE_NAME);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&encode(state))?;
    // The data must be on disk before the rename can be: otherwise a crash could leave
    // the new name pointing at an empty or partial file.
    sync.fsync(&f, &tmp);
    drop(f);
    fs::rename(&tmp, &target)?;
    // The rename itself is durable only once the directory is.
    sync.fsync_dir(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TimelineState {
        let mut s = TimelineState::new(
            TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16])),
            ServerInfo {
                pg_version: 150004,
                system_id: 7,
                wal_seg_size: 16 << 20,
            },
        );
        s.term = Term(5);
        s.term_history = TermHistory(vec![TermLsn {
            term: Term(5),
            lsn: Lsn(0x1000028),
        }]);
        s.commit_lsn = Lsn(0x1000100);
        s.durable_flush_lsn = Lsn(0x1000200);
        s.mconf = Configuration {
            generation: Generation(2),
            members: vec![SafekeeperId {
                id: NodeId(1),
                host: "sk1".into(),
                pg_port: 5454,
            }],
            new_members: None,
        };
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(&bytes[0..4], b"SKCF");
        assert_eq!(decode(&bytes, Path::new("x")).unwrap(), s);
    }

    /// A version-1 file as the previous build wrote it.
    fn encode_v1(state: &TimelineState) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf.extend_from_slice(&FORMAT_VERSION_V1.to_le_bytes());
        bincode_options()
            .serialize_into(&mut buf, &ControlFileV1::from(state))
            .unwrap();
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    #[test]
    fn a_version_1_file_loads_with_the_commit_position_as_watermark() {
        let s = sample();
        let bytes = encode_v1(&s);
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 1);
        let back = decode(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.durable_flush_lsn, s.commit_lsn);
        assert_eq!(
            TimelineState {
                durable_flush_lsn: s.durable_flush_lsn,
                ..back
            },
            s
        );
        // Version 2 is version 1's body plus the watermark.
        let v2 = encode(&s);
        assert_eq!(u32::from_le_bytes(v2[4..8].try_into().unwrap()), 2);
        assert_eq!(v2.len(), bytes.len() + 8);
        assert_eq!(v2[8..bytes.len() - 4], bytes[8..bytes.len() - 4]);
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut bytes = encode(&sample());
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        let n = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        let err = decode(&bytes, Path::new("x")).unwrap_err();
        assert!(
            err.to_string().contains("unsupported format version 3"),
            "{err}"
        );
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let err = decode(&b, Path::new("/d/safekeeper.control")).unwrap_err();
                assert!(err.to_string().contains("/d/safekeeper.control"), "{err}");
            }
        }
        assert!(decode(&bytes[..bytes.len() - 1], Path::new("x")).is_err());
        assert!(decode(&[], Path::new("x")).is_err());
    }

    #[test]
    fn persist_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sample();
        persist(dir.path(), &s, SyncMode::Sync).unwrap();
        s.term = Term(6);
        persist(dir.path(), &s, SyncMode::Sync).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
        assert!(!dir.path().join(PARTIAL_NAME).exists());
    }
}
