use utils::{TenantId, TimelineId};

use super::*;

const SEG: u32 = 1 << 20;

fn ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId([1; 16]), TimelineId([2; 16]))
}

fn data(fill: u8) -> Bytes {
    Bytes::from((0..SEG).map(|i| fill ^ (i % 7) as u8).collect::<Vec<_>>())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn segments_are_stored_once_under_their_names_and_read_back_verified() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/archive", dir.path().display());
    rt().block_on(async {
        for c in [Compression::Zstd(3), Compression::None] {
            let r = RemoteStorage::open(&url, c).unwrap();
            let name = if c == Compression::None {
                "000000010000000000000002"
            } else {
                "000000010000000000000001"
            };
            assert!(!r.exists(&ttid(), name, false).await.unwrap());
            let up = r
                .upload(&ttid(), name, false, data(1), Lsn(1), Lsn(2))
                .await
                .unwrap();
            assert!(matches!(up, Uploaded::Stored(_)), "{up:?}");
            // A second upload of the same segment does nothing.
            let again = r
                .upload(&ttid(), name, false, data(9), Lsn(1), Lsn(2))
                .await
                .unwrap();
            assert_eq!(again, Uploaded::Existed);
            let (meta, back) = r
                .download(&ttid(), name, false, SEG)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, data(1));
            assert_eq!((meta.start_lsn, meta.end_lsn), (Lsn(1), Lsn(2)));
            // Readable whatever the current setting.
            let other = RemoteStorage::open(&url, other_form(c)).unwrap();
            assert!(
                other
                    .download(&ttid(), name, false, SEG)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
        let tl = dir
            .path()
            .join("archive")
            .join(ttid().tenant_id.to_string())
            .join(ttid().timeline_id.to_string());
        let mut names: Vec<_> = std::fs::read_dir(&tl)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "000000010000000000000001.zst",
                "000000010000000000000002",
                "000000010000000000000002.meta"
            ]
        );
    });
}

#[test]
fn partial_objects_are_replaced_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    rt().block_on(async {
        let r = RemoteStorage::open(&url, Compression::Zstd(1)).unwrap();
        let name = "000000010000000000000003";
        r.upload(&ttid(), name, true, data(1), Lsn(0), Lsn(10))
            .await
            .unwrap();
        r.upload(&ttid(), name, true, data(2), Lsn(0), Lsn(20))
            .await
            .unwrap();
        let (m, d) = r.download(&ttid(), name, true, SEG).await.unwrap().unwrap();
        assert_eq!((m.end_lsn, d), (Lsn(20), data(2).to_vec()));
        assert!(
            r.download(&ttid(), name, false, SEG)
                .await
                .unwrap()
                .is_none()
        );
        r.delete_partial(&ttid(), name).await.unwrap();
        r.delete_partial(&ttid(), name).await.unwrap();
        assert!(
            r.download(&ttid(), name, true, SEG)
                .await
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn a_damaged_object_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    rt().block_on(async {
        let r = RemoteStorage::open(&url, Compression::None).unwrap();
        let name = "000000010000000000000004";
        r.upload(&ttid(), name, false, data(3), Lsn(0), Lsn(SEG as u64))
            .await
            .unwrap();
        let path = dir
            .path()
            .join(ttid().tenant_id.to_string())
            .join(ttid().timeline_id.to_string())
            .join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = r.download(&ttid(), name, false, SEG).await.unwrap_err();
        assert!(matches!(e, RemoteError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(name), "{e}");
    });
}
