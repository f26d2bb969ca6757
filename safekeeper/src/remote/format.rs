//! The bytes of an archived segment object and its metadata.
//!
//! With zstd compression an object is one zstd *skippable frame* holding the metadata as
//! JSON, followed by the compressed segment: `zstd -d` ignores the skippable frame and
//! restores the segment as it was, while we read the metadata without a second object.
//! Without compression the object is the segment itself and the metadata is a sidecar
//! object (`<name>.meta`) written after it, so its presence says the data is complete.
//!
//! Metadata: the format version, the WAL the object covers (`start_lsn..end_lsn`; for a
//! complete segment the whole segment from where the timeline's WAL starts in it, for a
//! partial one up to the commit position, with zeros after it), the length and the CRC-32C
//! of the uncompressed bytes.
//!
//! Owns: encoding and decoding those bytes. Must never: return segment bytes whose length
//! or checksum differs from the metadata.

use serde::{Deserialize, Serialize};
use utils::Lsn;

use super::RemoteError;

/// The metadata format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// First magic number of zstd's skippable frames (the low nibble is free; we use 0).
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;

/// Largest metadata frame we accept (ours are about 150 bytes).
const MAX_META_LEN: usize = 64 * 1024;

/// How archived segments are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at a level (1..=22), metadata in a leading skippable frame.
    Zstd(i32),
    /// Plain segment, metadata in a sidecar object.
    None,
}

/// What an archived object says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// First LSN of real WAL in the object.
    #[serde(with = "lsn_text")]
    pub start_lsn: Lsn,
    /// End of the WAL in the object (bytes after it, in a partial segment, are zeros).
    #[serde(with = "lsn_text")]
    pub end_lsn: Lsn,
    /// Length of the uncompressed segment.
    pub size: u64,
    /// CRC-32C of the uncompressed segment.
    pub crc32c: u32,
}

impl SegmentMeta {
    /// The metadata of `data` covering `start_lsn..end_lsn`.
    pub fn of(data: &[u8], start_lsn: Lsn, end_lsn: Lsn) -> Self {
        SegmentMeta {
            format_version: FORMAT_VERSION,
            start_lsn,
            end_lsn,
            size: data.len() as u64,
            crc32c: crc32c::crc32c(data),
        }
    }

    /// The metadata as a JSON document.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serializes")
    }

    /// Parses a JSON document of a version this build reads.
    pub fn from_json(bytes: &[u8], object: &str) -> Result<Self, RemoteError> {
        let m: SegmentMeta = serde_json::from_slice(bytes).map_err(|e| RemoteError::Corrupt {
            object: object.to_string(),
            reason: format!("metadata is not valid: {e}"),
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(RemoteError::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "metadata format version {} (this build reads {FORMAT_VERSION})",
                    m.format_version
                ),
            });
        }
        Ok(m)
    }

    /// Checks `data` against the metadata.
    pub fn verify(&self, data: &[u8], object: &str) -> Result<(), RemoteError> {
        if data.len() as u64 != self.size {
            return Err(RemoteError::Corrupt {
                object: object.to_string(),
                reason: format!("{} bytes, metadata says {}", data.len(), self.size),
            });
        }
        let crc = crc32c::crc32c(data);
        if crc != self.crc32c {
            return Err(RemoteError::Corrupt {
                object: object.to_string(),
                reason: format!(
                    "CRC-32C {crc:08x} of the data, metadata says {:08x}",
                    self.crc32c
                ),
            });
        }
        Ok(())
    }
}

/// A zstd object: the metadata frame, then `data` compressed at `level`.
pub fn encode_zstd(data: &[u8], meta: &SegmentMeta, level: i32) -> Result<Vec<u8>, RemoteError> {
    let json = meta.to_json();
    let mut out = Vec::with_capacity(data.len() / 3 + json.len() + 8);
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    zstd::stream::copy_encode(data, &mut out, level)
        .map_err(|e| RemoteError::Codec(format!("zstd compression failed: {e}")))?;
    Ok(out)
}

/// Reads a zstd object back: its metadata and the verified segment bytes. `max_size`
/// bounds the decompressed length (a segment's size), whatever the object claims.
pub fn decode_zstd(
    object: &[u8],
    name: &str,
    max_size: usize,
) -> Result<(SegmentMeta, Vec<u8>), RemoteError> {
    let corrupt = |reason: String| RemoteError::Corrupt {
        object: name.to_string(),
        reason,
    };
    if object.len() < 8 {
        return Err(corrupt(format!("{} bytes: too short", object.len())));
    }
    let magic = u32::from_le_bytes(object[0..4].try_into().expect("4 bytes"));
    if magic != SKIPPABLE_MAGIC {
        return Err(corrupt(format!(
            "starts with {magic:#010x}, not the metadata frame"
        )));
    }
    let len = u32::from_le_bytes(object[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_META_LEN || 8 + len > object.len() {
        return Err(corrupt(format!(
            "metadata frame of {len} bytes does not fit"
        )));
    }
    let meta = SegmentMeta::from_json(&object[8..8 + len], name)?;
    if meta.size as usize > max_size {
        return Err(corrupt(format!(
            "metadata says {} bytes, more than a segment ({max_size})",
            meta.size
        )));
    }
    let mut data = Vec::with_capacity(meta.size as usize);
    let mut dec = zstd::stream::read::Decoder::new(&object[8 + len..])
        .map_err(|e| RemoteError::Codec(format!("zstd: {e}")))?;
    // Read at most one byte more than promised: a longer stream is corrupt, and the
    // allocation stays bounded by the segment size.
    use std::io::Read;
    (&mut dec)
        .take(meta.size + 1)
        .read_to_end(&mut data)
        .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
    meta.verify(&data, name)?;
    Ok((meta, data))
}

mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use utils::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment() -> Vec<u8> {
        (0..1u32 << 20).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn zstd_objects_round_trip_and_plain_zstd_reads_them() {
        let data = segment();
        let meta = SegmentMeta::of(&data, Lsn(0x100_0028), Lsn(0x200_0000));
        let obj = encode_zstd(&data, &meta, 3).unwrap();
        assert!(obj.len() < data.len() / 10, "compresses: {}", obj.len());
        let (m, back) = decode_zstd(&obj, "x.zst", 1 << 20).unwrap();
        assert_eq!(m, meta);
        assert_eq!(back, data);
        // A stock zstd decoder skips the metadata frame.
        assert_eq!(zstd::stream::decode_all(&obj[..]).unwrap(), data);
        let json = String::from_utf8(meta.to_json()).unwrap();
        assert!(json.contains("\"start_lsn\":\"0/1000028\""), "{json}");
    }

    #[test]
    fn corruption_is_named_not_skipped() {
        let data = segment();
        let meta = SegmentMeta::of(&data, Lsn(0), Lsn(1 << 20));
        let obj = encode_zstd(&data, &meta, 1).unwrap();
        // A flipped byte in the compressed data.
        let mut bad = obj.clone();
        let at = bad.len() - 20;
        bad[at] ^= 0x55;
        let e = decode_zstd(&bad, "tl/000000010000000000000001.zst", 1 << 20).unwrap_err();
        assert!(
            e.to_string().contains("000000010000000000000001.zst"),
            "{e}"
        );
        // Truncated.
        assert!(decode_zstd(&obj[..obj.len() / 2], "x", 1 << 20).is_err());
        // Not ours.
        assert!(decode_zstd(b"\x28\xb5\x2f\xfd rest", "x", 1 << 20).is_err());
        // Claims more than a segment.
        assert!(decode_zstd(&obj, "x", 1000).is_err());
        // A checksum that does not match.
        let mut m2 = meta;
        m2.crc32c ^= 1;
        let obj2 = encode_zstd(&data, &m2, 1).unwrap();
        let e = decode_zstd(&obj2, "x", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("CRC-32C"), "{e}");
    }

    #[test]
    fn metadata_of_another_version_is_refused() {
        let mut m = SegmentMeta::of(b"abc", Lsn(1), Lsn(2));
        m.format_version = 9;
        let e = SegmentMeta::from_json(&m.to_json(), "x.meta").unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }
}
