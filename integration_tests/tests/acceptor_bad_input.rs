//! Hostile and broken input: each case ends (at most) its own connection. After every
//! case the process is alive, its memory did not balloon, and a new connection is served.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use integration_tests::pg_tools::{pg_bin, run_unchecked};
use integration_tests::real_wal::{GeneratedWal, read_wal_range};
use integration_tests::sk::{Safekeeper, TimelineStatus};
use integration_tests::test_proposer::{
    Cluster, TestProposer, conninfo, history, raw_socket, server_error,
};
use pq_client::PgError;
use pq_proto::backend::SqlState;
use pq_proto::proposer::ProtocolVersion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utils::xlog::WalGenerator;
use utils::{Lsn, TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150004,
    system_id: 7_300_000_000_000_000_002,
    wal_seg_size: 16 * 1024 * 1024,
};
/// A record boundary just past the long page header of segment 1.
const START: Lsn = Lsn(0x0100_0028);

/// Memory of the safekeeper process, from `/proc/<pid>/status` (kB).
#[derive(Debug, Clone, Copy)]
struct Mem {
    /// Resident now.
    rss: u64,
    /// Peak resident.
    hwm: u64,
    /// Peak virtual.
    peak: u64,
}

fn mem(sk: &Safekeeper) -> anyhow::Result<Mem> {
    let pid = sk.pid().context("safekeeper not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    };
    Ok(Mem {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        peak: field("VmPeak:")?,
    })
}

/// A 2 GiB length must not be allocated: neither touched (resident peak) nor reserved
/// (virtual peak; thread stacks and allocator arenas stay far below 1 GiB).
fn assert_no_big_allocation(before: Mem, after: Mem, what: &str) {
    const MIB: u64 = 1024;
    println!("{what}: memory {before:?} -> {after:?}");
    assert!(
        after.hwm < before.hwm + 64 * MIB && after.rss < before.rss + 64 * MIB,
        "{what}: resident memory jumped: {before:?} -> {after:?}"
    );
    assert!(
        after.peak < before.peak + 1024 * MIB,
        "{what}: virtual memory peak jumped: {before:?} -> {after:?}"
    );
}

/// Reads until the server closes the connection (bounded); returns what it sent.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    sock: &mut S,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => bail!("{what}: the server kept the connection open for 10 s"),
        }
    }
}

/// Sends `bytes` on a fresh socket (write errors ignored: the server may close early)
/// and waits for the server to close it.
async fn send_raw_expect_close(
    sk: &Safekeeper,
    bytes: &[u8],
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut sock = raw_socket(&sk.addr()).await?;
    let _ = sock.write_all(bytes).await;
    read_until_closed(&mut sock, what).await
}

/// The process is alive and a new connection gets the timeline's status.
fn assert_serving(
    sk: &mut Safekeeper,
    ttid: &TenantTimelineId,
    expected: &TimelineStatus,
    what: &str,
) {
    assert!(
        sk.is_running(),
        "{what}: the safekeeper died; log:\n{}",
        sk.log()
    );
    let status = sk
        .timeline_status(ttid)
        .unwrap_or_else(|e| panic!("{what}: TIMELINE_STATUS on a new connection: {e:#}"));
    assert_eq!(&status, expected, "{what}: the timeline changed");
}

fn startup_header(len: u32) -> Vec<u8> {
    let mut b = len.to_be_bytes().to_vec();
    b.extend_from_slice(&0x0003_0000u32.to_be_bytes()); // protocol 3.0
    b.extend_from_slice(b"user\0postgres\0");
    b
}

/// A proposer elected in `term` at the timeline's end of WAL.
async fn elected(
    sk: &Safekeeper,
    ttid: TenantTimelineId,
    term: u64,
    end: Lsn,
) -> anyhow::Result<TestProposer> {
    let hist = if term == 1 {
        history(&[(1, START)])
    } else {
        history(&[(1, START), (term, end)])
    };
    let (p, v) = TestProposer::elected(
        &sk.addr(),
        ttid,
        ProtocolVersion::V3,
        CLUSTER,
        Term(term),
        hist,
        end,
    )
    .await?;
    assert_eq!(v.flush_lsn, if term == 1 { Lsn::INVALID } else { end });
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_only_its_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut generator = WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15)?;
    let wal = GeneratedWal::generate(&mut generator, 300 * 1024)?;
    let end = wal.end();
    let mut p = elected(&sk, ttid, 1, START).await?;
    p.push(Term(1), START, &wal.wal).await?;
    drop(p);
    let expected = sk.timeline_status(&ttid)?;
    assert_eq!(expected.flush_lsn, end);

    // Garbage instead of a startup packet: an HTTP request (its first four bytes read as a
    // ~1.2 GB length), an unknown protocol version, a length below the header's.
    for (what, bytes) in [
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: sk\r\n\r\n".to_vec(),
        ),
        (
            "protocol 0x1234.5678",
            [&8u32.to_be_bytes()[..], &0x1234_5678u32.to_be_bytes()].concat(),
        ),
        ("length 3", vec![0, 0, 0, 3, 0, 3, 0, 0]),
    ] {
        send_raw_expect_close(&sk, &bytes, what).await?;
        assert_serving(&mut sk, &ttid, &expected, what);
    }

    // Startup packets claiming 2 GiB: refused from the length word alone.
    for len in [0x8000_0000u32, 0x7fff_ffff, 0xffff_ffff] {
        let what = format!("startup length {len:#x}");
        let before = mem(&sk)?;
        send_raw_expect_close(&sk, &startup_header(len), &what).await?;
        assert_no_big_allocation(before, mem(&sk)?, &what);
        assert_serving(&mut sk, &ttid, &expected, &what);
    }

    // Query messages claiming 2 GiB, 1 GiB or a length below its own field, after a good
    // startup: an ErrorResponse (08P01) saying what is wrong, as PostgreSQL sends, then
    // the connection is closed.
    for len in [0x8000_0000u32, 0x4000_0000, 0] {
        let what = format!("Query of length {len:#x}");
        let before = mem(&sk)?;
        let mut conn = pq_client::connect(&conninfo(&sk.addr(), &ttid, "test")).await?;
        conn.write_buf().put_u8(b'Q');
        conn.write_buf().put_u32(len);
        conn.write_buf().put_slice(b"IDENTIFY_SYSTEM");
        let _ = conn.flush().await;
        let mut sock = conn.into_inner();
        let got = read_until_closed(&mut sock, &what).await?;
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.first() == Some(&b'E') && text.contains("C08P01") && text.contains("length"),
            "{what}: no ErrorResponse before the close: {text:?}"
        );
        assert_no_big_allocation(before, mem(&sk)?, &what);
        assert_serving(&mut sk, &ttid, &expected, &what);
    }

    // An unknown command is an ERROR with a SQLSTATE; the session goes on.
    {
        let mut conn = pq_client::connect(&conninfo(&sk.addr(), &ttid, "test")).await?;
        match pq_client::simple_query(&mut conn, "FROBNICATE THE WAL").await {
            Err(PgError::Server(f)) => {
                // What a walsender answers (syntax error) or "not supported": an ERROR
                // the client can act on, not an internal error.
                assert!(
                    [SqlState::FEATURE_NOT_SUPPORTED, SqlState::SYNTAX_ERROR].contains(&f.code),
                    "{f:?}"
                );
                assert_eq!(f.severity, "ERROR", "{f:?}");
                assert!(f.message.contains("FROBNICATE"), "{f:?}");
            }
            other => panic!("unknown command: {other:?}"),
        }
        let rows = pq_client::simple_query(&mut conn, "IDENTIFY_SYSTEM").await?;
        assert_eq!(
            rows[0][0].as_deref(),
            Some(CLUSTER.system_id.to_string().as_str())
        );
        // The same with psql: two commands on one connection.
        let out = run_unchecked(
            Command::new(pg_bin("psql"))
                .arg(sk.conninfo(Some(&ttid)))
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-c",
                    "FROBNICATE",
                    "-c",
                    "IDENTIFY_SYSTEM",
                ]),
        )?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            stderr.contains("ERROR") && stderr.contains("FROBNICATE"),
            "psql stderr: {stderr}"
        );
        assert!(
            stdout.starts_with(&format!("{}|1|", CLUSTER.system_id)),
            "IDENTIFY_SYSTEM after the error, psql stdout: {stdout}; stderr: {stderr}"
        );
        assert_serving(&mut sk, &ttid, &expected, "unknown command");
    }

    // An AppendRequest leaving a gap: ErrorResponse, then the stream is closed. The
    // acceptor was elected in term 2 at the end of WAL, so only the gap is wrong.
    {
        let what = "AppendRequest with a gap";
        let mut p = elected(&sk, ttid, 2, end).await?;
        let gap = Lsn(end.0 + 8192);
        p.append(Term(2), gap, Bytes::from(vec![0u8; 8192]), Lsn::INVALID)
            .await?;
        let e = p
            .append_response()
            .await
            .expect_err("a gap must be refused");
        let f = server_error(&e).unwrap_or_else(|| panic!("{what}: no ErrorResponse: {e:#}"));
        assert_eq!(f.code, SqlState::PROTOCOL_VIOLATION, "{f:?}");
        assert!(
            f.message.contains("gap") && f.message.contains(&gap.to_string()),
            "{f:?}"
        );
        let mut sock = p.into_conn().into_inner();
        read_until_closed(&mut sock, what).await?;
        let expected = TimelineStatus {
            term: Term(2),
            last_log_term: Term(2),
            ..expected
        };
        assert_serving(&mut sk, &ttid, &expected, what);
    }

    // A CopyData frame claiming 2 GiB inside the stream: ErrorResponse and close, nothing
    // allocated.
    {
        let what = "CopyData of 2 GiB";
        let mut p = elected(&sk, ttid, 3, end).await?;
        let before = mem(&sk)?;
        let conn = p.conn();
        let mut frame = BytesMut::new();
        frame.put_u8(b'd');
        frame.put_u32(0x8000_0000);
        frame.put_u8(b'a'); // AppendRequest
        frame.put_bytes(0, 44);
        conn.write_buf().extend_from_slice(&frame);
        let _ = conn.flush().await;
        match tokio::time::timeout(Duration::from_secs(10), p.recv()).await {
            Ok(Err(e)) => {
                let f =
                    server_error(&e).unwrap_or_else(|| panic!("{what}: no ErrorResponse: {e:#}"));
                assert_eq!(f.code, SqlState::PROTOCOL_VIOLATION, "{f:?}");
            }
            Ok(Ok(m)) => panic!("{what}: answered with {m:?}"),
            Err(_) => panic!("{what}: no answer in 10 s"),
        }
        let mut sock = p.into_conn().into_inner();
        read_until_closed(&mut sock, what).await?;
        assert_no_big_allocation(before, mem(&sk)?, what);
        let expected = TimelineStatus {
            term: Term(3),
            last_log_term: Term(3),
            ..expected
        };
        assert_serving(&mut sk, &ttid, &expected, what);
    }
    sk.assert_no_panics();
    Ok(())
}

/// An AppendRequest whose last record fails its CRC, after records that are fine: the
/// request is refused, and what the acceptor reports as its WAL afterwards is WAL it
/// really holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_is_refused_and_never_reported() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut generator = WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15)?;
    let wal = GeneratedWal::generate(&mut generator, 100 * 1024)?;
    let end = wal.end();
    let mut p = elected(&sk, ttid, 1, START).await?;
    p.push(Term(1), START, &wal.wal).await?;

    // Three small records; the third one's last body byte is flipped.
    let mut good = BytesMut::new();
    let mut recs = Vec::new();
    for i in 0..3u8 {
        recs.push(generator.append_logical_message("bad_input", &[i; 200], &mut good)?);
    }
    let good = good.freeze();
    let flip = recs[2].start_lsn.0 + u64::from(recs[2].total_len) - 1 - end.0;
    assert!(
        Lsn(end.0 + flip).page_offset() > 40,
        "the flipped byte must be record data, not a page header"
    );
    let mut bad = good.to_vec();
    bad[flip as usize] ^= 0x01;
    p.append(Term(1), end, bad.into(), wal.end()).await?;
    let e = p
        .append_response()
        .await
        .expect_err("a record with a bad CRC must be refused");
    let f = server_error(&e).unwrap_or_else(|| panic!("no ErrorResponse: {e:#}"));
    assert_eq!(f.code, SqlState::DATA_CORRUPTED, "{f:?}");
    let mut sock = p.into_conn().into_inner();
    read_until_closed(&mut sock, "AppendRequest with a bad CRC").await?;
    assert_eq!(sk.timeline_status(&ttid)?.flush_lsn, end);

    // The next proposer is told a flush_lsn whose WAL is really there.
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    p.greet(CLUSTER).await?;
    let v = p.vote(Term(2)).await?;
    assert!(v.vote_given);
    let stored = read_wal_range(&sk.timeline_dir(&ttid), end, v.flush_lsn.max(end))?;
    assert!(
        v.flush_lsn >= end && stored[..] == good[..stored.len()],
        "VoteResponse flush_lsn {} after the refused request (WAL ended at {end}), but the \
         WAL below it is not what was sent",
        v.flush_lsn
    );
    // Elected from there, the same records without the flipped bit are taken.
    let from = v.flush_lsn;
    p.elect(Term(2), history(&[(1, START), (2, from)]), from)
        .await?;
    let rest = good.slice((from.0 - end.0) as usize..);
    let flushes = p.push(Term(2), from, &rest).await?;
    assert_eq!(flushes.last().copied(), Some(recs[2].end_lsn));
    let stored = read_wal_range(&sk.timeline_dir(&ttid), end, recs[2].end_lsn)?;
    assert!(stored == good, "stored WAL differs from the good records");
    let status = sk.timeline_status(&ttid)?;
    assert_eq!(
        (status.flush_lsn, status.term, status.last_log_term),
        (recs[2].end_lsn, Term(2), Term(2))
    );
    sk.assert_no_panics();
    Ok(())
}

/// ProposerElected with a malformed term history (unsorted, a repeated term, decreasing
/// switch points, a last term other than the elected one): refused with 08P01 naming the
/// rule, the connection closed, and nothing stored: a later VoteResponse, also after a
/// restart, carries the history the acceptor had before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_term_histories_are_refused_and_never_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut generator = WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15)?;
    let wal = GeneratedWal::generate(&mut generator, 64 * 1024)?;
    let end = wal.end();
    let mut p = elected(&sk, ttid, 1, START).await?;
    p.push(Term(1), START, &wal.wal).await?;
    drop(p);
    let good = history(&[(1, START)]);
    let cases = [
        (
            history(&[(1, START), (4, end), (3, end), (5, end)]),
            5,
            "strictly increase",
        ),
        (
            history(&[(1, START), (1, end), (5, end)]),
            5,
            "strictly increase",
        ),
        (
            history(&[(1, START), (3, end), (5, START)]),
            5,
            "must not decrease",
        ),
        (history(&[(1, START), (3, end)]), 5, "not the elected term"),
    ];
    for (i, (bad, term, rule)) in cases.into_iter().enumerate() {
        let term = Term(term + i as u64 * 10);
        let mut bad = bad;
        if let Some(last) = bad.0.last_mut()
            && last.term == Term(5)
        {
            last.term = term;
        }
        let what = format!("history {bad:?} in term {term}");
        let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, true).await?;
        p.greet(CLUSTER).await?;
        let v = p.vote(term).await?;
        assert!(v.vote_given, "{what}: {v:?}");
        assert_eq!(
            v.term_history, good,
            "{what}: a bad history was stored before"
        );
        p.elect(term, bad, end).await?;
        let e = match tokio::time::timeout(Duration::from_secs(10), p.recv()).await {
            Ok(Err(e)) => e,
            Ok(Ok(m)) => bail!("{what}: answered with {m:?}"),
            Err(_) => bail!("{what}: no answer in 10 s"),
        };
        let f = server_error(&e).with_context(|| format!("{what}: no ErrorResponse: {e:#}"))?;
        assert_eq!(f.code, SqlState::PROTOCOL_VIOLATION, "{what}: {f:?}");
        assert!(f.message.contains(rule), "{what}: {f:?}");
        let mut sock = p.into_conn().into_inner();
        read_until_closed(&mut sock, &what).await?;
    }
    // After a restart the stored history is still the good one.
    sk.restart_same_ports()?;
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, true).await?;
    p.greet(CLUSTER).await?;
    let v = p.vote(Term(100)).await?;
    assert!(v.vote_given, "{v:?}");
    assert_eq!(v.term_history, good);
    assert_eq!(v.flush_lsn, end);
    sk.assert_no_panics();
    Ok(())
}

/// Startup `options` that cannot be parsed are refused (22023) rather than ignored, and
/// a 1 MiB AppendRequest is refused naming the 128 KiB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_options_and_oversized_appends_are_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let out = run_unchecked(
        Command::new(pg_bin("psql"))
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres replication=1 sslmode=disable options='-c -c -c =tenant_id='",
                sk.pg_port
            ))
            .args(["-X", "-c", "IDENTIFY_SYSTEM"]),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("invalid startup options") && stderr.contains("name=value"),
        "{stderr}"
    );

    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut p = elected(&sk, ttid, 1, START).await?;
    p.append(
        Term(1),
        START,
        Bytes::from(vec![0u8; 1 << 20]),
        Lsn::INVALID,
    )
    .await?;
    let e = p
        .append_response()
        .await
        .expect_err("a 1 MiB AppendRequest must be refused");
    let f = server_error(&e).with_context(|| format!("no ErrorResponse: {e:#}"))?;
    assert_eq!(f.code, SqlState::PROTOCOL_VIOLATION, "{f:?}");
    assert!(f.message.contains("128 KiB"), "{f:?}");
    sk.assert_no_panics();
    Ok(())
}

/// 1,000 connections that finish their startup, then each start a query they never finish
/// (half claim 15 MiB, refused from the length alone; half stay just under the command
/// limit) and never read: the server's memory grows by at most 64 MiB, and every other
/// client is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_connections_do_not_balloon_memory() -> anyhow::Result<()> {
    const MIB: u64 = 1024;
    let dir = tempfile::tempdir()?;
    let mut sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk1"),
        false,
        &["--max-connections", "1200"],
    )?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let mut generator = WalGenerator::new(START, CLUSTER.system_id, CLUSTER.wal_seg_size, 15)?;
    let wal = GeneratedWal::generate(&mut generator, 64 * 1024)?;
    let mut p = elected(&sk, ttid, 1, START).await?;
    p.push(Term(1), START, &wal.wal).await?;
    drop(p);
    let expected = sk.timeline_status(&ttid)?;
    let before = mem(&sk)?;
    let mut conns = Vec::new();
    for i in 0..1000u32 {
        let mut conn = pq_client::connect(&conninfo(&sk.addr(), &ttid, "hostile")).await?;
        let len: u32 = if i % 2 == 0 { 15 << 20 } else { 16 * 1024 - 1 };
        let buf = conn.write_buf();
        buf.put_u8(b'Q');
        buf.put_u32(len);
        buf.put_bytes(b'x', 8 * 1024);
        let _ = conn.flush().await;
        conns.push(conn);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = mem(&sk)?;
    println!("1000 hostile connections: {before:?} -> {during:?}");
    assert!(
        during.rss < before.rss + 64 * MIB,
        "resident memory grew by {} KiB",
        during.rss - before.rss
    );
    // The server still answers others meanwhile.
    assert_serving(&mut sk, &ttid, &expected, "during 1000 hostile connections");
    drop(conns);
    sk.assert_no_panics();
    Ok(())
}
