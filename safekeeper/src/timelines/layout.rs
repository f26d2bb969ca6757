//! The data directory's layout and the operations that change it: listing timelines,
//! creating one atomically, removing one durably, cleaning up after a crash.
//!
//! Layout: `<datadir>/<tenant_id>/<timeline_id>/` holds `safekeeper.control` and the WAL
//! segments; `<datadir>/tmp/` holds timelines under construction and timelines being
//! removed. A timeline is created whole in `tmp/` (control file written and synced) and
//! renamed into place, so after a crash it exists entirely or not at all; it is removed by
//! a rename into `tmp/` (durable with both directories fsynced) before its files are
//! deleted, so after a crash it is either still there whole or gone (what is left in
//! `tmp/` is deleted at the next start).
//!
//! Owns: those paths and steps. Must never: be called from async code (it blocks: the
//! registry runs it on a disk-pool thread).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use utils::{TenantId, TenantTimelineId, TimelineId};

use crate::control_file;
use crate::durability::SyncMode;
use crate::state::TimelineState;

/// The directory of timelines under construction or being removed.
pub const TMP_DIR: &str = "tmp";

/// Directory of a timeline.
pub fn timeline_dir(datadir: &Path, ttid: &TenantTimelineId) -> PathBuf {
    datadir
        .join(ttid.tenant_id.to_string())
        .join(ttid.timeline_id.to_string())
}

fn tmp_path(datadir: &Path, ttid: &TenantTimelineId, what: &str) -> PathBuf {
    datadir
        .join(TMP_DIR)
        .join(format!("{}_{}.{what}", ttid.tenant_id, ttid.timeline_id))
}

/// Makes `tmp/` exist and empties it (leftovers of creations and removals interrupted by
/// a crash).
pub fn clean_tmp(datadir: &Path) -> io::Result<()> {
    let tmp = datadir.join(TMP_DIR);
    fs::create_dir_all(&tmp)?;
    for entry in fs::read_dir(&tmp)? {
        let p = entry?.path();
        if p.is_dir() {
            fs::remove_dir_all(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Every timeline directory under `datadir` (names that are not ids are ignored).
pub fn list(datadir: &Path) -> io::Result<Vec<TenantTimelineId>> {
    let mut out = Vec::new();
    for tenant in fs::read_dir(datadir)? {
        let tenant = tenant?;
        let Some(tenant_id) = tenant
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<TenantId>().ok())
        else {
            continue;
        };
        if !tenant.file_type()?.is_dir() {
            continue;
        }
        for tl in fs::read_dir(tenant.path())? {
            let tl = tl?;
            if let Some(timeline_id) = tl
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TimelineId>().ok())
            {
                out.push(TenantTimelineId::new(tenant_id, timeline_id));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the timeline directory in `tmp/` — first whatever `fill` puts there (the WAL a
/// timeline created through the API starts with, made durable by `fill`), then the control
/// file (whose persist fsyncs the directory, so every entry in it) — and renames it into
/// place durably.
pub fn create(
    datadir: &Path,
    state: &TimelineState,
    sync: SyncMode,
    fill: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let ttid = state.ttid;
    let tmp = tmp_path(datadir, &ttid, "new");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    if let Err(e) = fill(&tmp).and_then(|()| control_file::persist(&tmp, state, sync)) {
        // Nothing half-made stays behind (after a crash, `clean_tmp` does this at start).
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let tenant_dir = datadir.join(ttid.tenant_id.to_string());
    if !tenant_dir.exists() {
        fs::create_dir_all(&tenant_dir)?;
        sync.fsync_dir(datadir)?;
    }
    fs::rename(&tmp, timeline_dir(datadir, &ttid))?;
    // Both directories changed: the target gained an entry, tmp lost one.
    sync.fsync_dir(&tenant_dir)?;
    sync.fsync_dir(&datadir.join(TMP_DIR))?;
    Ok(())
}

/// Removes a timeline's directory durably: renamed into `tmp/` (both directories
/// fsynced: from then on it is gone, even after a crash), then deleted. A missing
/// directory is not an error.
pub fn remove(datadir: &Path, ttid: &TenantTimelineId, sync: SyncMode) -> io::Result<()> {
    let dir = timeline_dir(datadir, ttid);
    if !dir.exists() {
        return Ok(());
    }
    let doomed = tmp_path(datadir, ttid, "deleted");
    if doomed.exists() {
        fs::remove_dir_all(&doomed)?;
    }
    fs::create_dir_all(datadir.join(TMP_DIR))?;
    fs::rename(&dir, &doomed)?;
    sync.fsync_dir(&datadir.join(ttid.tenant_id.to_string()))?;
    sync.fsync_dir(&datadir.join(TMP_DIR))?;
    fs::remove_dir_all(&doomed)
}

/// Removes a tenant's directory if it is empty (after its last timeline was deleted),
/// durably (the data directory is fsynced). A missing or non-empty directory (a timeline
/// created meanwhile) is left alone: not an error.
pub fn remove_tenant_if_empty(datadir: &Path, tenant: &TenantId, sync: SyncMode) -> io::Result<()> {
    let dir = datadir.join(tenant.to_string());
    match fs::remove_dir(&dir) {
        Ok(()) => sync.fsync_dir(datadir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServerInfo;

    #[test]
    fn create_list_remove() {
        let d = tempfile::tempdir().unwrap();
        clean_tmp(d.path()).unwrap();
        let ttid = TenantTimelineId::new(TenantId([3; 16]), TimelineId([4; 16]));
        let state = TimelineState::new(ttid, ServerInfo::default());
        create(d.path(), &state, SyncMode::NoSync, |_| Ok(())).unwrap();
        std::fs::create_dir_all(d.path().join("not-a-tenant")).unwrap();
        assert_eq!(list(d.path()).unwrap(), vec![ttid]);
        assert_eq!(
            control_file::load(&timeline_dir(d.path(), &ttid)).unwrap(),
            state
        );
        remove(d.path(), &ttid, SyncMode::NoSync).unwrap();
        assert_eq!(list(d.path()).unwrap(), vec![]);
        remove(d.path(), &ttid, SyncMode::NoSync).unwrap();
        assert_eq!(fs::read_dir(d.path().join(TMP_DIR)).unwrap().count(), 0);
        remove_tenant_if_empty(d.path(), &ttid.tenant_id, SyncMode::NoSync).unwrap();
        assert!(!d.path().join(ttid.tenant_id.to_string()).exists());
        remove_tenant_if_empty(d.path(), &ttid.tenant_id, SyncMode::NoSync).unwrap();
    }
}
