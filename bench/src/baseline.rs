//! The physical baselines, measured in-process on the same filesystem as the
//! safekeepers' data: sequential write + fdatasync bandwidth, fdatasync latency (alone,
//! and the second of three concurrent ones: the floor of a quorum of three sharing one
//! disk), a loopback TCP round trip, and the CPU time the host took from this VM (steal).
//!
//! Owns: nothing but scratch files it removes. Must never: measure on another filesystem
//! than the one it is given.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

/// `dd bs=<chunk> count=<total/chunk> conv=fdatasync` into a new file in `dir`: the disk's
/// own sequential write bandwidth with the data durable at the end, in MB/s (10^6).
pub fn seq_write_fdatasync(dir: &Path, total: u64, chunk: usize) -> anyhow::Result<f64> {
    let path = dir.join("baseline-seqwrite");
    let _ = std::fs::remove_file(&path);
    let buf = vec![b'w'; chunk];
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let start = Instant::now();
    let mut written = 0u64;
    while written < total {
        let n = chunk.min((total - written) as usize);
        f.write_all(&buf[..n])?;
        written += n as u64;
    }
    f.sync_data()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(total as f64 / 1e6 / secs)
}

/// Latencies of `n` appends of `size` bytes, each followed by fdatasync, into a file that
/// was zero-filled and synced first (as pg_test_fsync does): the disk's commit floor.
pub fn fdatasync_latencies(dir: &Path, n: usize, size: usize) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("baseline-fdatasync");
    let f = zero_filled_file(&path, (n * size).max(1 << 20))?;
    let buf = vec![b'c'; size];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f.write_all_at(&buf, (i * size) as u64)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    out.sort_unstable();
    Ok(out)
}

/// Latencies of `n` rounds in which three threads each append `size` bytes to a file of
/// their own and fdatasync it, all starting together: the time until the second of the
/// three is done. Three safekeepers on one disk commit at best that fast (two of three
/// must have synced), so this is their floor, as [`fdatasync_latencies`] is one's.
pub fn second_of_three_fdatasyncs(
    dir: &Path,
    n: usize,
    size: usize,
) -> anyhow::Result<Vec<Duration>> {
    use std::sync::{Arc, Barrier};
    let start = Arc::new(Barrier::new(4));
    let done = Arc::new(Barrier::new(4));
    let mut workers = Vec::new();
    let mut ends = Vec::new();
    for w in 0..3 {
        let path = dir.join(format!("baseline-fdatasync-{w}"));
        let f = zero_filled_file(&path, (n * size).max(1 << 20))?;
        let (start, done) = (start.clone(), done.clone());
        let (tx, rx) = std::sync::mpsc::channel::<Instant>();
        ends.push(rx);
        workers.push(std::thread::spawn(move || -> std::io::Result<()> {
            let buf = vec![b'c'; size];
            for i in 0..n {
                start.wait();
                f.write_all_at(&buf, (i * size) as u64)?;
                f.sync_data()?;
                let _ = tx.send(Instant::now());
                done.wait();
            }
            drop(f);
            std::fs::remove_file(path)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        start.wait();
        let t = Instant::now();
        done.wait();
        let mut finished: Vec<Instant> = ends.iter().filter_map(|r| r.recv().ok()).collect();
        finished.sort();
        out.push(finished.get(1).map_or(Duration::ZERO, |&e| e - t));
    }
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("fdatasync worker panicked"))??;
    }
    out.sort_unstable();
    Ok(out)
}

/// A new file at `path` (replacing any left over) of `len` zero bytes, synced with its
/// metadata: appends into it measure the data sync alone, as pg_test_fsync's do.
fn zero_filled_file(path: &Path, len: usize) -> anyhow::Result<std::fs::File> {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all_at(&vec![0u8; len], 0)?;
    f.sync_all()?;
    Ok(f)
}

/// CPU time the hypervisor took from this VM so far (the `steal` column of
/// `/proc/stat`, over all CPUs): while it grows, every thread here stands still, whatever
/// it was doing. `None` where the kernel does not report it.
pub fn steal_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = cpu.split_whitespace().nth(8)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Round trips of a `size`-byte ping and pong over loopback TCP (nodelay), `n` times.
pub fn loopback_rtts(n: usize, size: usize) -> anyhow::Result<Vec<Duration>> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(_) => return Ok(()),
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = vec![b'p'; size];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        out.push(t.elapsed());
    }
    drop(c);
    let _ = server.join();
    out.sort_unstable();
    Ok(out)
}

/// The `p`-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The median of the repetitions' ratios `ours[i] / base[i]`: each repetition measured
/// both back to back, so on a shared machine this compares neighbours in time.
pub fn median_ratio(ours: &[f64], base: &[f64]) -> f64 {
    median(
        &ours
            .iter()
            .zip(base)
            .map(|(o, b)| o / b)
            .collect::<Vec<_>>(),
    )
}

/// The median of values (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median_ratio(&[2.0, 9.0, 3.0], &[1.0, 3.0, 1.0]), 3.0);
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&d, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&d, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn baselines_run_on_a_temp_dir() {
        let dir = std::env::temp_dir().join(format!("sk-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(seq_write_fdatasync(&dir, 1 << 20, 64 << 10).unwrap() > 0.0);
        assert_eq!(fdatasync_latencies(&dir, 5, 128).unwrap().len(), 5);
        assert_eq!(second_of_three_fdatasyncs(&dir, 5, 128).unwrap().len(), 5);
        assert_eq!(loopback_rtts(5, 64).unwrap().len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
