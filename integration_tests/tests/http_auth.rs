//! The HTTP API with `--http-auth-public-key-path`: every route × method × token kind.
//! Open routes (`/v1/status`, `/metrics`, `/v1/openapi.json`) answer without a token;
//! every other route answers 401 without a token or with a refused one (expired, wrong
//! key, `alg: none`, HS256 forgeries, unknown scope, garbage), 403 with a token of
//! another tenant (or a tenant token on a whole-server route), and does its work with a
//! `safekeeperdata` token or its own tenant's token. The token is never echoed back.

use anyhow::ensure;
use integration_tests::http::{Answer, Api};
use integration_tests::jwt::{Scope, TestKeys};
use integration_tests::sk::Safekeeper;
use serde_json::{Value, json};
use utils::{TenantId, TenantTimelineId, TimelineId};

/// Where created timelines start.
const START: &str = "0/149F0D8";

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
        "start_lsn": START,
    })
}

/// One request of the matrix.
#[derive(Clone, Copy, Debug)]
enum Route {
    Status,
    Metrics,
    OpenApi,
    Utilization,
    List,
    Create,
    Get,
    Membership,
    TermBump,
    Snapshot,
    Pull,
    Delete,
    DeleteTenant,
}

impl Route {
    const ALL: [Route; 13] = [
        Route::Status,
        Route::Metrics,
        Route::OpenApi,
        Route::Utilization,
        Route::List,
        Route::Create,
        Route::Get,
        Route::Membership,
        Route::TermBump,
        Route::Snapshot,
        Route::Pull,
        Route::Delete,
        Route::DeleteTenant,
    ];

    fn open(self) -> bool {
        matches!(self, Route::Status | Route::Metrics | Route::OpenApi)
    }

    /// Needs a safekeeperdata token (not about one tenant).
    fn whole_server(self) -> bool {
        matches!(self, Route::Utilization | Route::Snapshot | Route::Pull)
    }

    fn send(self, api: &Api, sk: &Safekeeper, ttid: &TenantTimelineId) -> anyhow::Result<Answer> {
        let tl = format!(
            "/v1/tenant/{}/timeline/{}",
            ttid.tenant_id, ttid.timeline_id
        );
        match self {
            Route::Status => api.get("/v1/status"),
            Route::Metrics => api.get("/metrics"),
            Route::OpenApi => api.get("/v1/openapi.json"),
            Route::Utilization => api.get("/v1/utilization"),
            Route::List => api.get("/v1/tenant/timeline"),
            Route::Create => api.post_json("/v1/tenant/timeline", &create_body(ttid, sk)),
            Route::Get => api.get(&tl),
            // The configuration it has: idempotent.
            Route::Membership => api.request(
                "PUT",
                &format!("{tl}/membership"),
                Some("application/json"),
                create_body(ttid, sk)["mconf"].to_string().as_bytes(),
            ),
            // Term 0: never lowers anything, so it changes nothing.
            Route::TermBump => api.post_json(&format!("{tl}/term_bump"), &json!({"term": 0})),
            Route::Snapshot => api.get(&format!("{tl}/snapshot")),
            // The timeline exists here: 409 once past authentication (see `ok`).
            Route::Pull => api.post_json(
                "/v1/pull_timeline",
                &json!({
                    "tenant_id": ttid.tenant_id.to_string(),
                    "timeline_id": ttid.timeline_id.to_string(),
                    "http_hosts": [format!("http://127.0.0.1:{}", sk.http_port)],
                }),
            ),
            Route::Delete => api.delete(&tl),
            Route::DeleteTenant => api.delete(&format!("/v1/tenant/{}", ttid.tenant_id)),
        }
    }
}

/// `GET /v1/utilization` with `Authorization: Basic …`: the status line.
fn basic_auth_status(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    s.write_all(
        b"GET /v1/utilization HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
          Authorization: Basic Zm9vOmJhcg==\r\n\r\n",
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The request did its work: 2xx, or the 409 of a pull of a timeline that is here.
fn ok(a: &Answer) -> bool {
    (200..300).contains(&a.status)
        || (a.status == 409
            && a.json()["msg"]
                .as_str()
                .is_some_and(|m| m.contains("already exists")))
}

#[test]
fn every_route_with_every_kind_of_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = TestKeys::new(&dir.path().join("keys"))?;
    let key_path = keys.dir().to_string_lossy().into_owned();
    let sk = Safekeeper::start_with_args(
        1,
        &dir.path().join("sk1"),
        false,
        &["--http-auth-public-key-path", &key_path],
    )?;
    let plain = Api::new(sk.http_port);
    let tenant = TenantId([0x11; 16]);
    let other = TenantId([0x22; 16]);
    let ttid = TenantTimelineId::new(tenant, TimelineId([0x33; 16]));
    let admin = keys.token(&Scope::SafekeeperData);
    let own = keys.token(&Scope::Tenant(tenant));
    let foreign = keys.token(&Scope::Tenant(other));

    // A timeline to act on, created with the admin token.
    let made = Route::Create.send(&plain.with_token(&admin), &sk, &ttid)?;
    ensure!(ok(&made), "create with safekeeperdata: {made:?}");

    for route in Route::ALL {
        // No token.
        let a = route.send(&plain, &sk, &ttid)?;
        if route.open() {
            ensure!(ok(&a), "{route:?} without a token: {a:?}");
            continue;
        }
        ensure!(a.status == 401, "{route:?} without a token: {a:?}");
        ensure!(
            a.header("www-authenticate") == Some("Bearer"),
            "{route:?}: {a:?}"
        );
        ensure!(a.json()["msg"].is_string(), "{route:?}: not JSON: {a:?}");
        // Refused tokens, of the right tenant.
        for (kind, token) in keys.all_bad(&Scope::Tenant(tenant)) {
            let a = route.send(&plain.with_token(&token), &sk, &ttid)?;
            ensure!(a.status == 401, "{route:?} with a token ({kind}): {a:?}");
            ensure!(
                token.len() < 8 || !a.body.contains(&token),
                "{route:?} echoed the token back"
            );
        }
        // Another tenant's token.
        let a = route.send(&plain.with_token(&foreign), &sk, &ttid)?;
        match route {
            // The list is filtered to the token's tenant.
            Route::List => {
                ensure!(a.status == 200, "list with another tenant's token: {a:?}");
                ensure!(a.json() == json!([]), "list leaked another tenant: {a:?}");
            }
            _ => ensure!(
                a.status == 403,
                "{route:?} with another tenant's token: {a:?}"
            ),
        }
    }

    // Credentials that are not a bearer token.
    let raw = basic_auth_status(sk.http_port)?;
    ensure!(
        raw.starts_with("HTTP/1.1 401"),
        "Basic authorization: {raw}"
    );

    // The timeline's own tenant: every tenant route works, whole-server routes do not.
    let mine = plain.with_token(&own);
    for route in Route::ALL {
        let a = route.send(&mine, &sk, &ttid)?;
        if route.whole_server() {
            ensure!(a.status == 403, "{route:?} with a tenant token: {a:?}");
        } else {
            ensure!(ok(&a), "{route:?} with its tenant's token: {a:?}");
        }
        if let Route::List = route {
            ensure!(a.json().as_array().map(Vec::len) == Some(1), "{a:?}");
        }
    }
    // Deleted by the tenant (the last two routes): create it again and go through every
    // route with the safekeeperdata token.
    let admin_api = plain.with_token(&admin);
    for route in Route::ALL {
        let a = route.send(&admin_api, &sk, &ttid)?;
        ensure!(ok(&a), "{route:?} with safekeeperdata: {a:?}");
    }
    sk.assert_no_panics();
    Ok(())
}
