//! Cosign image signatures, decided: the policy (`verify.cosign.publicKeys`), trusted public keys
//! (ECDSA P-256, Ed25519), the layers of a `sha256-<hex>.sig` manifest, the simple-signing payload,
//! the verdict for one digest and the cache of verified digests. The agent fetches; this decides.
//!
//! Two forms are read, both of simple-signing payloads, each with its base64 signature in the
//! layer annotation `dev.cosignproject.cosign/signature`: cosign's "classic" form, an OCI
//! manifest at the tag `sha256-<hex>.sig` (what `cosign sign --key` writes in v2, and in v3 with
//! `--new-bundle-format=false`), and the OCI 1.1 referrers form (`--registry-referrers-mode=oci-1-1`):
//! manifests of artifact type [`SIGNATURE_ARTIFACT`] whose `subject` is the image, listed by the
//! registry's referrers API or, where it has none, by the index at the tag `sha256-<hex>`.
//! docs/verification.md has the rest.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

/// The media type of a signature layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the base64 signature over the layer's bytes.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// A payload is a few hundred bytes; anything much larger is not cosign's and is not fetched.
pub const MAX_PAYLOAD: u64 = 64 * 1024;
/// Signature layers read per digest (cosign appends one per `cosign sign`).
pub const MAX_LAYERS: usize = 32;
/// The artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The media type of a referrers index (the referrers API's answer, the fallback tag's manifest).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Referrer signature manifests read per digest (one per `cosign sign`).
pub const MAX_REFERRERS: usize = 16;
/// Verified digests remembered by the agent; a node runs ~100 distinct images.
pub const CACHE_CAPACITY: usize = 4096;

/// `verify:` of a registry (node config) or of a bundle (`gitopsAgent`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifySpec {
    #[serde(default)]
    pub cosign: Option<CosignSpec>,
}

/// Keys any one of which must have signed each image digest.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CosignSpec {
    #[serde(default)]
    pub public_keys: Vec<KeySpec>,
}

/// One trusted key: its name (shown in status: "verified: cosign key ci-2026") and the PEM file
/// `cosign generate-key-pair` wrote as `cosign.pub` (a mounted Secret is such a file).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySpec {
    pub name: String,
    pub file: String,
}

impl VerifySpec {
    /// Problems of the spec as `(field path below it, message)`, e.g. `("cosign.publicKeys", ...)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(c) = &self.cosign else {
            out.push(("cosign".to_owned(), "is required: the only verifier so far is cosign".to_owned()));
            return out;
        };
        if c.public_keys.is_empty() {
            out.push(("cosign.publicKeys".to_owned(), "must list at least one key".to_owned()));
        }
        let mut seen = BTreeMap::new();
        for (i, k) in c.public_keys.iter().enumerate() {
            let path = format!("cosign.publicKeys[{i}]");
            if k.name.trim().is_empty() {
                out.push((format!("{path}.name"), "must not be empty".to_owned()));
            } else if let Some(prev) = seen.insert(k.name.as_str(), i) {
                out.push((format!("{path}.name"), format!("{:?} is already used by publicKeys[{prev}]", k.name)));
            }
            if k.file.trim().is_empty() {
                out.push((format!("{path}.file"), "must name the key's PEM file".to_owned()));
            }
        }
        out
    }
}

/// The tag cosign stores a digest's signatures at: `sha256:<hex>` → `sha256-<hex>.sig`.
pub fn signature_tag(digest: &str) -> Result<String, String> {
    let hex = sha256_hex(digest).ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
    Ok(format!("sha256-{hex}.sig"))
}

/// The tag of the referrers tag schema (OCI distribution 1.1) for `digest`, where a registry
/// without the referrers API keeps the index of its referrers: `sha256:<hex>` → `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> Result<String, String> {
    let hex = sha256_hex(digest).ok_or_else(|| format!("{digest:?} is not a sha256 digest"))?;
    Ok(format!("sha256-{hex}"))
}

/// What the answer to `GET /v2/<repo>/referrers/<digest>` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrersAnswer {
    /// The registry serves the referrers API: the body is the index (even an empty one).
    Index,
    /// It does not (distribution 2.8 answers 404; others 400, 405, or something not an index):
    /// the referrers are at the fallback tag ([`referrers_tag`]).
    Fallback,
}

/// Reads the referrers API's answer from its status and `Content-Type` (parameters ignored).
pub fn referrers_answer(status: u16, content_type: Option<&str>) -> ReferrersAnswer {
    let is_index = content_type.and_then(|t| t.split(';').next()).map(str::trim) == Some(OCI_INDEX);
    if status == 200 && is_index { ReferrersAnswer::Index } else { ReferrersAnswer::Fallback }
}

/// The digests of the cosign signature manifests a referrers index lists (entries of artifact
/// type [`SIGNATURE_ARTIFACT`]; others, and more than [`MAX_REFERRERS`], are left alone). The
/// registry may ignore an `artifactType` filter: it is applied here.
pub fn signature_referrers(index: &[u8]) -> Result<Vec<String>, String> {
    let i: Value = serde_json::from_slice(index).map_err(|e| format!("referrers index is not JSON: {e}"))?;
    let manifests = i["manifests"].as_array().ok_or("referrers index has no manifests list")?;
    Ok(manifests
        .iter()
        .filter(|m| m["artifactType"].as_str() == Some(SIGNATURE_ARTIFACT))
        .filter_map(|m| m["digest"].as_str().filter(|d| sha256_hex(d).is_some()))
        .take(MAX_REFERRERS)
        .map(str::to_owned)
        .collect())
}

/// The signature layers of a referrer manifest fetched by `digest`, once it is known to be that
/// manifest (its bytes hash to it) and a signature of `image` (its `subject`).
pub fn referrer_layers(manifest: &[u8], digest: &str, image: &str) -> Result<Vec<SignatureLayer>, String> {
    let hex = Sha256::digest(manifest).iter().map(|b| format!("{b:02x}")).collect::<String>();
    if sha256_hex(digest) != Some(hex.as_str()) {
        return Err(format!("referrer manifest {digest} does not match its digest"));
    }
    let m: Value = serde_json::from_slice(manifest).map_err(|e| format!("referrer manifest is not JSON: {e}"))?;
    match m["subject"]["digest"].as_str() {
        Some(subject) if subject == image => signature_layers(manifest),
        other => Err(format!("referrer manifest {digest} is of {}, not of {image}", other.unwrap_or("no subject"))),
    }
}

fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[derive(Clone)]
enum Key {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key trusted to sign images, with the name the policy gave it.
#[derive(Clone)]
pub struct TrustedKey {
    pub name: String,
    key: Key,
    /// `SHA256:<base64>` of the key's bytes: the cache key and what `--explain` can show.
    pub fingerprint: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({} {})", self.name, self.fingerprint)
    }
}

impl TrustedKey {
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of ECDSA P-256 or Ed25519, as `cosign.pub` is.
    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, String> {
        let (key, bytes) = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem.trim()) {
            let bytes = k.to_encoded_point(true).as_bytes().to_vec();
            (Key::P256(k), bytes)
        } else if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem.trim()) {
            (Key::Ed25519(k), k.as_bytes().to_vec())
        } else {
            return Err("not a PEM public key of ECDSA P-256 or Ed25519 (such as cosign.pub)".to_owned());
        };
        let fingerprint =
            format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&bytes)));
        Ok(TrustedKey { name: name.to_owned(), key, fingerprint })
    }

    /// Whether `signature` (DER for ECDSA, raw 64 bytes for Ed25519) is this key's over `payload`.
    fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            // cosign signs SHA-256 of the payload; Go writes ASN.1 DER and does not normalise S.
            Key::P256(k) => p256::ecdsa::Signature::from_der(signature).is_ok_and(|s| k.verify(payload, &s).is_ok()),
            // cosign signs with Ed25519ph (SHA-512 prehash; sigstore's default signer for Ed25519
            // keys); plain Ed25519 is accepted too. The two are domain-separated.
            Key::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature).is_ok_and(|s| {
                k.verify_prehashed_strict(Sha512::new().chain_update(payload), None, &s).is_ok()
                    || k.verify_strict(payload, &s).is_ok()
            }),
        }
    }
}

/// The keys of one policy; an image passes it when one of them signed its digest.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<TrustedKey>,
}

impl KeySet {
    /// Names the set by its keys (order-free), for the cache: a changed key set verifies anew.
    pub fn fingerprint(&self) -> String {
        let mut f: Vec<String> = self.keys.iter().map(|k| format!("{}={}", k.name, k.fingerprint)).collect();
        f.sort();
        f.join(",")
    }

    fn names(&self) -> String {
        self.keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A signature layer as the `.sig` manifest lists it; its blob is the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// `sha256:<hex>`, checked, so it is safe in a blob URL.
    pub digest: String,
    pub size: u64,
    /// The base64 signature annotation, if the layer has one.
    pub signature: Option<String>,
}

/// The simple-signing layers of a `.sig` manifest (other layers are ignored).
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, String> {
    let m: Value = serde_json::from_slice(manifest).map_err(|e| format!("signature manifest is not JSON: {e}"))?;
    let layers = m["layers"].as_array().ok_or("signature manifest has no layers")?;
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        if l["mediaType"].as_str() != Some(SIMPLE_SIGNING) {
            continue;
        }
        let digest = l["digest"].as_str().filter(|d| sha256_hex(d).is_some());
        let digest = digest.ok_or_else(|| format!("signature layer {i} has no sha256 digest"))?;
        let size = l["size"].as_u64().ok_or_else(|| format!("signature layer {i} has no size"))?;
        if size > MAX_PAYLOAD {
            return Err(format!("signature layer {i} is {size} bytes, more than a payload's {MAX_PAYLOAD}"));
        }
        let signature = l["annotations"][SIGNATURE_ANNOTATION].as_str().map(str::to_owned);
        out.push(SignatureLayer { digest: digest.to_owned(), size, signature });
        if out.len() == MAX_LAYERS {
            break;
        }
    }
    Ok(out)
}

/// Whether a fetched blob is the layer it was asked for (its bytes hash to the layer's digest).
pub fn blob_matches(layer: &SignatureLayer, blob: &[u8]) -> bool {
    let hex = Sha256::digest(blob).iter().map(|b| format!("{b:02x}")).collect::<String>();
    sha256_hex(&layer.digest) == Some(hex.as_str())
}

/// One signature with the bytes it claims to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub payload: Vec<u8>,
    /// Base64, as in the annotation; `None`: the layer carried none.
    pub signature: Option<String>,
}

/// The digest a simple-signing payload names (`critical.image.docker-manifest-digest`).
pub fn payload_digest(payload: &[u8]) -> Result<String, String> {
    let p: Value = serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let critical = &p["critical"];
    match critical["type"].as_str() {
        Some("cosign container image signature") => {}
        other => return Err(format!("payload type {other:?} is not a cosign container image signature")),
    }
    critical["image"]["docker-manifest-digest"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "payload names no critical.image.docker-manifest-digest".to_owned())
}

/// What the signatures of one digest prove against one key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A trusted key signed a payload naming exactly this digest.
    Verified { key: String },
    /// No signature at all (no `.sig` tag, or no simple-signing layer in it).
    Unsigned,
    /// Signatures exist, none verifies with a trusted key: another key signed, or the payload was
    /// changed after signing (the two look the same to a verifier).
    UnknownKey { signatures: usize, trusted: String },
    /// A trusted key signed, but for another digest (a signature copied to this tag).
    OtherDigest { digest: String, key: String },
    /// A trusted key signed something that is not a cosign payload, or no signature decodes.
    Malformed { reason: String },
}

impl Verdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, Verdict::Verified { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified { key } => write!(f, "verified: cosign key {key}"),
            Verdict::Unsigned => f.write_str("unsigned: no cosign signature"),
            Verdict::UnknownKey { signatures, trusted } => write!(
                f,
                "signed by an unknown key (or its payload was altered): none of {signatures} signature(s) \
                 verifies with a trusted key ({trusted})"
            ),
            Verdict::OtherDigest { digest, key } => {
                write!(f, "signed for another digest: the signature by cosign key {key} names {digest}")
            }
            Verdict::Malformed { reason } => write!(f, "unreadable signature: {reason}"),
        }
    }
}

/// The verdict of `signatures` for `digest` against `keys`: verified as soon as one trusted key
/// signed a payload naming exactly `digest`; otherwise the most telling failure.
pub fn verify(digest: &str, signatures: &[Signed], keys: &KeySet) -> Verdict {
    if signatures.is_empty() {
        return Verdict::Unsigned;
    }
    let mut other: Option<Verdict> = None;
    let mut unreadable: Option<String> = None;
    for s in signatures {
        let Some(b64) = &s.signature else {
            unreadable.get_or_insert_with(|| "a signature layer has no signature annotation".to_owned());
            continue;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            unreadable.get_or_insert_with(|| "a signature annotation is not base64".to_owned());
            continue;
        };
        let Some(key) = keys.keys.iter().find(|k| k.verifies(&s.payload, &raw)) else {
            continue;
        };
        match payload_digest(&s.payload) {
            Ok(d) if d == digest => return Verdict::Verified { key: key.name.clone() },
            Ok(d) => other = Some(Verdict::OtherDigest { digest: d, key: key.name.clone() }),
            Err(reason) => {
                other.get_or_insert(Verdict::Malformed {
                    reason: format!("signed by cosign key {}: {reason}", key.name),
                });
            }
        }
    }
    if let Some(v) = other {
        return v;
    }
    let decodable = signatures.len();
    match unreadable {
        Some(reason) if signatures.iter().all(|s| s.signature.is_none()) => Verdict::Malformed { reason },
        _ => Verdict::UnknownKey { signatures: decodable, trusted: keys.names() },
    }
}

/// An image's verdicts, one per policy that applies to it (its registry's, its bundle's): the
/// names of the keys that verified it when every policy passed, else the preflight line that
/// blocks the bundle, naming the image, its digest and why.
pub fn judge(written: &str, digest: &str, used_by: &[String], verdicts: &[Verdict]) -> Result<Vec<String>, String> {
    match verdicts.iter().find(|v| !v.is_verified()) {
        Some(failed) => Err(format!(
            "preflight: image {written} ({digest}) does not pass signature verification: {failed} (used by {})",
            used_by.join(", ")
        )),
        None => Ok(verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Verified { key } => Some(key.clone()),
                _ => None,
            })
            .collect()),
    }
}

/// Digests verified against a key set. A verification does not expire: the digest's bytes and the
/// key set both are fixed by the entry's key, so only a change of either verifies anew. Failures
/// are never kept, so a signature pushed later is found on the next poll. Bounded: the oldest
/// entry goes first.
#[derive(Debug, Clone, Default)]
pub struct VerifiedCache {
    entries: BTreeMap<(String, String), String>,
    order: VecDeque<(String, String)>,
}

impl VerifiedCache {
    /// The verdict remembered for `digest` against `keys`, if it was verified before.
    pub fn get(&self, digest: &str, keys: &KeySet) -> Option<Verdict> {
        let key = (digest.to_owned(), keys.fingerprint());
        self.entries.get(&key).map(|k| Verdict::Verified { key: k.clone() })
    }

    /// Remembers a verified verdict; any other is dropped.
    pub fn record(&mut self, digest: &str, keys: &KeySet, verdict: &Verdict) {
        let Verdict::Verified { key } = verdict else {
            return;
        };
        let entry = (digest.to_owned(), keys.fingerprint());
        if self.entries.insert(entry.clone(), key.clone()).is_none() {
            self.order.push_back(entry);
        }
        while self.order.len() > CACHE_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use p256::ecdsa::signature::Signer as _;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn payload(digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"h.example/a"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn p256_key(seed: u8) -> (p256::ecdsa::SigningKey, TrustedKey, String) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("a valid scalar");
        let pem = sk.verifying_key().to_public_key_pem(Default::default()).expect("pem");
        let tk = TrustedKey::from_pem(&format!("p256-{seed}"), &pem).expect("p256 pem parses");
        (sk, tk, pem)
    }

    fn ed_key(seed: u8) -> (ed25519_dalek::SigningKey, TrustedKey) {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let pem = sk.verifying_key().to_public_key_pem(Default::default()).expect("pem");
        let tk = TrustedKey::from_pem(&format!("ed-{seed}"), &pem).expect("ed25519 pem parses");
        (sk, tk)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn p256_signed(sk: &p256::ecdsa::SigningKey, payload: Vec<u8>) -> Signed {
        let sig: p256::ecdsa::Signature = sk.sign(&payload);
        Signed { signature: Some(b64(sig.to_der().as_bytes())), payload }
    }

    #[test]
    fn each_case_of_signatures_gets_its_own_verdict() {
        let (sk, trusted, _) = p256_key(7);
        let (stranger, _, _) = p256_key(9);
        let (ed_sk, ed_trusted) = ed_key(3);
        let keys = KeySet { keys: vec![trusted.clone(), ed_trusted] };
        let mut tampered = p256_signed(&sk, payload(DIGEST));
        tampered.payload = payload(OTHER);
        let ed_sig = ed_sk.sign(&payload(DIGEST));
        let ed = Signed { payload: payload(DIGEST), signature: Some(b64(&ed_sig.to_bytes())) };
        let ph_sig = ed_sk.sign_prehashed(Sha512::new().chain_update(payload(DIGEST)), None).expect("signs");
        let ed_ph = Signed { payload: payload(DIGEST), signature: Some(b64(&ph_sig.to_bytes())) };
        let unknown = || Verdict::UnknownKey { signatures: 1, trusted: "p256-7, ed-3".into() };
        let cases: Vec<(&str, Vec<Signed>, Verdict)> = vec![
            ("p256 good", vec![p256_signed(&sk, payload(DIGEST))], Verdict::Verified { key: "p256-7".into() }),
            ("ed25519 good", vec![ed], Verdict::Verified { key: "ed-3".into() }),
            ("ed25519ph good, as cosign signs", vec![ed_ph], Verdict::Verified { key: "ed-3".into() }),
            ("unsigned", vec![], Verdict::Unsigned),
            ("wrong key", vec![p256_signed(&stranger, payload(DIGEST))], unknown()),
            ("tampered payload", vec![tampered], unknown()),
            (
                "another digest",
                vec![p256_signed(&sk, payload(OTHER))],
                Verdict::OtherDigest { digest: OTHER.into(), key: "p256-7".into() },
            ),
            (
                "a stranger's signature beside a good one",
                vec![p256_signed(&stranger, payload(DIGEST)), p256_signed(&sk, payload(DIGEST))],
                Verdict::Verified { key: "p256-7".into() },
            ),
            (
                "not a cosign payload",
                vec![p256_signed(&sk, br#"{"critical":{"type":"x"}}"#.to_vec())],
                Verdict::Malformed {
                    reason: "signed by cosign key p256-7: payload type Some(\"x\") is not a cosign container image \
                             signature"
                        .into(),
                },
            ),
            (
                "no annotation",
                vec![Signed { payload: payload(DIGEST), signature: None }],
                Verdict::Malformed { reason: "a signature layer has no signature annotation".into() },
            ),
            ("garbage signature", vec![Signed { payload: payload(DIGEST), signature: Some("AAAA".into()) }], unknown()),
        ];
        for (name, sigs, want) in cases {
            assert_eq!(verify(DIGEST, &sigs, &keys), want, "{name}");
        }
    }

    #[test]
    fn an_image_passes_only_when_every_policy_that_applies_verified_it() {
        let ok = |k: &str| Verdict::Verified { key: k.into() };
        let used = vec!["Deployment/ns/web container web".to_owned()];
        assert_eq!(judge("h/a:1", DIGEST, &used, &[]), Ok(vec![]), "no policy: nothing to verify");
        assert_eq!(
            judge("h/a:1", DIGEST, &used, &[ok("node"), ok("bundle")]),
            Ok(vec!["node".into(), "bundle".into()])
        );
        let e = judge("h/a:1", DIGEST, &used, &[ok("bundle"), Verdict::Unsigned]).unwrap_err();
        assert_eq!(
            e,
            format!(
                "preflight: image h/a:1 ({DIGEST}) does not pass signature verification: unsigned: no cosign signature \
                 (used by Deployment/ns/web container web)"
            )
        );
    }

    #[test]
    fn a_high_s_ecdsa_signature_as_go_may_write_it_still_verifies() {
        let (sk, trusted, _) = p256_key(5);
        let body = payload(DIGEST);
        let sig: p256::ecdsa::Signature = sk.sign(&body);
        let (r, s) = sig.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*s).expect("(r, n-s) is a signature");
        assert_ne!(high, sig);
        let signed = Signed { payload: body, signature: Some(b64(high.to_der().as_bytes())) };
        assert_eq!(
            verify(DIGEST, &[signed], &KeySet { keys: vec![trusted] }),
            Verdict::Verified { key: "p256-5".into() }
        );
    }

    #[test]
    fn keys_other_than_p256_and_ed25519_pem_are_refused() {
        let (_, _, pem) = p256_key(1);
        assert!(TrustedKey::from_pem("k", &pem).is_ok());
        for bad in ["", "not pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"] {
            let e = TrustedKey::from_pem("k", bad).unwrap_err();
            assert!(e.contains("ECDSA P-256 or Ed25519"), "{e}");
        }
    }

    #[test]
    fn the_signature_tag_is_made_only_of_a_sha256_digest() {
        assert_eq!(signature_tag(DIGEST).unwrap(), format!("sha256-{}.sig", "1".repeat(64)));
        for bad in ["sha256:abc", "sha512:11", "sha256:../../x", &DIGEST.to_uppercase()] {
            assert!(signature_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_simple_signing_layers_with_sane_digests_and_sizes_are_read() {
        let manifest = |layers: Value| serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers}));
        let good = serde_json::json!([
            {"mediaType": SIMPLE_SIGNING, "digest": DIGEST, "size": 240,
             "annotations": {SIGNATURE_ANNOTATION: "MEUC"}},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": OTHER, "size": 10},
            {"mediaType": SIMPLE_SIGNING, "digest": OTHER, "size": 241},
        ]);
        assert_eq!(
            signature_layers(&manifest(good).unwrap()).unwrap(),
            vec![
                SignatureLayer { digest: DIGEST.into(), size: 240, signature: Some("MEUC".into()) },
                SignatureLayer { digest: OTHER.into(), size: 241, signature: None },
            ]
        );
        let bad_digest = serde_json::json!([{"mediaType": SIMPLE_SIGNING, "digest": "sha256:../x", "size": 1}]);
        assert!(signature_layers(&manifest(bad_digest).unwrap()).unwrap_err().contains("no sha256 digest"));
        let huge = serde_json::json!([{"mediaType": SIMPLE_SIGNING, "digest": DIGEST, "size": MAX_PAYLOAD + 1}]);
        assert!(signature_layers(&manifest(huge).unwrap()).unwrap_err().contains("more than a payload"));
        assert!(signature_layers(b"{}").unwrap_err().contains("no layers"));
    }

    #[test]
    fn a_blob_matches_its_layer_only_byte_for_byte() {
        let body = payload(DIGEST);
        let hex: String = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
        let layer = SignatureLayer { digest: format!("sha256:{hex}"), size: body.len() as u64, signature: None };
        assert!(blob_matches(&layer, &body));
        assert!(!blob_matches(&layer, &payload(OTHER)));
    }

    #[test]
    fn only_verified_digests_are_cached_and_only_for_the_same_keys() {
        let (_, a, _) = p256_key(7);
        let (_, b, _) = p256_key(8);
        let keys = KeySet { keys: vec![a.clone()] };
        let mut cache = VerifiedCache::default();
        cache.record(DIGEST, &keys, &Verdict::Unsigned);
        cache.record(OTHER, &keys, &Verdict::UnknownKey { signatures: 1, trusted: "p256-7".into() });
        assert!(cache.is_empty(), "failures are looked at again on the next poll");
        let ok = Verdict::Verified { key: "p256-7".into() };
        cache.record(DIGEST, &keys, &ok);
        assert_eq!(cache.get(DIGEST, &keys), Some(ok));
        assert_eq!(cache.get(OTHER, &keys), None);
        assert_eq!(cache.get(DIGEST, &KeySet { keys: vec![a.clone(), b.clone()] }), None, "a changed key set");
        let reordered = KeySet { keys: vec![b.clone(), a.clone()] };
        let both = KeySet { keys: vec![a, b] };
        assert_eq!(reordered.fingerprint(), both.fingerprint());
    }

    #[test]
    fn the_cache_forgets_its_oldest_entry_past_its_capacity() {
        let (_, a, _) = p256_key(7);
        let keys = KeySet { keys: vec![a] };
        let mut cache = VerifiedCache::default();
        let ok = Verdict::Verified { key: "p256-7".into() };
        let digest = |i: usize| format!("sha256:{i:064x}");
        for i in 0..=CACHE_CAPACITY {
            cache.record(&digest(i), &keys, &ok);
        }
        assert_eq!(cache.len(), CACHE_CAPACITY);
        assert_eq!(cache.get(&digest(0), &keys), None);
        assert!(cache.get(&digest(CACHE_CAPACITY), &keys).is_some());
    }

    #[test]
    fn a_verify_spec_names_each_bad_field() {
        let spec = |keys: Vec<(&str, &str)>| VerifySpec {
            cosign: Some(CosignSpec {
                public_keys: keys.into_iter().map(|(n, f)| KeySpec { name: n.into(), file: f.into() }).collect(),
            }),
        };
        assert!(spec(vec![("ci", "ci.pub")]).problems().is_empty());
        assert_eq!(VerifySpec::default().problems()[0].0, "cosign");
        assert_eq!(spec(vec![]).problems()[0].0, "cosign.publicKeys");
        let p = spec(vec![("ci", "a.pub"), ("ci", ""), ("", "b.pub")]).problems();
        let paths: Vec<&str> = p.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(paths, ["cosign.publicKeys[1].name", "cosign.publicKeys[1].file", "cosign.publicKeys[2].name"]);
    }

    /// The index and a referrer manifest as cosign v2.6.5 stores them with
    /// `--registry-referrers-mode=oci-1-1` in a registry without the referrers API.
    #[test]
    fn a_referrers_index_lists_signature_manifests_and_a_referrer_must_be_what_it_was_asked_for() {
        let answers = [
            (200, Some(OCI_INDEX), ReferrersAnswer::Index),
            (200, Some("application/vnd.oci.image.index.v1+json; charset=utf-8"), ReferrersAnswer::Index),
            (404, Some("text/plain; charset=utf-8"), ReferrersAnswer::Fallback),
            (200, Some("text/html"), ReferrersAnswer::Fallback),
            (200, None, ReferrersAnswer::Fallback),
            (405, Some(OCI_INDEX), ReferrersAnswer::Fallback),
        ];
        for (status, content_type, want) in answers {
            assert_eq!(referrers_answer(status, content_type), want, "{status} {content_type:?}");
        }
        let subject = "sha256:4c902e33baeac1c997d7aeace8ae61f61123ac95bf4d04476d79ff3b9f6a1b93";
        assert_eq!(referrers_tag(subject).unwrap(), format!("sha256-{}", &subject[7..]));
        assert!(referrers_tag("latest").is_err());
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":793,"digest":"{OTHER}","artifactType":"{SIGNATURE_ARTIFACT}"}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":500,"digest":"{DIGEST}","artifactType":"application/spdx+json"}},
              {{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":500,"digest":"md5:abc","artifactType":"{SIGNATURE_ARTIFACT}"}}]}}"#
        );
        assert_eq!(signature_referrers(index.as_bytes()).unwrap(), [OTHER], "signatures only, sha256 only");
        assert!(signature_referrers(b"{}").is_err());
        let many: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"digest":"sha256:{i:064x}","artifactType":"{SIGNATURE_ARTIFACT}"}}"#))
            .collect();
        let many = format!(r#"{{"manifests":[{}]}}"#, many.join(","));
        assert_eq!(signature_referrers(many.as_bytes()).unwrap().len(), MAX_REFERRERS);

        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{SIGNATURE_ARTIFACT}","size":233,"digest":"sha256:511ec76656cc0104b135d3426c4f029f5b351859aa793a02ab3690872ff5cefa"}},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","size":260,"digest":"sha256:9032660498c7ceb5d2246b9f52ba81a8a70e8208884f042c8b1bdb480d85e072","annotations":{{"{SIGNATURE_ANNOTATION}":"MEYCIQD3"}}}}],"subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":400,"digest":"{subject}"}},"artifactType":"{SIGNATURE_ARTIFACT}"}}"#
        );
        let digest = format!(
            "sha256:{}",
            Sha256::digest(manifest.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let layers = referrer_layers(manifest.as_bytes(), &digest, subject).unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].signature.as_deref(), Some("MEYCIQD3"));
        let wrong_bytes = referrer_layers(manifest.as_bytes(), OTHER, subject).unwrap_err();
        assert!(wrong_bytes.contains("does not match its digest"), "{wrong_bytes}");
        let of_another = referrer_layers(manifest.as_bytes(), &digest, DIGEST).unwrap_err();
        assert!(of_another.contains(&format!("is of {subject}, not of {DIGEST}")), "{of_another}");
    }
}
