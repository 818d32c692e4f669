//! Registry source: resolves image tags to digests with one HEAD request, lists tags only when a
//! policy needs them, and speaks Harbor's token flow (Bearer tokens from the realm, with Basic
//! robot credentials), Basic and anonymous auth, over TLS trusting the configured CA.
//!
//! Why not oci-client: it maps 429 to an error without the `Retry-After` header, and honouring
//! that header is the point of polling hundreds of stores against one Harbor. The protocol parts
//! that decide something (challenges, token lifetime, Retry-After) are pure, in `shared::registry`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shared::cosign::{KeySet, Signed, TrustedKey, Verdict, VerifiedCache};
use shared::image::ImageRef;
use shared::registry::{Challenge, is_transient_status, retry_after, retry_delay, token_reuse_window};

use super::secret::Secret;
pub use super::secret::SecretSource;
use super::{RequestCounts, error_chain};

/// Media types accepted when resolving a tag: OCI index and manifest, Docker list and v2.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Media types of a cosign `.sig` manifest (cosign writes OCI; older ones Docker v2).
const SIGNATURE_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Per-request time limit; a registry slower than this counts as unreachable for that request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How to authenticate to one registry.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    Basic { username: String, password: SecretSource },
}

/// Settings of one registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// `host[:port]` as in image references.
    pub host: String,
    pub auth: Auth,
    /// PEM bundle trusted in addition to nothing else: with a CA file, only that CA is trusted.
    pub ca_file: Option<PathBuf>,
    pub max_concurrency: usize,
    /// Attempts for a throttled or failing request (first try included).
    pub max_attempts: usize,
}

impl RegistryOptions {
    /// From the node config; relative file paths are relative to `base` (the config's folder).
    pub fn from_config(r: &shared::config::Registry, base: &Path) -> RegistryOptions {
        let auth = match &r.auth {
            None => Auth::Anonymous,
            Some(c) => Auth::Basic { username: c.username.clone(), password: SecretSource::from_config(c, base) },
        };
        RegistryOptions {
            host: r.host.clone(),
            auth,
            ca_file: r.ca_file.as_ref().map(|f| base.join(f)),
            max_concurrency: r.max_concurrency as usize,
            // 1 try + 3 retries: with 30 s max backoff, a poll gives up within about a minute.
            max_attempts: 4,
        }
    }
}

/// Why a registry request failed; never carries a secret. `is_transient` says whether a later
/// poll may succeed without anyone changing anything.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{url}: cannot connect: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url}: authentication failed for {account:?} (HTTP {status})")]
    Unauthorized { url: String, account: String, status: u16 },
    #[error("{image}: not found in the registry")]
    NotFound { image: String },
    #[error("{url}: HTTP {status}{}", retry.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Status { url: String, status: u16, retry: Option<Duration> },
    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("reading the {what} for {host}: {reason}")]
    Credentials { host: String, what: String, reason: String },
    #[error("{image}: no registry {host:?} is configured (add it, or an alias of it, under registries[])")]
    NoRegistry { image: String, host: String },
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. } => true,
            RegistryError::Status { status, .. } => is_transient_status(*status),
            _ => false,
        }
    }

    /// The registry's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Unauthorized { status, .. } | RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry, .. } => *retry,
            _ => None,
        }
    }
}

struct CachedToken {
    value: String,
    valid_until: Instant,
}

/// One registry.
pub struct Registry {
    opts: RegistryOptions,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    secret: Option<Secret>,
    limit: tokio::sync::Semaphore,
    uses_basic: std::sync::atomic::AtomicBool,
    /// HTTP requests by kind (`manifest_head`, `tag_list`, `token`) and outcome.
    pub counters: Arc<RequestCounts>,
    /// The last request's error, if it failed (never holds a secret); cleared by a success.
    last_error: Mutex<Option<String>>,
    /// `verify.cosign` of this registry (node config): the keys every image digest needs.
    pub keys: Option<KeySet>,
}

/// Every configured registry, found by the host an image names or by one of its aliases.
pub struct Registries {
    registries: Vec<Registry>,
    config: Vec<shared::config::Registry>,
    /// Digests verified so far (`shared::cosign::VerifiedCache`: verified ones only).
    verified: Mutex<VerifiedCache>,
}

impl Registries {
    /// From the node config; relative file paths are relative to `base` (the config's folder).
    pub fn from_config(config: &[shared::config::Registry], base: &Path) -> Result<Registries, RegistryError> {
        let mut registries: Vec<Registry> =
            config.iter().map(|r| Registry::new(RegistryOptions::from_config(r, base))).collect::<Result<_, _>>()?;
        for (registry, c) in registries.iter_mut().zip(config) {
            if let Some(spec) = c.verify.as_ref().and_then(|v| v.cosign.as_ref()) {
                let keys = read_keys(&spec.public_keys, base).map_err(|(what, reason)| RegistryError::Credentials {
                    host: c.host.clone(),
                    what,
                    reason,
                })?;
                registry.keys = Some(keys);
            }
        }
        Ok(Registries { registries, config: config.to_vec(), verified: Mutex::new(VerifiedCache::default()) })
    }

    /// Whether the cosign signatures of `digest` (an image of `registry`) pass `keys`: from the
    /// cache when it was verified before, otherwise from the `.sig` tag.
    pub async fn verify(
        &self,
        registry: &Registry,
        repository: &str,
        digest: &str,
        keys: &KeySet,
    ) -> Result<Verdict, RegistryError> {
        if let Some(v) = self.verified.lock().expect("verified cache lock").get(digest, keys) {
            return Ok(v);
        }
        let signatures = registry.signatures(repository, digest).await?;
        let verdict = shared::cosign::verify(digest, &signatures, keys);
        self.verified.lock().expect("verified cache lock").record(digest, keys, &verdict);
        Ok(verdict)
    }

    /// The registry that serves `image`; requests go to its configured host even when the
    /// image names an alias.
    pub fn for_image(&self, image: &ImageRef) -> Result<&Registry, RegistryError> {
        shared::registry::find_registry(&image.registry, &self.config)
            .map(|i| &self.registries[i])
            .ok_or_else(|| RegistryError::NoRegistry { image: image.to_string(), host: image.registry.clone() })
    }

    /// The configured registry whose host is `host` (the reports' registry).
    pub fn by_host(&self, host: &str) -> Option<&Registry> {
        self.registries.iter().find(|r| r.opts.host.eq_ignore_ascii_case(host))
    }

    /// Every registry's requests so far and its last error (status and metrics).
    pub fn stats(&self) -> Vec<RegistryStats> {
        self.registries
            .iter()
            .map(|r| RegistryStats {
                host: r.opts.host.clone(),
                requests: r.counters.snapshot(),
                last_error: r.last_error.lock().expect("registry last error lock").clone(),
            })
            .collect()
    }

    /// Whether two hosts name the same configured registry (one may be an alias of the other).
    pub fn same_registry(&self, a: &str, b: &str) -> bool {
        a.eq_ignore_ascii_case(b)
            || matches!(
                (shared::registry::find_registry(a, &self.config), shared::registry::find_registry(b, &self.config)),
                (Some(x), Some(y)) if x == y
            )
    }
}

/// One registry's requests (by kind and outcome) and its last error, as a cycle's report and the
/// daemon's metrics show them.
#[derive(Debug, Clone)]
pub struct RegistryStats {
    pub host: String,
    pub requests: Vec<(&'static str, &'static str, u64)>,
    pub last_error: Option<String>,
}

/// One registry request, as the retry and auth layers see it.
#[derive(Clone, Copy)]
pub(super) struct Req<'a> {
    /// The request kind, as counted: `manifest_head`, `tag_list`, `report_head`, ...
    pub(super) kind: &'static str,
    pub(super) method: &'a str,
    pub(super) url: &'a str,
    /// The token scope is `repository:<repository>:<access>`.
    pub(super) repository: &'a str,
    pub(super) accept: Option<&'a str>,
    pub(super) access: Access,
    /// A request body with its content type (uploads, manifest pushes).
    pub(super) body: Option<(&'a [u8], &'a str)>,
}

/// What a request needs of the repository: the token scope it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    /// Pull and push: only the reports repository (`waves.reports`) is ever written.
    Push,
}

impl Access {
    fn actions(self) -> &'static str {
        match self {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        }
    }
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: hyper::HeaderMap,
    pub(super) body: Bytes,
}

impl Registry {
    pub fn new(opts: RegistryOptions) -> Result<Registry, RegistryError> {
        let tls = super::tls_client_config(opts.ca_file.as_deref()).map_err(|reason| RegistryError::Credentials {
            host: opts.host.clone(),
            what: format!("CA file {}", opts.ca_file.as_deref().unwrap_or(Path::new("")).display()),
            reason,
        })?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
        Ok(Registry {
            limit: tokio::sync::Semaphore::new(opts.max_concurrency.max(1)),
            secret: match &opts.auth {
                Auth::Basic { password, .. } => Some(Secret::new(password.clone())),
                Auth::Anonymous => None,
            },
            opts,
            client: Client::builder(TokioExecutor::new()).build(connector),
            tokens: Mutex::new(HashMap::new()),
            uses_basic: std::sync::atomic::AtomicBool::new(false),
            counters: Arc::new(RequestCounts::default()),
            last_error: Mutex::new(None),
            keys: None,
        })
    }

    /// The cosign signatures stored for `digest`, each with the payload blob it signs (checked
    /// against its layer digest): at its `sha256-<hex>.sig` tag, and as OCI 1.1 referrers (the
    /// registry's referrers API, or the index at the fallback tag `sha256-<hex>` where it has
    /// none); none when neither holds any.
    pub async fn signatures(&self, repository: &str, digest: &str) -> Result<Vec<Signed>, RegistryError> {
        let base = format!("https://{}/v2/{repository}", self.opts.host);
        let protocol = |url: &str| {
            let url = url.to_owned();
            move |reason: String| RegistryError::Protocol { url, reason }
        };
        let tag = shared::cosign::signature_tag(digest).map_err(protocol(&base))?;
        let url = format!("{base}/manifests/{tag}");
        let reply = self.get_manifest("signature_manifest", &url, repository, SIGNATURE_ACCEPT).await?;
        let mut layers = match reply.status {
            200 => shared::cosign::signature_layers(&reply.body).map_err(protocol(&url))?,
            404 => Vec::new(),
            status => return Err(self.status_error(&url, status, &reply)),
        };
        for referrer in self.signature_referrers(&base, repository, digest).await? {
            let url = format!("{base}/manifests/{referrer}");
            let reply = self.get_manifest("signature_manifest", &url, repository, SIGNATURE_ACCEPT).await?;
            match reply.status {
                200 => {}
                // Listed but gone (deleted since the index was written): no signature of it.
                404 => continue,
                status => return Err(self.status_error(&url, status, &reply)),
            }
            // One that is not what it was listed as (another digest, another subject) signs
            // nothing here: skipped, so it cannot hide a good signature beside it.
            match shared::cosign::referrer_layers(&reply.body, &referrer, digest) {
                Ok(found) => layers.extend(found),
                Err(reason) => tracing::warn!(url = %shared::redact::url(&url), "signature referrer skipped: {reason}"),
            }
        }
        let mut out = Vec::with_capacity(layers.len());
        for layer in layers.into_iter().take(shared::cosign::MAX_LAYERS) {
            let url = format!("{base}/blobs/{}", layer.digest);
            let req = Req {
                kind: "signature_blob",
                method: "GET",
                url: &url,
                repository,
                accept: None,
                access: Access::Pull,
                body: None,
            };
            let mut reply = self.with_retries(req).await?;
            // A registry may hand blobs out from its storage: one redirect, without our credentials.
            if matches!(reply.status, 301 | 302 | 303 | 307 | 308)
                && let Some(location) = reply.headers.get("location").and_then(|v| v.to_str().ok())
            {
                let location = url::Url::parse(&url)
                    .and_then(|u| u.join(location))
                    .map_err(|e| RegistryError::Protocol { url: url.clone(), reason: format!("bad redirect: {e}") })?;
                reply = self.send("signature_blob", "GET", location.as_str(), None, None).await?;
            }
            if reply.status != 200 {
                return Err(self.status_error(&url, reply.status, &reply));
            }
            if !shared::cosign::blob_matches(&layer, &reply.body) {
                return Err(RegistryError::Protocol { url, reason: "the blob does not match its digest".into() });
            }
            out.push(Signed { payload: reply.body.to_vec(), signature: layer.signature });
        }
        Ok(out)
    }

    /// The digests of the cosign signature manifests whose subject is `digest`: the referrers
    /// API's index when the registry serves one (OCI distribution 1.1), else the index at the
    /// fallback tag; none when there is neither.
    async fn signature_referrers(
        &self,
        base: &str,
        repository: &str,
        digest: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let index_of = |url: &str, body: &[u8]| {
            shared::cosign::signature_referrers(body)
                .map_err(|reason| RegistryError::Protocol { url: url.to_owned(), reason })
        };
        let artifact =
            url::form_urlencoded::byte_serialize(shared::cosign::SIGNATURE_ARTIFACT.as_bytes()).collect::<String>();
        let url = format!("{base}/referrers/{digest}?artifactType={artifact}");
        let reply = self.get_manifest("signature_referrers", &url, repository, shared::cosign::OCI_INDEX).await?;
        let content_type = reply.headers.get("content-type").and_then(|v| v.to_str().ok());
        if shared::cosign::referrers_answer(reply.status, content_type) == shared::cosign::ReferrersAnswer::Index {
            return index_of(&url, &reply.body);
        }
        // No referrers API: the referrers tag schema.
        let tag = shared::cosign::referrers_tag(digest)
            .map_err(|reason| RegistryError::Protocol { url: base.to_owned(), reason })?;
        let url = format!("{base}/manifests/{tag}");
        let reply = self.get_manifest("signature_referrers", &url, repository, shared::cosign::OCI_INDEX).await?;
        match reply.status {
            200 => index_of(&url, &reply.body),
            404 => Ok(Vec::new()),
            status => Err(self.status_error(&url, status, &reply)),
        }
    }

    /// One GET of a manifest or index with a pull token, retried as every request is.
    async fn get_manifest(
        &self,
        kind: &'static str,
        url: &str,
        repository: &str,
        accept: &'static str,
    ) -> Result<Reply, RegistryError> {
        let req = Req { kind, method: "GET", url, repository, accept: Some(accept), access: Access::Pull, body: None };
        self.with_retries(req).await
    }

    /// The digest a tag points at now (one HEAD request when a token is cached).
    pub async fn resolve(&self, image: &ImageRef) -> Result<String, RegistryError> {
        let reference = image.digest.clone().or_else(|| image.tag.clone()).unwrap_or_else(|| "latest".into());
        let url = format!("https://{}/v2/{}/manifests/{reference}", self.opts.host, image.repository);
        let reply = self
            .with_retries(Req {
                kind: "manifest_head",
                method: "HEAD",
                url: &url,
                repository: &image.repository,
                accept: Some(MANIFEST_ACCEPT),
                access: Access::Pull,
                body: None,
            })
            .await?;
        match reply.status {
            200 => reply
                .headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| RegistryError::Protocol { url, reason: "no Docker-Content-Digest header".into() }),
            404 => Err(RegistryError::NotFound { image: image.to_string() }),
            status => Err(self.status_error(&url, status, &reply)),
        }
    }

    /// `https://<host>`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.opts.host)
    }

    /// Every tag of a repository, following the `Link: <...>; rel="next"` pages the registry
    /// offers (Harbor pages; distribution 2.x answers in one page).
    pub async fn list_tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        self.list_tags_with(repository, Access::Pull).await
    }

    /// [`Registry::list_tags`] under the token scope `access` asks for (the reports adapter
    /// reads and writes with one pull-and-push token).
    pub async fn list_tags_with(&self, repository: &str, access: Access) -> Result<Vec<String>, RegistryError> {
        /// Tags asked for per page; Harbor's own UI asks for at most 100, its API allows more.
        const PAGE: usize = 200;
        /// More pages than this is a registry that keeps answering "next": stop rather than loop.
        const MAX_PAGES: usize = 1000;
        let base = format!("https://{}", self.opts.host);
        let mut url = format!("{base}/v2/{repository}/tags/list?n={PAGE}");
        let mut tags: Vec<String> = Vec::new();
        for _ in 0..MAX_PAGES {
            let reply = self.tag_page(&url, repository, access).await?;
            if reply.status == 404 {
                return Err(RegistryError::NotFound { image: format!("{}/{repository}", self.opts.host) });
            }
            if reply.status != 200 {
                return Err(self.status_error(&url, reply.status, &reply));
            }
            let page: serde_json::Value = serde_json::from_slice(&reply.body)
                .map_err(|e| RegistryError::Protocol { url: url.clone(), reason: format!("tag list: {e}") })?;
            let got = page["tags"].as_array().map_or(0, |a| {
                tags.extend(a.iter().filter_map(|t| t.as_str().map(str::to_owned)));
                a.len()
            });
            let link = reply.headers.get("link").and_then(|v| v.to_str().ok());
            match shared::registry::next_page(link) {
                Some(next) if got > 0 => url = format!("{base}{next}"),
                _ => return Ok(tags),
            }
        }
        Err(RegistryError::Protocol { url, reason: format!("tag list: more than {MAX_PAGES} pages") })
    }

    pub(super) async fn tag_page(&self, url: &str, repository: &str, access: Access) -> Result<Reply, RegistryError> {
        let req = Req { kind: "tag_list", method: "GET", url, repository, accept: None, access, body: None };
        self.with_retries(req).await
    }

    pub(super) fn status_error(&self, url: &str, status: u16, reply: &Reply) -> RegistryError {
        if status == 401 || status == 403 {
            return RegistryError::Unauthorized { url: url.to_owned(), account: self.account(), status };
        }
        let retry = reply.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(retry_after);
        RegistryError::Status { url: url.to_owned(), status, retry }
    }

    fn account(&self) -> String {
        match &self.opts.auth {
            Auth::Anonymous => "anonymous".into(),
            Auth::Basic { username, .. } => username.clone(),
        }
    }

    /// One logical request: throttled and transient failures are retried with exponential
    /// backoff and jitter, waiting at least what `Retry-After` asks.
    pub(super) async fn with_retries(&self, req: Req<'_>) -> Result<Reply, RegistryError> {
        let _permit = self.limit.acquire().await.expect("semaphore never closed");
        let attempt = || async {
            let reply = self.authed(req).await?;
            if is_transient_status(reply.status) {
                return Err(self.status_error(req.url, reply.status, &reply));
            }
            Ok(reply)
        };
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.opts.max_attempts.saturating_sub(1));
        attempt
            .retry(backoff)
            .when(RegistryError::is_transient)
            .adjust(|e, backoff| retry_delay(e.retry_after(), backoff))
            .await
    }

    /// Sends with a cached token; on a Bearer challenge, gets a token for the challenge's scope
    /// and sends once more.
    async fn authed(&self, req: Req<'_>) -> Result<Reply, RegistryError> {
        let Req { kind, method, url, repository, accept, access, body } = req;
        let scope_key = format!("repository:{repository}:{}", access.actions());
        let cached = self.cached_token(&scope_key);
        let auth = match (&cached, &self.opts.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            // A registry that answered with a Basic challenge before gets Basic right away.
            (None, Auth::Basic { .. }) if self.uses_basic.load(Ordering::Relaxed) => Some(self.basic()?),
            _ => None,
        };
        let reply = self.send_body(kind, method, url, accept, auth.as_deref(), body).await?;
        if reply.status != 401 {
            return Ok(reply);
        }
        let Some(challenge) =
            reply.headers.get("www-authenticate").and_then(|v| v.to_str().ok()).and_then(Challenge::parse)
        else {
            return Ok(reply);
        };
        let auth = match challenge.scheme.as_str() {
            "bearer" => format!("Bearer {}", self.fetch_token(&challenge, &scope_key).await?),
            "basic" => {
                self.uses_basic.store(true, Ordering::Relaxed);
                self.basic()?
            }
            _ => return Ok(reply),
        };
        self.send_body(kind, method, url, accept, Some(&auth), body).await
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache lock");
        tokens.get(scope).filter(|t| t.valid_until > Instant::now()).map(|t| t.value.clone())
    }

    async fn fetch_token(&self, challenge: &Challenge, scope_key: &str) -> Result<String, RegistryError> {
        let realm = challenge.param("realm").ok_or_else(|| RegistryError::Protocol {
            url: format!("https://{}", self.opts.host),
            reason: "Bearer challenge without realm".into(),
        })?;
        let mut url = url::Url::parse(realm)
            .map_err(|e| RegistryError::Protocol { url: realm.to_owned(), reason: format!("bad realm: {e}") })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                q.append_pair("service", service);
            }
            // Our own scope when it asks for more than the challenge's (a push first met as a
            // pull's challenge); the challenge's otherwise.
            let scope = match challenge.param("scope") {
                Some(asked) if !scope_key.ends_with(":pull,push") || asked.ends_with(",push") => asked,
                _ => scope_key,
            };
            q.append_pair("scope", scope);
        }
        let auth = match &self.opts.auth {
            Auth::Anonymous => None,
            Auth::Basic { .. } => Some(self.basic()?),
        };
        let reply = self.send("token", "GET", url.as_str(), None, auth.as_deref()).await?;
        let shown = shared::redact::url(url.as_str());
        match reply.status {
            200 => {}
            401 | 403 => {
                return Err(RegistryError::Unauthorized { url: shown, account: self.account(), status: reply.status });
            }
            status => return Err(self.status_error(&shown, status, &reply)),
        }
        let body: serde_json::Value = serde_json::from_slice(&reply.body)
            .map_err(|e| RegistryError::Protocol { url: shown.clone(), reason: format!("token response: {e}") })?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .ok_or_else(|| RegistryError::Protocol { url: shown, reason: "token response without a token".into() })?
            .to_owned();
        let reuse = token_reuse_window(body["expires_in"].as_u64());
        self.tokens
            .lock()
            .expect("token cache lock")
            .insert(scope_key.to_owned(), CachedToken { value: token.clone(), valid_until: Instant::now() + reuse });
        Ok(token)
    }

    fn basic(&self) -> Result<String, RegistryError> {
        let Auth::Basic { username, .. } = &self.opts.auth else {
            return Err(RegistryError::Protocol { url: self.opts.host.clone(), reason: "no credentials".into() });
        };
        let secret = self.password()?;
        Ok(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"))))
    }

    /// The password, re-read from its file when the file changed; tokens issued while the old
    /// secret was in force are dropped.
    fn password(&self) -> Result<String, RegistryError> {
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| RegistryError::Protocol { url: self.opts.host.clone(), reason: "no credentials".into() })?;
        let read = secret.read().map_err(|e| RegistryError::Credentials {
            host: self.opts.host.clone(),
            what: e.what,
            reason: e.reason,
        })?;
        if read.changed {
            self.tokens.lock().expect("token cache lock").clear();
        }
        Ok(read.value)
    }

    /// One HTTP exchange without a body, counted by kind and outcome.
    async fn send(
        &self,
        kind: &'static str,
        method: &str,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Reply, RegistryError> {
        self.send_body(kind, method, url, accept, auth, None).await
    }

    /// One HTTP exchange, counted by kind and outcome.
    async fn send_body(
        &self,
        kind: &'static str,
        method: &str,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
        body: Option<(&[u8], &str)>,
    ) -> Result<Reply, RegistryError> {
        let shown = shared::redact::url(url);
        let mut req = hyper::Request::builder().method(method).uri(url).header("user-agent", "gitops-agent");
        if let Some((_, content_type)) = body {
            req = req.header("content-type", content_type);
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.map_or(&[][..], |(b, _)| b))))
            .map_err(|e| RegistryError::Protocol { url: shown.clone(), reason: e.to_string() })?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| RegistryError::Connect { url: shown.clone(), reason: error_chain(&e) })?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| RegistryError::Connect { url: shown.clone(), reason: e.to_string() })?
                .to_bytes();
            Ok(Reply { status, headers, body })
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, fut).await.unwrap_or_else(|_| {
            Err(RegistryError::Connect { url: shown.clone(), reason: format!("no answer within {REQUEST_TIMEOUT:?}") })
        });
        let outcome = match &result {
            Ok(reply) => shared::registry::outcome_label(reply.status),
            Err(_) => "unreachable",
        };
        self.counters.record(kind, outcome);
        let error = match &result {
            Ok(reply) if reply.status >= 500 || reply.status == 401 || reply.status == 403 || reply.status == 429 => {
                Some(format!("{} {shown}: HTTP {}", req_method(kind), reply.status))
            }
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        *self.last_error.lock().expect("registry last error lock") = error;
        result
    }
}

/// The HTTP method a request kind uses, for error lines.
fn req_method(kind: &str) -> &'static str {
    match kind {
        "manifest_head" | "report_head" | "report_blob_head" => "HEAD",
        "report_upload" => "POST",
        "report_blob_put" | "report_manifest_put" => "PUT",
        _ => "GET",
    }
}

/// Trusted keys from their PEM files (relative to `base`); the error names the key and its file.
pub fn read_keys(specs: &[shared::cosign::KeySpec], base: &Path) -> Result<KeySet, (String, String)> {
    let keys = specs
        .iter()
        .map(|k| {
            let file = base.join(&k.file);
            let what = || format!("cosign key {} ({})", k.name, file.display());
            let pem = std::fs::read_to_string(&file).map_err(|e| (what(), e.to_string()))?;
            TrustedKey::from_pem(&k.name, &pem).map_err(|e| (what(), e))
        })
        .collect::<Result<_, _>>()?;
    Ok(KeySet { keys })
}
