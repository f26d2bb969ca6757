//! WalStorage on a real (temporary) filesystem: batched writes land byte for byte, the
//! next segment is prepared, truncation removes what follows.

use std::os::unix::fs::FileExt;

use super::*;

const SEG: u32 = 1 << 20;

fn bytes(n: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>(),
    )
}

fn read_range(s: &WalStorage, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let segno = pos.segment_number(SEG);
        let f = open_segment_for_read(s.dir(), segno, SEG).unwrap().unwrap();
        let n = (pos.remaining_in_segment(SEG)).min(to.0 - pos.0) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, pos.segment_offset(SEG) as u64)
            .unwrap();
        out.extend_from_slice(&buf);
        pos = Lsn(pos.0 + n as u64);
    }
    out
}

#[test]
fn small_appends_are_batched_and_land_byte_for_byte_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let start = Lsn(u64::from(SEG));
    let mut s = WalStorage::open(dir.path(), SEG, start, SegmentEnv::plain(SyncMode::NoSync));
    let mut all = Vec::new();
    let mut pos = start;
    let mut completed = 0;
    // 700 appends of 3001 bytes: > 2 segments, pieces straddling the boundaries, and
    // batches cut by WRITE_BATCH and by MAX_IOV.
    for i in 0..700 {
        let b = bytes(3001, i as u8);
        all.extend_from_slice(&b);
        if s.write(pos, b).unwrap() == WriteOutcome::SegmentCompleted {
            completed += 1;
        }
        pos = Lsn(pos.0 + 3001);
    }
    assert_eq!(completed, 2);
    assert_eq!(s.write_lsn(), pos);
    s.flush().unwrap();
    assert_eq!(read_range(&s, start, pos), all);
    // Complete segments got their final names; the one being written is `.partial`.
    assert!(s.segment_path(1).exists() && s.segment_path(2).exists());
    assert!(s.partial_path(3).exists());
    // Tiny appends: more slices than one pwritev takes.
    let mut tail = Vec::new();
    for i in 0..(MAX_IOV * 2 + 7) {
        let b = bytes(5, i as u8);
        tail.extend_from_slice(&b);
        s.write(pos, b).unwrap();
        pos = Lsn(pos.0 + 5);
    }
    s.flush().unwrap();
    let tail_start = Lsn(pos.0 - tail.len() as u64);
    assert_eq!(read_range(&s, tail_start, pos), tail);
}

#[test]
fn a_write_is_refused_anywhere_but_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = WalStorage::open(
        dir.path(),
        SEG,
        Lsn(u64::from(SEG)),
        SegmentEnv::plain(SyncMode::NoSync),
    );
    assert!(s.write(Lsn(u64::from(SEG) + 8), bytes(8, 0)).is_err());
}

#[test]
fn the_next_segment_is_prepared_and_truncation_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let start = Lsn(u64::from(SEG));
    let pool = DiskPool::new("test", 2);
    let mut s = WalStorage::open(
        dir.path(),
        SEG,
        start,
        SegmentEnv {
            sync: SyncMode::Sync,
            pool: Some(pool.clone()),
            budget: None,
            io: WalIoMetrics::detached(),
        },
    );
    s.write(start, bytes(10_000, 1)).unwrap();
    s.flush().unwrap();
    // Segment 2 is being (or has been) created in the background at full size.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s
        .partial_path(2)
        .metadata()
        .is_ok_and(|m| m.len() == u64::from(SEG))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "segment 2 not prepared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Writing into it uses the prepared file.
    let pos = Lsn(start.0 + 10_000);
    let fill = u64::from(SEG) - 10_000 + 500;
    let b = bytes(fill as usize, 2);
    assert_eq!(
        s.write(pos, b.clone()).unwrap(),
        WriteOutcome::SegmentCompleted
    );
    let end = Lsn(pos.0 + fill);
    s.flush().unwrap();
    assert_eq!(read_range(&s, pos, end), b.to_vec());
    // Cut back into segment 1: segment 2 and the prepared segment 3 are gone, and the
    // bytes at the cut are zeros.
    let cut = Lsn(start.0 + 4096);
    s.truncate(cut).unwrap();
    let names: Vec<SegNo> = s
        .list_segments()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec![1]);
    assert_eq!(read_range(&s, cut, Lsn(cut.0 + 16)), vec![0u8; 16]);
    // And writing goes on from the cut.
    s.write(cut, bytes(100, 3)).unwrap();
    s.flush().unwrap();
    assert_eq!(
        read_range(&s, cut, Lsn(cut.0 + 100)),
        bytes(100, 3).to_vec()
    );
}

#[test]
fn the_segment_image_is_readable_right_after_init() {
    // Readers may read below the timeline start once it is elected, before any flush.
    let dir = tempfile::tempdir().unwrap();
    let start = Lsn(u64::from(SEG) + 40);
    let mut s = WalStorage::open(
        dir.path(),
        SEG,
        Lsn::INVALID,
        SegmentEnv::plain(SyncMode::NoSync),
    );
    s.init(start, &[9u8; 40]).unwrap();
    assert_eq!(read_range(&s, Lsn(u64::from(SEG)), start), vec![9u8; 40]);
    assert_eq!(s.write_lsn(), start);
}

#[test]
fn a_preparation_no_thread_started_is_run_by_the_writer() {
    // The only pool thread is busy until released: the next segment's creation is queued
    // behind it, and the writer must not wait for it.
    let dir = tempfile::tempdir().unwrap();
    let pool = DiskPool::new("test", 1);
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    pool.spawn(move || {
        let _ = blocked.recv();
    })
    .unwrap();
    let start = Lsn(u64::from(SEG));
    let mut s = WalStorage::open(
        dir.path(),
        SEG,
        start,
        SegmentEnv {
            sync: SyncMode::NoSync,
            pool: Some(pool.clone()),
            budget: None,
            io: WalIoMetrics::detached(),
        },
    );
    s.write(start, bytes(100, 1)).unwrap();
    let fill = u64::from(SEG) - 100 + 10;
    assert_eq!(
        s.write(Lsn(start.0 + 100), bytes(fill as usize, 2))
            .unwrap(),
        WriteOutcome::SegmentCompleted
    );
    s.flush().unwrap();
    assert!(s.partial_path(2).exists());
    release.send(()).unwrap();
    pool.shutdown();
}

#[test]
fn over_the_budget_an_idle_segment_is_closed_and_reopened_at_the_next_write() {
    let dir = tempfile::tempdir().unwrap();
    let budget = OpenSegments::new(1);
    let env = |b: &OpenSegments| SegmentEnv {
        sync: SyncMode::NoSync,
        pool: None,
        budget: Some(b.clone()),
        io: WalIoMetrics::detached(),
    };
    let start = Lsn(u64::from(SEG));
    let (d1, d2) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let mut a = WalStorage::open(&d1, SEG, start, env(&budget));
    let mut b = WalStorage::open(&d2, SEG, start, env(&budget));
    a.write(start, bytes(100, 1)).unwrap();
    a.flush().unwrap();
    a.release_if_over_budget();
    assert_eq!(budget.open(), 1, "within the budget nothing is closed");
    b.write(start, bytes(100, 2)).unwrap();
    b.flush().unwrap();
    assert_eq!(budget.open(), 2);
    b.release_if_over_budget();
    assert_eq!(
        budget.open(),
        1,
        "over the budget the idle segment is closed"
    );
    // Written into the page cache, not synced, then closed: the flush reopens it.
    let at = Lsn(start.0 + 100);
    b.write(at, bytes(50, 3)).unwrap();
    b.write_batch().unwrap();
    assert_eq!(budget.open(), 2);
    b.release_if_over_budget();
    assert_eq!(budget.open(), 1);
    assert_eq!(b.unsynced, Some(1));
    b.flush().unwrap();
    assert_eq!(b.unsynced, None, "synced through a new descriptor");
    b.release_if_over_budget();
    assert_eq!(budget.open(), 1);
    // Writing reopens it, and the bytes land where they belong.
    let at2 = Lsn(at.0 + 50);
    b.write(at2, bytes(30, 4)).unwrap();
    b.flush().unwrap();
    assert_eq!(budget.open(), 2);
    assert_eq!(
        read_range(&b, start, Lsn(at2.0 + 30)),
        [bytes(100, 2), bytes(50, 3), bytes(30, 4)].concat()
    );
}
