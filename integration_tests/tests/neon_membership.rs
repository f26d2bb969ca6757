//! Replacing a safekeeper under Neon's compute, driven over HTTP in the order Neon's storage
//! controller drives a migration (RFC 035 as its controller implements it), while pgbench
//! writes through the compute: timeline on {1,2,3} with generation 1, compute started with
//! `g#1:1,2,3`; then
//!
//! 1. the compute is pointed at the union {1,2,3,4} with the joint generation (`g#2:…` in
//!    `postgresql.conf`, reload: the walproposer restarts itself on a changed list);
//! 2. `PUT …/membership` generation 2, members {1,2,3}, new_members {1,2,4}, on the old set;
//!    the highest (last_log_term, flush_lsn) of the answers is the sync position (nothing
//!    after it commits without a majority of the new set); the compute, refused in
//!    generation 1, learns generation 2 from the greetings and restarts its walproposer;
//! 3. `POST /v1/pull_timeline` onto 4 from the old set (the compute then reaches 4, which
//!    is in its list, and streams to it);
//! 4. `POST …/term_bump` on the new set to the old set's highest term;
//! 5. the same joint `PUT` on the new set, repeated until a majority of it reached the sync
//!    position;
//! 6. `PUT` generation 3, members {1,2,4}, on all four (there is no `exclude` route: 3 keeps
//!    the timeline and refuses votes and appends); the compute restarts into generation 3;
//! 7. the compute is pointed at `g#3:1,2,4` (reload);
//! 8. (not a step of the change) a term bump on the new set under the live compute: it is
//!    elected again in a higher term, without failing a transaction.
//!
//! After each step that moves the compute, the test waits until its walproposer was elected
//! again and committed, so every step meets a live compute. No transaction fails; the
//! longest commit stall (the longest pgbench transaction and the longest gap between
//! transaction completions, from pgbench's per-transaction log) and the walproposer's
//! restarts are printed, not asserted. Afterwards 1, 2 and 4 end at the compute's flush
//! position with byte-identical WAL, all four are at generation 3, and 3 refuses appends.
//!
//! The build comes from `NEON_COMPUTE_DIST` (see [`integration_tests::neon`]); without it the
//! test prints one line naming the variable and passes. `NEON_MEMBERSHIP_SECONDS` (default 5)
//! sets how long pgbench runs before the change starts and after it ends.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::http::{Answer, Api};
use integration_tests::neon::{ComputeSettings, NeonBuild, NeonCompute, NeonDataDir};
use integration_tests::real_wal::read_wal_range;
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer, server_error};
use pq_proto::proposer::{Configuration, Generation, ProtocolVersion, SafekeeperId};
use serde_json::{Value, json};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, TimelineId};

/// Generous: a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(120);

fn path(ttid: &TenantTimelineId) -> String {
    format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    )
}

fn member_set(sks: &[&Safekeeper]) -> Value {
    json!(
        sks.iter()
            .map(|sk| json!({"id": sk.id, "host": "127.0.0.1", "pg_port": sk.pg_port}))
            .collect::<Vec<_>>()
    )
}

fn put_membership(sk: &Safekeeper, ttid: &TenantTimelineId, conf: &Value) -> anyhow::Result<Value> {
    let a: Answer = Api::new(sk.http_port).request(
        "PUT",
        &format!("{}/membership", path(ttid)),
        Some("application/json"),
        conf.to_string().as_bytes(),
    )?;
    ensure!(a.status == 200, "membership on safekeeper {}: {a:?}", sk.id);
    Ok(a.json())
}

fn status(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Value> {
    let a = Api::new(sk.http_port).get(&path(ttid))?;
    ensure!(a.status == 200, "status of safekeeper {}: {a:?}", sk.id);
    Ok(a.json())
}

/// (last_log_term, flush_lsn) of a membership answer or a status.
fn position(v: &Value) -> anyhow::Result<(u64, Lsn)> {
    Ok((
        v["last_log_term"].as_u64().context("last_log_term")?,
        v["flush_lsn"].as_str().context("flush_lsn")?.parse()?,
    ))
}

/// What Neon's control plane does to reconfigure a running compute: the new
/// `neon.safekeepers` in `postgresql.conf` (the last setting wins), then a reload.
fn point_compute_at(
    compute: &NeonCompute,
    data: &NeonDataDir,
    generation: u32,
    sks: &[&Safekeeper],
) -> anyhow::Result<()> {
    let list = sks.iter().map(|s| s.addr()).collect::<Vec<_>>().join(",");
    let conf = data.pgdata.join("postgresql.conf");
    let mut all = std::fs::read_to_string(&conf)?;
    all.push_str(&format!("neon.safekeepers = 'g#{generation}:{list}'\n"));
    std::fs::write(&conf, all)?;
    ensure!(compute.psql("select pg_reload_conf()")? == "t");
    Ok(())
}

/// pgbench runs of a few seconds each, one after another, until told to stop: every run's
/// summary and per-transaction log are kept.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<String>>>,
}

impl Load {
    fn start(build: &NeonBuild, connstr: String, logs: &Path) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (pgbench, logs, flag) = (
            build.client("pgbench").get_program().to_owned(),
            logs.to_path_buf(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut summaries = Vec::new();
            let mut run = 0;
            while !flag.load(Ordering::SeqCst) || run == 0 {
                let out = Command::new(&pgbench)
                    .args(["-c", "4", "-j", "2", "-T", "4", "--log"])
                    .arg(format!("--log-prefix={}/run{run}", logs.display()))
                    .arg(&connstr)
                    .stdin(Stdio::null())
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                ensure!(
                    out.status.success(),
                    "pgbench run {run}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                summaries.push(text);
                run += 1;
            }
            Ok(summaries)
        });
        Load { stop, thread }
    }

    fn finish(self) -> anyhow::Result<Vec<String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the pgbench thread panicked"))?
    }
}

/// From pgbench's per-transaction logs (`client txno latency_us script epoch_s epoch_us`):
/// (transactions, failed, longest transaction, longest gap between completions), each run
/// on its own.
fn stalls(logs: &Path) -> anyhow::Result<(usize, usize, Duration, Duration)> {
    let mut runs: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    let mut failed = 0;
    for e in std::fs::read_dir(logs)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let run = name.split('.').next().unwrap_or_default().to_string();
        for line in std::fs::read_to_string(e.path())?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(lat), Some(s), Some(us)) = (f.get(2), f.get(4), f.get(5)) else {
                continue;
            };
            let (Ok(s), Ok(us)) = (s.parse::<u64>(), us.parse::<u64>()) else {
                continue;
            };
            match lat.parse::<u64>() {
                Ok(lat) => runs
                    .entry(run.clone())
                    .or_default()
                    .push((s * 1_000_000 + us, lat)),
                Err(_) => failed += 1,
            }
        }
    }
    let (mut n, mut longest, mut gap) = (0, 0, 0);
    for txs in runs.values_mut() {
        txs.sort();
        n += txs.len();
        longest = longest.max(txs.iter().map(|t| t.1).max().unwrap_or(0));
        gap = gap.max(txs.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or(0));
    }
    Ok((
        n,
        failed,
        Duration::from_micros(longest),
        Duration::from_micros(gap),
    ))
}

/// Waits until `check` holds, polling; its last error on the deadline.
fn wait_for(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() > deadline => bail!("timed out waiting for {what}"),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("waiting for {what}")));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Waits until the compute's walproposer was elected again after `before` (its term on
/// safekeeper `sk` rose: every walproposer start is an election) and then committed past
/// the compute's flush position at that point: the step before took effect on the compute.
fn wait_reelected(
    compute: &NeonCompute,
    sk: &Safekeeper,
    ttid: &TenantTimelineId,
    before: u64,
    what: &str,
) -> anyhow::Result<u64> {
    let mut term = before;
    wait_for(&format!("a new election after {what}"), || {
        term = status(sk, ttid)?["term"].as_u64().context("term")?;
        Ok(term > before)
    })?;
    let flush = compute.flush_lsn()?;
    wait_for(&format!("commits after {what}"), || {
        let st = status(sk, ttid)?;
        Ok(st["commit_lsn"]
            .as_str()
            .context("commit_lsn")?
            .parse::<Lsn>()?
            >= flush)
    })?;
    Ok(term)
}

fn term_of(sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<u64> {
    status(sk, ttid)?["term"].as_u64().context("term")
}

/// Steps 1 to 7 of the module documentation, in the controller's order.
#[test]
fn a_neon_compute_under_pgbench_moves_from_123_to_124() -> anyhow::Result<()> {
    change_members(Order::Controller)
}

/// The other order: 4 pulled first, the joint configuration on all four at once, the
/// compute told only of the final set (`g#3:1,2,4`) at the end. In the joint configuration
/// the compute reaches only 1, 2 and 3 (a majority of each set); 4 stays where the pull
/// left it until the compute is pointed at it, then catches up from the compute.
#[test]
fn a_neon_compute_under_pgbench_moves_with_the_pull_first() -> anyhow::Result<()> {
    change_members(Order::PullFirst)
}

/// The order of the steps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    /// As Neon's storage controller: compute told of the union first, joint configuration
    /// on the old set, pull, joint configuration on the new set.
    Controller,
    /// Pull first, joint configuration on all four, compute told of the final set only.
    PullFirst,
}

fn change_members(order: Order) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("neon-mem-").tempdir()?;
    let Some(build) = NeonBuild::from_env(scratch.path())? else {
        return Ok(());
    };
    let extra: u64 = std::env::var("NEON_MEMBERSHIP_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let sks: Vec<Safekeeper> = (1..=4)
        .map(|i| Safekeeper::start(i, &scratch.path().join(format!("sk{i}")), false))
        .collect::<anyhow::Result<_>>()?;
    let (old, new): (Vec<&Safekeeper>, Vec<&Safekeeper>) = (
        vec![&sks[0], &sks[1], &sks[2]],
        vec![&sks[0], &sks[1], &sks[3]],
    );
    let union: Vec<&Safekeeper> = sks.iter().collect();
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let data = build.initdb(&scratch.path().join("pgdata"))?;

    // The timeline on the old set, generation 1, as the storage controller creates it.
    let body = json!({
        "tenant_id": ttid.tenant_id.to_string(),
        "timeline_id": ttid.timeline_id.to_string(),
        "mconf": {"generation": 1, "members": member_set(&old), "new_members": null},
        "pg_version": 170000,
        "system_id": data.system_id,
        "wal_seg_size": 16 * 1024 * 1024,
        "start_lsn": data.start_lsn.to_string(),
        "commit_lsn": null,
    });
    for sk in &old {
        let a = Api::new(sk.http_port).post_json("/v1/tenant/timeline", &body)?;
        ensure!(a.status == 201, "create on safekeeper {}: {a:?}", sk.id);
    }
    let ports: Vec<u16> = old.iter().map(|sk| sk.pg_port).collect();
    let settings = ComputeSettings::generation(ttid, 1, &ports);
    let compute = NeonCompute::start(&build, &data, &settings, scratch.path())?;
    let logs = scratch.path().join("pgbench-logs");
    std::fs::create_dir(&logs)?;

    let result = (|| -> anyhow::Result<()> {
        compute.pgbench(&["-i", "-s", "2", "-q"])?;
        let load = Load::start(&build, compute.connstr(), &logs);
        std::thread::sleep(Duration::from_secs(extra));
        let t0 = Instant::now();
        let change = (|| -> anyhow::Result<((u64, Lsn), Duration)> {
            let pull = || -> anyhow::Result<()> {
                let hosts: Vec<String> = old
                    .iter()
                    .map(|sk| format!("http://127.0.0.1:{}", sk.http_port))
                    .collect();
                let a = Api::new(sks[3].http_port).post_json(
                    "/v1/pull_timeline",
                    &json!({
                        "tenant_id": ttid.tenant_id.to_string(),
                        "timeline_id": ttid.timeline_id.to_string(),
                        "http_hosts": hosts,
                    }),
                )?;
                ensure!(a.status == 200, "pull_timeline: {a:?}");
                println!("pulled: {}", a.body);
                Ok(())
            };
            let mut term = term_of(&sks[0], &ttid)?;
            if order == Order::PullFirst {
                pull()?;
            } else {
                // 1. The compute learns the joint set first.
                point_compute_at(&compute, &data, 2, &union)?;
                term = wait_reelected(&compute, &sks[0], &ttid, term, "g#2")?;
            }
            // 2. The joint configuration on the old set; the sync position.
            let joint = json!({
                "generation": 2,
                "members": member_set(&old),
                "new_members": member_set(&new),
            });
            // The answers carry no term: each one's is read right after its switch (the
            // compute may be elected again, in a higher term, at any moment from then on).
            let (mut sync, mut sync_term) = ((0, Lsn(0)), 0);
            for sk in &old {
                let a = put_membership(sk, &ttid, &joint)?;
                ensure!(a["current_conf"] == joint, "{a}");
                sync = sync.max(position(&a)?);
                sync_term = sync_term.max(term_of(sk, &ttid)?);
            }
            if order == Order::PullFirst {
                put_membership(&sks[3], &ttid, &joint)?;
            }
            // The compute, refused in generation 1, restarts and is elected in 2.
            let term = wait_reelected(&compute, &sks[0], &ttid, term, "the joint PUT")?;
            println!("sync position {sync:?}, sync term {sync_term}");
            // 3. The timeline onto 4, from the old set.
            if order == Order::Controller {
                pull()?;
            }
            // 4. The new set's term up to the old set's.
            for sk in &new {
                let a = Api::new(sk.http_port).post_json(
                    &format!("{}/term_bump", path(&ttid)),
                    &json!({"term": sync_term}),
                )?;
                ensure!(a.status == 200, "term_bump on {}: {a:?}", sk.id);
            }
            if order == Order::Controller {
                // The compute reaches 4 (it is in its list) and streams to it.
                let flush = compute.flush_lsn()?;
                wait_for("the compute streaming to 4", || {
                    Ok(position(&status(&sks[3], &ttid)?)?.1 >= flush)
                })?;
            }
            // 5. The joint configuration on the new set until a majority of it is there.
            wait_for("a majority of the new set at the sync position", || {
                let mut there = 0;
                for sk in &new {
                    if position(&put_membership(sk, &ttid, &joint)?)? >= sync {
                        there += 1;
                    }
                }
                Ok(there >= 2)
            })?;
            // 6. The final configuration, on all four.
            let last = json!({"generation": 3, "members": member_set(&new), "new_members": null});
            for sk in &union {
                let a = put_membership(sk, &ttid, &last)?;
                ensure!(a["current_conf"] == last, "{a}");
            }
            let term = wait_reelected(&compute, &sks[0], &ttid, term, "the final PUT")?;
            // 7. The compute onto the new set.
            point_compute_at(&compute, &data, 3, &new)?;
            let term = wait_reelected(&compute, &sks[0], &ttid, term, "g#3")?;
            let took = t0.elapsed();
            if order == Order::Controller {
                // A term bump under the live compute (what step 4 would do if the old set's
                // term were ahead): refused with the higher term, the walproposer restarts
                // and is elected above it; the compute does not panic, the last term being
                // its own.
                for sk in &new {
                    let a = Api::new(sk.http_port)
                        .post_json(&format!("{}/term_bump", path(&ttid)), &json!({}))?;
                    ensure!(a.status == 200, "term_bump on {}: {a:?}", sk.id);
                }
                wait_reelected(&compute, &sks[0], &ttid, term + 1, "a term bump")?;
            }
            Ok((sync, took))
        })();
        std::thread::sleep(Duration::from_secs(extra));
        let summaries = load.finish();
        let (sync, took) = change?;
        let summaries = summaries?;
        for s in &summaries {
            ensure!(s.contains("number of failed transactions: 0 "), "{s}");
        }
        let (n, failed, longest, gap) = stalls(&logs)?;
        ensure!(failed == 0 && n > 0, "{n} transactions, {failed} failed");
        let restarts = compute
            .log_tail(usize::MAX)
            .lines()
            .filter(|l| l.contains("FATAL:  [WP]"))
            .count();
        println!(
            "{order:?}: membership change {{1,2,3}} -> {{1,2,4}} took {took:?} under pgbench: {n} \
             transactions in {} runs, 0 failed; longest transaction {longest:?}, longest gap \
             between completions {gap:?}; the walproposer restarted {restarts} times",
            summaries.len()
        );

        // The new set holds everything the compute flushed, byte for byte.
        let flush = compute.flush_lsn()?;
        wait_for("the new set at the compute's flush position", || {
            let mut ok = true;
            for sk in &new {
                let st = status(sk, &ttid)?;
                ok &= position(&st)?.1 >= flush
                    && st["commit_lsn"]
                        .as_str()
                        .context("commit_lsn")?
                        .parse::<Lsn>()?
                        >= flush;
            }
            Ok(ok)
        })?;
        let ends: Vec<Lsn> = new
            .iter()
            .map(|sk| position(&status(sk, &ttid)?).map(|p| p.1))
            .collect::<anyhow::Result<_>>()?;
        let end = ends.iter().copied().min().context("three")?;
        let start: Lsn = status(&sks[0], &ttid)?["timeline_start_lsn"]
            .as_str()
            .context("timeline_start_lsn")?
            .parse()?;
        ensure!(end > sync.1, "{end} after the sync position {}", sync.1);
        let reference = read_wal_range(&sks[0].timeline_dir(&ttid), start, end)?;
        for sk in &new[1..] {
            let theirs = read_wal_range(&sk.timeline_dir(&ttid), start, end)?;
            ensure!(
                theirs == reference,
                "WAL of safekeeper {} differs from safekeeper 1 in {start}..{end}",
                sk.id
            );
        }
        println!(
            "safekeepers 1, 2, 4 byte-identical over {start}..{end} ({} bytes)",
            end.0 - start.0
        );
        for sk in &union {
            ensure!(status(sk, &ttid)?["mconf"]["generation"] == 3);
        }
        // 3 is out: appends (of the current generation) are refused.
        let sk3 = &sks[2];
        let term = status(sk3, &ttid)?["term"].as_u64().context("term")?;
        let flush3: Lsn = position(&status(sk3, &ttid)?)?.1;
        let mconf = Configuration {
            generation: Generation(3),
            members: new
                .iter()
                .map(|sk| SafekeeperId {
                    id: NodeId(sk.id),
                    host: "127.0.0.1".into(),
                    pg_port: sk.pg_port,
                })
                .collect(),
            new_members: None,
        };
        let refused = tokio::runtime::Runtime::new()?.block_on(async {
            let mut p =
                TestProposer::connect(&sk3.addr(), ttid, ProtocolVersion::V3, false).await?;
            let cluster = Cluster {
                pg_version: 170000,
                system_id: data.system_id,
                wal_seg_size: 16 << 20,
            };
            p.greet_with(cluster, mconf).await?;
            p.append(utils::Term(term), flush3, Default::default(), flush3)
                .await?;
            anyhow::Ok(p.append_response().await.err())
        })?;
        let e = refused.context("safekeeper 3 took an append after generation 3")?;
        let f = server_error(&e).with_context(|| format!("an ErrorResponse: {e:#}"))?;
        ensure!(
            f.message.contains("does not include this safekeeper"),
            "{f:?}"
        );
        Ok(())
    })();
    if let Err(e) = result {
        bail!("{e:#}\n{}", compute.log_tail(80));
    }
    drop(compute);
    for sk in &sks {
        sk.assert_no_panics();
    }
    Ok(())
}
