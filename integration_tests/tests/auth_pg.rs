//! JWT authentication on the PostgreSQL port (`--pg-auth-public-key-path`): real `psql`
//! and our own clients with good tokens get in; no token, a bad, expired, `alg: none`,
//! HS256-forged or unknown-key token is refused with 28P01; a token for another tenant
//! may not touch the timeline (42501); keys rotate through a directory; `walproposer`
//! sends its token from `--token-file` or `SAFEKEEPER_TOKEN`; and the wedge of issue 14 (a
//! vote for term 2^64−1 by anyone) is closed.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use integration_tests::jwt::{Scope, TestKeys, psql_fails, psql_with_token};
use integration_tests::pg_tools::{run, run_unchecked};
use integration_tests::sk::{Safekeeper, workspace_bin};
use integration_tests::test_proposer::{Cluster, TestProposer, conninfo, server_error};
use pq_client::PgError;
use pq_proto::backend::SqlState;
use pq_proto::proposer::ProtocolVersion;
use utils::{TenantId, TenantTimelineId, Term, TimelineId};

const CLUSTER: Cluster = Cluster {
    pg_version: 150004,
    system_id: 7_300_000_000_000_000_014,
    wal_seg_size: 16 * 1024 * 1024,
};

fn new_ttid() -> TenantTimelineId {
    TenantTimelineId::new(TenantId::generate(), TimelineId::generate())
}

/// Keys (two: rotation) in `dir/keys` and a safekeeper in `dir/sk` that checks tokens
/// against the directory.
fn start(dir: &Path) -> anyhow::Result<(TestKeys, Safekeeper)> {
    let mut keys = TestKeys::new(&dir.join("keys"))?;
    keys.add_key()?;
    let path = keys.dir().display().to_string();
    let sk = Safekeeper::start_with_args(
        1,
        &dir.join("sk"),
        false,
        &["--pg-auth-public-key-path", &path],
    )?;
    Ok((keys, sk))
}

/// Creates `ttid` with a vote for term 1 (a proposer with `token`).
async fn create(sk: &Safekeeper, ttid: TenantTimelineId, token: &str) -> anyhow::Result<()> {
    let mut p = TestProposer::connect_with_password(
        &sk.addr(),
        ttid,
        ProtocolVersion::V3,
        true,
        Some(token),
    )
    .await?;
    p.greet(CLUSTER).await?;
    anyhow::ensure!(p.vote(Term(1)).await?.vote_given, "vote for term 1 refused");
    Ok(())
}

/// The SQLSTATE of a client error that is a server's ErrorResponse.
fn code(e: &PgError) -> Option<SqlState> {
    match e {
        PgError::Server(f) => Some(f.code),
        _ => None,
    }
}

/// A pq_client connection to `ttid` (or none named) with `password`.
async fn connect(
    sk: &Safekeeper,
    ttid: Option<&TenantTimelineId>,
    password: Option<&str>,
) -> Result<pq_client::PgConn, PgError> {
    let mut ci = match ttid {
        Some(t) => conninfo(&sk.addr(), t, "auth_test"),
        None => pq_client::Conninfo::parse(&format!(
            "host=127.0.0.1 port={} user=postgres application_name=auth_test",
            sk.addr().rsplit(':').next().unwrap_or("0")
        ))?,
    };
    ci.set("replication", "true");
    if let Some(p) = password {
        ci.set("password", p);
    }
    pq_client::connect(&ci).await
}

/// The term in TIMELINE_STATUS, read with `token`.
fn term(sk: &Safekeeper, ttid: &TenantTimelineId, token: &str) -> anyhow::Result<u64> {
    let out = psql_with_token(&sk.conninfo(Some(ttid)), Some(token), "TIMELINE_STATUS")?;
    let line = out
        .lines()
        .next()
        .context("TIMELINE_STATUS returned no row")?;
    Ok(line.split('|').nth(2).context("no term column")?.parse()?)
}

#[tokio::test]
async fn psql_and_clients_with_and_without_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (keys, sk) = start(dir.path())?;
    let ttid = new_ttid();
    let all = keys.token(&Scope::SafekeeperData);
    let mine = keys.token(&Scope::Tenant(ttid.tenant_id));
    let other = keys.token(&Scope::Tenant(TenantId::generate()));
    create(&sk, ttid, &all).await?;

    // Real psql with PGPASSWORD: safekeeperdata, the tenant's own token, and a token
    // signed by the second key of the directory (rotation).
    let ci = sk.conninfo(Some(&ttid));
    for (what, t) in [
        ("safekeeperdata", &all),
        ("tenant", &mine),
        ("second key", &keys.token_by(1, &Scope::SafekeeperData)),
    ] {
        let out = psql_with_token(&ci, Some(t), "TIMELINE_STATUS").context(what)?;
        assert_eq!(out.split('|').nth(2), Some("1"), "{what}: {out}");
    }
    // psql without a password cannot get in; with a bad one it shows the server's refusal.
    let e = psql_fails(&ci, None, "TIMELINE_STATUS")?;
    assert!(e.contains("password"), "{e}");
    let e = psql_fails(
        &ci,
        Some(&keys.forged_none(&Scope::SafekeeperData)),
        "SHOW server_version",
    )?;
    assert!(e.contains("invalid token"), "{e}");
    // A token for another tenant logs in but may not see this timeline.
    let e = psql_fails(&ci, Some(&other), "TIMELINE_STATUS")?;
    assert!(e.contains("42501"), "{e}");

    // Every bad token, and an empty password, is 28P01 at startup.
    let mut bad = keys.all_bad(&Scope::SafekeeperData);
    bad.push(("empty password", String::new()));
    for (what, t) in &bad {
        let e = connect(&sk, Some(&ttid), Some(t))
            .await
            .err()
            .with_context(|| format!("{what}: connected"))?;
        assert_eq!(code(&e), Some(SqlState::INVALID_PASSWORD), "{what}: {e}");
        assert!(
            !e.to_string().contains(t.as_str()) || t.is_empty(),
            "{what}: token echoed"
        );
    }
    // No password at all: our client says the server asks for one.
    let e = connect(&sk, Some(&ttid), None)
        .await
        .err()
        .context("connected")?;
    assert!(matches!(e, PgError::Auth(_)), "{e}");
    // An oversized password message is refused before it is read whole.
    let huge = "x".repeat(64 * 1024);
    let e = connect(&sk, Some(&ttid), Some(&huge))
        .await
        .err()
        .context("connected")?;
    assert!(
        code(&e) == Some(SqlState::INVALID_PASSWORD)
            || matches!(e, PgError::Closed | PgError::Connection(_)),
        "{e}"
    );

    // Another tenant's token: every command that touches the timeline is 42501, named or
    // picked as "the only one"; commands that touch none work.
    for named in [Some(&ttid), None] {
        let mut c = connect(&sk, named, Some(&other)).await?;
        for q in [
            "TIMELINE_STATUS",
            "IDENTIFY_SYSTEM",
            "READER_STATUS",
            "READ_REPLICATION_SLOT s",
            "START_REPLICATION PHYSICAL 0/1000000",
        ] {
            let e = pq_client::simple_query(&mut c, q)
                .await
                .err()
                .with_context(|| format!("{q} answered (named: {})", named.is_some()))?;
            assert_eq!(code(&e), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{q}: {e}");
        }
        let rows = pq_client::simple_query(&mut c, "SHOW server_version").await?;
        assert_eq!(rows.len(), 1);
    }
    // The right tenant's token and safekeeperdata may, also as "the only one".
    for t in [&mine, &all] {
        let mut c = connect(&sk, None, Some(t)).await?;
        let rows = pq_client::simple_query(&mut c, "IDENTIFY_SYSTEM").await?;
        assert_eq!(rows.len(), 1);
    }
    sk.assert_no_panics();
    Ok(())
}

#[tokio::test]
async fn walproposer_sends_its_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (keys, sk) = start(dir.path())?;
    let ttid = new_ttid();
    let generate = |extra: &[&str], env: Option<&str>| {
        let mut c = Command::new(workspace_bin("walproposer"));
        c.args(["generate", "--safekeepers", &sk.addr(), "--bytes", "256k"])
            .args(["--tenant-id", &ttid.tenant_id.to_string()])
            .args(["--timeline-id", &ttid.timeline_id.to_string()])
            .args(extra)
            .env_remove("SAFEKEEPER_TOKEN")
            .env_remove("PGPASSWORD");
        if let Some(t) = env {
            c.env("SAFEKEEPER_TOKEN", t);
        }
        c
    };
    let all = keys.token(&Scope::SafekeeperData);
    let file = keys.write_token("token", &all)?;
    let file = file.display().to_string();
    run(&mut generate(&["--token-file", &file], None)).context("--token-file")?;
    run(&mut generate(&[], Some(&all))).context("SAFEKEEPER_TOKEN")?;
    // The tenant's own token works too.
    let mine = keys.token(&Scope::Tenant(ttid.tenant_id));
    run(&mut generate(&[], Some(&mine))).context("tenant token")?;

    // Without a token, with a forged one or one for another tenant: a clear failure, at
    // once rather than after retrying forever.
    let other = keys.token(&Scope::Tenant(TenantId::generate()));
    for (what, env) in [
        ("no token", None),
        ("forged", Some(keys.forged_hs256(&Scope::SafekeeperData))),
        ("other tenant", Some(other)),
    ] {
        let out = run_unchecked(&mut generate(&[], env.as_deref()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: generate succeeded");
        assert!(
            stderr.contains("refused authentication"),
            "{what}: {stderr}"
        );
    }
    // Both a file and the variable: refused as ambiguous.
    let out = run_unchecked(&mut generate(&["--token-file", &file], Some(&all)))?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one"));
    sk.assert_no_panics();
    Ok(())
}

/// Issue 14's wedge: before authentication anyone could connect, vote for term 2^64−1
/// and leave the timeline unusable ("another proposer holds term 18446744073709551615").
/// Now a START_WAL_PUSH without a token that grants the timeline's tenant is refused
/// before it reaches the acceptor: the term is unchanged and proper proposers go on.
#[tokio::test]
async fn a_huge_term_vote_needs_a_token_for_the_tenant() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (keys, sk) = start(dir.path())?;
    let ttid = new_ttid();
    let all = keys.token(&Scope::SafekeeperData);
    let file = keys.write_token("token", &all)?.display().to_string();
    let walproposer = |cmd: &str, extra: &[&str]| {
        let mut c = Command::new(workspace_bin("walproposer"));
        c.args([cmd, "--safekeepers", &sk.addr(), "--token-file", &file])
            .args(["--tenant-id", &ttid.tenant_id.to_string()])
            .args(["--timeline-id", &ttid.timeline_id.to_string()])
            .args(extra)
            .env_remove("SAFEKEEPER_TOKEN");
        run(&mut c)
    };
    walproposer("generate", &["--bytes", "256k"])?;
    let before = term(&sk, &ttid, &all)?;
    assert!((1..100).contains(&before), "term {before}");

    let huge = Term(u64::MAX);
    let other = keys.token(&Scope::Tenant(TenantId::generate()));
    let attempts: Vec<(&str, Option<String>, SqlState)> = vec![
        (
            "empty password",
            Some(String::new()),
            SqlState::INVALID_PASSWORD,
        ),
        (
            "expired",
            Some(keys.expired(&Scope::SafekeeperData)),
            SqlState::INVALID_PASSWORD,
        ),
        (
            "alg none",
            Some(keys.forged_none(&Scope::SafekeeperData)),
            SqlState::INVALID_PASSWORD,
        ),
        (
            "HS256",
            Some(keys.forged_hs256(&Scope::SafekeeperData)),
            SqlState::INVALID_PASSWORD,
        ),
        (
            "wrong key",
            Some(keys.wrong_key(&Scope::SafekeeperData)),
            SqlState::INVALID_PASSWORD,
        ),
        (
            "other tenant",
            Some(other),
            SqlState::INSUFFICIENT_PRIVILEGE,
        ),
    ];
    for (what, token, want) in attempts {
        let attempt = async {
            let mut p = TestProposer::connect_with_password(
                &sk.addr(),
                ttid,
                ProtocolVersion::V3,
                false,
                token.as_deref(),
            )
            .await?;
            p.greet(CLUSTER).await?;
            p.vote(huge).await
        };
        let e = attempt
            .await
            .err()
            .with_context(|| format!("{what}: the vote went through"))?;
        let got = server_error(&e).map(|f| f.code);
        assert_eq!(got, Some(want), "{what}: {e:#}");
    }
    // The same without naming the timeline in the startup options (the greeting names it).
    let mut c = connect(
        &sk,
        None,
        Some(&keys.token(&Scope::Tenant(TenantId::generate()))),
    )
    .await?;
    let e = pq_client::simple_query(&mut c, "TIMELINE_STATUS")
        .await
        .err()
        .context("answered")?;
    assert_eq!(code(&e), Some(SqlState::INSUFFICIENT_PRIVILEGE));

    assert_eq!(
        term(&sk, &ttid, &all)?,
        before,
        "a refused vote changed the term"
    );
    // Proper proposers still work: sync, then more WAL.
    walproposer("sync", &["--timeout", "30"])?;
    walproposer("generate", &["--bytes", "256k"])?;
    assert!(term(&sk, &ttid, &all)? > before);
    sk.assert_no_panics();
    Ok(())
}

/// Safekeepers that check tokens ask each other for their positions with the token of
/// `--auth-token-file` / `SAFEKEEPER_AUTH_TOKEN` (here `Config::peer_token`): with it every
/// member hears from the others; without it every peer refuses the question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_ask_each_other_with_the_auth_token() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Duration;

    use integration_tests::in_process::{InProcessSafekeeper, generation_one};
    use safekeeper::auth::JwtAuth;
    use utils::NodeId;

    let dir = tempfile::tempdir()?;
    let keys = TestKeys::new(&dir.path().join("keys"))?;
    let all = keys.token(&Scope::SafekeeperData);
    for with_token in [true, false] {
        let mut sks = Vec::new();
        for id in 1..=3u64 {
            let auth = Arc::new(JwtAuth::load(keys.dir())?);
            let token: Option<Arc<str>> = with_token.then(|| Arc::from(all.as_str()));
            sks.push(
                InProcessSafekeeper::start_with(|c| {
                    c.id = NodeId(id);
                    c.peer_status_interval = Some(Duration::from_millis(100));
                    c.pg_auth = Some(auth);
                    c.peer_token = token;
                })
                .await?,
            );
        }
        let mconf = generation_one(&sks);
        let ttid = new_ttid();
        let mut proposers = Vec::new();
        for sk in &sks {
            let mut p = TestProposer::connect_with_password(
                &sk.pg_addr,
                ttid,
                ProtocolVersion::V3,
                true,
                Some(&all),
            )
            .await?;
            p.greet_with(CLUSTER, mconf.clone()).await?;
            proposers.push(p);
        }
        // Wait for a few rounds on every member: each hears from both others, or (no
        // token) from none.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut answered = Vec::new();
            let mut rounds_done = true;
            for sk in &sks {
                let board = sk.ctx.timelines.get(&ttid).await?.peer_board();
                rounds_done &= board.at.is_some();
                answered.push(board.answered.len());
            }
            let want = if with_token { 2 } else { 0 };
            if rounds_done && answered.iter().all(|&n| n == want) {
                if with_token {
                    break;
                }
                // No token: let more rounds pass; still nobody may have answered.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut later = Vec::new();
                for sk in &sks {
                    later.push(
                        sk.ctx
                            .timelines
                            .get(&ttid)
                            .await?
                            .peer_board()
                            .answered
                            .len(),
                    );
                }
                assert_eq!(
                    later,
                    vec![0, 0, 0],
                    "peers answered a question without a token"
                );
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "with_token={with_token}: peers answered {answered:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(proposers);
        for sk in sks {
            sk.stop().await?;
        }
    }
    Ok(())
}

/// `--http-auth-public-key-path` end to end (a smoke test; the route × token matrix is
/// elsewhere): the timeline list needs a token, `/metrics` and `/v1/status` stay open.
#[tokio::test]
async fn http_api_checks_bearer_tokens() -> anyhow::Result<()> {
    use integration_tests::jwt::http_get_bearer;

    let dir = tempfile::tempdir()?;
    let keys = TestKeys::new(&dir.path().join("keys"))?;
    let path = keys.dir().display().to_string();
    let sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk"),
        false,
        &["--http-auth-public-key-path", &path],
    )?;
    let port = sk.http_port;
    let all = keys.token(&Scope::SafekeeperData);
    let tenant = keys.token(&Scope::Tenant(TenantId::generate()));
    for open in ["/metrics", "/v1/status"] {
        assert_eq!(http_get_bearer(port, open, None)?.0, 200, "{open}");
    }
    let list = "/v1/tenant/timeline";
    let (code, body) = http_get_bearer(port, list, None)?;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"msg\""), "{body}");
    for (what, bad) in keys.all_bad(&Scope::SafekeeperData) {
        let (code, body) = http_get_bearer(port, list, Some(&bad))?;
        assert_eq!(code, 401, "{what}: {body}");
        assert!(
            bad.len() < 8 || !body.contains(&bad),
            "{what}: token echoed"
        );
    }
    assert_eq!(http_get_bearer(port, list, Some(&all))?.0, 200);
    // A tenant token sees its own tenant only: the list is filtered, another tenant's
    // timeline is 403.
    let (code, body) = http_get_bearer(port, list, Some(&tenant))?;
    assert_eq!((code, body.trim()), (200, "[]"));
    let other = new_ttid();
    let route = format!(
        "/v1/tenant/{}/timeline/{}",
        other.tenant_id, other.timeline_id
    );
    assert_eq!(http_get_bearer(port, &route, Some(&tenant))?.0, 403);
    // The PostgreSQL port is not affected (no --pg-auth-public-key-path): trust.
    psql_with_token(&sk.conninfo(None), None, "SHOW server_version")?;
    sk.assert_no_panics();
    Ok(())
}
