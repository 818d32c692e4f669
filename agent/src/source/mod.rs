//! Sources of desired state: the git repository and the registries.

pub mod git;
pub mod registry;
pub mod reports;
pub mod secret;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The TLS client config of every source: with a CA file, exactly the CAs in it are trusted (an
/// internal Harbor or Gitea CA does not widen trust for anything else); without one, the web PKI
/// roots. ring is the one crypto provider in the process. The error is the reason only; callers
/// name the file in their own error type.
pub fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    // Also the process default, for libraries that build their own config from it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            if roots.is_empty() {
                return Err("no certificate in it".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// An error and its causes in one line (TLS and gix failures hide their reason in the chain);
/// a cause already contained in the text so far is not repeated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

/// Requests a source made, by kind (`manifest_head`, `token`, `poll`, ...) and outcome (`ok`,
/// `throttled`, `unchanged`, ...): the labels the metrics endpoint exports. Labels are static
/// strings, so the set of series is bounded.
#[derive(Debug, Default)]
pub struct RequestCounts {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl RequestCounts {
    pub fn record(&self, kind: &'static str, outcome: &'static str) {
        *self.counts.lock().expect("request counts lock").entry((kind, outcome)).or_default() += 1;
    }

    /// One count (0 when never recorded).
    pub fn get(&self, kind: &str, outcome: &str) -> u64 {
        self.counts.lock().expect("request counts lock").get(&(kind, outcome)).copied().unwrap_or(0)
    }

    /// Every (kind, outcome, count), sorted.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.counts.lock().expect("request counts lock").iter().map(|(&(k, o), &n)| (k, o, n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_kind_and_outcome() {
        let c = RequestCounts::default();
        c.record("manifest_head", "ok");
        c.record("manifest_head", "ok");
        c.record("manifest_head", "throttled");
        c.record("token", "ok");
        assert_eq!(c.get("manifest_head", "ok"), 2);
        assert_eq!(c.get("tag_list", "ok"), 0);
        assert_eq!(
            c.snapshot(),
            vec![("manifest_head", "ok", 2), ("manifest_head", "throttled", 1), ("token", "ok", 1)]
        );
    }
}
