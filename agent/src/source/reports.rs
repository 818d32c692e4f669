//! The reports adapter (docs/waves.md): health reports as OCI artifacts in the registry
//! repository kept for them, `<waves.reports.repository>/<bundle>:<wave>.<store>`, through the
//! configured registry's client (its token flow, CA and credentials; push scope on that
//! repository only). Publishing happens only when `shared::report::due` says so; reading is one
//! tag list of the bundle's repository, then a HEAD per report of the wave before, each GET
//! only for a digest not seen before. Nothing here decides: what a report means is
//! `shared::waves`'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use shared::gate::Reports as Read;
use shared::k8s::Time;
use shared::report::{self, Report};

use super::registry::{Access, Registries, Registry, RegistryError, Req};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Where reports go and what was read and written so far (kept across cycles by the daemon).
pub struct Reports {
    host: String,
    prefix: String,
    /// Reports read, by manifest digest: an unchanged report is one HEAD.
    by_digest: Mutex<HashMap<String, Report>>,
    /// What this store last published, per bundle, with its refresh interval (`None`: only
    /// on change).
    published: Mutex<BTreeMap<String, (Report, Option<i64>)>>,
    /// The last read per bundle and gate, and when: a gate asks again at most once per
    /// `waves.interval`.
    recent: Mutex<BTreeMap<(String, String), (Time, Read)>>,
}

impl Reports {
    pub fn new(config: &shared::config::Waves) -> Reports {
        Reports {
            host: config.reports.registry.clone(),
            prefix: config.reports.repository.clone(),
            by_digest: Mutex::new(HashMap::new()),
            published: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(BTreeMap::new()),
        }
    }

    fn registry<'r>(&self, registries: &'r Registries) -> Result<&'r Registry, String> {
        registries
            .by_host(&self.host)
            .ok_or_else(|| format!("waves.reports.registry: {} is not a configured registry", self.host))
    }

    /// What this store last published on `bundle`, if this process knows.
    pub fn last_published(&self, bundle: &str) -> Option<(Report, Option<i64>)> {
        self.published.lock().expect("reports lock").get(bundle).cloned()
    }

    /// Publishes `next` under its tag unless `report::due` says the last one still holds
    /// (`refresh`: `None` publishes only on change). Returns whether it was written.
    pub async fn publish(
        &self,
        registries: &Registries,
        mut next: Report,
        refresh: Option<i64>,
    ) -> Result<bool, String> {
        let last = self.last_published(&next.bundle).map(|(r, _)| r);
        if !report::due(last.as_ref(), &mut next, refresh.unwrap_or(i64::MAX)) {
            return Ok(false);
        }
        let registry = self.registry(registries)?;
        let repository = report::repository(&self.prefix, &next.bundle)?;
        let tag = report::tag(&next.wave, &next.store)?;
        let doc = next.to_json();
        let blob = report::digest(&doc);
        let base = registry.base_url();
        let shown = |e: RegistryError| format!("publishing the report {repository}:{tag}: {e}");
        let blob_url = format!("{base}/v2/{repository}/blobs/{blob}");
        let head = self.req(registry, "report_blob_head", "HEAD", &blob_url, &repository, None, None).await;
        let present = matches!(head, Ok(ref r) if r.status == 200);
        if !present {
            let start = format!("{base}/v2/{repository}/blobs/uploads/");
            let reply =
                self.req(registry, "report_upload", "POST", &start, &repository, None, None).await.map_err(shown)?;
            if reply.status != 202 {
                return Err(shown(registry.status_error(&start, reply.status, &reply)));
            }
            let location = reply
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("publishing the report {repository}:{tag}: upload without a Location"))?;
            let mut url = url::Url::parse(&start)
                .and_then(|u| u.join(location))
                .map_err(|e| format!("publishing the report {repository}:{tag}: bad Location: {e}"))?;
            url.query_pairs_mut().append_pair("digest", &blob);
            let body = Some((&doc[..], "application/octet-stream"));
            let put = url.to_string();
            let reply =
                self.req(registry, "report_blob_put", "PUT", &put, &repository, None, body).await.map_err(shown)?;
            if reply.status != 201 {
                return Err(shown(registry.status_error(&start, reply.status, &reply)));
            }
        }
        let manifest = report::manifest(&blob, doc.len());
        let url = format!("{base}/v2/{repository}/manifests/{tag}");
        let body = Some((&manifest[..], MANIFEST));
        let reply =
            self.req(registry, "report_manifest_put", "PUT", &url, &repository, None, body).await.map_err(shown)?;
        if reply.status != 201 {
            return Err(shown(registry.status_error(&url, reply.status, &reply)));
        }
        self.published.lock().expect("reports lock").insert(next.bundle.clone(), (next, refresh));
        Ok(true)
    }

    /// The reports a gate needs: the wave before's (`previous`, `None` for the first wave) and
    /// the members of this store's wave. At most one read per `interval` per bundle and gate.
    pub async fn read(
        &self,
        registries: &Registries,
        bundle: &str,
        previous: Option<&str>,
        mine: &str,
        interval: i64,
        now: Time,
    ) -> Read {
        let key = (bundle.to_owned(), format!("{}>{mine}", previous.unwrap_or("")));
        if let Some((at, read)) = self.recent.lock().expect("reports lock").get(&key)
            && now - at < interval
        {
            return read.clone();
        }
        let read = self.read_now(registries, bundle, previous, mine).await;
        self.recent.lock().expect("reports lock").insert(key, (now, read.clone()));
        read
    }

    async fn read_now(&self, registries: &Registries, bundle: &str, previous: Option<&str>, mine: &str) -> Read {
        let mut out = Read::default();
        let (registry, repository) =
            match self.registry(registries).and_then(|r| Ok((r, report::repository(&self.prefix, bundle)?))) {
                Ok(v) => v,
                Err(e) => {
                    out.problems.push(e);
                    return out;
                }
            };
        let tags = match self.tags(registry, &repository).await {
            Ok(t) => t,
            Err(e) => {
                out.problems.push(format!("listing the reports of {repository}: {e}"));
                return out;
            }
        };
        out.members = report::stores_of(&tags, mine).into_iter().map(str::to_owned).collect();
        let Some(previous) = previous else { return out };
        for store in report::stores_of(&tags, previous) {
            let tag = format!("{previous}.{store}");
            match self.one(registry, &repository, &tag, bundle).await {
                Ok(r) => out.previous.push(r),
                Err(e) => out.problems.push(format!("report {repository}:{tag}: {e}")),
            }
        }
        out
    }

    /// Every report on `bundle`, of every wave (`agent fleet status`), with what could not be
    /// read.
    pub async fn read_all(&self, registries: &Registries, bundle: &str) -> (Vec<Report>, Vec<String>) {
        let (registry, repository) =
            match self.registry(registries).and_then(|r| Ok((r, report::repository(&self.prefix, bundle)?))) {
                Ok(v) => v,
                Err(e) => return (Vec::new(), vec![e]),
            };
        let tags = match self.tags(registry, &repository).await {
            Ok(t) => t,
            Err(e) => return (Vec::new(), vec![format!("listing the reports of {repository}: {e}")]),
        };
        let (mut all, mut problems) = (Vec::new(), Vec::new());
        for tag in &tags {
            match self.one(registry, &repository, tag, bundle).await {
                Ok(r) => all.push(r),
                Err(e) => problems.push(format!("report {repository}:{tag}: {e}")),
            }
        }
        (all, problems)
    }

    /// Every tag of the repository; none yet when nobody published.
    async fn tags(&self, registry: &Registry, repository: &str) -> Result<Vec<String>, String> {
        match registry.list_tags_with(repository, Access::Push).await {
            Ok(t) => Ok(t),
            Err(RegistryError::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One report by its tag: HEAD for the digest, the cached report when it is known, else
    /// the manifest and the blob, each checked against its digest.
    async fn one(&self, registry: &Registry, repository: &str, tag: &str, bundle: &str) -> Result<Report, String> {
        let base = registry.base_url();
        let url = format!("{base}/v2/{repository}/manifests/{tag}");
        let head = self
            .req(registry, "report_head", "HEAD", &url, repository, Some(MANIFEST), None)
            .await
            .map_err(|e| e.to_string())?;
        if head.status != 200 {
            return Err(registry.status_error(&url, head.status, &head).to_string());
        }
        let digest = head.headers.get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(d) = &digest
            && let Some(r) = self.by_digest.lock().expect("reports lock").get(d)
        {
            return Ok(r.clone());
        }
        let got = self
            .req(registry, "report_manifest", "GET", &url, repository, Some(MANIFEST), None)
            .await
            .map_err(|e| e.to_string())?;
        if got.status != 200 {
            return Err(registry.status_error(&url, got.status, &got).to_string());
        }
        let manifest_digest = report::digest(&got.body);
        if digest.as_deref().is_some_and(|d| d != manifest_digest) {
            return Err("the manifest does not match its digest".into());
        }
        let blob = report::config_of(&got.body)?;
        let blob_url = format!("{base}/v2/{repository}/blobs/{blob}");
        let doc = self
            .req(registry, "report_blob", "GET", &blob_url, repository, None, None)
            .await
            .map_err(|e| e.to_string())?;
        if doc.status != 200 {
            return Err(registry.status_error(&blob_url, doc.status, &doc).to_string());
        }
        if report::digest(&doc.body) != blob {
            return Err("the report does not match its digest".into());
        }
        let r = report::read_tagged(&doc.body, tag, bundle)?;
        self.by_digest.lock().expect("reports lock").insert(manifest_digest, r.clone());
        Ok(r)
    }

    #[allow(clippy::too_many_arguments)]
    async fn req(
        &self,
        registry: &Registry,
        kind: &'static str,
        method: &str,
        url: &str,
        repository: &str,
        accept: Option<&str>,
        body: Option<(&[u8], &str)>,
    ) -> Result<super::registry::Reply, RegistryError> {
        registry.with_retries(Req { kind, method, url, repository, accept, access: Access::Push, body }).await
    }
}
