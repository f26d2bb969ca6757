//! Ed25519 keys and JWTs for the tests of authentication: a key pair per [`TestKeys`]
//! (more for rotation), the public keys written as PEM into a directory to pass to
//! `--pg-auth-public-key-path` / `--http-auth-public-key-path`, tokens signed with
//! jsonwebtoken's encoder, and forged ones made by hand (alg `none`, HS256 with the
//! public key as the secret, expired, signed by a key the server does not know).
//!
//! Owns: test keys and tokens. Must never: be used outside tests.
//!
//! ```no_run
//! # fn f() -> anyhow::Result<()> {
//! use integration_tests::jwt::{Scope, TestKeys};
//! let dir = tempfile::tempdir()?;
//! let keys = TestKeys::new(dir.path())?; // writes key-0.pem
//! let arg = keys.dir().display().to_string(); // --pg-auth-public-key-path
//! let all = keys.token(&Scope::SafekeeperData);
//! let forged = keys.forged_none(&Scope::SafekeeperData);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use utils::TenantId;

use crate::pg_tools::{pg_bin, run, run_unchecked};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// What a token claims.
#[derive(Clone, Debug)]
pub enum Scope {
    /// `{"scope": "safekeeperdata"}`: everything.
    SafekeeperData,
    /// `{"scope": "tenant", "tenant_id": …}`: one tenant.
    Tenant(TenantId),
    /// Any other scope name (refused by the safekeeper), e.g. Neon's `"admin"`.
    Other(String),
}

impl Scope {
    /// The claims, with `exp` if given (seconds since the epoch).
    pub fn claims(&self, exp: Option<u64>) -> Value {
        let mut c = match self {
            Scope::SafekeeperData => json!({"scope": "safekeeperdata"}),
            Scope::Tenant(t) => json!({"scope": "tenant", "tenant_id": t.to_string()}),
            Scope::Other(s) => json!({"scope": s}),
        };
        if let Some(e) = exp {
            c["exp"] = json!(e);
        }
        c
    }
}

/// One Ed25519 key pair.
pub struct TestKey {
    pkcs8: Vec<u8>,
    public_raw: Vec<u8>,
    /// The public key as PEM (`-----BEGIN PUBLIC KEY-----`, SPKI).
    pub public_pem: String,
}

impl TestKey {
    /// A fresh key pair.
    pub fn generate() -> TestKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("Ed25519 key generation")
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).expect("a key ring just made");
        let public_raw = pair.public_key().as_ref().to_vec();
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&public_raw);
        let public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&der)
        );
        TestKey {
            pkcs8,
            public_raw,
            public_pem,
        }
    }

    /// `claims` signed with this key (EdDSA).
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )
        .expect("signing a JSON value")
    }
}

/// The keys a server under test trusts: their public halves are files in one directory.
pub struct TestKeys {
    dir: PathBuf,
    keys: Vec<TestKey>,
    stranger: TestKey,
}

impl TestKeys {
    /// One key pair; its public key written to `dir/key-0.pem` (`dir` is created).
    pub fn new(dir: &Path) -> anyhow::Result<TestKeys> {
        std::fs::create_dir_all(dir)?;
        let mut k = TestKeys {
            dir: dir.to_path_buf(),
            keys: Vec::new(),
            stranger: TestKey::generate(),
        };
        k.add_key()?;
        Ok(k)
    }

    /// Rotation: another key pair, written beside the others as `key-N.pem`; returns N.
    pub fn add_key(&mut self) -> anyhow::Result<usize> {
        let n = self.keys.len();
        let key = TestKey::generate();
        std::fs::write(self.key_file(n), &key.public_pem)?;
        self.keys.push(key);
        Ok(n)
    }

    /// The directory of public keys (for `--*-auth-public-key-path`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public key file of key `n` (for a single-file `--*-auth-public-key-path`).
    pub fn key_file(&self, n: usize) -> PathBuf {
        self.dir.join(format!("key-{n}.pem"))
    }

    /// Key `n`.
    pub fn key(&self, n: usize) -> &TestKey {
        &self.keys[n]
    }

    /// A good token for `scope`, signed by key 0, without `exp`.
    pub fn token(&self, scope: &Scope) -> String {
        self.keys[0].sign(&scope.claims(None))
    }

    /// A good token signed by key `n`.
    pub fn token_by(&self, n: usize, scope: &Scope) -> String {
        self.keys[n].sign(&scope.claims(None))
    }

    /// A token for `scope` expiring `secs` seconds from now (negative: expired).
    pub fn token_expiring(&self, scope: &Scope, secs: i64) -> String {
        let exp = now().saturating_add_signed(secs);
        self.keys[0].sign(&scope.claims(Some(exp)))
    }

    /// Expired an hour ago (past any leeway).
    pub fn expired(&self, scope: &Scope) -> String {
        self.token_expiring(scope, -3600)
    }

    /// Well-formed and EdDSA, but signed by a key the server does not have.
    pub fn wrong_key(&self, scope: &Scope) -> String {
        self.stranger.sign(&scope.claims(None))
    }

    /// `alg: none`, no signature (`header.claims.`).
    pub fn forged_none(&self, scope: &Scope) -> String {
        format!(
            "{}.",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &scope.claims(None))
        )
    }

    /// HS256 with key 0's public key PEM as the HMAC secret (the algorithm-confusion
    /// attack on libraries that take "the key" for whatever the header says).
    pub fn forged_hs256(&self, scope: &Scope) -> String {
        hs256(self.keys[0].public_pem.as_bytes(), &scope.claims(None))
    }

    /// HS256 with key 0's raw 32 public key bytes as the secret.
    pub fn forged_hs256_raw(&self, scope: &Scope) -> String {
        hs256(&self.keys[0].public_raw, &scope.claims(None))
    }

    /// Every refused kind of token for `scope`, named: expired, wrong key, none, HS256
    /// (two secrets), an unknown scope, garbage.
    pub fn all_bad(&self, scope: &Scope) -> Vec<(&'static str, String)> {
        vec![
            ("expired", self.expired(scope)),
            ("wrong key", self.wrong_key(scope)),
            ("alg none", self.forged_none(scope)),
            ("HS256 with the public key PEM", self.forged_hs256(scope)),
            (
                "HS256 with the raw public key",
                self.forged_hs256_raw(scope),
            ),
            ("unknown scope", self.token(&Scope::Other("admin".into()))),
            ("garbage", "not-a-jwt".into()),
        ]
    }

    /// Writes `token` to `dir/name` (for `--token-file`) and returns the path.
    pub fn write_token(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir.parent().unwrap_or(&self.dir).join(name);
        std::fs::write(&p, format!("{token}\n"))?;
        Ok(p)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    let input = unsigned(&json!({"alg": "HS256", "typ": "JWT"}), claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

/// The real `psql` on `conninfo` with `PGPASSWORD=token` (none if `None`; `-w`: never
/// prompt): its unaligned output, or an error carrying its stderr.
pub fn psql_with_token(
    conninfo: &str,
    token: Option<&str>,
    command: &str,
) -> anyhow::Result<String> {
    run(&mut psql_command(conninfo, token, command))
}

/// Like [`psql_with_token`] for a command expected to fail: psql's stderr (an error if it
/// succeeded).
pub fn psql_fails(conninfo: &str, token: Option<&str>, command: &str) -> anyhow::Result<String> {
    let out = run_unchecked(&mut psql_command(conninfo, token, command))?;
    anyhow::ensure!(
        !out.status.success(),
        "psql succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).context("psql printed non-UTF-8")
}

fn psql_command(conninfo: &str, token: Option<&str>, command: &str) -> Command {
    let mut c = Command::new(pg_bin("psql"));
    c.arg(conninfo)
        .args([
            "-X",
            "-w",
            "-A",
            "-t",
            "-F",
            "|",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            command,
        ])
        .env_remove("PGPASSWORD");
    if let Some(t) = token {
        c.env("PGPASSWORD", t);
    }
    c
}

/// `GET path` on `127.0.0.1:port` with `Authorization: Bearer <token>` (none if `None`):
/// the status code and the body.
pub fn http_get_bearer(
    port: u16,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
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
