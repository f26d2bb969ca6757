//! The HTTP API against the real binary: every route × method with good and bad input and
//! the statuses of `docs/http-api.md`; a timeline created through the API takes a proposer
//! (`walproposer generate`) and readers from its `start_lsn` and shows its configuration,
//! proposers and readers; deletion (of a timeline, of a tenant) ends a reader's stream and
//! removes the files; the body cap, the header timeout and the connection cap.
//!
//! Every request goes through [`integration_tests::http::Api`], which sends a bearer token
//! when given one: the auth cases reuse these helpers with a token.

mod send_wal_util;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use integration_tests::http::{Answer, Api};
use integration_tests::pg_tools::run;
use integration_tests::real_wal::read_wal_range;
use integration_tests::sk::{Safekeeper, workspace_bin};
use send_wal_util::{ReplStream, new_ttid};
use serde_json::{Value, json};
use utils::{Lsn, TenantId, TenantTimelineId};

/// Where created timelines start: mid-segment, as Neon's do.
const START: &str = "0/149F0D8";

fn api(sk: &Safekeeper) -> Api {
    Api::new(sk.http_port)
}

fn tl_path(ttid: &TenantTimelineId) -> String {
    format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    )
}

/// A create body: generation 1 with `sk` as the only member.
fn create_body(ttid: &TenantTimelineId, sk: &Safekeeper) -> Value {
    json!({
        "tenant_id": ttid.tenant_id.to_string(),
        "timeline_id": ttid.timeline_id.to_string(),
        "mconf": {
            "generation": 1,
            "members": [{"id": sk.id, "host": "127.0.0.1", "pg_port": sk.pg_port}],
            "new_members": null,
        },
        "pg_version": 150000,
        "system_id": null,
        "wal_seg_size": null,
        "start_lsn": START,
        "commit_lsn": null,
    })
}

/// `a` has `status` and a JSON `{"msg": ...}` body (for errors), else fails with it.
fn expect_error(a: &Answer, status: u16, what: &str) -> anyhow::Result<String> {
    ensure!(a.status == status, "{what}: expected {status}, got {a:?}");
    ensure!(
        a.header("content-type") == Some("application/json"),
        "{what}: not JSON: {a:?}"
    );
    let msg = a.json()["msg"]
        .as_str()
        .with_context(|| format!("{what}: no msg in {a:?}"))?
        .to_string();
    ensure!(!msg.is_empty(), "{what}: empty msg");
    Ok(msg)
}

#[test]
fn routes_statuses_and_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let api = api(&sk);
    let ttid = new_ttid();
    let body = create_body(&ttid, &sk);

    // Open routes.
    let a = api.get("/v1/status")?;
    ensure!(a.status == 200 && a.json()["id"] == 1, "{a:?}");
    ensure!(api.get("/metrics")?.status == 200);
    let doc = api.get("/v1/openapi.json")?;
    ensure!(
        doc.status == 200 && doc.json()["openapi"] == "3.0.3",
        "{doc:?}"
    );
    let a = api.get("/v1/utilization")?;
    ensure!(a.status == 200 && a.json()["timeline_count"] == 0, "{a:?}");
    ensure!(a.json()["disk_total_bytes"].as_u64() > Some(0), "{a:?}");

    // Create: 201, the same again 200, a different body 409.
    let a = api.post_json("/v1/tenant/timeline", &body)?;
    ensure!(a.status == 201, "{a:?}");
    let st = a.json();
    for (field, want) in [
        ("flush_lsn", START),
        ("commit_lsn", START),
        ("timeline_start_lsn", START),
        ("local_start_lsn", START),
        ("backup_lsn", START),
    ] {
        ensure!(st[field] == want, "{field}: {st}");
    }
    ensure!(st["term"] == 0 && st["term_history"] == json!([{"term": 0, "lsn": START}]));
    ensure!(st["mconf"] == body["mconf"], "{st}");
    ensure!(st["wal_seg_size"] == 16 << 20 && st["pg_version"] == 150000);
    ensure!(api.post_json("/v1/tenant/timeline", &body)?.status == 200);
    let mut other = body.clone();
    other["start_lsn"] = json!("0/2000028");
    expect_error(
        &api.post_json("/v1/tenant/timeline", &other)?,
        409,
        "other start",
    )?;
    let mut newer = body.clone();
    newer["mconf"]["generation"] = json!(2);
    expect_error(
        &api.post_json("/v1/tenant/timeline", &newer)?,
        409,
        "newer mconf",
    )?;
    // The created timeline is durable: it is there after a restart, as created.
    let mut sk = sk;
    sk.stop()?;
    sk.restart()?;
    let api = self::api(&sk);
    let a = api.get(&tl_path(&ttid))?;
    ensure!(a.status == 200, "{a:?}");
    let st2 = a.json();
    ensure!(
        st2["flush_lsn"] == START && st2["mconf"] == body["mconf"],
        "{st2}"
    );

    // List and utilization see it.
    let list = api.get("/v1/tenant/timeline")?.json();
    ensure!(
        list == json!([{"tenant_id": ttid.tenant_id.to_string(), "timeline_id": ttid.timeline_id.to_string()}]),
        "{list}"
    );
    ensure!(api.get("/v1/utilization")?.json()["timeline_count"] == 1);

    // Bad bodies: 400 with a reason each.
    let bad = |f: &dyn Fn(&mut Value)| -> anyhow::Result<String> {
        let mut b = create_body(&new_ttid(), &sk);
        f(&mut b);
        let a = api.post_json("/v1/tenant/timeline", &b)?;
        expect_error(&a, 400, &b.to_string())
    };
    bad(&|b| b["start_lsn"] = json!("nonsense"))?;
    bad(&|b| b["start_lsn"] = json!("0/0"))?;
    bad(&|b| b["start_lsn"] = json!("0/1000004"))?; // not 8-aligned
    bad(&|b| b["start_lsn"] = json!("0/1000010"))?; // inside the long page header
    bad(&|b| b["commit_lsn"] = json!("0/2000000"))?;
    bad(&|b| b["wal_seg_size"] = json!(3 << 20))?;
    bad(&|b| b["pg_version"] = json!(90600))?;
    bad(&|b| b["tenant_id"] = json!("xyz"))?;
    bad(&|b| b["mconf"]["generation"] = json!(-1))?;
    bad(&|b| b["mconf"]["members"] = json!([]))?;
    bad(&|b| {
        b["mconf"]["members"] =
            json!([{"id": 7, "host": "a", "pg_port": 1}, {"id": 7, "host": "b", "pg_port": 2}])
    })?;
    bad(&|b| {
        b.as_object_mut().unwrap().remove("start_lsn");
    })?;
    let a = api.request(
        "POST",
        "/v1/tenant/timeline",
        Some("application/json"),
        b"{\"tenant",
    )?;
    expect_error(&a, 400, "malformed JSON")?;
    let a = api.request("POST", "/v1/tenant/timeline", Some("text/plain"), b"{}")?;
    expect_error(&a, 415, "wrong content type")?;
    // A huge bad value is not echoed back whole.
    let long = "f".repeat(100_000);
    let msg = bad(&|b| b["start_lsn"] = json!(long.clone()))?;
    ensure!(
        msg.len() < 400,
        "message echoes the input: {} bytes",
        msg.len()
    );
    // Over the body cap: 413.
    let mut huge = body.clone();
    huge["mconf"]["members"][0]["host"] = json!("h".repeat(2 << 20));
    expect_error(
        &api.post_json("/v1/tenant/timeline", &huge)?,
        413,
        "body cap",
    )?;

    // Bad ids in paths, unknown timelines and routes, wrong methods.
    expect_error(&api.get("/v1/tenant/xyz/timeline/00")?, 400, "bad id")?;
    expect_error(&api.delete("/v1/tenant/abc")?, 400, "bad tenant")?;
    expect_error(&api.get(&tl_path(&new_ttid()))?, 404, "unknown timeline")?;
    expect_error(&api.get("/v1/nothing")?, 404, "unknown route")?;
    let a = api.request("PUT", "/v1/tenant/timeline", None, b"")?;
    expect_error(&a, 405, "PUT")?;
    ensure!(
        a.header("allow").is_some_and(|v| v.contains("POST")),
        "{a:?}"
    );
    expect_error(
        &api.request("POST", &tl_path(&ttid), None, b"")?,
        405,
        "POST tl",
    )?;
    expect_error(
        &api.request("DELETE", "/v1/status", None, b"")?,
        405,
        "DELETE status",
    )?;

    // Delete: 200 dir_existed true, then false; then 404 on GET.
    let dir = sk.timeline_dir(&ttid);
    ensure!(dir.exists());
    let a = api.delete(&tl_path(&ttid))?;
    ensure!(
        a.status == 200 && a.json() == json!({"dir_existed": true}),
        "{a:?}"
    );
    ensure!(!dir.exists());
    let a = api.delete(&tl_path(&ttid))?;
    ensure!(
        a.status == 200 && a.json() == json!({"dir_existed": false}),
        "{a:?}"
    );
    expect_error(&api.get(&tl_path(&ttid))?, 404, "deleted")?;
    sk.assert_no_panics();
    Ok(())
}

/// `walproposer generate` into the created timeline with `extra` flags; its stdout.
fn generate(sk: &Safekeeper, ttid: &TenantTimelineId, extra: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("walproposer"));
    cmd.args(["generate", "--safekeepers", &sk.member()])
        .args(["--tenant-id", &ttid.tenant_id.to_string()])
        .args(["--timeline-id", &ttid.timeline_id.to_string()])
        .args(["--start-lsn", START])
        .args(extra);
    cmd
}

fn end_lsn(stdout: &str) -> anyhow::Result<Lsn> {
    Ok(integration_tests::sk::generated_wal_range(stdout)?.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_timeline_takes_a_proposer_and_readers_from_start_lsn() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let api = api(&sk);
    let ttid = new_ttid();
    let start: Lsn = START.parse()?;
    let a = api.post_json("/v1/tenant/timeline", &create_body(&ttid, &sk))?;
    ensure!(a.status == 201, "{a:?}");

    // A reader waits at start_lsn before any WAL is there.
    let q = format!("START_REPLICATION PHYSICAL {start}");
    let mut reader = ReplStream::start(&sk, Some(&ttid), "http-api-reader", &q).await?;

    // A slow proposer: while it streams, the status lists it and the reader.
    let child = generate(&sk, &ttid, &["--bytes", "3M", "--rate", "1M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let st = api.get(&tl_path(&ttid))?.json();
        let streaming = st["walreceivers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|r| r["state"] == "streaming"));
        let reading = st["walsenders"]
            .as_array()
            .is_some_and(|w| w.iter().any(|r| r["app_name"] == "http-api-reader"));
        if streaming && reading {
            break st;
        }
        ensure!(
            Instant::now() < deadline,
            "never saw the proposer and the reader: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(seen["computes"] == 1 && seen["readers"] == 1, "{seen}");
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = end_lsn(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(end > start);

    // Everything from start_lsn reached the reader, as stored.
    let got = reader.read_wal(start, end, Duration::from_secs(30)).await?;
    ensure!(got == read_wal_range(&sk.timeline_dir(&ttid), start, end)?);
    let st = sk.timeline_status(&ttid)?;
    ensure!(st.flush_lsn == end && st.commit_lsn == end && st.timeline_start_lsn == start);
    let st = api.get(&tl_path(&ttid))?.json();
    ensure!(st["mconf"]["generation"] == 1 && st["term"] == 1, "{st}");
    ensure!(st["walreceivers"] == json!([]), "{st}");
    drop(reader);
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_a_reader_and_removes_timelines_and_tenants() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let api = api(&sk);
    let tenant = TenantId::generate();
    let ttids: Vec<TenantTimelineId> = (0..2)
        .map(|_| TenantTimelineId::new(tenant, utils::TimelineId::generate()))
        .collect();
    for t in &ttids {
        ensure!(
            api.post_json("/v1/tenant/timeline", &create_body(t, &sk))?
                .status
                == 201
        );
    }
    let start: Lsn = START.parse()?;
    let out = run(&mut generate(&sk, &ttids[0], &["--bytes", "1M"]))?;
    let end = end_lsn(&out)?;
    let q = format!("START_REPLICATION PHYSICAL {start}");
    let mut reader = ReplStream::start(&sk, Some(&ttids[0]), "doomed-reader", &q).await?;
    reader.read_wal(start, end, Duration::from_secs(30)).await?;

    // Deleting the timeline ends the reader's stream (an error saying why) and the files.
    let a = api.delete(&tl_path(&ttids[0]))?;
    ensure!(a.json() == json!({"dir_existed": true}), "{a:?}");
    let ended = loop {
        match reader.next(Duration::from_secs(30)).await {
            Ok(send_wal_util::Frame::Keepalive(_)) => continue,
            other => break other,
        }
    };
    ensure!(
        ended.is_err(),
        "the stream must end with an error: {ended:?}"
    );
    ensure!(!sk.timeline_dir(&ttids[0]).exists());

    // Deleting the tenant deletes the rest and its directory.
    let tenant_dir = sk.datadir().join(tenant.to_string());
    ensure!(tenant_dir.exists());
    let a = api.delete(&format!("/v1/tenant/{tenant}"))?;
    ensure!(a.status == 200, "{a:?}");
    ensure!(
        a.json() == json!({ ttids[1].timeline_id.to_string(): {"dir_existed": true} }),
        "{a:?}"
    );
    ensure!(!tenant_dir.exists(), "the tenant directory is removed");
    let a = api.delete(&format!("/v1/tenant/{tenant}"))?;
    ensure!(a.status == 200 && a.json() == json!({}), "{a:?}");
    ensure!(api.get("/v1/tenant/timeline")?.json() == json!([]));
    sk.assert_no_panics();
    Ok(())
}

/// True once the server closed `s` (EOF or reset) within `limit`.
fn closed_by_server(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn stalled_clients_are_dropped_and_connections_capped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk1"),
        false,
        &["--http-header-timeout", "1", "--http-max-connections", "2"],
    )?;
    let addr = ("127.0.0.1", sk.http_port);
    // Half a request line, then nothing; and a connection that never sends a byte: both
    // are closed by the server (the assertion is that they are, not how fast).
    let mut half = std::net::TcpStream::connect(addr)?;
    half.write_all(b"GET /v1/sta")?;
    let mut silent = std::net::TcpStream::connect(addr)?;
    ensure!(closed_by_server(&mut half, Duration::from_secs(60)));
    ensure!(closed_by_server(&mut silent, Duration::from_secs(60)));

    // Two connections hold both slots: the third is answered 503 and closed.
    let mut held: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")?;
        held.push(s);
    }
    // Slots are taken in the order connections are accepted, which is the order they
    // were made: the third finds none.
    let a = api(&sk).get("/v1/status")?;
    expect_error(&a, 503, "over the connection cap")?;
    drop(held);
    // Slots come back once those connections end.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api(&sk).get("/v1/status")?.status != 200 {
        ensure!(Instant::now() < deadline, "slots never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    sk.assert_no_panics();
    Ok(())
}
