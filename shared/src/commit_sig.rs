//! Signed git commits, decided: the `git.verify` policy, git's `allowed_signers` file, and the
//! verdict on the tip commit's signature (SSH signatures as `git` writes them with
//! `gpg.format=ssh`: SSHSIG, namespace `git`). The agent reads the commit; this decides.

use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey, SshSig};

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
pub const GIT_NAMESPACE: &str = "git";

/// `git.verify` of the node config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitVerifySpec {
    /// Which commit must be signed: `head`, the branch tip (Flux's `HEAD` mode).
    pub mode: VerifyMode,
    /// git's `gpg.ssh.allowedSignersFile` format: `principals [options] keytype base64 [comment]`.
    #[serde(default)]
    pub ssh_allowed_signers: Option<String>,
    /// OpenPGP public keys (armored). Not verified yet: an OpenPGP-signed tip is refused.
    #[serde(default)]
    pub openpgp_keys: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum VerifyMode {
    Head,
}

impl GitVerifySpec {
    /// Problems as `(field below git.verify, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.ssh_allowed_signers.as_deref().is_none_or(|f| f.trim().is_empty()) {
            out.push((
                "sshAllowedSigners".to_owned(),
                "must name an allowed_signers file (OpenPGP alone is not verified yet)".to_owned(),
            ));
        }
        out
    }
}

/// One line of an allowed_signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// Who the key belongs to (`ci@example.com`), as status shows it.
    pub principals: Vec<String>,
    pub key: PublicKey,
    /// `namespaces="git,file"`; `None`: any namespace.
    pub namespaces: Option<Vec<String>>,
}

/// Parses git's allowed_signers format; an error names the line. `cert-authority` lines are
/// refused (certificates are not verified), as are lines past their `valid-before`, whose dates
/// this does not judge: such a line is reported rather than silently trusted.
pub fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: String| format!("line {}: {m}", i + 1);
        let (principals, rest) = line.split_once(char::is_whitespace).ok_or_else(|| at("no key".into()))?;
        let rest = rest.trim_start();
        // Options come before the key type when present; a key type never contains '='.
        let first = rest.split_whitespace().next().unwrap_or_default();
        let (options, key_text) =
            if first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-") {
                ("", rest)
            } else {
                let (o, k) = split_options(rest);
                (o, k.trim_start())
            };
        let mut namespaces = None;
        for option in split_outside_quotes(options, ',').into_iter().filter(|o| !o.is_empty()) {
            let (name, value) = option.split_once('=').unwrap_or((option, ""));
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    namespaces = Some(value.trim_matches('"').split(',').map(str::to_owned).collect());
                }
                "cert-authority" => return Err(at("cert-authority lines are not supported".into())),
                "valid-after" | "valid-before" => {
                    return Err(at(format!("{name} is not supported: give the key without a validity window")));
                }
                other => return Err(at(format!("unknown option {other:?}"))),
            }
        }
        let key = PublicKey::from_openssh(key_text.trim()).map_err(|e| at(format!("not an SSH public key: {e}")))?;
        out.push(AllowedSigner { principals: principals.split(',').map(str::to_owned).collect(), key, namespaces });
    }
    Ok(out)
}

/// `options rest`, where options may hold quoted values with spaces.
fn split_options(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

/// `s` split at each `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// What the tip commit's signature proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitVerdict {
    /// An allowed key signed exactly these bytes in the `git` namespace.
    Signed {
        principal: String,
        fingerprint: String,
    },
    Unsigned,
    /// A well-formed SSH signature by a key no allowed_signers line lists.
    UnknownKey {
        fingerprint: String,
    },
    /// An allowed key's signature that does not verify (the commit was changed after signing).
    Invalid {
        fingerprint: String,
    },
    /// A signature this agent cannot verify (OpenPGP, X.509, garbage).
    Unsupported {
        reason: String,
    },
}

impl CommitVerdict {
    pub fn is_signed(&self) -> bool {
        matches!(self, CommitVerdict::Signed { .. })
    }

    /// The status line for commit `id`: `commit 1a2b3c unsigned`, `commit 1a2b3c signed by
    /// ci@example.com (ssh key SHA256:...)`.
    pub fn describe(&self, id: &str) -> String {
        let short = &id[..id.len().min(12)];
        match self {
            CommitVerdict::Signed { principal, fingerprint } => {
                format!("commit {short} signed by {principal} (ssh key {fingerprint})")
            }
            CommitVerdict::Unsigned => format!("commit {short} unsigned"),
            CommitVerdict::UnknownKey { fingerprint } => {
                format!("commit {short} signed by an unknown key {fingerprint}")
            }
            CommitVerdict::Invalid { fingerprint } => {
                format!("commit {short}: its signature by {fingerprint} does not verify (changed after signing)")
            }
            CommitVerdict::Unsupported { reason } => format!("commit {short}: signature not verifiable: {reason}"),
        }
    }
}

/// The verdict of a commit's `gpgsig` header (`None`: the commit has none) over `signed` (the
/// commit object without that header, as git verifies it), against `allowed`.
pub fn verify_commit(signature: Option<&[u8]>, signed: &[u8], allowed: &[AllowedSigner]) -> CommitVerdict {
    let Some(signature) = signature else {
        return CommitVerdict::Unsigned;
    };
    let text = String::from_utf8_lossy(signature);
    let text = text.trim();
    if text.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return CommitVerdict::Unsupported { reason: "OpenPGP signatures are not verified yet".into() };
    }
    let sig = match SshSig::from_pem(text) {
        Ok(s) => s,
        Err(e) => return CommitVerdict::Unsupported { reason: format!("not an SSH signature: {e}") },
    };
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let namespace_ok = |s: &AllowedSigner| s.namespaces.as_ref().is_none_or(|n| n.iter().any(|n| n == GIT_NAMESPACE));
    let Some(signer) = allowed.iter().find(|s| s.key.key_data() == key.key_data() && namespace_ok(s)) else {
        return CommitVerdict::UnknownKey { fingerprint };
    };
    if sig.namespace() != GIT_NAMESPACE {
        return CommitVerdict::Unsupported { reason: format!("signed in namespace {:?}, not git", sig.namespace()) };
    }
    match signer.key.verify(GIT_NAMESPACE, signed, &sig) {
        Ok(()) => CommitVerdict::Signed { principal: signer.principals.join(","), fingerprint },
        Err(_) => CommitVerdict::Invalid { fingerprint },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{LineEnding, PrivateKey};

    fn key(seed: u8) -> PrivateKey {
        let kp = ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        PrivateKey::from(kp)
    }

    fn sign(k: &PrivateKey, ns: &str, msg: &[u8]) -> Vec<u8> {
        k.sign(ns, HashAlg::Sha512, msg).expect("signs").to_pem(LineEnding::LF).expect("pem").into_bytes()
    }

    fn allowed(line: &str) -> Vec<AllowedSigner> {
        parse_allowed_signers(line).expect("parses")
    }

    #[test]
    fn each_kind_of_tip_signature_gets_its_own_verdict() {
        let ci = key(1);
        let stranger = key(2);
        let line = format!("ci@example.com namespaces=\"git\" {}\n", ci.public_key().to_openssh().expect("openssh"));
        let signers = allowed(&line);
        let body = b"tree 0000\nauthor CI <ci@example.com> 0 +0000\n\nbump\n";
        let fp = |k: &PrivateKey| k.public_key().fingerprint(HashAlg::Sha256).to_string();
        let cases: Vec<(&str, Option<Vec<u8>>, CommitVerdict)> = vec![
            (
                "good",
                Some(sign(&ci, "git", body)),
                CommitVerdict::Signed { principal: "ci@example.com".into(), fingerprint: fp(&ci) },
            ),
            ("unsigned", None, CommitVerdict::Unsigned),
            ("stranger", Some(sign(&stranger, "git", body)), CommitVerdict::UnknownKey { fingerprint: fp(&stranger) }),
            (
                "changed after signing",
                Some(sign(&ci, "git", b"other")),
                CommitVerdict::Invalid { fingerprint: fp(&ci) },
            ),
            (
                "another namespace",
                Some(sign(&ci, "file", body)),
                CommitVerdict::Unsupported { reason: "signed in namespace \"file\", not git".into() },
            ),
            (
                "openpgp",
                Some(b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n".to_vec()),
                CommitVerdict::Unsupported { reason: "OpenPGP signatures are not verified yet".into() },
            ),
        ];
        for (name, sig, want) in cases {
            assert_eq!(verify_commit(sig.as_deref(), body, &signers), want, "{name}");
        }
    }

    #[test]
    fn a_key_allowed_only_for_other_namespaces_does_not_sign_commits() {
        let ci = key(1);
        let line = format!("ci@example.com namespaces=\"file\" {}", ci.public_key().to_openssh().expect("openssh"));
        let v = verify_commit(Some(&sign(&ci, "git", b"x")), b"x", &allowed(&line));
        assert!(matches!(v, CommitVerdict::UnknownKey { .. }), "{v:?}");
    }

    #[test]
    fn status_lines_name_the_commit_and_the_key() {
        let id = "1a2b3c4d5e6f7a8b9c0d";
        assert_eq!(CommitVerdict::Unsigned.describe(id), "commit 1a2b3c4d5e6f unsigned");
        let fp = "SHA256:abc".to_owned();
        assert_eq!(
            CommitVerdict::UnknownKey { fingerprint: fp.clone() }.describe(id),
            "commit 1a2b3c4d5e6f signed by an unknown key SHA256:abc"
        );
        assert_eq!(
            CommitVerdict::Signed { principal: "ci@example.com".into(), fingerprint: fp }.describe(id),
            "commit 1a2b3c4d5e6f signed by ci@example.com (ssh key SHA256:abc)"
        );
    }

    #[test]
    fn allowed_signers_lines_are_parsed_as_git_writes_them_and_bad_ones_name_their_line() {
        let k = key(3).public_key().to_openssh().expect("openssh");
        let text = format!(
            "# CI\n\nci@example.com,release@example.com {k} comment\nops@example.com namespaces=\"git,file\" {k}\n"
        );
        let s = allowed(&text);
        assert_eq!(s[0].principals, ["ci@example.com", "release@example.com"]);
        assert_eq!(s[0].namespaces, None);
        assert_eq!(s[1].namespaces, Some(vec!["git".to_owned(), "file".to_owned()]));
        for (bad, want) in [
            ("ci@example.com\n".to_owned(), "line 1: no key"),
            (format!("\nci@example.com cert-authority {k}"), "line 2: cert-authority"),
            (format!("ci@example.com valid-after=\"20260101\" {k}"), "line 1: valid-after is not supported"),
            ("ci@example.com ssh-ed25519 AAAA".to_owned(), "line 1: not an SSH public key"),
        ] {
            let e = parse_allowed_signers(&bad).unwrap_err();
            assert!(e.starts_with(want), "{bad:?}: {e}");
        }
    }
}
