//! `PUT /v1/tenant/{t}/timeline/{tl}/membership` against the real binary: a higher
//! generation is switched to and shown, survives a restart (persisted), the same body is
//! idempotent, another body of the same generation is 409, a lower one answers with the
//! current configuration; a proposer of the old generation is refused on its next vote or
//! append (generation mismatch) and learns the new configuration from the greeting; a
//! safekeeper left out of the configuration refuses votes and appends.

use std::path::Path;

use anyhow::{Context, ensure};
use integration_tests::http::{Answer, Api};
use integration_tests::sk::Safekeeper;
use integration_tests::test_proposer::{Cluster, TestProposer, server_error};
use pq_proto::proposer::{Configuration, Generation, ProtocolVersion, SafekeeperId};
use serde_json::{Value, json};
use utils::{NodeId, TenantId, TenantTimelineId, Term, TimelineId};

fn path(ttid: &TenantTimelineId) -> String {
    format!(
        "/v1/tenant/{}/timeline/{}",
        ttid.tenant_id, ttid.timeline_id
    )
}

fn members(ids: &[u64]) -> Value {
    json!(
        ids.iter()
            .map(|i| json!({"id": i, "host": "127.0.0.1", "pg_port": 5000 + i}))
            .collect::<Vec<_>>()
    )
}

fn conf(generation: u32, ids: &[u64]) -> Value {
    json!({"generation": generation, "members": members(ids), "new_members": null})
}

fn typed(generation: u32, ids: &[u64]) -> Configuration {
    Configuration {
        generation: Generation(generation),
        members: ids
            .iter()
            .map(|i| SafekeeperId {
                id: NodeId(*i),
                host: "127.0.0.1".into(),
                pg_port: 5000 + *i as u16,
            })
            .collect(),
        new_members: None,
    }
}

fn put(api: &Api, ttid: &TenantTimelineId, body: &Value) -> anyhow::Result<Answer> {
    api.request(
        "PUT",
        &format!("{}/membership", path(ttid)),
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

const CLUSTER: Cluster = Cluster {
    pg_version: 150000,
    system_id: 0,
    wal_seg_size: 16 << 20,
};

/// Safekeeper 1 under `dir` with a timeline created in generation 1 of {1,2,3}.
fn created(dir: &Path) -> anyhow::Result<(Safekeeper, Api, TenantTimelineId)> {
    let sk = Safekeeper::start(1, &dir.join("sk1"), true)?;
    let api = Api::new(sk.http_port);
    let ttid = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let a = api.post_json(
        "/v1/tenant/timeline",
        &json!({
            "tenant_id": ttid.tenant_id.to_string(),
            "timeline_id": ttid.timeline_id.to_string(),
            "mconf": conf(1, &[1, 2, 3]),
            "pg_version": 150000,
            "start_lsn": "0/149F0D8",
        }),
    )?;
    ensure!(a.status == 201, "{a:?}");
    Ok((sk, api, ttid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_switches_persist_and_fence_old_generations() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut sk, api, ttid) = created(dir.path())?;

    // A proposer of generation 1 greets and wins term 1.
    let mut old = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    old.greet_with(CLUSTER, typed(1, &[1, 2, 3])).await?;
    ensure!(old.vote(Term(1)).await?.vote_given);

    // Generation 2: switched, shown, answered with both configurations.
    let a = put(&api, &ttid, &conf(2, &[1, 2, 4]))?;
    ensure!(a.status == 200, "{a:?}");
    let b = a.json();
    ensure!(b["previous_conf"] == conf(1, &[1, 2, 3]), "{b}");
    ensure!(b["current_conf"] == conf(2, &[1, 2, 4]), "{b}");
    ensure!(
        b["flush_lsn"] == "0/149F0D8" && b["last_log_term"] == 0,
        "{b}"
    );
    ensure!(api.get(&path(&ttid))?.json()["mconf"] == conf(2, &[1, 2, 4]));
    // The same again: idempotent.
    let a = put(&api, &ttid, &conf(2, &[1, 2, 4]))?;
    ensure!(
        a.status == 200 && a.json()["previous_conf"] == a.json()["current_conf"],
        "{a:?}"
    );
    // Another configuration of generation 2: 409. A lower one: the current one, unchanged.
    let a = put(&api, &ttid, &conf(2, &[1, 2]))?;
    ensure!(a.status == 409, "{a:?}");
    let a = put(&api, &ttid, &conf(1, &[1]))?;
    ensure!(
        a.status == 200 && a.json()["current_conf"] == conf(2, &[1, 2, 4]),
        "{a:?}"
    );

    // The old proposer's next vote carries generation 1: refused.
    let e = old
        .vote(Term(2))
        .await
        .expect_err("an old generation's vote");
    let f = server_error(&e).context("an ErrorResponse")?;
    ensure!(f.message.contains("generation mismatch"), "{f:?}");
    // A new connection greeting with generation 1 learns generation 2, and is refused.
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    let g = p.greet_with(CLUSTER, typed(1, &[1, 2, 3])).await?;
    ensure!(g.mconf == typed(2, &[1, 2, 4]), "{g:?}");
    ensure!(p.vote(Term(2)).await.is_err());

    // Persisted: the same after a kill and a restart.
    sk.kill()?;
    sk.restart()?;
    let api = Api::new(sk.http_port);
    ensure!(api.get(&path(&ttid))?.json()["mconf"] == conf(2, &[1, 2, 4]));

    // A generation-2 proposer works; after generation 3 leaves this safekeeper out, even a
    // generation-3 proposer gets no vote.
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    p.greet_with(CLUSTER, typed(2, &[1, 2, 4])).await?;
    ensure!(p.vote(Term(2)).await?.vote_given);
    let a = put(&api, &ttid, &conf(3, &[2, 3, 4]))?;
    ensure!(a.status == 200, "{a:?}");
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    p.greet_with(CLUSTER, typed(3, &[2, 3, 4])).await?;
    let e = p.vote(Term(3)).await.expect_err("a non-member's vote");
    let f = server_error(&e).context("an ErrorResponse")?;
    ensure!(
        f.message.contains("does not include this safekeeper"),
        "{f:?}"
    );
    ensure!(api.get(&path(&ttid))?.json()["term"] == 2);

    // Bad input and a missing timeline.
    let a = put(&api, &ttid, &json!({"generation": 4, "members": []}))?;
    ensure!(a.status == 400, "{a:?}");
    let a = put(&api, &ttid, &json!({"generation": "x"}))?;
    ensure!(a.status == 400, "{a:?}");
    let other = TenantTimelineId::new(TenantId::generate(), TimelineId::generate());
    let a = put(&api, &other, &conf(4, &[1]))?;
    ensure!(a.status == 404, "{a:?}");
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_bump_raises_the_term_durably_and_fences_lower_terms() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut sk, api, ttid) = created(dir.path())?;
    let bump = |body: Value| api.post_json(&format!("{}/term_bump", path(&ttid)), &body);
    let a = bump(json!({"term": 7}))?;
    ensure!(
        a.status == 200 && a.json() == json!({"previous_term": 0, "current_term": 7}),
        "{a:?}"
    );
    // Never lowered.
    let a = bump(json!({"term": 3}))?;
    ensure!(
        a.json() == json!({"previous_term": 7, "current_term": 7}),
        "{a:?}"
    );
    // No term: one above.
    let a = bump(json!({}))?;
    ensure!(
        a.json() == json!({"previous_term": 7, "current_term": 8}),
        "{a:?}"
    );
    ensure!(bump(json!({"term": "x"}))?.status == 400);
    ensure!(api.get(&path(&ttid))?.json()["term"] == 8);

    // Durable: after a kill, a proposer's vote for term 8 is refused, 9 is given.
    sk.kill()?;
    sk.restart()?;
    ensure!(Api::new(sk.http_port).get(&path(&ttid))?.json()["term"] == 8);
    let mut p = TestProposer::connect(&sk.addr(), ttid, ProtocolVersion::V3, false).await?;
    let g = p.greet_with(CLUSTER, typed(1, &[1, 2, 3])).await?;
    ensure!(g.term == Term(8), "{g:?}");
    ensure!(!p.vote(Term(8)).await?.vote_given);
    ensure!(p.vote(Term(9)).await?.vote_given);
    Ok(())
}
