//! `walproposer membership`: moves a timeline from one set of safekeepers to another
//! without stopping its writes, through the safekeepers' HTTP API, the way a control plane
//! would.
//!
//! Steps (each must be taken by a majority of every set concerned before the next):
//! 1. read the configuration the old members hold (a majority must answer) and judge
//!    where the change stands ([`plan::stage`]: a change that stopped half-way resumes);
//! 2. new members that lack the timeline copy it from the old ones (`POST /v1/pull_timeline`);
//! 3. the joint configuration (generation N+1: members `--from`, new members `--to`) on
//!    every safekeeper of both sets — a running proposer is refused at its next message,
//!    learns the configuration from the greeting and is elected again by majorities of
//!    both sets, so every commit from then on is on a majority of the new set too;
//! 4. note the highest term and the most advanced (last log term, flush_lsn) of the old
//!    set (a majority must answer), raise the new members' terms to that term
//!    (`POST …/term_bump`: a member re-added with a fresh copy has forgotten its former
//!    promises), and wait until a majority of the new set holds that term and position;
//! 5. the final configuration (generation N+2: members `--to`) on every safekeeper of both
//!    sets; the removed ones then refuse votes and appends. Their copies are left for the
//!    operator to delete (`DELETE /v1/tenant/{t}/timeline/{tl}`).
//!
//! Owns: the subcommand and its HTTP calls. Must never: install a configuration before
//! the previous step has its majorities, or go on when another generation shows up.

pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use pq_proto::proposer::{Configuration, Generation, SafekeeperId};
use serde_json::{Value, json};
use utils::{Lsn, NodeId, TenantId, TenantTimelineId, TimelineId};

use crate::members;
use plan::{Plan, Stage, majority_of};

/// Flags of `walproposer membership`.
#[derive(Args, Debug, Clone)]
pub struct MembershipArgs {
    /// Tenant id (32 hex characters).
    #[arg(long, value_name = "HEX")]
    pub tenant_id: TenantId,
    /// Timeline id (32 hex characters).
    #[arg(long, value_name = "HEX")]
    pub timeline_id: TimelineId,
    /// The current members, `ID@host:pg_port` separated by commas.
    #[arg(
        long,
        value_name = "ID@H:P,...",
        value_delimiter = ',',
        required = true
    )]
    pub from: Vec<String>,
    /// The members to move to, `ID@host:pg_port` separated by commas.
    #[arg(
        long,
        value_name = "ID@H:P,...",
        value_delimiter = ',',
        required = true
    )]
    pub to: Vec<String>,
    /// The HTTP API of every safekeeper of both sets, `ID=URL` separated by commas (e.g.
    /// `1=http://sk1:7676,4=http://sk4:7676`).
    #[arg(
        long,
        value_name = "ID=URL,...",
        value_delimiter = ',',
        required = true
    )]
    pub http: Vec<String>,
    /// A file holding the JWT for the safekeepers' HTTP API (scope `safekeeperdata`, or
    /// `tenant` for this tenant); default: `$SAFEKEEPER_TOKEN`.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<std::path::PathBuf>,
    /// How long to wait for a majority of the new set to catch up, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub catch_up_timeout: u64,
}

/// Runs the change; prints each step and how long it took.
pub async fn run(a: MembershipArgs) -> anyhow::Result<()> {
    let from = id_list(&a.from).context("invalid --from")?;
    let to = id_list(&a.to).context("invalid --to")?;
    let urls = http_map(&a.http)?;
    let all = union(&from, &to);
    for m in &all {
        if !urls.contains_key(&m.id) {
            bail!("--http gives no URL for safekeeper {}", m.id.0);
        }
    }
    let token = crate::driver::load_token(a.token_file.as_deref())?;
    let api = Api::new(urls, token)?;
    let ttid = TenantTimelineId::new(a.tenant_id, a.timeline_id);
    let started = Instant::now();

    // 1. Where the change stands.
    let mut current = Configuration::empty();
    let mut answered = Vec::new();
    for m in &from {
        match api.status(m.id, &ttid).await {
            Ok(Some(st)) => {
                let c = conf_from_json(&st["mconf"])
                    .with_context(|| format!("safekeeper {}'s configuration", m.id.0))?;
                if c.generation > current.generation {
                    current = c;
                }
                answered.push(m.id);
            }
            Ok(None) => println!("safekeeper {}: no timeline {ttid}", m.id.0),
            Err(e) => println!("safekeeper {}: {e:#}", m.id.0),
        }
    }
    if !majority_of(&from, |id| answered.contains(&id)) {
        bail!(
            "only {} of the {} old members answered with the timeline: a majority is needed",
            answered.len(),
            from.len()
        );
    }
    let base = match plan::stage(&current, &from, &to)? {
        Stage::Done(g) => {
            println!(
                "already done: generation {} has members {}",
                g.0,
                names(&to)
            );
            return Ok(());
        }
        Stage::Start(g) | Stage::Joint(g) => g,
    };
    let resume = current.new_members.is_some();
    let plan = Plan::new(base, &from, &to);

    // 2. New members get the timeline from the old ones.
    for m in to.iter().filter(|m| !from.iter().any(|f| f.id == m.id)) {
        if api.status(m.id, &ttid).await?.is_none() {
            let t = Instant::now();
            let hosts: Vec<String> = from.iter().map(|f| api.urls[&f.id].clone()).collect();
            api.pull(m.id, &ttid, &hosts).await?;
            println!(
                "safekeeper {}: timeline pulled from the old members in {:?}",
                m.id.0,
                t.elapsed()
            );
        }
    }

    // 3. The joint configuration.
    if !resume {
        let t = Instant::now();
        install(&api, &ttid, &plan.joint, &all, &[&from, &to]).await?;
        println!(
            "generation {}: joint configuration {} → {} installed in {:?}",
            plan.joint.generation.0,
            names(&from),
            names(&to),
            t.elapsed()
        );
    }

    // 4. A majority of the new set reaches what the old set reached: its highest term
    //    (raised with term_bump where lower, so no former promise can be forgotten by the
    //    new set) and its most advanced (last log term, flush_lsn).
    let t = Instant::now();
    let mut term = 0u64;
    let mut pos = (0u64, Lsn::INVALID);
    let mut seen = Vec::new();
    for m in &from {
        if let Ok(Some(st)) = api.status(m.id, &ttid).await {
            term = term.max(st["term"].as_u64().context("term")?);
            pos = pos.max((
                st["last_log_term"].as_u64().context("last_log_term")?,
                lsn(&st["flush_lsn"])?,
            ));
            seen.push(m.id);
        }
    }
    if !majority_of(&from, |id| seen.contains(&id)) {
        bail!(
            "only {} of the {} old members answered after the joint configuration: a majority \
             is needed to know what the new set must reach; run again to resume",
            seen.len(),
            from.len()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(a.catch_up_timeout);
    loop {
        let mut at = HashMap::new();
        for m in &to {
            let Ok(Some(st)) = api.status(m.id, &ttid).await else {
                continue;
            };
            let mut t_m = st["term"].as_u64().context("term")?;
            if t_m < term {
                t_m = api.bump_term(m.id, &ttid, term).await.unwrap_or(t_m);
            }
            let p_m = (
                st["last_log_term"].as_u64().context("last_log_term")?,
                lsn(&st["flush_lsn"])?,
            );
            at.insert(m.id, (t_m, p_m));
        }
        if majority_of(&to, |id| {
            at.get(&id)
                .is_some_and(|&(t_m, p_m)| t_m >= term && p_m >= pos)
        }) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "a majority of the new set did not reach term {term} and WAL {}/{} within {} s \
                 (term, (last log term, flush) per safekeeper: {at:?}); the joint configuration \
                 stays installed: run again to resume",
                pos.0,
                pos.1,
                a.catch_up_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "a majority of {} holds term {term} and the old set's WAL up to {} of term {} ({:?})",
        names(&to),
        pos.1,
        pos.0,
        t.elapsed()
    );

    // 5. The final configuration.
    let t = Instant::now();
    install(&api, &ttid, &plan.last, &all, &[&to]).await?;
    println!(
        "generation {}: members {} ({:?}); the change took {:?}",
        plan.last.generation.0,
        names(&to),
        t.elapsed(),
        started.elapsed()
    );
    let removed: Vec<&SafekeeperId> = from
        .iter()
        .filter(|m| !to.iter().any(|n| n.id == m.id))
        .collect();
    for m in removed {
        println!(
            "safekeeper {} is no longer a member; delete its copy with DELETE /v1/tenant/{}/timeline/{}",
            m.id.0, ttid.tenant_id, ttid.timeline_id
        );
    }
    Ok(())
}

/// Puts `conf` on every safekeeper of `all`; a majority of each of `sets` must take it.
async fn install(
    api: &Api,
    ttid: &TenantTimelineId,
    conf: &Configuration,
    all: &[SafekeeperId],
    sets: &[&Vec<SafekeeperId>],
) -> anyhow::Result<()> {
    let mut took = Vec::new();
    let mut errors = Vec::new();
    for m in all {
        match api.put_membership(m.id, ttid, conf).await {
            Ok(now) if now.generation == conf.generation => took.push(m.id),
            Ok(now) => bail!(
                "safekeeper {} holds generation {}, above the {} being installed: another change \
                 is under way",
                m.id.0,
                now.generation.0,
                conf.generation.0
            ),
            Err(e) => errors.push(format!("safekeeper {}: {e:#}", m.id.0)),
        }
    }
    for set in sets {
        if !majority_of(set, |id| took.contains(&id)) {
            bail!(
                "generation {} was taken by {:?} only, not by a majority of {}: {}",
                conf.generation.0,
                took.iter().map(|i| i.0).collect::<Vec<_>>(),
                names(set),
                errors.join("; ")
            );
        }
    }
    for e in errors {
        println!("{e} (the majorities took it without this safekeeper)");
    }
    Ok(())
}

/// A `--from`/`--to` list: ids are required.
fn id_list(entries: &[String]) -> anyhow::Result<Vec<SafekeeperId>> {
    let s = members::parse_safekeepers(entries)?;
    if s.mconf.members.is_empty() {
        bail!("give every safekeeper as ID@host:pg_port");
    }
    Ok(s.mconf.members)
}

/// The `--http` list.
fn http_map(entries: &[String]) -> anyhow::Result<HashMap<NodeId, String>> {
    let mut map = HashMap::new();
    for e in entries {
        let (id, url) = e
            .split_once('=')
            .with_context(|| format!("--http entry \"{e}\": expected ID=URL"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("--http entry \"{e}\": the id must be a number"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--http entry \"{e}\": the URL must start with http:// or https://");
        }
        map.insert(NodeId(id), url.trim_end_matches('/').to_string());
    }
    Ok(map)
}

fn union(a: &[SafekeeperId], b: &[SafekeeperId]) -> Vec<SafekeeperId> {
    let mut all = a.to_vec();
    for m in b {
        if !all.iter().any(|x| x.id == m.id) {
            all.push(m.clone());
        }
    }
    all
}

fn names(set: &[SafekeeperId]) -> String {
    let ids: Vec<String> = set.iter().map(|m| m.id.0.to_string()).collect();
    format!("{{{}}}", ids.join(","))
}

fn lsn(v: &Value) -> anyhow::Result<Lsn> {
    v.as_str()
        .context("an LSN is missing")?
        .parse()
        .map_err(|e| anyhow::anyhow!("bad LSN {v}: {e}"))
}

/// A configuration as the API writes it.
fn conf_json(c: &Configuration) -> Value {
    let list = |s: &[SafekeeperId]| -> Vec<Value> {
        s.iter()
            .map(|m| json!({"id": m.id.0, "host": m.host, "pg_port": m.pg_port}))
            .collect()
    };
    json!({
        "generation": c.generation.0,
        "members": list(&c.members),
        "new_members": c.new_members.as_deref().map(list),
    })
}

/// A configuration from the API's JSON.
fn conf_from_json(v: &Value) -> anyhow::Result<Configuration> {
    let list = |v: &Value| -> anyhow::Result<Vec<SafekeeperId>> {
        v.as_array()
            .context("a member list is not an array")?
            .iter()
            .map(|m| {
                Ok(SafekeeperId {
                    id: NodeId(m["id"].as_u64().context("a member id")?),
                    host: m["host"].as_str().context("a member host")?.to_string(),
                    pg_port: u16::try_from(m["pg_port"].as_u64().context("a member port")?)?,
                })
            })
            .collect()
    };
    Ok(Configuration {
        generation: Generation(u32::try_from(
            v["generation"].as_u64().context("no generation")?,
        )?),
        members: list(&v["members"])?,
        new_members: match &v["new_members"] {
            Value::Null => None,
            n => Some(list(n)?),
        },
    })
}

/// The safekeepers' HTTP API.
struct Api {
    http: reqwest::Client,
    urls: HashMap<NodeId, String>,
    token: Option<Arc<str>>,
}

impl Api {
    fn new(urls: HashMap<NodeId, String>, token: Option<Arc<str>>) -> anyhow::Result<Api> {
        // One crypto provider for https:// URLs.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .build()?;
        Ok(Api { http, urls, token })
    }

    async fn send(
        &self,
        id: NodeId,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.urls[&id]);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(&**t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.with_context(|| url.clone())?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.with_context(|| url.clone())?;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, v))
    }

    fn path(ttid: &TenantTimelineId) -> String {
        format!(
            "/v1/tenant/{}/timeline/{}",
            ttid.tenant_id, ttid.timeline_id
        )
    }

    /// The timeline's status, `None` if the safekeeper does not have it.
    async fn status(&self, id: NodeId, ttid: &TenantTimelineId) -> anyhow::Result<Option<Value>> {
        match self
            .send(id, reqwest::Method::GET, &Self::path(ttid), None)
            .await?
        {
            (200, v) => Ok(Some(v)),
            (404, _) => Ok(None),
            (s, v) => bail!("status of {ttid}: HTTP {s}: {}", v["msg"]),
        }
    }

    /// Installs `conf`; returns the configuration the safekeeper holds afterwards.
    async fn put_membership(
        &self,
        id: NodeId,
        ttid: &TenantTimelineId,
        conf: &Configuration,
    ) -> anyhow::Result<Configuration> {
        let path = format!("{}/membership", Self::path(ttid));
        match self
            .send(id, reqwest::Method::PUT, &path, Some(conf_json(conf)))
            .await?
        {
            (200, v) => conf_from_json(&v["current_conf"]),
            (s, v) => bail!("membership: HTTP {s}: {}", v["msg"]),
        }
    }

    /// Raises the timeline's term on safekeeper `id` to `term`; returns the term it has.
    async fn bump_term(
        &self,
        id: NodeId,
        ttid: &TenantTimelineId,
        term: u64,
    ) -> anyhow::Result<u64> {
        let path = format!("{}/term_bump", Self::path(ttid));
        match self
            .send(
                id,
                reqwest::Method::POST,
                &path,
                Some(json!({ "term": term })),
            )
            .await?
        {
            (200, v) => v["current_term"].as_u64().context("current_term"),
            (s, v) => bail!("term_bump: HTTP {s}: {}", v["msg"]),
        }
    }

    /// Copies the timeline onto safekeeper `id` from `hosts`.
    async fn pull(
        &self,
        id: NodeId,
        ttid: &TenantTimelineId,
        hosts: &[String],
    ) -> anyhow::Result<()> {
        let body = json!({
            "tenant_id": ttid.tenant_id.to_string(),
            "timeline_id": ttid.timeline_id.to_string(),
            "http_hosts": hosts,
        });
        match self
            .send(id, reqwest::Method::POST, "/v1/pull_timeline", Some(body))
            .await?
        {
            (200 | 201, _) | (409, _) => Ok(()),
            (s, v) => bail!(
                "pull_timeline onto safekeeper {}: HTTP {s}: {}",
                id.0,
                v["msg"]
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_round_trip_through_json() {
        let sk = |id: u64| SafekeeperId {
            id: NodeId(id),
            host: format!("sk{id}"),
            pg_port: 5454,
        };
        for c in [
            Configuration {
                generation: Generation(2),
                members: vec![sk(1), sk(2), sk(3)],
                new_members: Some(vec![sk(1), sk(2), sk(4)]),
            },
            Configuration {
                generation: Generation(3),
                members: vec![sk(1), sk(2), sk(4)],
                new_members: None,
            },
        ] {
            assert_eq!(conf_from_json(&conf_json(&c)).unwrap(), c);
        }
    }

    #[test]
    fn http_lists_need_ids_and_urls() {
        let m = http_map(&["1=http://a:1/".into(), "4=https://b:2".into()]).unwrap();
        assert_eq!(m[&NodeId(1)], "http://a:1");
        assert!(http_map(&["x=http://a".into()]).is_err());
        assert!(http_map(&["1=a:1".into()]).is_err());
        assert!(http_map(&["http://a:1".into()]).is_err());
    }
}
