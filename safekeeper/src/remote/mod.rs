//! Remote storage of WAL: the object store behind `--remote-storage`, where each segment
//! is kept and in what form. Used by the offloader (uploads), by WAL senders (segments
//! removed locally are read back from here) and by the `archive` tools.
//!
//! Layout: `<prefix>/<tenant_id>/<timeline_id>/<WAL file name>.zst` for a complete
//! segment compressed with zstd, `<WAL file name>` (+ `<WAL file name>.meta`) without
//! compression; a partial segment is `<WAL file name>.partial.zst` (or `.partial` +
//! `.partial.meta`) and is deleted once the complete segment is stored. See
//! `docs/offload.md` and [`format`].
//!
//! Every write is one atomic PUT of a whole object (object stores never show a partial
//! one), preceded by an existence check, so a segment is stored once however many
//! safekeepers or retries try.
//!
//! Owns: object names and the upload/download of one segment. Must never: hand out
//! segment bytes that did not pass their checksum.

mod error;
pub mod format;
mod url;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use utils::{Lsn, TenantTimelineId};

pub use error::RemoteError;
pub use format::{Compression, SegmentMeta};

/// Suffix of zstd objects.
const ZST: &str = ".zst";
/// Suffix of the sidecar metadata of uncompressed objects.
const META: &str = ".meta";

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// Stored now: bytes written to the store.
    Stored(u64),
    /// Already there (another safekeeper, or an earlier try, stored it).
    Existed,
}

/// An object store and how we keep segments in it.
#[derive(Clone)]
pub struct RemoteStorage {
    store: Arc<dyn ObjectStore>,
    /// The directory of a `file://` store: its objects are fsynced after each PUT (the
    /// local store writes and renames, but does not sync).
    local_root: Option<std::path::PathBuf>,
    prefix: ObjectPath,
    url: String,
    compression: Compression,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("url", &self.url)
            .field("compression", &self.compression)
            .finish()
    }
}

impl RemoteStorage {
    /// Opens the store a `--remote-storage` URL names (see [`url`]); new uploads use
    /// `compression`. Does not connect.
    pub fn open(url: &str, compression: Compression) -> Result<Self, RemoteError> {
        let (store, prefix) = url::open(url)?;
        let local_root = url.strip_prefix("file://").map(std::path::PathBuf::from);
        Ok(RemoteStorage {
            store,
            local_root,
            prefix,
            url: url.to_string(),
            compression,
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How new uploads are compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Where a timeline's objects are.
    pub fn timeline_prefix(&self, ttid: &TenantTimelineId) -> ObjectPath {
        self.prefix
            .clone()
            .join(ttid.tenant_id.to_string())
            .join(ttid.timeline_id.to_string())
    }

    /// The object of segment `name` (a WAL file name; `partial` for the partial one),
    /// stored with `compression`.
    pub fn object(
        &self,
        ttid: &TenantTimelineId,
        name: &str,
        partial: bool,
        compression: Compression,
    ) -> ObjectPath {
        let suffix = match (partial, compression) {
            (false, Compression::Zstd(_)) => ZST,
            (true, Compression::Zstd(_)) => ".partial.zst",
            (false, Compression::None) => "",
            (true, Compression::None) => ".partial",
        };
        self.timeline_prefix(ttid).join(format!("{name}{suffix}"))
    }

    /// The object whose presence says the segment is stored: the data object for zstd,
    /// the metadata sidecar (written last) otherwise.
    fn marker(&self, data: &ObjectPath, compression: Compression) -> ObjectPath {
        match compression {
            Compression::Zstd(_) => data.clone(),
            Compression::None => ObjectPath::from(format!("{data}{META}")),
        }
    }

    /// True if segment `name` is stored in either form.
    pub async fn exists(
        &self,
        ttid: &TenantTimelineId,
        name: &str,
        partial: bool,
    ) -> Result<bool, RemoteError> {
        for c in [self.compression, other_form(self.compression)] {
            let marker = self.marker(&self.object(ttid, name, partial, c), c);
            match self.store.head(&marker).await {
                Ok(_) => return Ok(true),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// Stores segment `name` holding `data` (WAL `start..end`) unless a complete
    /// segment of that name is already there. A partial segment is always stored (it
    /// replaces the previous partial object of that segment); its caller checks first
    /// that the complete one does not exist. Encodes on a blocking thread; see
    /// [`RemoteStorage::encode`] and [`RemoteStorage::put_encoded`] to encode elsewhere.
    pub async fn upload(
        &self,
        ttid: &TenantTimelineId,
        name: &str,
        partial: bool,
        data: Bytes,
        start: Lsn,
        end: Lsn,
    ) -> Result<Uploaded, RemoteError> {
        if !partial && self.exists(ttid, name, false).await? {
            return Ok(Uploaded::Existed);
        }
        let c = self.compression;
        // Checksum and compression of 16 MiB take tens of milliseconds: not on a runtime
        // worker.
        let encoded = tokio::task::spawn_blocking(move || encode(c, data, start, end))
            .await
            .map_err(|e| RemoteError::Codec(format!("compression task failed: {e}")))??;
        self.put_encoded(ttid, name, partial, encoded).await
    }

    /// The object of a segment holding `data` (WAL `start..end`) in the form new uploads
    /// take. CPU-bound (checksum, compression): call it off the runtime.
    pub fn encode(&self, data: Bytes, start: Lsn, end: Lsn) -> Result<Encoded, RemoteError> {
        encode(self.compression, data, start, end)
    }

    /// Stores an object made by [`RemoteStorage::encode`] as segment `name` (one PUT; a
    /// second for the sidecar of a plain object, written last).
    pub async fn put_encoded(
        &self,
        ttid: &TenantTimelineId,
        name: &str,
        partial: bool,
        encoded: Encoded,
    ) -> Result<Uploaded, RemoteError> {
        let c = encoded.compression;
        let path = self.object(ttid, name, partial, c);
        let mut written = encoded.object.len() as u64;
        self.store
            .put(&path, PutPayload::from(encoded.object))
            .await?;
        self.sync_local(&path).await?;
        if c == Compression::None {
            let json = encoded.meta.to_json();
            written += json.len() as u64;
            let marker = self.marker(&path, c);
            self.store.put(&marker, PutPayload::from(json)).await?;
            self.sync_local(&marker).await?;
        }
        Ok(Uploaded::Stored(written))
    }

    /// In a `file://` store, makes an object just written durable: the file, and the
    /// directories up to the root (they may have just been created).
    async fn sync_local(&self, object: &ObjectPath) -> Result<(), RemoteError> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let root = root.clone();
        let file = root.join(object.as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            let mut dir = file.parent();
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if d == root {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
        .map_err(|e| RemoteError::Codec(format!("sync task failed: {e}")))??;
        Ok(())
    }

    /// Deletes the partial object of segment `name` in either form (absent is fine).
    pub async fn delete_partial(
        &self,
        ttid: &TenantTimelineId,
        name: &str,
    ) -> Result<(), RemoteError> {
        for c in [Compression::Zstd(0), Compression::None] {
            let data = self.object(ttid, name, true, c);
            let mut paths = vec![data.clone()];
            if c == Compression::None {
                paths.insert(0, self.marker(&data, c));
            }
            for p in paths {
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Reads segment `name` back, verified, in whichever form it was stored; `None` if
    /// it is not stored. `seg_size` bounds what is read.
    pub async fn download(
        &self,
        ttid: &TenantTimelineId,
        name: &str,
        partial: bool,
        seg_size: u32,
    ) -> Result<Option<(SegmentMeta, Vec<u8>)>, RemoteError> {
        for c in [self.compression, other_form(self.compression)] {
            let path = self.object(ttid, name, partial, c);
            let shown = path.to_string();
            match c {
                Compression::Zstd(_) => {
                    let obj = match self.get(&path).await? {
                        Some(o) => o,
                        None => continue,
                    };
                    let max = seg_size as usize;
                    let decoded =
                        tokio::task::spawn_blocking(move || format::decode_zstd(&obj, &shown, max))
                            .await
                            .map_err(|e| {
                                RemoteError::Codec(format!("decompression task failed: {e}"))
                            })??;
                    return Ok(Some(decoded));
                }
                Compression::None => {
                    let meta = match self.get(&self.marker(&path, c)).await? {
                        Some(m) => SegmentMeta::from_json(&m, &format!("{shown}{META}"))?,
                        None => continue,
                    };
                    let Some(data) = self.get(&path).await? else {
                        return Err(RemoteError::Corrupt {
                            object: shown,
                            reason: "its metadata exists but the data object does not".into(),
                        });
                    };
                    if data.len() > seg_size as usize {
                        return Err(RemoteError::Corrupt {
                            object: shown,
                            reason: format!("{} bytes, more than a segment", data.len()),
                        });
                    }
                    meta.verify(&data, &shown)?;
                    return Ok(Some((meta, data.to_vec())));
                }
            }
        }
        Ok(None)
    }

    /// The timelines that have objects in the store.
    pub async fn list_timelines(&self) -> Result<Vec<TenantTimelineId>, RemoteError> {
        let mut out = Vec::new();
        let tenants = self.store.list_with_delimiter(Some(&self.prefix)).await?;
        for t in tenants.common_prefixes {
            let Some(Ok(tenant)) = t.filename().map(str::parse::<utils::TenantId>) else {
                continue;
            };
            let timelines = self.store.list_with_delimiter(Some(&t)).await?;
            for tl in timelines.common_prefixes {
                if let Some(Ok(timeline)) = tl.filename().map(str::parse::<utils::TimelineId>) {
                    out.push(TenantTimelineId::new(tenant, timeline));
                }
            }
        }
        out.sort_by_key(|t| (t.tenant_id.to_string(), t.timeline_id.to_string()));
        Ok(out)
    }

    /// The segment objects of a timeline, by segment number (metadata sidecars left out;
    /// other names ignored).
    pub async fn list_segments(
        &self,
        ttid: &TenantTimelineId,
        seg_size: u32,
    ) -> Result<Vec<StoredSegment>, RemoteError> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.timeline_prefix(ttid)))
            .await?;
        let mut out = Vec::new();
        for o in listed.objects {
            let Some(name) = o.location.filename() else {
                continue;
            };
            let (base, compressed) = match name.strip_suffix(ZST) {
                Some(b) => (b, true),
                None => (name, false),
            };
            if let Some((_, segno, partial)) = utils::xlog::parse_xlog_file_name(base, seg_size) {
                out.push(StoredSegment {
                    segno,
                    partial,
                    compressed,
                    size: o.size,
                });
            }
        }
        out.sort_by_key(|s| (s.segno, s.partial));
        Ok(out)
    }

    async fn get(&self, path: &ObjectPath) -> Result<Option<Bytes>, RemoteError> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// A segment object found in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredSegment {
    /// Its segment number.
    pub segno: utils::SegNo,
    /// The partial object of the segment.
    pub partial: bool,
    /// Stored with zstd.
    pub compressed: bool,
    /// Bytes of the object.
    pub size: u64,
}

/// A segment ready to be stored: the object's bytes and its metadata.
#[derive(Debug)]
pub struct Encoded {
    object: Bytes,
    meta: SegmentMeta,
    compression: Compression,
}

fn encode(c: Compression, data: Bytes, start: Lsn, end: Lsn) -> Result<Encoded, RemoteError> {
    let meta = SegmentMeta::of(&data, start, end);
    let object = match c {
        Compression::Zstd(level) => Bytes::from(format::encode_zstd(&data, &meta, level)?),
        Compression::None => data,
    };
    Ok(Encoded {
        object,
        meta,
        compression: c,
    })
}

/// The form a segment may also be stored in (after a change of `--backup-compression`).
fn other_form(c: Compression) -> Compression {
    match c {
        Compression::Zstd(_) => Compression::None,
        Compression::None => Compression::Zstd(0),
    }
}

#[cfg(test)]
mod tests;
