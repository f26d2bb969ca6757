//! A real Prometheus server (Debian's `prometheus` package) for tests: started on a free
//! loopback port with a temporary config and TSDB, scraping given targets every second; and
//! a client of its HTTP API (instant queries, targets) usable against any Prometheus, e.g.
//! the one of the docker compose deployment.
//!
//! Owns: that process and its directory. Must never: leave it running (Drop kills it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::pg::free_port;

/// Where Debian's package puts the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// The `prometheus` binary: `$PROMETHEUS` if set, else Debian's. An error naming the
/// package when it is missing (scripts/test installs it).
pub fn prometheus_bin() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PROMETHEUS_BIN));
    ensure!(
        p.exists(),
        "{} is missing: install Debian's package (apt-get install prometheus; scripts/test does)",
        p.display()
    );
    Ok(p)
}

/// A `prometheus` process scraping some targets.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>` of its API.
    pub addr: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) as job
    /// `safekeeper` every second, and waits until it is ready.
    pub fn start(targets: &[String]) -> anyhow::Result<Prometheus> {
        let bin = prometheus_bin()?;
        let dir = tempfile::Builder::new().prefix("prometheus-").tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut p = Prometheus { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&p.addr, "/-/ready") {
                return Ok(p);
            }
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", p.log());
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Its temporary directory (config, TSDB, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config scraping `targets` every second as job `safekeeper`.
pub fn scrape_config(targets: &[String]) -> String {
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: safekeeper\n    scrape_interval: 1s\n    \
         static_configs:\n      - targets: [{list}]\n"
    )
}

/// `GET path` on `addr` (HTTP/1.0: a plain body, never chunked): the status and the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One series of an instant query's answer.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Its labels (`__name__` included when the expression keeps it).
    pub labels: serde_json::Map<String, Value>,
    /// Its value (NaN when Prometheus says so).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if any.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }
}

/// An instant query (`/api/v1/query`) of `expr` on the Prometheus at `addr`.
pub fn query(addr: &str, expr: &str) -> anyhow::Result<Vec<Sample>> {
    let (code, body) = http_get(addr, &format!("/api/v1/query?query={}", encode(expr)))?;
    ensure!(code == 200, "query {expr}: HTTP {code}: {body}");
    let v: Value = serde_json::from_str(&body).with_context(|| format!("query {expr}: {body}"))?;
    ensure!(v["status"] == "success", "query {expr}: {body}");
    let result = v["data"]["result"]
        .as_array()
        .with_context(|| format!("query {expr}: not a vector: {body}"))?;
    result
        .iter()
        .map(|r| {
            let value = r["value"][1]
                .as_str()
                .with_context(|| format!("query {expr}: no value in {r}"))?;
            Ok(Sample {
                labels: r["metric"].as_object().cloned().unwrap_or_default(),
                value: value.parse().unwrap_or(f64::NAN),
            })
        })
        .collect()
}

/// Queries `expr` until `ok` accepts the answer; the answer, or an error with the last one
/// after `limit` (a deadline for a failure, not a performance assertion).
pub fn wait_for(
    addr: &str,
    expr: &str,
    limit: Duration,
    ok: impl Fn(&[Sample]) -> bool,
) -> anyhow::Result<Vec<Sample>> {
    let deadline = Instant::now() + limit;
    loop {
        let last = query(addr, expr);
        if let Ok(samples) = &last
            && ok(samples)
        {
            return Ok(samples.clone());
        }
        ensure!(
            Instant::now() < deadline,
            "Prometheus never answered {expr} as expected; last answer: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One active scrape target (`/api/v1/targets`).
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL scraped.
    pub scrape_url: String,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// Why the last scrape failed (empty when it did not).
    pub last_error: String,
}

/// The active targets of the Prometheus at `addr`.
pub fn targets(addr: &str) -> anyhow::Result<Vec<Target>> {
    let (code, body) = http_get(addr, "/api/v1/targets?state=active")?;
    ensure!(code == 200, "targets: HTTP {code}: {body}");
    let v: Value = serde_json::from_str(&body).with_context(|| format!("targets: {body}"))?;
    let list = v["data"]["activeTargets"]
        .as_array()
        .with_context(|| format!("targets: {body}"))?;
    Ok(list
        .iter()
        .map(|t| Target {
            scrape_url: t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
            health: t["health"].as_str().unwrap_or_default().to_string(),
            last_error: t["lastError"].as_str().unwrap_or_default().to_string(),
        })
        .collect())
}
