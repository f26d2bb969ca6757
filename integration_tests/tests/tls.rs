//! TLS on the safekeeper's PostgreSQL port, with real PostgreSQL 15 clients: `psql` with
//! `sslmode=verify-full` (and a certificate for another name refused), a safekeeper
//! without certificates refusing `sslmode=require`, broken negotiations closed, WAL
//! pushed by `walproposer generate` over TLS and read back by `pg_receivewal` over TLS
//! byte-identical to plain TCP, a hot standby streaming over TLS, SIGHUP reloading
//! the certificate (a bad file keeps the old one), and the HTTP API over TLS
//! (`--listen-https`, checked with `curl`).

mod send_wal_util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::pg::{PgCluster, PgOptions};
use integration_tests::pg_tools::{pg_bin, run, run_unchecked};
use integration_tests::real_wal::{SEG, primary_wal_from};
use integration_tests::sk::{Safekeeper, workspace_bin};
use integration_tests::standby::{Standby, output_within};
use integration_tests::test_proposer::TestProposer;
use integration_tests::tls::{TestCa, TlsFiles};
use pq_client::{Conninfo, PgError, SslSettings};
use send_wal_util::{CLUSTER, GEN_START, heartbeat, new_ttid, wait_for_log};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utils::xlog::xlog_file_name;
use utils::{Lsn, TenantTimelineId, Term};

/// The 8-byte SSLRequest.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A new timeline on `sk` (elected over plain TCP), for IDENTIFY_SYSTEM to name.
async fn timeline(sk: &Safekeeper) -> anyhow::Result<TenantTimelineId> {
    let ttid = new_ttid();
    TestProposer::first_term(&sk.addr(), ttid, CLUSTER, GEN_START).await?;
    Ok(ttid)
}

fn start_tls_sk(dir: &Path, files: &TlsFiles) -> anyhow::Result<Safekeeper> {
    let args = files.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Safekeeper::start_with_args(1, &dir.join("sk"), false, &args)
}

/// A libpq connection string to the safekeeper by name (`localhost`, what the
/// certificate says), with `ssl` appended.
fn connstr(sk: &Safekeeper, ttid: Option<&TenantTimelineId>, ssl: &str) -> String {
    let mut s = format!("host=localhost port={} user=postgres {ssl}", sk.pg_port);
    if let Some(t) = ttid {
        s.push_str(&format!(
            " options='-c tenant_id={} timeline_id={}'",
            t.tenant_id, t.timeline_id
        ));
    }
    s
}

/// Runs `psql -c IDENTIFY_SYSTEM` in replication mode: `Ok(stdout)` or `Err(stderr)`.
fn psql_identify(conn: &str) -> anyhow::Result<Result<String, String>> {
    let o = run_unchecked(
        Command::new(pg_bin("psql"))
            .arg(format!("{conn} replication=1"))
            .args(["-X", "-A", "-t", "-c", "IDENTIFY_SYSTEM"]),
    )?;
    Ok(if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verifies_the_certificate_and_a_server_without_one_refuses_require()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("safekeeper test CA")?;
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"])?;
    let ca_path = files.ca.display().to_string();
    let sk = start_tls_sk(dir.path(), &files)?;
    let ttid = timeline(&sk).await?;
    let t = Some(&ttid);

    let verify_full = format!("sslmode=verify-full sslrootcert={ca_path}");
    let out = psql_identify(&connstr(&sk, t, &verify_full))?
        .map_err(|e| anyhow::anyhow!("psql over TLS failed: {e}\n{}", sk.log()))?;
    ensure!(out.contains('|'), "IDENTIFY_SYSTEM answered {out:?}");
    // By IP address too: the certificate names 127.0.0.1.
    let by_ip = connstr(&sk, t, &verify_full).replace("host=localhost", "host=127.0.0.1");
    psql_identify(&by_ip)?.map_err(|e| anyhow::anyhow!("verify-full by IP: {e}"))?;
    // Plain text still works for clients that do not ask for TLS.
    psql_identify(&connstr(&sk, t, "sslmode=disable"))?
        .map_err(|e| anyhow::anyhow!("plain: {e}"))?;
    // A CA the server's certificate does not chain to is refused.
    let other_ca = TestCa::new("another CA")?;
    let other = files.write_file("other-ca.pem", &other_ca.cert_pem())?;
    let e = psql_identify(&connstr(
        &sk,
        None,
        &format!("sslmode=verify-ca sslrootcert={}", other.display()),
    ))?
    .err()
    .context("verify-ca against another CA succeeded")?;
    ensure!(e.contains("certificate verify failed"), "{e}");

    // pq_client (the proposer's and the safekeeper's client) verifies the same way.
    let ci = Conninfo::parse(&connstr(&sk, t, &verify_full))?;
    let mut conn = pq_client::connect(&ci).await?;
    ensure!(conn.get_ref().is_tls(), "pq_client did not negotiate TLS");
    let rows = pq_client::simple_query(&mut conn, "IDENTIFY_SYSTEM").await?;
    ensure!(rows.len() == 1, "{rows:?}");
    let ci = Conninfo::parse(&connstr(
        &sk,
        None,
        &format!("sslmode=verify-full sslrootcert={}", other.display()),
    ))?;
    match pq_client::connect(&ci).await {
        Err(PgError::TlsHandshake { .. }) => {}
        other => bail!("pq_client accepted a certificate of another CA: {other:?}"),
    }

    // A certificate for another name: verify-full refuses it, verify-ca accepts it.
    let dir2 = tempfile::tempdir()?;
    let wrong = TlsFiles::new(&ca, &["other.example"])?;
    let sk2 = start_tls_sk(dir2.path(), &wrong)?;
    let ttid2 = timeline(&sk2).await?;
    let e = psql_identify(&connstr(&sk2, Some(&ttid2), &verify_full))?
        .err()
        .context("verify-full accepted a certificate for another name")?;
    ensure!(e.contains("does not match host name"), "{e}");
    let verify_ca = format!("sslmode=verify-ca sslrootcert={ca_path}");
    psql_identify(&connstr(&sk2, Some(&ttid2), &verify_ca))?
        .map_err(|e| anyhow::anyhow!("verify-ca with a certificate for another name: {e}"))?;
    let ci = Conninfo::parse(&connstr(&sk2, Some(&ttid2), &verify_ca))?;
    pq_client::connect(&ci).await?;

    // A safekeeper without certificates answers SSLRequest `N`.
    let dir3 = tempfile::tempdir()?;
    let plain = Safekeeper::start(3, &dir3.path().join("sk"), false)?;
    let e = psql_identify(&connstr(&plain, None, "sslmode=require"))?
        .err()
        .context("sslmode=require succeeded against a safekeeper without TLS")?;
    ensure!(e.contains("server does not support SSL"), "{e}");
    let ci = Conninfo::parse(&connstr(&plain, None, "sslmode=require"))?;
    ensure!(matches!(
        pq_client::connect(&ci).await,
        Err(PgError::SslNotSupported)
    ));
    // sslmode=prefer falls back to plain text.
    let ci = Conninfo::parse(&connstr(&plain, None, "sslmode=prefer"))?;
    ensure!(!pq_client::connect(&ci).await?.get_ref().is_tls());
    for s in [&sk, &sk2, &plain] {
        s.assert_no_panics();
    }
    Ok(())
}

/// Reads until the server closes the connection (bounded); what it sent.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => bail!("{what}: the server kept the connection open for 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tls_negotiations_close_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("safekeeper test CA")?;
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"])?;
    let sk = start_tls_sk(dir.path(), &files)?;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", sk.pg_port));

    // Garbage instead of a ClientHello.
    let mut s = connect().await?;
    s.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await?;
    ensure!(&answer == b"S", "SSLRequest answered {answer:?}");
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\0\0\0\0\0\0\0\0\0\0")
        .await;
    read_until_closed(&mut s, "garbage instead of a ClientHello").await?;

    // Bytes sent after the SSLRequest, before the answer: refused, no `S`.
    let mut s = connect().await?;
    let mut both = SSL_REQUEST.to_vec();
    both.extend_from_slice(b"\0\0\0\x08\0\x03\0\0");
    s.write_all(&both).await?;
    let got = read_until_closed(&mut s, "data pipelined after SSLRequest").await?;
    ensure!(got.is_empty(), "answered {got:?}");

    // A second SSLRequest inside the TLS session.
    let config = SslSettings::resolve(
        Some("verify-full"),
        Some(&files.ca.display().to_string()),
        None,
        None,
        None,
    )?
    .client_config()?
    .context("no TLS config")?;
    let mut s = connect().await?;
    s.write_all(&SSL_REQUEST).await?;
    s.read_exact(&mut answer).await?;
    ensure!(&answer == b"S");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into()?, s)
        .await?;
    tls.write_all(&SSL_REQUEST).await?;
    tls.flush().await?;
    let got = read_until_closed(&mut tls, "SSLRequest twice").await?;
    ensure!(got.is_empty(), "answered {got:?}");

    // Still serving, and nothing panicked.
    let ttid = timeline(&sk).await?;
    let t = Some(&ttid);
    let verify_full = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    psql_identify(&connstr(&sk, t, &verify_full))?
        .map_err(|e| anyhow::anyhow!("after the broken negotiations: {e}"))?;
    sk.assert_no_panics();
    Ok(())
}

/// The `.partial` file pg_receivewal leaves for segment 1 of timeline 1, read up to `end`.
fn receivewal(conn: &str, out: &Path, end: Lsn) -> anyhow::Result<Vec<u8>> {
    let o = output_within(
        Command::new(pg_bin("pg_receivewal"))
            .arg("-d")
            .arg(conn)
            .arg("-D")
            .arg(out)
            // pg_receivewal 15 stops once it has data beyond --endpos; nothing beyond
            // the commit position ever comes.
            .arg(format!("--endpos={}", Lsn(end.0 - 1)))
            .args(["--no-loop", "--no-sync", "--no-password"]),
        Duration::from_secs(60),
    )?;
    ensure!(
        o.status.success(),
        "pg_receivewal failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let f = out.join(format!("{}.partial", xlog_file_name(1, 1, 16 << 20)));
    let mut bytes = std::fs::read(&f).with_context(|| format!("read {}", f.display()))?;
    bytes.truncate((end.0 - 0x0100_0000) as usize);
    Ok(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_pushed_and_received_over_tls_is_identical_to_plain_tcp() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("safekeeper test CA")?;
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"])?;
    let sk = start_tls_sk(dir.path(), &files)?;
    let ttid = new_ttid();
    let verify_full = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    let target = |cmd: &mut Command| {
        cmd.args(["--safekeepers", &format!("localhost:{}", sk.pg_port)])
            .args(["--tenant-id", &ttid.tenant_id.to_string()])
            .args(["--timeline-id", &ttid.timeline_id.to_string()]);
    };
    // The proposer over TLS (verify-full fails on a plain connection).
    let mut gen_ = Command::new(workspace_bin("walproposer"));
    gen_.arg("generate");
    target(&mut gen_);
    let out = run(gen_
        .args(["--bytes", "2M", "--record-size", "3k"])
        .args(["--safekeeper-conninfo", &verify_full]))?;
    let end = integration_tests::sk::generated_wal_range(&out)?.1;
    // PGSSLMODE / PGSSLROOTCERT reach walproposer's connections too: sync over TLS finds
    // the same end; with a root the certificate does not chain to, it cannot connect.
    let mut sync = Command::new(workspace_bin("walproposer"));
    sync.arg("sync");
    target(&mut sync);
    let synced = run(sync
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &files.ca))?;
    ensure!(synced.trim() == end.to_string(), "sync printed {synced:?}");
    let other = files.write_file("other-ca.pem", &TestCa::new("other")?.cert_pem())?;
    let mut sync = Command::new(workspace_bin("walproposer"));
    sync.args(["sync", "--timeout", "2"]);
    target(&mut sync);
    let o = run_unchecked(
        sync.env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &other),
    )?;
    ensure!(
        !o.status.success(),
        "sync with an untrusted certificate succeeded"
    );

    // pg_receivewal over TLS and over plain TCP: the same bytes, which are the
    // safekeeper's own.
    let tls_dir = tempfile::tempdir()?;
    let plain_dir = tempfile::tempdir()?;
    let over_tls = receivewal(
        &connstr(&sk, Some(&ttid), &verify_full),
        tls_dir.path(),
        end,
    )?;
    let over_plain = receivewal(
        &connstr(&sk, Some(&ttid), "sslmode=disable"),
        plain_dir.path(),
        end,
    )?;
    ensure!(over_tls.len() == (end.0 - 0x0100_0000) as usize);
    ensure!(
        over_tls == over_plain,
        "WAL over TLS differs from WAL over TCP"
    );
    let own = integration_tests::real_wal::read_wal_range(
        &sk.timeline_dir(&ttid),
        Lsn(0x0100_0028),
        end,
    )?;
    ensure!(
        over_tls[0x28..] == own[..],
        "WAL differs from the safekeeper's"
    );
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_streams_from_the_safekeeper_over_tls() -> anyhow::Result<()> {
    let mut primary = PgCluster::init(PgOptions::default())?;
    primary.start()?;
    primary.psql("CREATE TABLE t (id int)")?;
    primary.psql("SELECT pg_switch_wal()")?;
    let (mut standby, backup_start) = Standby::basebackup(&primary)?;
    let first = backup_start.segment_number(SEG);
    primary.psql("INSERT INTO t VALUES (7)")?;
    primary.psql("SELECT pg_switch_wal()")?;
    let last = primary.current_wal_insert_lsn()?.segment_number(SEG) - 1;
    let (cluster, start, wal) = primary_wal_from(&primary, first, last)?;

    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("safekeeper test CA")?;
    let files = TlsFiles::new(&ca, &["localhost", "127.0.0.1"])?;
    let sk = start_tls_sk(dir.path(), &files)?;
    let ttid = new_ttid();
    let mut p = TestProposer::first_term(&sk.addr(), ttid, cluster, start).await?;
    p.push(Term(1), start, &wal).await?;
    let end = Lsn(start.0 + wal.len() as u64);
    heartbeat(&mut p, Term(1), end, end).await?;

    let verify_full = format!("sslmode=verify-full sslrootcert={}", files.ca.display());
    standby.configure(&format!(
        "{} application_name=tls_standby",
        connstr(&sk, Some(&ttid), &verify_full)
    ))?;
    if let Err(e) = standby.start() {
        bail!("{e:#}\nsafekeeper log:\n{}", sk.log());
    }
    wait_for_log(&sk, "app=\"tls_standby\"", Duration::from_secs(10)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while standby.psql("SELECT count(*) FROM t WHERE id = 7")? != "1" {
        if Instant::now() > deadline {
            bail!(
                "the row never reached the standby over TLS\nstandby log:\n{}\nsafekeeper log:\n{}",
                standby.log(),
                sk.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (sslmode=verify-full: libpq would have refused a plain connection.)
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca1 = TestCa::new("first CA")?;
    let files = TlsFiles::new(&ca1, &["localhost"])?;
    let sk = start_tls_sk(dir.path(), &files)?;
    let ttid = timeline(&sk).await?;
    let t = Some(&ttid);
    let ca2 = TestCa::new("second CA")?;
    let ca2_path = files.write_file("ca2.pem", &ca2.cert_pem())?;
    let with_root = |root: &Path| {
        connstr(
            &sk,
            t,
            &format!("sslmode=verify-full sslrootcert={}", root.display()),
        )
    };
    let hup = || -> anyhow::Result<()> {
        let pid = sk.pid().context("not running")?;
        // SAFETY: kill(2) on our own child.
        ensure!(unsafe { libc::kill(pid as i32, libc::SIGHUP) } == 0);
        Ok(())
    };
    psql_identify(&with_root(&files.ca))?.map_err(|e| anyhow::anyhow!("CA 1: {e}"))?;
    ensure!(psql_identify(&with_root(&ca2_path))?.is_err());

    files.install(&ca2.server_cert(&["localhost"])?)?;
    hup()?;
    wait_for_log(&sk, "TLS certificate reloaded", Duration::from_secs(10)).await?;
    psql_identify(&with_root(&ca2_path))?
        .map_err(|e| anyhow::anyhow!("CA 2 after the reload: {e}"))?;
    let e = psql_identify(&with_root(&files.ca))?
        .err()
        .context("the old CA still verifies after the reload")?;
    ensure!(e.contains("certificate verify failed"), "{e}");

    // An invalid certificate file: the reload fails and the current certificate stays.
    std::fs::write(&files.cert, "not a certificate\n")?;
    hup()?;
    wait_for_log(&sk, "TLS certificate NOT reloaded", Duration::from_secs(10)).await?;
    psql_identify(&with_root(&ca2_path))?
        .map_err(|e| anyhow::anyhow!("CA 2 after a failed reload: {e}"))?;
    // And a missing key file, likewise.
    files.install(&ca1.server_cert(&["localhost"])?)?;
    std::fs::remove_file(&files.key)?;
    hup()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sk.log().matches("NOT reloaded").count() < 2 {
        ensure!(
            Instant::now() < deadline,
            "no second failed reload:\n{}",
            sk.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    psql_identify(&with_root(&ca2_path))?
        .map_err(|e| anyhow::anyhow!("CA 2 after a reload without a key: {e}"))?;
    sk.assert_no_panics();
    Ok(())
}

/// `curl` over HTTPS to `localhost:port` trusting `ca`: `Ok((status, body))`, or
/// `Err(curl's message)` when the request failed (e.g. the certificate did not verify).
fn curl_https(port: u16, path: &str, ca: &Path) -> anyhow::Result<Result<(u16, String), String>> {
    let o = output_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(ca)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://localhost:{port}{path}")),
        Duration::from_secs(30),
    )?;
    if !o.status.success() {
        return Ok(Err(String::from_utf8_lossy(&o.stderr).into_owned()));
    }
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').context("no status from curl")?;
    Ok(Ok((code.trim().parse()?, body.to_string())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_served_over_tls_with_the_reloaded_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca1 = TestCa::new("first CA")?;
    let files = TlsFiles::new(&ca1, &["localhost"])?;
    let port = integration_tests::pg::free_port()?;
    let mut args = files.server_args();
    args.extend(["--listen-https".to_string(), format!("127.0.0.1:{port}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sk = Safekeeper::start_with_args(1, &dir.path().join("sk"), false, &args)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "no HTTPS listener:\n{}",
            sk.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, body) = curl_https(port, "/v1/status", &files.ca)?
        .map_err(|e| anyhow::anyhow!("HTTPS status: {e}"))?;
    ensure!(code == 200, "{code} {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(v["id"] == 1, "{body}");
    let (code, body) = curl_https(port, "/metrics", &files.ca)?
        .map_err(|e| anyhow::anyhow!("HTTPS metrics: {e}"))?;
    ensure!(code == 200 && body.contains("safekeeper_"), "{code}");
    // Errors are the API's JSON errors there too.
    let (code, body) = curl_https(port, "/v1/tenant/nothex/timeline/nothex", &files.ca)?
        .map_err(|e| anyhow::anyhow!("HTTPS bad id: {e}"))?;
    ensure!(code == 400 && body.contains("\"msg\""), "{code} {body}");
    // The plain listener still answers.
    ensure!(sk.http_get("/v1/status")?.0 == 200);
    // A client that does not trust the CA is refused by its own verification.
    let ca2 = TestCa::new("second CA")?;
    let ca2_path = files.write_file("ca2.pem", &ca2.cert_pem())?;
    let e = curl_https(port, "/v1/status", &ca2_path)?
        .err()
        .context("a certificate of another CA was accepted")?;
    ensure!(e.to_lowercase().contains("certificate"), "{e}");
    // Plain HTTP to the HTTPS port gets no answer from the API.
    let plain = output_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{port}/v1/status")),
        Duration::from_secs(30),
    )?;
    ensure!(
        !plain.status.success(),
        "plain HTTP answered on the HTTPS port"
    );

    // SIGHUP: the next handshake presents the new certificate.
    files.install(&ca2.server_cert(&["localhost"])?)?;
    let pid = sk.pid().context("not running")?;
    // SAFETY: kill(2) on our own child.
    ensure!(unsafe { libc::kill(pid as i32, libc::SIGHUP) } == 0);
    wait_for_log(&sk, "TLS certificate reloaded", Duration::from_secs(10)).await?;
    let (code, _) = curl_https(port, "/v1/status", &ca2_path)?
        .map_err(|e| anyhow::anyhow!("HTTPS after the reload: {e}"))?;
    ensure!(code == 200);
    ensure!(curl_https(port, "/v1/status", &files.ca)?.is_err());
    sk.assert_no_panics();
    Ok(())
}

#[test]
fn listen_https_without_a_certificate_is_refused() -> anyhow::Result<()> {
    let o = output_within(
        Command::new(workspace_bin("safekeeper")).args([
            "--id",
            "1",
            "--listen-https",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(30),
    )?;
    ensure!(!o.status.success());
    ensure!(String::from_utf8_lossy(&o.stderr).contains("--ssl-cert-file"));
    Ok(())
}

#[test]
fn startup_fails_naming_an_unusable_certificate_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("CA")?;
    let files = TlsFiles::new(&ca, &["localhost"])?;
    let bad = files.write_file("bad.crt", "garbage\n")?;
    let o = output_within(
        Command::new(workspace_bin("safekeeper"))
            .args(["--id", "1", "--no-sync", "-D"])
            .arg(dir.path().join("sk"))
            .args(["--listen-pg", "127.0.0.1:0", "--listen-http", "127.0.0.1:0"])
            .arg("--ssl-cert-file")
            .arg(&bad)
            .arg("--ssl-key-file")
            .arg(&files.key),
        Duration::from_secs(30),
    )?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "started with a garbage certificate");
    ensure!(stderr.contains(&bad.display().to_string()), "{stderr}");
    // Only one of the two flags: refused by the argument parser.
    let o = output_within(
        Command::new(workspace_bin("safekeeper"))
            .args(["--id", "1", "--ssl-cert-file"])
            .arg(&files.cert),
        Duration::from_secs(30),
    )?;
    ensure!(!o.status.success());
    ensure!(String::from_utf8_lossy(&o.stderr).contains("--ssl-key-file"));
    Ok(())
}
