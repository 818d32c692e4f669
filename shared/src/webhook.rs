//! Webhooks: who may send one (authentication over the raw body, before anything is parsed), what
//! it says (a git push, an image push, or nothing for us), and whether it concerns this agent.
//! A webhook only ever triggers a re-read of the sources: the tags and digests in a payload are
//! never trusted, so a replayed or forged-but-authenticated payload can at worst cause one
//! extra poll.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Sender;

/// Why a webhook is refused (401). Never holds what was sent: it may be a near-miss secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("the {0} header does not match")]
    Wrong(&'static str),
}

/// Headers by lower-case name.
pub type Headers = BTreeMap<String, String>;

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.get(name).map(String::as_str)
}

/// The hex HMAC-SHA256 of `body` keyed by `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Checks a webhook's credentials over its raw body, in constant time.
pub fn authenticate(sender: Sender, headers: &Headers, body: &[u8], secret: &[u8]) -> Result<(), Refusal> {
    let secret_text = String::from_utf8_lossy(secret);
    let hmac_header = |name: &'static str, prefix: &str| -> Result<(), Refusal> {
        let got = header(headers, name).ok_or(Refusal::Missing(name))?;
        let got = got.strip_prefix(prefix).ok_or(Refusal::Wrong(name))?;
        if same(&got.to_ascii_lowercase(), &signature(secret, body)) { Ok(()) } else { Err(Refusal::Wrong(name)) }
    };
    match sender {
        Sender::Harbor | Sender::Registry => {
            let got = header(headers, "authorization").ok_or(Refusal::Missing("Authorization"))?;
            if same(got, &secret_text) { Ok(()) } else { Err(Refusal::Wrong("Authorization")) }
        }
        Sender::Gitea => match header(headers, "x-gitea-signature") {
            Some(_) => hmac_header("x-gitea-signature", ""),
            None => hmac_header("x-hub-signature-256", "sha256="),
        },
        Sender::GitHub => hmac_header("x-hub-signature-256", "sha256="),
        Sender::Generic => hmac_header("x-signature-256", "sha256="),
    }
}

/// An image pushed, as a payload names it. Only a hint of which repository to re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The registry host as the sender knows it (Harbor's external URL may differ from the
    /// host in manifests: aliases match it).
    pub host: Option<String>,
    /// `project/repo`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// What an authenticated webhook says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A push to a git repository: its URLs and `owner/name`.
    GitPush {
        urls: Vec<String>,
        full_name: Option<String>,
        reference: Option<String>,
    },
    ImagePush(Vec<PushedImage>),
    /// Re-read every source (the generic endpoint).
    Everything,
    /// Nothing to do here (a ping, a scan result, a deletion, a pull): why.
    Ignored(String),
}

/// Why an authenticated webhook's body says nothing readable (400), by the step that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("missing X-Gitea-Event (or X-GitHub-Event) header")]
    NoEventHeader,
    #[error("Harbor push without repository.repo_full_name")]
    HarborNoRepository,
    #[error("Harbor push without event_data.resources")]
    HarborNoResources,
    #[error("a registry notification without events")]
    NotificationNoEvents,
}

/// Reads an authenticated webhook's body.
pub fn parse(sender: Sender, headers: &Headers, body: &[u8]) -> Result<Event, ParseError> {
    if sender == Sender::Generic {
        return Ok(Event::Everything);
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    match sender {
        Sender::Harbor => harbor(&doc),
        Sender::Gitea | Sender::GitHub => {
            let event = ["x-gitea-event", "x-gogs-event", "x-github-event"]
                .iter()
                .find_map(|h| header(headers, h))
                .ok_or(ParseError::NoEventHeader)?;
            if event != "push" {
                return Ok(Event::Ignored(format!("{event} events concern nothing here")));
            }
            let repo = &doc["repository"];
            let urls = ["clone_url", "html_url", "ssh_url"]
                .iter()
                .filter_map(|k| repo[*k].as_str().map(str::to_owned))
                .collect();
            Ok(Event::GitPush {
                urls,
                full_name: repo["full_name"].as_str().map(str::to_owned),
                reference: doc["ref"].as_str().map(str::to_owned),
            })
        }
        Sender::Registry => registry_notification(&doc),
        Sender::Generic => Ok(Event::Everything),
    }
}

fn harbor(doc: &Value) -> Result<Event, ParseError> {
    // CloudEvents format, or Harbor's default one (`pushImage` is Harbor before 2.0).
    let (kind, data) = if doc.get("specversion").is_some() {
        (doc["type"].as_str().unwrap_or_default(), &doc["data"])
    } else {
        (doc["type"].as_str().unwrap_or_default(), &doc["event_data"])
    };
    if !matches!(kind, "PUSH_ARTIFACT" | "pushImage" | "harbor.artifact.pushed") {
        return Ok(Event::Ignored(format!("Harbor event {kind:?} concerns nothing here")));
    }
    let repo = &data["repository"];
    let full_name = repo["repo_full_name"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| Some(format!("{}/{}", repo["namespace"].as_str()?, repo["name"].as_str()?)))
        .ok_or(ParseError::HarborNoRepository)?;
    let resources = data["resources"].as_array().ok_or(ParseError::HarborNoResources)?;
    let images = resources
        .iter()
        .map(|r| {
            let tag = r["tag"].as_str().filter(|t| !t.is_empty());
            // A push by digest carries the digest in the tag field: never a tag.
            let (tag, digest) = match tag {
                Some(t) if t.starts_with("sha256:") => (None, Some(t.to_owned())),
                t => (t.map(str::to_owned), r["digest"].as_str().map(str::to_owned)),
            };
            let host = r["resource_url"].as_str().and_then(|u| u.split_once('/')).map(|(h, _)| h.to_owned());
            PushedImage { host, repository: full_name.clone(), tag, digest }
        })
        .collect();
    Ok(Event::ImagePush(images))
}

fn registry_notification(doc: &Value) -> Result<Event, ParseError> {
    let events = doc["events"].as_array().ok_or(ParseError::NotificationNoEvents)?;
    let images: Vec<PushedImage> = events
        .iter()
        .filter(|e| e["action"] == "push")
        .filter_map(|e| {
            let t = &e["target"];
            Some(PushedImage {
                host: e["request"]["host"].as_str().map(str::to_owned),
                repository: t["repository"].as_str()?.to_owned(),
                tag: t["tag"].as_str().map(str::to_owned),
                digest: t["digest"].as_str().map(str::to_owned),
            })
        })
        .collect();
    if images.is_empty() {
        return Ok(Event::Ignored("no push in the registry notification".into()));
    }
    Ok(Event::ImagePush(images))
}

/// `host/path` of a git URL, lower-case host, without scheme, credentials, `.git` or trailing
/// slash: `https://u@Gitea.example/org/repo.git` -> `gitea.example/org/repo`.
fn git_key(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.trim_end_matches('/').trim_end_matches(".git");
    match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.to_ascii_lowercase()),
        None => rest.to_ascii_lowercase(),
    }
}

/// Whether an event concerns this agent: a push to its git repository (by URL, or by `owner/name`
/// as the path's end, since a forge's external URL may differ from the one the agent uses), or an
/// image push to a repository its bundles use (`known`: `host/path` as in manifests; a pushed
/// host matches through the registries' aliases).
///
/// `known` is `None` before the agent's first reconcile: it does not know its images yet, so any
/// image push concerns it (one extra re-read at most).
pub fn concerns(
    event: &Event,
    git_url: &str,
    known: Option<&[String]>,
    registries: &[crate::config::Registry],
) -> bool {
    match event {
        Event::Everything => true,
        Event::Ignored(_) => false,
        Event::GitPush { urls, full_name, .. } => {
            let ours = git_key(git_url);
            urls.iter().any(|u| git_key(u) == ours)
                || full_name.as_ref().is_some_and(|n| ours.ends_with(&format!("/{}", n.trim_matches('/'))))
        }
        Event::ImagePush(_) if known.is_none() => true,
        Event::ImagePush(images) => images.iter().any(|p| {
            known.unwrap_or_default().iter().any(|k| {
                let Some((host, path)) = k.split_once('/') else { return false };
                path == p.repository
                    && p.host.as_deref().is_none_or(|h| {
                        h.eq_ignore_ascii_case(host)
                            || crate::registry::find_registry(h, registries)
                                .is_some_and(|i| Some(i) == crate::registry::find_registry(host, registries))
                    })
            })
        }),
    }
}

/// The repositories (`host/path`) of the images the bundles want, for [`concerns`]: pinned
/// (`…:1.2@sha256:…`) for a bundle that built, as written (`…:1.2`) for one whose preflight
/// blocked it while the tag is not in the registry yet. Both name the same repository, so a push
/// of the tag a blocked bundle waits for concerns this agent. Unparsable references are skipped
/// (the preflight reported them).
pub fn known_repositories<'a>(images: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut known: Vec<String> = images
        .into_iter()
        .filter_map(|i| crate::image::ImageRef::parse(i).ok())
        .map(|i| format!("{}/{}", i.registry, i.repository))
        .collect();
    known.sort();
    known.dedup();
    known
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect()
    }

    #[test]
    fn authentication_matrix() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let secret = b"s3cret";
        let sig = signature(secret, body);
        let wrong = signature(b"other", body);
        let upper = sig.to_ascii_uppercase();
        // (sender, headers, expected)
        let cases: Vec<(Sender, Headers, Result<(), Refusal>)> = vec![
            (Sender::Harbor, headers(&[("Authorization", "s3cret")]), Ok(())),
            (Sender::Harbor, headers(&[("Authorization", "s3cre")]), Err(Refusal::Wrong("Authorization"))),
            (Sender::Harbor, headers(&[]), Err(Refusal::Missing("Authorization"))),
            (Sender::Registry, headers(&[("Authorization", "s3cret")]), Ok(())),
            (Sender::Gitea, headers(&[("X-Gitea-Signature", &sig)]), Ok(())),
            (Sender::Gitea, headers(&[("X-Gitea-Signature", &upper)]), Ok(())),
            (Sender::Gitea, headers(&[("X-Hub-Signature-256", &format!("sha256={sig}"))]), Ok(())),
            (Sender::Gitea, headers(&[("X-Gitea-Signature", &wrong)]), Err(Refusal::Wrong("x-gitea-signature"))),
            (Sender::Gitea, headers(&[]), Err(Refusal::Missing("x-hub-signature-256"))),
            (Sender::GitHub, headers(&[("X-Hub-Signature-256", &format!("sha256={sig}"))]), Ok(())),
            (Sender::GitHub, headers(&[("X-Hub-Signature-256", &sig)]), Err(Refusal::Wrong("x-hub-signature-256"))),
            (Sender::GitHub, headers(&[("X-Gitea-Signature", &sig)]), Err(Refusal::Missing("x-hub-signature-256"))),
            (Sender::Generic, headers(&[("X-Signature-256", &format!("sha256={sig}"))]), Ok(())),
            (
                Sender::Generic,
                headers(&[("X-Signature-256", &format!("sha256={wrong}"))]),
                Err(Refusal::Wrong("x-signature-256")),
            ),
        ];
        for (i, (sender, h, want)) in cases.into_iter().enumerate() {
            assert_eq!(authenticate(sender, &h, body, secret), want, "case {i}: {sender:?} {h:?}");
        }
        // A signature over another body fails: it is the raw bytes that are signed.
        let h = headers(&[("X-Gitea-Signature", &sig)]);
        assert!(authenticate(Sender::Gitea, &h, br#"{"ref": "refs/heads/main"}"#, secret).is_err());
        // Refusals never carry what was sent.
        let e = authenticate(Sender::Harbor, &headers(&[("Authorization", "near-miss")]), body, secret).unwrap_err();
        assert!(!e.to_string().contains("near-miss"), "{e}");
    }

    fn harbor_default(kind: &str, tag: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"type": kind, "occur_at": 1700000000, "operator": "ci",
            "event_data": {"resources": [{"digest": "sha256:aaa", "tag": tag,
                "resource_url": format!("harbor.example.com/library/u5-signalling:{tag}")}],
              "repository": {"name": "u5-signalling", "namespace": "library", "repo_full_name": "library/u5-signalling"}}}))
        .unwrap()
    }

    #[test]
    fn harbor_payloads_in_both_formats() {
        let none = Headers::new();
        let pushed = |tag: Option<&str>, digest: Option<&str>| {
            Event::ImagePush(vec![PushedImage {
                host: Some("harbor.example.com".into()),
                repository: "library/u5-signalling".into(),
                tag: tag.map(str::to_owned),
                digest: digest.map(str::to_owned),
            }])
        };
        let cases: Vec<(Vec<u8>, Event)> = vec![
            (harbor_default("PUSH_ARTIFACT", "1.2.0"), pushed(Some("1.2.0"), Some("sha256:aaa"))),
            (harbor_default("pushImage", "1.2.0"), pushed(Some("1.2.0"), Some("sha256:aaa"))),
            // Pushed by digest: the digest is in the tag field, and is no tag.
            (harbor_default("PUSH_ARTIFACT", "sha256:bbb"), pushed(None, Some("sha256:bbb"))),
            (
                harbor_default("SCANNING_COMPLETED", "1.2.0"),
                Event::Ignored("Harbor event \"SCANNING_COMPLETED\" concerns nothing here".into()),
            ),
            (
                harbor_default("DELETE_ARTIFACT", "1.2.0"),
                Event::Ignored("Harbor event \"DELETE_ARTIFACT\" concerns nothing here".into()),
            ),
            (
                serde_json::to_vec(&json!({"specversion": "1.0", "id": "x", "type": "harbor.artifact.pushed",
                    "source": "/projects/1/webhook/policies/2",
                    "data": {"resources": [{"digest": "sha256:aaa", "tag": "1.2.0",
                        "resource_url": "harbor.example.com/library/u5-signalling:1.2.0"}],
                      "repository": {"name": "u5-signalling", "namespace": "library", "repo_full_name": "library/u5-signalling"}}}))
                .unwrap(),
                pushed(Some("1.2.0"), Some("sha256:aaa")),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(Sender::Harbor, &none, &body).unwrap(), want, "{}", String::from_utf8_lossy(&body));
        }
        assert!(
            parse(Sender::Harbor, &none, b"not json").unwrap_err().to_string().starts_with("the body is not JSON: ")
        );
    }

    #[test]
    fn forge_pushes_and_registry_notifications() {
        let push = serde_json::to_vec(&json!({"ref": "refs/heads/main", "after": "abc",
            "repository": {"full_name": "engineering/infra", "clone_url": "https://gitea.example.com/engineering/infra.git",
                           "html_url": "https://gitea.example.com/engineering/infra"}}))
        .unwrap();
        let got = parse(Sender::Gitea, &headers(&[("X-Gitea-Event", "push")]), &push).unwrap();
        assert_eq!(
            got,
            Event::GitPush {
                urls: vec![
                    "https://gitea.example.com/engineering/infra.git".into(),
                    "https://gitea.example.com/engineering/infra".into()
                ],
                full_name: Some("engineering/infra".into()),
                reference: Some("refs/heads/main".into()),
            }
        );
        assert_eq!(
            parse(Sender::GitHub, &headers(&[("X-GitHub-Event", "ping")]), b"{}").unwrap(),
            Event::Ignored("ping events concern nothing here".into())
        );
        assert_eq!(
            parse(Sender::Gitea, &Headers::new(), &push).unwrap_err().to_string(),
            "missing X-Gitea-Event (or X-GitHub-Event) header"
        );

        let note = serde_json::to_vec(&json!({"events": [
            {"action": "pull", "target": {"repository": "library/app", "tag": "1.0"}, "request": {"host": "reg:5000"}},
            {"action": "push", "target": {"repository": "library/app", "tag": "1.1", "digest": "sha256:c"}, "request": {"host": "reg:5000"}}
        ]}))
        .unwrap();
        assert_eq!(
            parse(Sender::Registry, &Headers::new(), &note).unwrap(),
            Event::ImagePush(vec![PushedImage {
                host: Some("reg:5000".into()),
                repository: "library/app".into(),
                tag: Some("1.1".into()),
                digest: Some("sha256:c".into()),
            }])
        );
        let pulls =
            serde_json::to_vec(&json!({"events": [{"action": "pull", "target": {"repository": "a"}}]})).unwrap();
        assert!(matches!(parse(Sender::Registry, &Headers::new(), &pulls).unwrap(), Event::Ignored(_)));
        assert_eq!(parse(Sender::Generic, &Headers::new(), b"anything").unwrap(), Event::Everything);
    }

    #[test]
    fn what_concerns_this_agent() {
        let registries: Vec<crate::config::Registry> = serde_json::from_value(json!([
            {"host": "harbor.internal", "aliases": ["harbor.example.com"]}
        ]))
        .unwrap();
        let known = vec!["harbor.internal/library/u5-signalling".to_owned()];
        let git = "https://agent@gitea.internal:3000/engineering/infra.git";
        let git_push = |urls: &[&str], full: Option<&str>| Event::GitPush {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            full_name: full.map(str::to_owned),
            reference: None,
        };
        let image = |host: Option<&str>, repo: &str| {
            Event::ImagePush(vec![PushedImage {
                host: host.map(str::to_owned),
                repository: repo.into(),
                tag: Some("1".into()),
                digest: None,
            }])
        };
        let cases: Vec<(&str, Event, bool)> = vec![
            ("same URL", git_push(&["https://GITEA.internal:3000/engineering/infra"], None), true),
            (
                "external URL, same owner/name",
                git_push(&["https://gitea.example.com/x/y.git"], Some("engineering/infra")),
                true,
            ),
            (
                "another repository",
                git_push(&["https://gitea.internal:3000/engineering/other.git"], Some("engineering/other")),
                false,
            ),
            ("a name that only ends alike", git_push(&[], Some("ring/infra")), false),
            ("image by alias", image(Some("harbor.example.com"), "library/u5-signalling"), true),
            ("image by host", image(Some("harbor.internal"), "library/u5-signalling"), true),
            ("image without host", image(None, "library/u5-signalling"), true),
            ("another image", image(Some("harbor.internal"), "library/other"), false),
            ("same path, unknown host", image(Some("docker.io"), "library/u5-signalling"), false),
            ("generic", Event::Everything, true),
            ("ignored", Event::Ignored("ping".into()), false),
        ];
        for (name, event, want) in cases {
            assert_eq!(concerns(&event, git, Some(&known), &registries), want, "{name}");
        }
        // Issue 18, item 7: a bundle blocked by its preflight (CI committed the tag before its
        // push finished) wants the image as written; the push of that very tag concerns us.
        let wanted = [
            format!("harbor.internal/library/u5-signalling:1.4.0@sha256:{}", "0123456789abcdef".repeat(4)),
            "harbor.internal/kiosk/avatar:2.0.0".to_owned(),
            "not a reference".to_owned(),
        ];
        let known_now = known_repositories(&wanted);
        assert_eq!(known_now, ["harbor.internal/kiosk/avatar", "harbor.internal/library/u5-signalling"]);
        for (name, event, want) in [
            ("the blocked bundle's image, by host", image(Some("harbor.internal"), "kiosk/avatar"), true),
            ("the blocked bundle's image, by alias", image(Some("harbor.example.com"), "kiosk/avatar"), true),
            ("a built bundle's image still counts", image(None, "library/u5-signalling"), true),
            ("an image nobody wants", image(Some("harbor.internal"), "kiosk/other"), false),
        ] {
            assert_eq!(concerns(&event, git, Some(&known_now), &registries), want, "{name}");
        }
        let unknown_yet = image(Some("harbor.internal"), "library/other");
        assert!(concerns(&unknown_yet, git, None, &registries), "before the first reconcile any image push counts");
        assert!(
            !concerns(&git_push(&["https://x/y.git"], None), git, None, &registries),
            "a git push still must match"
        );
    }
}
