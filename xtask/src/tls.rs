//! rustls configurations built from the testenv's PEM files.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Installs the process-wide rustls provider once (kube and our servers must agree on one).
pub fn install_crypto_provider() {
    // Err means another caller installed one already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))
}

pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    install_crypto_provider();
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading key {}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs(cert)?, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client that trusts exactly the CAs in `ca` (nothing from the system store).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c)?;
    }
    // No ALPN here: hyper-rustls sets it from the HTTP versions it enables.
    Ok(Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()))
}
