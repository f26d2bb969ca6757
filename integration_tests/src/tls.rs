//! A test certificate authority: a CA and server certificates signed by it (rcgen),
//! written as PEM files in a temporary directory that the PostgreSQL OS user can read (a
//! standby's `sslrootcert`).
//!
//! Owns: the CA's key (in memory) and the directory of files. Must never: be used outside
//! tests (keys are written world-readable).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority for tests.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, PEM.
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate, PEM (a client's `sslrootcert`).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn server_cert(&self, names: &[&str]) -> anyhow::Result<ServerCert> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// PEM files in a temporary directory readable by everyone (the PostgreSQL OS user too).
pub struct TlsFiles {
    dir: tempfile::TempDir,
    /// The CA certificate (`sslrootcert`).
    pub ca: PathBuf,
    /// The server certificate (`--ssl-cert-file`).
    pub cert: PathBuf,
    /// The server key (`--ssl-key-file`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Writes `ca`'s certificate and a server certificate for `names` signed by it.
    pub fn new(ca: &TestCa, names: &[&str]) -> anyhow::Result<TlsFiles> {
        let dir = tempfile::Builder::new().prefix("tls-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.crt"),
            key: dir.path().join("server.key"),
            dir,
        };
        write(&files.ca, &ca.cert_pem())?;
        files.install(&ca.server_cert(names)?)?;
        Ok(files)
    }

    /// Replaces the server certificate and key files.
    pub fn install(&self, c: &ServerCert) -> anyhow::Result<()> {
        write(&self.cert, &c.cert_pem)?;
        write(&self.key, &c.key_pem)
    }

    /// Writes another file in the directory (e.g. a second CA's certificate).
    pub fn write_file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let p = self.dir.path().join(name);
        write(&p, contents)?;
        Ok(p)
    }

    /// The safekeeper flags that enable TLS with these files.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--ssl-cert-file".into(),
            self.cert.display().to_string(),
            "--ssl-key-file".into(),
            self.key.display().to_string(),
        ]
    }
}

/// Writes `contents` readable by everyone: into a temporary file renamed over `path`, so
/// a reader never sees half a file.
fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}
