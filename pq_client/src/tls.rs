//! TLS on the client side: `sslmode` and `sslrootcert` with libpq's meaning, and the
//! rustls configuration each mode needs.
//!
//! Owns: [`SslMode`], [`SslSettings`] (the mode and root certificate a connection uses,
//! from its connection string, else `PGSSLMODE` / `PGSSLROOTCERT`) and the certificate
//! verifiers. Must never: skip verification in `verify-ca` / `verify-full`, or send a byte
//! of the startup packet before the handshake when TLS is required.
//!
//! One deliberate difference from libpq: without `sslmode` in the connection string and
//! without `PGSSLMODE`, the mode is `disable` (libpq's default is `prefer`), so existing
//! deployments keep their plain connections unless they ask for TLS.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::conninfo::Conninfo;
use crate::error::PgError;

/// How much TLS a connection insists on (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text; TLS only if the server refuses the plain connection.
    Allow,
    /// TLS if the server offers it, else plain text (certificate not verified).
    Prefer,
    /// TLS or fail (certificate not verified, unless a root certificate is given: then as
    /// `verify-ca`, as in libpq).
    Require,
    /// TLS with a certificate chain that leads to the root certificate.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Whether a server without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl FromStr for SslMode {
    type Err = PgError;

    fn from_str(s: &str) -> Result<Self, PgError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(PgError::Conninfo(
                    "invalid sslmode value: use disable, allow, prefer, require, verify-ca or verify-full"
                        .into(),
                ));
            }
        })
    }
}

/// The TLS settings of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SslSettings {
    /// The mode in force (`require` with a root certificate is already `verify-ca`).
    pub mode: SslMode,
    /// The PEM file of trusted root certificates, if any.
    pub root_cert: Option<PathBuf>,
}

impl SslSettings {
    /// The settings of `ci`, falling back to `PGSSLMODE` and `PGSSLROOTCERT` for what it
    /// does not say, and to `~/.postgresql/root.crt` (when it exists) for the root
    /// certificate, as libpq does.
    pub fn from_conninfo(ci: &Conninfo) -> Result<Self, PgError> {
        let default_root = std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".postgresql/root.crt"))
            .filter(|p| p.exists());
        Self::resolve(
            ci.get("sslmode"),
            ci.get("sslrootcert"),
            std::env::var("PGSSLMODE").ok().as_deref(),
            std::env::var("PGSSLROOTCERT").ok().as_deref(),
            default_root,
        )
    }

    /// [`SslSettings::from_conninfo`] without the environment: the connection string's
    /// values win over the environment's; an empty value counts as absent.
    pub fn resolve(
        mode: Option<&str>,
        root: Option<&str>,
        env_mode: Option<&str>,
        env_root: Option<&str>,
        default_root: Option<PathBuf>,
    ) -> Result<Self, PgError> {
        fn given(v: Option<&str>) -> Option<&str> {
            v.filter(|s| !s.is_empty())
        }
        let mode = match given(mode).or(given(env_mode)) {
            Some(m) => m.parse()?,
            None => SslMode::Disable,
        };
        let root = match given(root).or(given(env_root)) {
            Some("system") => {
                return Err(PgError::Conninfo(
                    "sslrootcert=system is not supported: give the path of a PEM file".into(),
                ));
            }
            Some(p) => Some(PathBuf::from(p)),
            None => default_root,
        };
        let mode = match (mode, &root) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(PgError::Conninfo(format!(
                    "sslmode={} needs a root certificate: give sslrootcert (or PGSSLROOTCERT)",
                    if mode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    }
                )));
            }
            (m, _) => m,
        };
        Ok(SslSettings {
            mode,
            root_cert: root,
        })
    }

    /// The rustls configuration for this mode (`None` for `disable`).
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(format!("TLS configuration: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, &self.root_cert) {
            (SslMode::Disable, _) => return Ok(None),
            (SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(load_roots(path)?),
                    provider,
                )
                .build()
                .map_err(|e| PgError::Tls(format!("TLS configuration: {e}")))?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
            _ => Arc::new(NoVerification(provider)),
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What libpq 17 sends; servers that do not know ALPN ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

/// The name the server's certificate must carry: `host` (or `hostaddr`) of the
/// connection string, a DNS name or an IP address.
pub(crate) fn server_name(ci: &Conninfo) -> Result<ServerName<'static>, PgError> {
    let host = ci.get("host").or(ci.get("hostaddr")).unwrap_or("127.0.0.1");
    ServerName::try_from(host.to_string())
        .map_err(|_| PgError::Conninfo(format!("host \"{host}\" is not a valid TLS server name")))
}

/// Reads the trusted roots from a PEM file; a file without any certificate is an error.
fn load_roots(path: &Path) -> Result<RootCertStore, PgError> {
    let bad = |reason: String| PgError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked only after the chain: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a root certificate: encryption without authentication of
/// the server (libpq's behaviour); the handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(
        mode: Option<&str>,
        root: Option<&str>,
        env_mode: Option<&str>,
        env_root: Option<&str>,
    ) -> Result<SslSettings, PgError> {
        SslSettings::resolve(mode, root, env_mode, env_root, None)
    }

    #[test]
    fn every_mode_parses_and_nothing_else() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(s.parse::<SslMode>().unwrap(), m);
        }
        for bad in ["", "Require", "verify_full", "on", "true"] {
            assert!(matches!(bad.parse::<SslMode>(), Err(PgError::Conninfo(_))));
        }
        assert!(SslMode::Require.requires_tls() && SslMode::VerifyFull.requires_tls());
        assert!(!SslMode::Prefer.requires_tls() && !SslMode::Allow.requires_tls());
    }

    #[test]
    fn default_is_disable_without_conninfo_or_environment() {
        let s = r(None, None, None, None).unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert_eq!(s.root_cert, None);
        assert!(s.client_config().unwrap().is_none());
        // An empty value counts as absent, as in libpq.
        assert_eq!(
            r(Some(""), None, None, None).unwrap().mode,
            SslMode::Disable
        );
    }

    #[test]
    fn conninfo_wins_over_environment() {
        let s = r(Some("prefer"), None, Some("require"), None).unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        let s = r(None, None, Some("require"), None).unwrap();
        assert_eq!(s.mode, SslMode::Require);
        let s = r(Some("verify-full"), Some("/a.pem"), None, Some("/b.pem")).unwrap();
        assert_eq!(s.root_cert.as_deref(), Some(Path::new("/a.pem")));
        let s = r(Some("verify-full"), None, None, Some("/b.pem")).unwrap();
        assert_eq!(s.root_cert.as_deref(), Some(Path::new("/b.pem")));
        assert!(r(None, None, Some("bogus"), None).is_err());
    }

    #[test]
    fn verification_needs_a_root_and_require_with_a_root_verifies_the_chain() {
        assert!(r(Some("verify-ca"), None, None, None).is_err());
        assert!(r(Some("verify-full"), None, None, None).is_err());
        assert!(r(Some("verify-full"), Some("system"), None, None).is_err());
        let s = r(Some("require"), Some("/ca.pem"), None, None).unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        let s = SslSettings::resolve(
            Some("require"),
            None,
            None,
            None,
            Some("/home/x/.postgresql/root.crt".into()),
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(
            r(Some("require"), None, None, None).unwrap().mode,
            SslMode::Require
        );
    }

    #[test]
    fn an_unreadable_root_certificate_is_named() {
        let s = r(Some("verify-full"), Some("/nonexistent/ca.pem"), None, None).unwrap();
        match s.client_config() {
            Err(PgError::RootCert { path, .. }) => {
                assert_eq!(path, Path::new("/nonexistent/ca.pem"))
            }
            other => panic!("expected RootCert, got {other:?}"),
        }
    }

    #[test]
    fn server_names() {
        let mut ci = Conninfo::default();
        assert_eq!(
            server_name(&ci).unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        ci.set("host", "localhost");
        assert_eq!(
            server_name(&ci).unwrap(),
            ServerName::try_from("localhost").unwrap()
        );
        ci.set("host", "bad name!");
        assert!(server_name(&ci).is_err());
    }
}
