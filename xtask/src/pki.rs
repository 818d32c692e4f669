//! Test PKI made with the `openssl` CLI: one CA for everything the testenv serves, a serving
//! certificate for 127.0.0.1, the service-account key pair, the registry token signing
//! certificate, and a foreign CA whose signatures everything must refuse.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// File names inside the PKI folder.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// Serves 127.0.0.1/localhost (API server, registry, token service, git server, fault proxies).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Certificate + key in one file (lighttpd's `ssl.pemfile`).
    pub fn server_pem(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }
    /// Signs registry tokens; chained to the CA, sent in each token's `x5c` header.
    pub fn token_cert(&self) -> PathBuf {
        self.dir.join("token-signing.crt")
    }
    pub fn token_key(&self) -> PathBuf {
        self.dir.join("token-signing.key")
    }
    /// A signing certificate from an unrelated CA, for tests that prove foreign tokens are refused.
    pub fn foreign_cert(&self) -> PathBuf {
        self.dir.join("foreign-signing.crt")
    }
    pub fn foreign_key(&self) -> PathBuf {
        self.dir.join("foreign-signing.key")
    }
    /// A folder holding only `ca.crt`, in the layout skopeo's `--cert-dir` expects.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    /// A key and certificate `<name>.key`/`<name>.crt` signed by the testenv CA for `subject`
    /// (`/O=system:nodes/CN=system:node:x`), made once and reused by later `up`s.
    pub fn ensure_leaf(&self, name: &str, subject: &str, san: Option<&str>, eku: &str) -> Result<(PathBuf, PathBuf)> {
        let (key, cert) = (self.dir.join(format!("{name}.key")), self.dir.join(format!("{name}.crt")));
        if !cert.exists() {
            leaf_subject(self, &key, &cert, subject, san, eku)?;
        }
        Ok((key, cert))
    }

    /// Creates every file that is missing (an existing PKI is reused across `up`s).
    pub fn ensure(dir: &Path) -> Result<Pki> {
        let pki = Pki { dir: dir.to_path_buf() };
        std::fs::create_dir_all(dir)?;
        if !pki.ca_cert().exists() {
            self_signed_ca(&pki.ca_key(), &pki.ca_cert(), "gitops-agent testenv CA")?;
        }
        if !pki.server_cert().exists() {
            let san = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
                       DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1";
            leaf(&pki, &pki.server_key(), &pki.server_cert(), "127.0.0.1", Some(san), "serverAuth,clientAuth")?;
        }
        if !pki.server_pem().exists() {
            let mut pem = std::fs::read(pki.server_cert())?;
            pem.extend(std::fs::read(pki.server_key())?);
            std::fs::write(pki.server_pem(), pem)?;
        }
        if !pki.sa_pub().exists() {
            openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"], &[&pki.sa_key()])?;
            openssl(&["pkey", "-pubout", "-in"], &[&pki.sa_key(), Path::new("-out"), &pki.sa_pub()])?;
        }
        if !pki.token_cert().exists() {
            leaf(&pki, &pki.token_key(), &pki.token_cert(), "testenv registry token signer", None, "codeSigning")?;
        }
        if !pki.foreign_cert().exists() {
            self_signed_ca(&pki.foreign_key(), &pki.foreign_cert(), "foreign token signer")?;
        }
        let cert_dir = pki.cert_dir();
        if !cert_dir.join("ca.crt").exists() {
            std::fs::create_dir_all(&cert_dir)?;
            std::fs::copy(pki.ca_cert(), cert_dir.join("ca.crt"))?;
        }
        Ok(pki)
    }
}

fn self_signed_ca(key: &Path, cert: &Path, cn: &str) -> Result<()> {
    let subj = format!("/CN={cn}");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-keyout",
        ],
        &[key, Path::new("-out"), cert],
    )
}

fn leaf(pki: &Pki, key: &Path, cert: &Path, cn: &str, san: Option<&str>, eku: &str) -> Result<()> {
    leaf_subject(pki, key, cert, &format!("/CN={cn}"), san, eku)
}

fn leaf_subject(pki: &Pki, key: &Path, cert: &Path, subj: &str, san: Option<&str>, eku: &str) -> Result<()> {
    let csr = cert.with_extension("csr");
    let ext = cert.with_extension("ext");
    let mut ext_text = format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\n"
    );
    if let Some(san) = san {
        ext_text.push_str(&format!("subjectAltName={san}\n"));
    }
    std::fs::write(&ext, ext_text)?;
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", subj, "-keyout"], &[key, Path::new("-out"), &csr])?;
    openssl(
        &["x509", "-req", "-days", "3650", "-set_serial", &serial(), "-in"],
        &[
            &csr,
            Path::new("-CA"),
            &pki.ca_cert(),
            Path::new("-CAkey"),
            &pki.ca_key(),
            Path::new("-extfile"),
            &ext,
            Path::new("-out"),
            cert,
        ],
    )?;
    let _ = std::fs::remove_file(csr);
    let _ = std::fs::remove_file(ext);
    Ok(())
}

/// A random serial, so re-created certificates never collide in a client's cache.
fn serial() -> String {
    format!("0x{:016x}", rand::random::<u64>() >> 1)
}

fn openssl(args: &[&str], paths: &[&Path]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .args(paths)
        .output()
        .context("running openssl (install the Debian package openssl)")?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
