//! A real S3-protocol server for tests: [`TestBucket`] is a fresh, randomly named bucket on
//! `moto_server` (PyPI `moto[server]`) listening on loopback, with the environment a
//! safekeeper needs to reach it (`--remote-storage s3://bucket/prefix`) and an
//! [`ObjectStore`] to look at what was uploaded.
//!
//! Where the server comes from: `SK_TEST_S3_ENDPOINT` (set by `scripts/test`, which runs
//! one `moto_server` for the whole run) when set; otherwise each bucket starts its own
//! `moto_server` on a free port and kills it on drop.
//!
//! Owns: the bucket (emptied and deleted on drop when the server is shared) and its own
//! server process, if any. Must never: leave that process running, or touch buckets it did
//! not create.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::pg::free_port;

/// Environment variable with the endpoint of an already running S3 server
/// (`http://127.0.0.1:PORT`) for tests to share.
pub const ENDPOINT_ENV: &str = "SK_TEST_S3_ENDPOINT";

/// Credentials and region moto accepts (it checks none of them).
const ACCESS_KEY: &str = "test";
const SECRET_KEY: &str = "test";
const REGION: &str = "us-east-1";

/// How long a freshly started `moto_server` may take to answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs ring as rustls' process-wide crypto provider. object_store's HTTP client is
/// built with rustls "ring" but no default provider, and panics on first use without one;
/// the tests use plain http, but the client is built with TLS support regardless. Calling
/// it again is harmless (the first install wins).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A fresh bucket on an S3-protocol server on loopback; see the module docs.
pub struct TestBucket {
    endpoint: String,
    bucket: String,
    /// Our own server, when [`ENDPOINT_ENV`] was not set.
    server: Option<MotoServer>,
}

impl TestBucket {
    /// Creates a bucket named `sk-test-<16 hex digits>` on the server of [`ENDPOINT_ENV`],
    /// or on a `moto_server` started for this bucket alone.
    pub fn new() -> anyhow::Result<TestBucket> {
        install_crypto_provider();
        let (endpoint, server) = match std::env::var(ENDPOINT_ENV) {
            Ok(e) if !e.is_empty() => (e.trim_end_matches('/').to_string(), None),
            _ => {
                let server = MotoServer::start()?;
                (server.endpoint(), Some(server))
            }
        };
        let bucket = format!("sk-test-{:016x}", rand::random::<u64>());
        let status = http_request(&endpoint, "PUT", &format!("/{bucket}"))
            .with_context(|| format!("creating bucket {bucket} at {endpoint}"))?;
        if status != 200 {
            bail!("creating bucket {bucket} at {endpoint}: HTTP status {status}");
        }
        Ok(TestBucket {
            endpoint,
            bucket,
            server,
        })
    }

    /// The server's endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/prefix` (`s3://bucket` for an empty prefix), for `--remote-storage`.
    pub fn url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// Environment for a process to reach the bucket: `AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and `AWS_ALLOW_HTTP`.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_endpoint(&self.endpoint)
    }

    /// Like [`TestBucket::env`] but through another endpoint, e.g. a
    /// [`crate::proxy::TcpProxy`] in front of the server.
    pub fn env_with_endpoint(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A client of the bucket at the server itself, with a few quick retries (the server
    /// is local and up; a retry covers a rare hiccup, not an outage).
    pub fn store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        self.build_store(&self.endpoint, retry)
    }

    /// A client of the bucket through `endpoint` (a [`crate::proxy::TcpProxy`]) that
    /// never retries and times out after 10 s, so a fault shows as the first error.
    pub fn store_via(&self, endpoint: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
        let retry = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        self.build_store(endpoint, retry)
    }

    fn build_store(
        &self,
        endpoint: &str,
        retry: RetryConfig,
    ) -> anyhow::Result<Arc<dyn ObjectStore>> {
        install_crypto_provider();
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(10))
                    .with_connect_timeout(Duration::from_secs(5)),
            )
            .build()
            .with_context(|| format!("S3 client for bucket {} at {endpoint}", self.bucket))?;
        Ok(Arc::new(store))
    }

    /// Every object under `prefix` (all of them for `""`) as `(path, size)`, sorted by
    /// path. Paths are relative to the bucket, without a leading `/`.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let store = self.store()?;
        let prefix = prefix.trim_matches('/');
        let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let metas: Vec<_> = store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .with_context(|| format!("listing bucket {}", self.bucket))?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The content of the object at `path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        let store = self.store()?;
        let got = store
            .get(&ObjectPath::from(path))
            .await
            .with_context(|| format!("getting {path} from bucket {}", self.bucket))?;
        Ok(got.bytes().await?)
    }

    /// Stores `data` at `path`.
    pub async fn put(&self, path: &str, data: Bytes) -> anyhow::Result<()> {
        let store = self.store()?;
        store
            .put(&ObjectPath::from(path), PutPayload::from(data))
            .await
            .with_context(|| format!("putting {path} into bucket {}", self.bucket))?;
        Ok(())
    }

    /// [`TestBucket::list`] for synchronous tests. Must not be called from async code
    /// (it blocks on a runtime of its own).
    pub fn list_blocking(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        block_on(self.list(prefix))
    }

    /// [`TestBucket::get`] for synchronous tests; same caveat as
    /// [`TestBucket::list_blocking`].
    pub fn get_blocking(&self, path: &str) -> anyhow::Result<Bytes> {
        block_on(self.get(path))
    }

    /// [`TestBucket::put`] for synchronous tests; same caveat as
    /// [`TestBucket::list_blocking`].
    pub fn put_blocking(&self, path: &str, data: Bytes) -> anyhow::Result<()> {
        block_on(self.put(path, data))
    }

    /// Deletes every object and then the bucket, so a long run does not pile up WAL in
    /// the shared server's memory.
    async fn remove(&self) -> anyhow::Result<()> {
        let store = self.store()?;
        for (path, _) in self.list("").await? {
            store.delete(&ObjectPath::from(path)).await?;
        }
        let status = http_request(&self.endpoint, "DELETE", &format!("/{}", self.bucket))?;
        if status != 204 && status != 200 {
            bail!("deleting bucket {}: HTTP status {status}", self.bucket);
        }
        Ok(())
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        if self.server.is_some() {
            return; // our own server dies with its data (MotoServer's Drop)
        }
        // On a thread of its own so that dropping the bucket inside async code (where a
        // runtime cannot block) works too. Best effort: a leftover bucket is only memory.
        let this = &*self;
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = block_on(this.remove()) {
                    eprintln!("removing test bucket {}: {e:#}", this.bucket);
                }
            });
        });
    }
}

/// Runs `fut` to completion on a fresh current-thread runtime. Each call builds its own
/// client too (see the callers), since pooled connections die with their runtime.
fn block_on<T>(fut: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread runtime")
        .block_on(fut)
}

/// A `moto_server` child on a free loopback port, log in a temp dir.
struct MotoServer {
    port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Starts `moto_server` (or `python3 -m moto.server` when the script is not on `PATH`)
    /// and waits until it answers HTTP.
    fn start() -> anyhow::Result<MotoServer> {
        let dir = tempfile::Builder::new().prefix("moto-").tempdir()?;
        let log = dir.path().join("moto.log");
        let port = free_port()?;
        let spawn = |program: &str, pre_args: &[&str]| -> std::io::Result<Child> {
            let out = File::create(&log)?;
            Command::new(program)
                .args(pre_args)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
        };
        let child = match spawn("moto_server", &[]) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                spawn("python3", &["-m", "moto.server"]).context(
                    "neither moto_server nor python3 found: install moto \
                     (`python3 -m pip install 'moto[server]'`) or set SK_TEST_S3_ENDPOINT",
                )?
            }
            Err(e) => return Err(e).context("starting moto_server"),
        };
        let mut server = MotoServer {
            port,
            child,
            log,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "moto_server exited with {status} (is `moto[server]` installed?); log:\n{}",
                    self.log_text()
                );
            }
            if http_request(&self.endpoint(), "GET", "/").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer on port {} within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a bodiless, unsigned HTTP/1.1 request (moto checks no signatures) and returns
/// the response's status code. Used where object_store has no API: creating and deleting
/// buckets, and probing that the server is up.
fn http_request(endpoint: &str, method: &str, path: &str) -> anyhow::Result<u16> {
    let host = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("endpoint {endpoint} is not http://host:port"))?
        .trim_end_matches('/');
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .with_context(|| format!("{host} resolves to no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // Only the status line matters; read until it is complete.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line from {endpoint}: {line:?}"))?;
    Ok(status)
}
