//! TLS for the API listeners (`[server.tls]`, `docs/security.md`): rustls on ring, with the
//! certificate and key read from PEM files and read again when the files change.
//!
//! The files are checked when a client says hello — two `stat`s per handshake, no timer and no
//! watch — and reloaded when their size, modification time or inode moved: a renewed certificate
//! (certbot, a rename-over) is served from the next connection on, with no restart or signal. A
//! file that cannot be read or does not hold a matching pair keeps the last good one in force.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A TLS listener whose handshakes run concurrently, so a slow client never blocks the rest.
pub type TlsTcpListener = tls_listener::TlsListener<TcpListener, TlsAcceptor>;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {why}")]
    Cert { path: PathBuf, why: String },
    #[error("cannot read the TLS key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("the TLS key {key} does not belong to the certificate {cert}: {why}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| Stamp {
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
        ino: m.ino(),
    })
}

/// Reads a certificate chain and its private key, checking that they belong together.
fn read_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_path_buf(),
            why: "no CERTIFICATE block in the file".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        why: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, &default_provider())
        .map(Arc::new)
        .map_err(|e| TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            why: e.to_string(),
        })
}

/// The certificate in force, read again when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    // The pair in force and the stamps of the files it was read from. A std lock: held for two
    // `stat`s, and a reread only when the files changed; never across an `.await`.
    current: Mutex<(Arc<CertifiedKey>, Option<Stamp>, Option<Stamp>)>,
}

impl ReloadingCert {
    /// Reads the pair now: a daemon does not start with TLS it cannot serve.
    pub fn open(cert: &Path, key: &Path) -> Result<ReloadingCert, TlsError> {
        let (cs, ks) = (stamp(cert), stamp(key));
        let pair = read_pair(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((pair, cs, ks)),
        })
    }

    /// The pair to serve now, reread first if either file changed since it was read.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut cur = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let (cs, ks) = (stamp(&self.cert), stamp(&self.key));
        if (cs, ks) != (cur.1, cur.2) {
            match read_pair(&self.cert, &self.key) {
                Ok(pair) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *cur = (pair, cs, ks);
                }
                Err(e) => {
                    // Half-written files settle on a later handshake; until then the last
                    // good pair serves. Remember the stamps so this is logged once per change.
                    tracing::warn!("{e}; the previous certificate stays in force");
                    cur.1 = cs;
                    cur.2 = ks;
                }
            }
        }
        cur.0.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls acceptor serving `cert`.
pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `listener` with TLS in front.
pub fn listen(listener: TcpListener, acceptor: TlsAcceptor) -> TlsTcpListener {
    let mut builder = tls_listener::builder(acceptor);
    builder.handshake_timeout(HANDSHAKE_TIMEOUT);
    builder.listen(listener)
}
