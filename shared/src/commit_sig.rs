//! Signed git commits, decided: the `git.verify` policy, git's `allowed_signers` file, and the
//! verdict on the tip commit's signature (SSH signatures as `git` writes them with
//! `gpg.format=ssh`: SSHSIG, namespace `git`; OpenPGP signatures as `gpg` writes them, by rpgp).
//! The agent reads the commit; this decides.

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
    /// OpenPGP public keys, armored (`gpg --export --armor`), one or more in the file.
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
        let empty = |f: &Option<String>| f.as_deref().is_none_or(|f| f.trim().is_empty());
        if empty(&self.ssh_allowed_signers) && empty(&self.openpgp_keys) {
            out.push((
                "sshAllowedSigners".to_owned(),
                "name an allowed_signers file, openpgpKeys, or both: no key, no commit passes".to_owned(),
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

/// An OpenPGP key allowed to sign commits (its primary key or any of its subkeys).
#[derive(Debug, Clone)]
pub struct AllowedPgpKey {
    key: pgp::composed::SignedPublicKey,
    /// The first user id, as status shows it (`CI <ci@example.com>`).
    pub user: String,
    /// The primary key's fingerprint, upper-case hex.
    pub fingerprint: String,
}

/// Every armored public key in `text` (`gpg --export --armor`, several may follow each other).
pub fn parse_openpgp_keys(text: &str) -> Result<Vec<AllowedPgpKey>, String> {
    use pgp::composed::Deserializable as _;
    use pgp::types::KeyDetails as _;
    let (keys, _) = pgp::composed::SignedPublicKey::from_armor_many(text.as_bytes())
        .map_err(|e| format!("not armored OpenPGP public keys: {e}"))?;
    let mut out = Vec::new();
    for (i, key) in keys.enumerate() {
        let key = key.map_err(|e| format!("key {}: {e}", i + 1))?;
        let user =
            key.details.users.first().map(|u| String::from_utf8_lossy(u.id.id()).into_owned()).unwrap_or_default();
        let fingerprint = format!("{:X}", key.primary_key.fingerprint());
        out.push(AllowedPgpKey { key, user, fingerprint });
    }
    if out.is_empty() {
        return Err("holds no OpenPGP public key".to_owned());
    }
    Ok(out)
}

/// What the tip commit's signature proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitVerdict {
    /// An allowed key signed exactly these bytes (SSH: in the `git` namespace). `key` says
    /// which: `ssh key SHA256:...` or `openpgp key <fingerprint>`.
    Signed {
        principal: String,
        key: String,
    },
    Unsigned,
    /// A well-formed signature by a key not allowed (`SHA256:...`, or an OpenPGP issuer).
    UnknownKey {
        key: String,
    },
    /// An allowed key's signature that does not verify (the commit was changed after signing).
    Invalid {
        key: String,
    },
    /// A signature this agent cannot verify (X.509, another namespace, garbage).
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
            CommitVerdict::Signed { principal, key } => format!("commit {short} signed by {principal} ({key})"),
            CommitVerdict::Unsigned => format!("commit {short} unsigned"),
            CommitVerdict::UnknownKey { key } => format!("commit {short} signed by an unknown key {key}"),
            CommitVerdict::Invalid { key } => {
                format!("commit {short}: its signature by {key} does not verify (changed after signing)")
            }
            CommitVerdict::Unsupported { reason } => format!("commit {short}: signature not verifiable: {reason}"),
        }
    }
}

/// The verdict of a commit's `gpgsig` header (`None`: the commit has none) over `signed` (the
/// commit object without that header, as git verifies it), against the allowed SSH signers and
/// OpenPGP keys.
pub fn verify_commit(
    signature: Option<&[u8]>,
    signed: &[u8],
    allowed: &[AllowedSigner],
    openpgp: &[AllowedPgpKey],
) -> CommitVerdict {
    let Some(signature) = signature else {
        return CommitVerdict::Unsigned;
    };
    let text = String::from_utf8_lossy(signature);
    let text = text.trim();
    if text.starts_with("-----BEGIN PGP SIGNATURE-----") {
        return verify_openpgp(text, signed, openpgp);
    }
    let sig = match SshSig::from_pem(text) {
        Ok(s) => s,
        Err(e) => return CommitVerdict::Unsupported { reason: format!("not an SSH signature: {e}") },
    };
    let key = PublicKey::from(sig.public_key().clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let namespace_ok = |s: &AllowedSigner| s.namespaces.as_ref().is_none_or(|n| n.iter().any(|n| n == GIT_NAMESPACE));
    let Some(signer) = allowed.iter().find(|s| s.key.key_data() == key.key_data() && namespace_ok(s)) else {
        return CommitVerdict::UnknownKey { key: fingerprint };
    };
    if sig.namespace() != GIT_NAMESPACE {
        return CommitVerdict::Unsupported { reason: format!("signed in namespace {:?}, not git", sig.namespace()) };
    }
    match signer.key.verify(GIT_NAMESPACE, signed, &sig) {
        Ok(()) => {
            CommitVerdict::Signed { principal: signer.principals.join(","), key: format!("ssh key {fingerprint}") }
        }
        Err(_) => CommitVerdict::Invalid { key: fingerprint },
    }
}

/// An armored OpenPGP detached signature over `signed`, by one of `keys` (primary or subkey).
fn verify_openpgp(text: &str, signed: &[u8], keys: &[AllowedPgpKey]) -> CommitVerdict {
    use pgp::composed::Deserializable as _;
    let sig = match pgp::composed::DetachedSignature::from_armor_single(text.as_bytes()) {
        Ok((s, _)) => s,
        Err(e) => return CommitVerdict::Unsupported { reason: format!("not an OpenPGP signature: {e}") },
    };
    for k in keys {
        let by_primary = sig.verify(&k.key.primary_key, signed).is_ok();
        if by_primary || k.key.public_subkeys.iter().any(|s| sig.verify(&s.key, signed).is_ok()) {
            return CommitVerdict::Signed { principal: k.user.clone(), key: format!("openpgp key {}", k.fingerprint) };
        }
    }
    let issuer = sig.signature.issuer_fingerprint().first().map(|f| format!("{f:X}"));
    let issuer = issuer.or_else(|| {
        sig.signature.issuer_key_id().first().map(|id| id.as_ref().iter().map(|b| format!("{b:02X}")).collect())
    });
    let issuer = issuer.unwrap_or_else(|| "(no issuer named)".to_owned());
    // An allowed key named as issuer whose signature fails: the bytes changed after signing.
    match keys.iter().find(|k| k.fingerprint.ends_with(&issuer)) {
        Some(_) => CommitVerdict::Invalid { key: format!("openpgp key {issuer}") },
        None => CommitVerdict::UnknownKey { key: format!("openpgp key {issuer}") },
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
                CommitVerdict::Signed { principal: "ci@example.com".into(), key: format!("ssh key {}", fp(&ci)) },
            ),
            ("unsigned", None, CommitVerdict::Unsigned),
            ("stranger", Some(sign(&stranger, "git", body)), CommitVerdict::UnknownKey { key: fp(&stranger) }),
            ("changed after signing", Some(sign(&ci, "git", b"other")), CommitVerdict::Invalid { key: fp(&ci) }),
            (
                "another namespace",
                Some(sign(&ci, "file", body)),
                CommitVerdict::Unsupported { reason: "signed in namespace \"file\", not git".into() },
            ),
        ];
        for (name, sig, want) in cases {
            assert_eq!(verify_commit(sig.as_deref(), body, &signers, &[]), want, "{name}");
        }
    }

    /// Made by gpg 2 (`--quick-gen-key ... ed25519 sign`, `--detach-sign --armor` of
    /// [`PGP_BODY`], `--export --armor`): real tool output, not our own encoder's.
    const PGP_KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\
\n\
mDMEaw7TDhYJKwYBBAHaRw8BAQdANHQvGlufy37jtc/0q83B1UTAtnCMk/q5u2Rt\n\
pMmwEdu0FENJIDxjaUBleGFtcGxlLnRlc3Q+iJAEExYIADgWIQTaTaUZNKjtm1Pn\n\
Lamr+0L1sJUtBgUCaw7TDgIbAwULCQgHAgYVCgkICwIEFgIDAQIeAQIXgAAKCRCr\n\
+0L1sJUtBtRsAQDVkrn7jvLCnsY+nAyByLNmY4VJxx24Q0dDJLDY7h21fQEA19uc\n\
B3XhFgJnJWtrlJ9DwTev7rzrHr30GZ27dK9cagQ=\n\
=bPoN\n\
-----END PGP PUBLIC KEY BLOCK-----\n\
";
    const PGP_BODY: &[u8] = b"tree 0000\nauthor CI <ci@example.test> 0 +0000\n\nbump\n";
    const PGP_SIG: &str = "-----BEGIN PGP SIGNATURE-----\n\
\n\
iHUEABYIAB0WIQTaTaUZNKjtm1PnLamr+0L1sJUtBgUCaw7TDgAKCRCr+0L1sJUt\n\
BksUAQCrzpwYE9YzV9TY5SizCxQK5fkrllbTOaD8NlmbtiSIdwEAlbjqImmQhWMk\n\
VzCIeEXoJZy43wC6MeKdiY98NRL8vg4=\n\
=/mPf\n\
-----END PGP SIGNATURE-----\n\
";
    const PGP_STRANGER_SIG: &str = "-----BEGIN PGP SIGNATURE-----\n\
\n\
iHUEABYIAB0WIQRNNk7yTJ9ly3yWRwx/4cVMLsi2RgUCaw7TDgAKCRB/4cVMLsi2\n\
RiUEAP92Loyetx6dKtVEP2rZoO8X4PQ7lQOUYASDwMXrvhzF9gD9EgMIvPbSRRg0\n\
J+XQk5pl7IOzdjv76QggMiGaVvk1LgI=\n\
=nAwp\n\
-----END PGP SIGNATURE-----\n\
";

    #[test]
    fn openpgp_signatures_made_by_gpg_are_verified_against_the_allowed_keys() {
        let keys = parse_openpgp_keys(PGP_KEY).expect("gpg's export parses");
        assert_eq!(keys[0].user, "CI <ci@example.test>");
        assert_eq!(keys[0].fingerprint, "DA4DA51934A8ED9B53E72DA9ABFB42F5B0952D06");
        let key = "openpgp key DA4DA51934A8ED9B53E72DA9ABFB42F5B0952D06".to_owned();
        let cases: Vec<(&str, &str, &[u8], CommitVerdict)> = vec![
            (
                "good",
                PGP_SIG,
                PGP_BODY,
                CommitVerdict::Signed { principal: "CI <ci@example.test>".into(), key: key.clone() },
            ),
            ("changed after signing", PGP_SIG, b"tree 1111\n", CommitVerdict::Invalid { key }),
            (
                "a stranger's key",
                PGP_STRANGER_SIG,
                PGP_BODY,
                CommitVerdict::UnknownKey { key: "openpgp key 4D364EF24C9F65CB7C96470C7FE1C54C2EC8B646".into() },
            ),
        ];
        for (name, sig, body, want) in cases {
            assert_eq!(verify_commit(Some(sig.as_bytes()), body, &[], &keys), want, "{name}");
        }
        let garbage = b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n";
        let v = verify_commit(Some(garbage), PGP_BODY, &[], &keys);
        assert!(matches!(v, CommitVerdict::Unsupported { .. }), "{v:?}");
        assert!(parse_openpgp_keys("not a key").is_err());
    }

    #[test]
    fn a_key_allowed_only_for_other_namespaces_does_not_sign_commits() {
        let ci = key(1);
        let line = format!("ci@example.com namespaces=\"file\" {}", ci.public_key().to_openssh().expect("openssh"));
        let v = verify_commit(Some(&sign(&ci, "git", b"x")), b"x", &allowed(&line), &[]);
        assert!(matches!(v, CommitVerdict::UnknownKey { .. }), "{v:?}");
    }

    #[test]
    fn status_lines_name_the_commit_and_the_key() {
        let id = "1a2b3c4d5e6f7a8b9c0d";
        assert_eq!(CommitVerdict::Unsigned.describe(id), "commit 1a2b3c4d5e6f unsigned");
        let fp = "SHA256:abc".to_owned();
        assert_eq!(
            CommitVerdict::UnknownKey { key: fp.clone() }.describe(id),
            "commit 1a2b3c4d5e6f signed by an unknown key SHA256:abc"
        );
        assert_eq!(
            CommitVerdict::Signed { principal: "ci@example.com".into(), key: format!("ssh key {fp}") }.describe(id),
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
