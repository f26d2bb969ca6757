//! `POST /v1/pull_timeline`: a timeline copied from its quorum onto a fourth safekeeper is
//! byte-identical and has the same status; it is then usable (a proposer streams to it);
//! repeats get 409; bad requests 400; a pull that fails or is killed mid-way leaves no
//! timeline and an empty `tmp/`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use integration_tests::http::Api;
use integration_tests::pg_tools::run;
use integration_tests::sk::{Safekeeper, workspace_bin};
use serde_json::{Value, json};
use utils::{Lsn, TenantId, TenantTimelineId, TimelineId};

fn start(dir: &Path, ids: std::ops::RangeInclusive<u64>) -> anyhow::Result<Vec<Safekeeper>> {
    ids.map(|i| Safekeeper::start(i, &dir.join(format!("sk{i}")), false))
        .collect()
}

/// `walproposer generate` of `bytes` on `ttid` to `sks`; the end LSN.
fn generate(sks: &[&Safekeeper], ttid: &TenantTimelineId, bytes: &str) -> anyhow::Result<Lsn> {
    let list = sks.iter().map(|s| s.addr()).collect::<Vec<_>>().join(",");
    let out = run(Command::new(workspace_bin("walproposer"))
        .args(["generate", "--safekeepers", &list])
        .args(["--tenant-id", &ttid.tenant_id.to_string()])
        .args(["--timeline-id", &ttid.timeline_id.to_string()])
        .args([
            "--bytes",
            bytes,
            "--record-size",
            "3k",
            "--append-size",
            "64k",
        ]))?;
    Ok(integration_tests::sk::generated_wal_range(&out)?.1)
}

fn hosts(sks: &[&Safekeeper]) -> Value {
    json!(
        sks.iter()
            .map(|s| format!("http://127.0.0.1:{}", s.http_port))
            .collect::<Vec<_>>()
    )
}

fn pull(
    to: &Safekeeper,
    ttid: &TenantTimelineId,
    from: &[&Safekeeper],
) -> anyhow::Result<(u16, Value)> {
    let a = Api::new(to.http_port).post_json(
        "/v1/pull_timeline",
        &json!({
            "tenant_id": ttid.tenant_id.to_string(),
            "timeline_id": ttid.timeline_id.to_string(),
            "http_hosts": hosts(from),
        }),
    )?;
    Ok((a.status, a.json()))
}

fn status(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<(u16, Value)> {
    let a = Api::new(sk.http_port).get(&format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    ))?;
    Ok((a.status, a.json()))
}

/// The status fields that are the timeline's, not the node's (connections, offload).
fn durable_fields(v: &Value) -> Value {
    let keys = [
        "tenant_id",
        "timeline_id",
        "mconf",
        "term",
        "last_log_term",
        "flush_lsn",
        "commit_lsn",
        "timeline_start_lsn",
        "local_start_lsn",
        "peer_horizon_lsn",
        "backup_lsn",
        "remote_consistent_lsn",
        "term_history",
        "pg_version",
        "system_id",
        "wal_seg_size",
    ];
    json!(
        keys.iter()
            .map(|k| (k.to_string(), v[k].clone()))
            .collect::<serde_json::Map<_, _>>()
    )
}

/// Names and contents of the WAL files of a timeline directory (not the control file).
fn wal_files(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("safekeeper.control") {
            continue;
        }
        out.push((name, std::fs::read(e.path())?));
    }
    out.sort();
    Ok(out)
}

fn tmp_entries(sk: &Safekeeper) -> Vec<String> {
    std::fs::read_dir(sk.datadir().join("tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pull_onto_a_fourth_safekeeper_is_byte_identical() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start(dir.path(), 1..=3)?;
    let three: Vec<&Safekeeper> = sks.iter().collect();
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let end = generate(&three, &ttid, "40M")?;
    let sk4 = Safekeeper::start(4, &dir.path().join("sk4"), true)?;

    let t0 = Instant::now();
    let (code, body) = pull(&sk4, &ttid, &three)?;
    let took = t0.elapsed();
    ensure!(code == 200, "pull: {code} {body}");
    eprintln!(
        "pulled {} bytes in {took:?} (server: {}s) from {}",
        body["wal_bytes"], body["seconds"], body["safekeeper_host"]
    );
    let donor = sks
        .iter()
        .find(|s| body["safekeeper_host"] == format!("http://127.0.0.1:{}", s.http_port))
        .context("the donor is one of the three")?;

    // Byte-identical segments, equal status. The donor may also hold the next segment,
    // prepared ahead of the writer (all zeros): not WAL, not copied.
    let theirs = wal_files(&donor.timeline_dir(&ttid))?;
    let ours = wal_files(&sk4.timeline_dir(&ttid))?;
    ensure!(ours.len() >= 3, "{} segments", ours.len());
    for (name, bytes) in &theirs {
        match ours.iter().find(|o| &o.0 == name) {
            Some(o) => ensure!(&o.1 == bytes, "segment {name} differs"),
            None => ensure!(
                bytes.iter().all(|b| *b == 0),
                "segment {name} holds WAL but was not copied"
            ),
        }
    }
    for (name, _) in &ours {
        ensure!(
            theirs.iter().any(|t| &t.0 == name),
            "{name} is not the donor's"
        );
    }
    let (_, d) = status(donor, &ttid)?;
    let (_, p) = status(&sk4, &ttid)?;
    ensure!(
        durable_fields(&d) == durable_fields(&p),
        "donor {d}\npulled {p}"
    );
    ensure!(p["flush_lsn"] == end.to_string(), "{p}");
    ensure!(body["timeline"]["flush_lsn"] == end.to_string(), "{body}");

    // Again: 409, nothing changed.
    let (code, body) = pull(&sk4, &ttid, &three)?;
    ensure!(code == 409, "repeat: {code} {body}");

    // It survives a restart and is usable: a proposer with sk4 in its quorum streams on.
    let mut sk4 = sk4;
    sk4.kill()?;
    sk4.restart()?;
    let (_, again) = status(&sk4, &ttid)?;
    ensure!(
        durable_fields(&again) == durable_fields(&p),
        "after restart {again}"
    );
    let end2 = generate(&[&sks[0], &sks[1], &sk4], &ttid, "2M")?;
    ensure!(end2 > end);
    let (_, after) = status(&sk4, &ttid)?;
    ensure!(after["flush_lsn"] == end2.to_string(), "{after}");
    ensure!(tmp_entries(&sk4).is_empty());
    sk4.assert_no_panics();
    Ok(())
}

#[test]
fn bad_requests_and_missing_timelines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sks = start(dir.path(), 1..=2)?;
    let api = Api::new(sks[1].http_port);
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    // No peer has it: 502, and nothing is left.
    let (code, body) = pull(&sks[1], &ttid, &[&sks[0]])?;
    ensure!(code == 502, "{code} {body}");
    ensure!(body["msg"].as_str().unwrap_or("").contains("404"), "{body}");
    ensure!(status(&sks[1], &ttid)?.0 == 404);
    // Malformed bodies: 400.
    for b in [
        json!({"tenant_id": ttid.tenant_id.to_string(), "timeline_id": ttid.timeline_id.to_string(), "http_hosts": []}),
        json!({"tenant_id": ttid.tenant_id.to_string(), "timeline_id": ttid.timeline_id.to_string(), "http_hosts": ["ftp://x"]}),
        json!({"tenant_id": "zz", "timeline_id": ttid.timeline_id.to_string(), "http_hosts": ["http://x"]}),
        json!({"tenant_id": ttid.tenant_id.to_string()}),
    ] {
        let a = api.post_json("/v1/pull_timeline", &b)?;
        ensure!(a.status == 400, "{b}: {} {}", a.status, a.body);
    }
    // A peer that is not there: 502.
    let a = api.post_json(
        "/v1/pull_timeline",
        &json!({"tenant_id": ttid.tenant_id.to_string(), "timeline_id": ttid.timeline_id.to_string(),
                "http_hosts": ["http://127.0.0.1:1"]}),
    )?;
    ensure!(a.status == 502, "{} {}", a.status, a.body);
    // The snapshot of a timeline that does not exist: 404.
    let a = api.get(&format!(
        "/v1/tenant/{}/timeline/{}/snapshot",
        ttid.tenant_id, ttid.timeline_id
    ))?;
    ensure!(a.status == 404, "{} {}", a.status, a.body);
    ensure!(tmp_entries(&sks[1]).is_empty());
    Ok(())
}

/// Starts a pull of `ttid` onto `to` in a thread; waits until its directory appears in
/// `tmp/`, then runs `kill`. `false` if the pull finished before that was seen.
fn kill_mid_pull(
    to: &Safekeeper,
    from: &Safekeeper,
    ttid: &TenantTimelineId,
    kill: impl FnOnce(),
) -> anyhow::Result<(bool, std::thread::JoinHandle<anyhow::Result<u16>>)> {
    let (port, ttid2) = (to.http_port, *ttid);
    let body = json!({
        "tenant_id": ttid.tenant_id.to_string(),
        "timeline_id": ttid.timeline_id.to_string(),
        "http_hosts": [format!("http://127.0.0.1:{}", from.http_port)],
    });
    let _ = ttid2;
    let h = std::thread::spawn(move || {
        Ok(Api::new(port).post_json("/v1/pull_timeline", &body)?.status)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !h.is_finished() {
        if tmp_entries(to).iter().any(|n| n.ends_with(".new")) {
            // Some WAL written: mid-way.
            kill();
            return Ok((true, h));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((false, h))
}

#[test]
fn a_pull_killed_mid_way_leaves_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sks = start(dir.path(), 1..=3)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    generate(&sks.iter().collect::<Vec<_>>(), &ttid, "64M")?;
    // sk4 syncs (slower: the kill lands mid-way).
    let mut sk4 = Safekeeper::start(4, &dir.path().join("sk4"), true)?;

    // The puller killed: after its restart, no timeline and an empty tmp/.
    let mut caught = false;
    for _ in 0..5 {
        let pid = sk4.pid().context("pid")?;
        let (hit, h) = kill_mid_pull(&sk4, &sks[0], &ttid, || unsafe_kill(pid))?;
        let _ = h.join();
        sk4.kill()?;
        sk4.restart()?;
        if hit {
            caught = true;
            ensure!(
                status(&sk4, &ttid)?.0 == 404,
                "a half-pulled timeline exists"
            );
            ensure!(tmp_entries(&sk4).is_empty(), "{:?}", tmp_entries(&sk4));
            ensure!(!sk4.timeline_dir(&ttid).exists());
            break;
        }
        // Finished first: delete it and try again.
        Api::new(sk4.http_port).delete(&format!(
            "/v1/tenant/{}/timeline/{}",
            ttid.tenant_id, ttid.timeline_id
        ))?;
    }
    ensure!(caught, "never caught a pull mid-way");

    // The donor killed: the pull fails (502), nothing is left, without a restart.
    let donor_pid = sks[0].pid().context("pid")?;
    let (hit, h) = kill_mid_pull(&sk4, &sks[0], &ttid, || unsafe_kill(donor_pid))?;
    let code = h.join().expect("thread")?;
    if hit {
        ensure!(code == 502, "pull from a killed donor: {code}");
        ensure!(status(&sk4, &ttid)?.0 == 404);
        ensure!(tmp_entries(&sk4).is_empty(), "{:?}", tmp_entries(&sk4));
    } else {
        eprintln!("the pull finished before the donor's kill (code {code})");
    }
    sks[0].kill()?;
    sk4.assert_no_panics();
    Ok(())
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// With `--http-auth-public-key-path` everywhere: the pull needs a safekeeperdata token,
/// and the puller calls its peers with its `--auth-token-file` token (without one the
/// peers refuse it: 502 naming their 401). A timeline created through the API (WAL = the
/// synthetic image before `start_lsn`) is pulled whole.
#[test]
fn pull_with_authentication_uses_the_peer_token() -> anyhow::Result<()> {
    use integration_tests::jwt::{Scope, TestKeys};
    let dir = tempfile::tempdir()?;
    let keys = TestKeys::new(&dir.path().join("keys"))?;
    let key_path = keys.dir().to_string_lossy().into_owned();
    let admin = keys.token(&Scope::SafekeeperData);
    let token_file = keys.write_token("peer-token", &admin)?;
    let auth = ["--http-auth-public-key-path", key_path.as_str()];
    let donor = Safekeeper::start_with_args(1, &dir.path().join("sk1"), false, &auth)?;
    let with_token = Safekeeper::start_with_args(
        2,
        &dir.path().join("sk2"),
        false,
        &[
            auth[0],
            auth[1],
            "--auth-token-file",
            &token_file.to_string_lossy(),
        ],
    )?;
    let without = Safekeeper::start_with_args(3, &dir.path().join("sk3"), false, &auth)?;
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let a = Api::new(donor.http_port).with_token(&admin).post_json(
        "/v1/tenant/timeline",
        &json!({
            "tenant_id": ttid.tenant_id.to_string(),
            "timeline_id": ttid.timeline_id.to_string(),
            "mconf": {"generation": 1, "members": [{"id": 1, "host": "127.0.0.1", "pg_port": donor.pg_port}]},
            "pg_version": 150000,
            "start_lsn": "0/149F0D8",
        }),
    )?;
    ensure!(a.status == 201, "{a:?}");
    let body = json!({
        "tenant_id": ttid.tenant_id.to_string(),
        "timeline_id": ttid.timeline_id.to_string(),
        "http_hosts": hosts(&[&donor]),
    });
    // A tenant token may not pull; no token at all: 401.
    let tenant = keys.token(&Scope::Tenant(ttid.tenant_id));
    let a = Api::new(with_token.http_port)
        .with_token(&tenant)
        .post_json("/v1/pull_timeline", &body)?;
    ensure!(a.status == 403, "{a:?}");
    let a = Api::new(with_token.http_port).post_json("/v1/pull_timeline", &body)?;
    ensure!(a.status == 401, "{a:?}");
    // Without a peer token the donor refuses the puller.
    let a = Api::new(without.http_port)
        .with_token(&admin)
        .post_json("/v1/pull_timeline", &body)?;
    ensure!(a.status == 502 && a.body.contains("401"), "{a:?}");
    // With one: pulled, identical.
    let a = Api::new(with_token.http_port)
        .with_token(&admin)
        .post_json("/v1/pull_timeline", &body)?;
    ensure!(a.status == 200, "{a:?}");
    let get = |sk: &Safekeeper| -> anyhow::Result<Value> {
        Ok(Api::new(sk.http_port)
            .with_token(&admin)
            .get(&format!(
                "/v1/tenant/{}/timeline/{}",
                ttid.tenant_id, ttid.timeline_id
            ))?
            .json())
    };
    let (d, p) = (get(&donor)?, get(&with_token)?);
    ensure!(
        durable_fields(&d) == durable_fields(&p),
        "donor {d}\npulled {p}"
    );
    ensure!(p["flush_lsn"] == "0/149F0D8", "{p}");
    let theirs = wal_files(&donor.timeline_dir(&ttid))?;
    let ours = wal_files(&with_token.timeline_dir(&ttid))?;
    ensure!(!ours.is_empty());
    for (name, bytes) in &ours {
        ensure!(
            theirs.iter().any(|t| &t.0 == name && &t.1 == bytes),
            "{name} differs from the donor's"
        );
    }
    Ok(())
}
