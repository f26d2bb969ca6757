//! TLS for the safekeeper's listeners: the server certificate and key from PEM files, and
//! a reload that swaps them for new connections.
//!
//! Owns: [`ServerTls`] (the files, the current rustls configurations, reload) and
//! [`TlsError`]. Must never: drop a working certificate for one that failed to load (a
//! failed reload keeps the old one), or affect a connection already established (each
//! new connection takes the configuration current at its handshake).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable, not PEM, or holds no certificate.
    #[error("could not load server certificate file \"{}\": {reason}", .path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is unreadable, not PEM, or holds no private key.
    #[error("could not load private key file \"{}\": {reason}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate, or rustls refuses the pair.
    #[error(
        "server certificate \"{}\" and private key \"{}\" cannot be used together: {source}",
        .cert.display(), .key.display()
    )]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// The configurations built from one certificate and key.
struct Configs {
    /// For the PostgreSQL port (ALPN `postgresql`, as PostgreSQL 17 offers it).
    pg: Arc<ServerConfig>,
    /// For an HTTPS listener (ALPN `http/1.1`).
    https: Arc<ServerConfig>,
}

/// The server's TLS identity: loaded from PEM files at start, reloadable (SIGHUP).
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Configs>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl ServerTls {
    /// Loads the certificate chain (PEM, the server's certificate first) and its private
    /// key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: RwLock::new(build(cert, key)?),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// Reads the files again; new connections use what they hold now. On an error the
    /// current certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The acceptor for a new PostgreSQL connection (after its SSLRequest).
    pub fn pg_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().pg.clone())
    }

    /// The acceptor for a new HTTPS connection.
    pub fn https_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read().https.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Configs> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads both files and builds both configurations.
fn build(cert_path: &Path, key_path: &Path) -> Result<Configs, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert_path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no CERTIFICATE in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let config = |alpn: &[u8]| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_no_client_auth()
                    .with_single_cert(certs.clone(), key.clone_key())
            })
            .map_err(|source| TlsError::Pair {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
                source,
            })?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    Ok(Configs {
        pg: config(b"postgresql")?,
        https: config(b"http/1.1")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost, written as PEM into `dir`.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_pair_and_names_the_file_that_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let t = ServerTls::load(&cert, &key).unwrap();
        assert_eq!(t.cert_path(), cert);
        assert_eq!(t.read().pg.alpn_protocols, vec![b"postgresql".to_vec()]);
        assert_eq!(t.read().https.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let missing = dir.path().join("missing.crt");
        match ServerTls::load(&missing, &key) {
            Err(e @ TlsError::Cert { .. }) => {
                assert!(e.to_string().contains("missing.crt"), "{e}")
            }
            other => panic!("expected a Cert error, got {other:?}"),
        }
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM at all\n").unwrap();
        assert!(matches!(
            ServerTls::load(&garbage, &key),
            Err(TlsError::Cert { .. })
        ));
        assert!(matches!(
            ServerTls::load(&cert, &garbage),
            Err(TlsError::Key { .. })
        ));
        // A key of another certificate.
        let (_, other_key) = write_pair(dir.path(), "b");
        assert!(matches!(
            ServerTls::load(&cert, &other_key),
            Err(TlsError::Pair { .. })
        ));
    }

    #[test]
    fn reload_swaps_the_configuration_and_a_failed_one_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let t = ServerTls::load(&cert, &key).unwrap();
        let first = t.read().pg.clone();
        // New files: new configurations for new connections.
        let (c2, k2) = write_pair(dir.path(), "b");
        std::fs::rename(&c2, &cert).unwrap();
        std::fs::rename(&k2, &key).unwrap();
        t.reload().unwrap();
        let second = t.read().pg.clone();
        assert!(!Arc::ptr_eq(&first, &second));
        // A broken certificate file: an error, and the current configuration stays.
        std::fs::write(&cert, "broken\n").unwrap();
        assert!(matches!(t.reload(), Err(TlsError::Cert { .. })));
        assert!(Arc::ptr_eq(&second, &t.read().pg));
    }
}
