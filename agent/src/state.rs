//! Where bundle records (`shared::state::Record`) live: a local file under `stateDir/state/`
//! and a Secret in the agent's namespace (rendered objects may hold secrets), both written on
//! every step. On read the copy with the higher sequence number wins, so a crash between the two
//! writes, a wiped disk or a lost Secret each still leave the newest record readable.
//!
//! The Secret is written with optimistic concurrency: every write carries the `resourceVersion`
//! this store last read or wrote (a create when it saw none), so a writer that decided from an
//! old record gets a 409 Conflict instead of overwriting a newer one. On a conflict the Secret
//! is read again and `shared::state::after_conflict` decides: write again, done, or
//! [`Superseded`] (the caller re-reads and decides again; no transition is lost).
//!
//! The daemon keeps a watch on its state Secrets ([`StateStore::watch`]), so the records of a
//! cycle are read from what the watch last saw, not listed again: a poll that changes nothing
//! makes no API request. Until the watch's first list ends, and after any error of it until a
//! list succeeds again, [`StateStore::all`] lists as before. A stale copy can cost a conflict,
//! never a record: every write is still made over the `resourceVersion` last seen.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use sha2::{Digest, Sha256};

use shared::desired::FIELD_MANAGER;
use shared::state::{AfterConflict, Record, after_conflict, newer};

/// Label on state Secrets (value: the agent identity). Not the owner label: state Secrets are
/// never prune candidates.
pub const STATE_LABEL: &str = "gitops-agent.io/state-of";
/// Annotation naming the bundle a state Secret records.
pub const STATE_BUNDLE_ANNOTATION: &str = "gitops-agent.io/bundle";
const KEY: &str = "record.json.gz";

#[derive(Clone)]
pub struct StateStore {
    dir: PathBuf,
    agent_id: String,
    namespace: String,
    secrets: Option<Api<Secret>>,
    /// What this store last knew of each bundle's Secret (shared by its clones).
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    /// Bundles whose Secret copy the last [`StateStore::all`] found behind this node's file.
    behind: Arc<Mutex<BTreeSet<String>>>,
    /// The state Secrets as the daemon's watch sees them ([`StateStore::watch`]); `None`: no watch
    /// (a command run once), every [`StateStore::all`] lists them.
    watched: Option<Arc<Mutex<Watched>>>,
}

/// The state Secrets as a watch last saw them, by bundle.
#[derive(Default)]
struct Watched {
    /// Whether `secrets` is the API server's set: the watch's first list has ended (or a list
    /// of [`StateStore::all`] since its last error), and no error since.
    current: bool,
    secrets: BTreeMap<String, Secret>,
    /// The copies of a list the watch is making (its `Init` .. `InitDone`).
    listing: Option<BTreeMap<String, Secret>>,
}

impl Watched {
    /// Takes `secret` unless it holds an older record than the copy kept (an event of an older
    /// write that arrives after this store's own write was kept); one that cannot be decoded is
    /// always taken (it is what the API server holds, and is to be replaced).
    fn offer(copies: &mut BTreeMap<String, Secret>, bundle: String, secret: Secret) {
        let seq = |s: &Secret| record_seq(s);
        if let (Some(kept), Some(new)) = (copies.get(&bundle).and_then(seq), seq(&secret))
            && new < kept
        {
            return;
        }
        copies.insert(bundle, secret);
    }
}

/// The sequence number a state Secret carries, when its record can be decoded.
fn record_seq(secret: &Secret) -> Option<u64> {
    let data = secret.data.as_ref()?.get(KEY)?;
    decode_secret_data(&data.0).ok().map(|r| r.seq)
}

/// One bundle's Secret as this store last knew it.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The `resourceVersion` to write over; `None`: the Secret did not exist (create it).
    resource_version: Option<String>,
    /// The highest `seq` read from it or tried to write to it (`after_conflict`'s `known`).
    seq: Option<u64>,
}

/// The record was not written: another writer recorded a newer version of it since this one
/// was read. The caller reads the record again and decides again.
#[derive(Debug, thiserror::Error)]
#[error(
    "the record of {bundle} moved on (version {stored} was written by another writer since this one read it); \
     version {ours} was not written: read it again and decide again"
)]
pub struct Superseded {
    pub bundle: String,
    pub stored: u64,
    pub ours: u64,
}

/// How many times a write is tried again over a fresh `resourceVersion` when only the object,
/// not its record, changed in between (each try needs another writer in between to fail).
const WRITE_ATTEMPTS: usize = 3;

/// A record could not be written to one of its two places; the other one holds it.
#[derive(Debug)]
pub struct Saved {
    pub secret_error: Option<String>,
}

impl StateStore {
    /// `client: None` keeps records on disk only (tests of the pure parts; never the agent).
    pub fn new(state_dir: &Path, agent_id: &str, namespace: &str, client: Option<Client>) -> StateStore {
        StateStore {
            dir: state_dir.join("state"),
            agent_id: agent_id.to_owned(),
            namespace: namespace.to_owned(),
            secrets: client.map(|c| Api::namespaced(c, namespace)),
            seen: Arc::default(),
            behind: Arc::default(),
            watched: None,
        }
    }

    /// Starts watching this store's state Secrets (the daemon, once connected): from then on
    /// [`StateStore::all`] reads what the watch saw instead of listing. Its clones share the
    /// watch. Without a client, nothing to watch.
    pub fn watch(&mut self) {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::{self, Event, watcher};
        let Some(api) = self.secrets.clone() else { return };
        let watched = Arc::new(Mutex::new(Watched::default()));
        self.watched = Some(watched.clone());
        let store = self.clone();
        let config = watcher::Config::default().labels(&format!("{STATE_LABEL}={}", self.agent_id));
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let mut w = watched.lock().expect("watched lock");
                match event {
                    Ok(Event::Init) => w.listing = Some(BTreeMap::new()),
                    Ok(Event::InitApply(secret)) => {
                        if let (Some(bundle), Some(listing)) = (store.bundle_of(&secret), w.listing.as_mut()) {
                            listing.insert(bundle, secret);
                        }
                    }
                    Ok(Event::InitDone) => {
                        if let Some(listed) = w.listing.take() {
                            w.secrets = listed;
                        }
                        w.current = true;
                    }
                    Ok(Event::Apply(secret)) => {
                        if let Some(bundle) = store.bundle_of(&secret) {
                            Watched::offer(&mut w.secrets, bundle, secret);
                        }
                    }
                    Ok(Event::Delete(secret)) => {
                        if let Some(bundle) = store.bundle_of(&secret) {
                            w.secrets.remove(&bundle);
                        }
                    }
                    Err(e) => {
                        if w.current {
                            tracing::warn!(error = %e, "state Secret watch interrupted: records are listed until it is back");
                        }
                        w.current = false;
                    }
                }
            }
        });
    }

    /// The bundle a state Secret of this agent records (its annotation, and the name this store
    /// gives that bundle's Secret); `None` for any other Secret.
    fn bundle_of(&self, secret: &Secret) -> Option<String> {
        let bundle = secret.metadata.annotations.as_ref()?.get(STATE_BUNDLE_ANNOTATION)?;
        (secret.metadata.name.as_deref() == Some(self.secret_name(bundle).as_str())).then(|| bundle.clone())
    }

    /// The Secret holding `bundle`'s record: readable, unique per agent identity and bundle.
    pub fn secret_name(&self, bundle: &str) -> String {
        let digest = Sha256::digest(format!("{}\0{bundle}", self.agent_id).as_bytes());
        let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let readable: String = format!("{}-{bundle}", self.agent_id)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let readable = readable.trim_matches('-');
        format!("gitops-agent-state-{}-{hash}", &readable[..readable.len().min(200)])
    }

    fn file(&self, bundle: &str) -> PathBuf {
        let digest = Sha256::digest(format!("{}\0{bundle}", self.agent_id).as_bytes());
        let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    /// The newest of the two copies of `bundle`'s record. A copy that cannot be read is an error
    /// only when the other one is missing too.
    pub async fn load(&self, bundle: &str) -> anyhow::Result<Option<Record>> {
        newest_of(self.load_file(bundle), self.load_secret(bundle).await)
    }

    fn load_file(&self, bundle: &str) -> anyhow::Result<Option<Record>> {
        let path = self.file(bundle);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("state file {}", path.display()))?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("state file {}", path.display()))),
        }
    }

    async fn load_secret(&self, bundle: &str) -> anyhow::Result<Option<Record>> {
        self.read_secret(bundle).await?.record()
    }

    /// The Secret copy of `bundle`'s record. Its resourceVersion is remembered whether or not the
    /// record in it can be read, so that a write can replace a corrupt copy (whose precondition
    /// would otherwise fail for ever on a version never seen).
    async fn read_secret(&self, bundle: &str) -> anyhow::Result<StoredCopy> {
        let Some(api) = &self.secrets else { return Ok(StoredCopy::Missing) };
        let name = self.secret_name(bundle);
        let what = || format!("state Secret {}/{name}", self.namespace);
        let secret = api.get_opt(&name).await.with_context(what)?;
        Ok(self.remember(bundle, secret.as_ref()))
    }

    /// The record in `secret` (as read, or as listed), its resourceVersion remembered.
    fn remember(&self, bundle: &str, secret: Option<&Secret>) -> StoredCopy {
        let what = || format!("state Secret {}/{}", self.namespace, self.secret_name(bundle));
        let resource_version = secret.and_then(|s| s.metadata.resource_version.clone());
        let copy = match secret {
            None => StoredCopy::Missing,
            Some(secret) => match secret.data.as_ref().and_then(|d| d.get(KEY)) {
                None => StoredCopy::Unreadable(anyhow::anyhow!("{}: no {KEY}", what())),
                Some(data) => match decode_secret_data(&data.0).with_context(what) {
                    Ok(r) => StoredCopy::Record(Box::new(r)),
                    Err(e) => StoredCopy::Unreadable(e),
                },
            },
        };
        let mut seen = self.seen.lock().expect("seen lock");
        let entry = seen.entry(bundle.to_owned()).or_default();
        entry.resource_version = resource_version;
        if let StoredCopy::Record(r) = &copy {
            entry.seq = entry.seq.max(Some(r.seq));
        }
        copy
    }

    fn seen(&self, bundle: &str) -> Option<Seen> {
        self.seen.lock().expect("seen lock").get(bundle).cloned()
    }

    fn tried(&self, bundle: &str, seq: u64) {
        let mut seen = self.seen.lock().expect("seen lock");
        let entry = seen.entry(bundle.to_owned()).or_default();
        entry.seq = entry.seq.max(Some(seq));
    }

    /// Every record this agent keeps (on disk or in its Secrets), newest copy of each.
    /// The records in this node's files alone (when the Secrets cannot be read: status keeps
    /// showing what runs instead of nothing).
    pub fn local(&self) -> Vec<Record> {
        let mut out: Vec<Record> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .collect();
        out.sort_by(|a, b| a.bundle.cmp(&b.bundle));
        out
    }

    pub async fn all(&self) -> anyhow::Result<Vec<Record>> {
        let mut bundles = std::collections::BTreeSet::new();
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for entry in dir.flatten() {
                if entry.path().extension().is_some_and(|e| e == "json")
                    && let Ok(bytes) = std::fs::read(entry.path())
                    && let Ok(r) = serde_json::from_slice::<Record>(&bytes)
                {
                    bundles.insert(r.bundle);
                }
            }
        }
        let listed = self.secrets_now().await?;
        bundles.extend(listed.keys().cloned());
        let mut out = Vec::new();
        let mut behind = BTreeSet::new();
        for b in bundles {
            // A bundle the list did not answer for (on this node's disk only) is read alone.
            let remote = match listed.get(&b) {
                Some(secret) => self.remember(&b, Some(secret)).record(),
                None => self.load_secret(&b).await,
            };
            let local = self.load_file(&b);
            if self.secrets.is_some() && is_behind(&local, &remote) {
                behind.insert(b.clone());
            }
            if let Some(r) = newest_of(local, remote)? {
                out.push(r);
            }
        }
        *self.behind.lock().expect("behind lock") = behind;
        Ok(out)
    }

    /// Every state Secret of this agent, by bundle: what the watch saw when it is current, else
    /// one list (which, with a watch, makes the watch's copy current again).
    async fn secrets_now(&self) -> anyhow::Result<BTreeMap<String, Secret>> {
        let Some(api) = &self.secrets else { return Ok(BTreeMap::new()) };
        if let Some(watched) = &self.watched {
            let w = watched.lock().expect("watched lock");
            if w.current {
                return Ok(w.secrets.clone());
            }
        }
        // One list answers for every Secret copy (their data included): no read per bundle.
        let list = api
            .list(&ListParams::default().labels(&format!("{STATE_LABEL}={}", self.agent_id)))
            .await
            .with_context(|| format!("listing state Secrets in {}", self.namespace))?;
        let listed: BTreeMap<String, Secret> =
            list.items.into_iter().filter_map(|s| self.bundle_of(&s).map(|b| (b, s))).collect();
        if let Some(watched) = &self.watched {
            let mut w = watched.lock().expect("watched lock");
            w.secrets = listed.clone();
            w.current = true;
        }
        Ok(listed)
    }

    /// Writes again the Secret copy of each record the last [`StateStore::all`] found behind
    /// this node's file: a save whose Secret write failed (the API server did not answer) and
    /// after which nothing changed would leave the Secret stale for good. Returns, per bundle
    /// tried, whether it was written.
    pub async fn write_behind(&self) -> Vec<(String, Result<(), String>)> {
        let bundles = std::mem::take(&mut *self.behind.lock().expect("behind lock"));
        let mut out = Vec::new();
        for b in bundles {
            let written = match (self.load_file(&b), &self.secrets) {
                (Ok(Some(record)), Some(api)) => match self.save_secret(api, &record).await {
                    Ok(()) => Ok(()),
                    Err(SecretWrite::Superseded(stored)) => {
                        Err(format!("another writer recorded version {} meanwhile; kept", stored.seq))
                    }
                    Err(SecretWrite::Failed(e)) => Err(e),
                },
                (Ok(_), _) => continue,
                (Err(e), _) => Err(format!("{e:#}")),
            };
            out.push((b, written));
        }
        out
    }

    /// Writes both copies: the Secret first, over the `resourceVersion` last seen, then the file
    /// (atomically: a crash leaves the old or the new one). A Secret that could not be reached is
    /// returned in [`Saved`], not as an error: the file holds the record, and the next save
    /// writes the Secret again. A [`Superseded`] error means nothing was written, and the file
    /// now holds the newer stored record.
    pub async fn save(&self, record: &Record) -> anyhow::Result<Saved> {
        let secret_error = match &self.secrets {
            None => None,
            Some(api) => match self.save_secret(api, record).await {
                Ok(()) => None,
                Err(SecretWrite::Superseded(stored)) => {
                    let err = Superseded { bundle: record.bundle.clone(), stored: stored.seq, ours: record.seq };
                    self.save_file(&stored)?;
                    return Err(err.into());
                }
                Err(SecretWrite::Failed(e)) => Some(e),
            },
        };
        self.save_file(record)?;
        Ok(Saved { secret_error })
    }

    fn save_file(&self, record: &Record) -> anyhow::Result<()> {
        let json = serde_json::to_vec(record)?;
        let path = self.file(&record.bundle);
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&json)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).with_context(|| format!("writing {}", path.display()))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    async fn save_secret(&self, api: &Api<Secret>, record: &Record) -> Result<(), SecretWrite> {
        let name = self.secret_name(&record.bundle);
        let failed = |e: &dyn std::error::Error| {
            SecretWrite::Failed(format!("state Secret {}/{name}: {}", self.namespace, crate::source::error_chain(e)))
        };
        let value = self.secret_value(record).map_err(|e| failed(&*e))?;
        if self.seen(&record.bundle).is_none() {
            // Never read: learn the resourceVersion first, so the write has a precondition (a
            // copy that cannot be read is replaced: the local file holds the record).
            self.read_secret(&record.bundle).await.map_err(|e| failed(&*e))?;
        }
        for _ in 0..WRITE_ATTEMPTS {
            let seen = self.seen(&record.bundle).unwrap_or_default();
            let written = match &seen.resource_version {
                Some(rv) => {
                    let mut value = value.clone();
                    value["metadata"]["resourceVersion"] = rv.clone().into();
                    // Forced: the agent is the Secret's only manager; the precondition is what
                    // keeps another writer's newer record.
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    api.patch(&name, &params, &Patch::Apply(&value)).await
                }
                None => {
                    let secret: Secret = serde_json::from_value(value.clone()).map_err(|e| failed(&e))?;
                    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..Default::default() };
                    api.create(&params, &secret).await
                }
            };
            match written {
                Ok(s) => {
                    {
                        let mut all = self.seen.lock().expect("seen lock");
                        let entry = all.entry(record.bundle.clone()).or_default();
                        entry.resource_version = s.metadata.resource_version.clone();
                        entry.seq = entry.seq.max(Some(record.seq));
                    }
                    // What was written is what the API server holds now: the watch's event of it
                    // may come later than the next read.
                    if let Some(watched) = &self.watched {
                        Watched::offer(&mut watched.lock().expect("watched lock").secrets, record.bundle.clone(), s);
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let known = seen.seq;
                    // A copy that cannot be read holds no transition to keep: ours replaces it.
                    let stored = match self.read_secret(&record.bundle).await.map_err(|e| failed(&*e))? {
                        StoredCopy::Record(r) => Some(*r),
                        StoredCopy::Missing | StoredCopy::Unreadable(_) => None,
                    };
                    match after_conflict(known, record, stored.as_ref()) {
                        AfterConflict::Write => continue,
                        AfterConflict::AlreadyWritten => return Ok(()),
                        AfterConflict::Superseded => {
                            return Err(SecretWrite::Superseded(Box::new(
                                stored.expect("superseded by a stored record"),
                            )));
                        }
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 && seen.resource_version.is_some() => {
                    // Deleted since it was read (by hand, or with its namespace's contents): read
                    // again, which finds it missing, and create it.
                    self.read_secret(&record.bundle).await.map_err(|e| failed(&*e))?;
                    continue;
                }
                Err(e) => {
                    // The write may have landed without its answer: it is no stranger's later.
                    self.tried(&record.bundle, record.seq);
                    return Err(failed(&e));
                }
            }
        }
        Err(SecretWrite::Failed(format!(
            "state Secret {}/{name}: changed by someone else {WRITE_ATTEMPTS} times while being written",
            self.namespace
        )))
    }

    fn secret_value(&self, record: &Record) -> anyhow::Result<serde_json::Value> {
        let json = serde_json::to_vec(record)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json)?;
        let data = gz.finish()?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(self.secret_name(&record.bundle)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(STATE_LABEL.to_owned(), self.agent_id.clone())])),
                annotations: Some(BTreeMap::from([
                    (STATE_BUNDLE_ANNOTATION.to_owned(), record.bundle.clone()),
                    ("gitops-agent.io/seq".to_owned(), record.seq.to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("gitops-agent.io/state".into()),
            data: Some(BTreeMap::from([(KEY.to_owned(), ByteString(data))])),
            ..Default::default()
        };
        let mut value = serde_json::to_value(&secret)?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        Ok(value)
    }
}

/// Whether the Secret copy lags the file: the file holds a record and the Secret none, or an
/// older one. A Secret that cannot be decoded is replaced too (the file holds the record).
fn is_behind(local: &anyhow::Result<Option<Record>>, remote: &anyhow::Result<Option<Record>>) -> bool {
    match (local, remote) {
        (Ok(Some(l)), Ok(Some(r))) => l.seq > r.seq,
        (Ok(Some(_)), Ok(None) | Err(_)) => true,
        _ => false,
    }
}

/// The newer of a bundle's two copies; one that cannot be read is an error only when the other
/// is missing too.
fn newest_of(
    local: anyhow::Result<Option<Record>>,
    remote: anyhow::Result<Option<Record>>,
) -> anyhow::Result<Option<Record>> {
    match (local, remote) {
        (Ok(a), Ok(b)) => Ok(newer(a, b)),
        (Ok(Some(a)), Err(_)) | (Err(_), Ok(Some(a))) => Ok(Some(a)),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// What the state Secret of a bundle holds.
enum StoredCopy {
    Missing,
    Record(Box<Record>),
    /// Present, but its record cannot be decoded (truncated, edited by hand, ...).
    Unreadable(anyhow::Error),
}

impl StoredCopy {
    /// The record it holds, if any; a copy that cannot be decoded is the error.
    fn record(self) -> anyhow::Result<Option<Record>> {
        match self {
            StoredCopy::Missing => Ok(None),
            StoredCopy::Record(r) => Ok(Some(*r)),
            StoredCopy::Unreadable(e) => Err(e),
        }
    }
}

/// Why the Secret copy was not written.
enum SecretWrite {
    /// Another writer's newer record is stored (here).
    Superseded(Box<Record>),
    /// The API server did not take it (unreachable, refused): the file copy holds the record.
    Failed(String),
}

/// A state Secret's `record.json.gz`, decoded (for tests and `agent status` readers).
pub fn decode_secret_data(data: &[u8]) -> anyhow::Result<Record> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_copy_round_trips_and_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path(), "store-1", "gitops-agent", None);
        assert_eq!(store.load("stack-b/helm").await.unwrap(), None);
        let r = Record::new("stack-b/helm").retry();
        store.save(&r).await.unwrap();
        assert_eq!(store.load("stack-b/helm").await.unwrap(), Some(r.clone()));
        let r2 = r.retry();
        store.save(&r2).await.unwrap();
        assert_eq!(store.load("stack-b/helm").await.unwrap().unwrap().seq, 2);
        assert_eq!(store.all().await.unwrap().len(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("state")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn secret_names_are_dns_names_unique_per_identity_and_bundle() {
        let a = StateStore::new(Path::new("/x"), "Store_1", "ns", None);
        let b = StateStore::new(Path::new("/x"), "store-2", "ns", None);
        let n = a.secret_name("stack-b/helm");
        assert!(n.starts_with("gitops-agent-state-store-1-stack-b-helm-"), "{n}");
        assert!(n.len() <= 253 && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(n, b.secret_name("stack-b/helm"));
        assert_ne!(a.secret_name("a/b"), a.secret_name("a-b"));
    }

    #[test]
    fn a_watched_copy_gives_way_only_to_a_newer_record_or_to_one_that_cannot_be_read() {
        let store = StateStore::new(Path::new("/x"), "store-1", "ns", None);
        let secret = |r: &Record| -> Secret { serde_json::from_value(store.secret_value(r).unwrap()).unwrap() };
        let (one, two) = (Record::new("web").retry(), Record::new("web").retry().retry());
        let seq = |copies: &BTreeMap<String, Secret>| copies.get("web").and_then(record_seq);
        let mut copies = BTreeMap::new();
        Watched::offer(&mut copies, "web".into(), secret(&two));
        assert_eq!(seq(&copies), Some(2));
        // The event of an older write, arriving after this store's own newer write was kept.
        Watched::offer(&mut copies, "web".into(), secret(&one));
        assert_eq!(seq(&copies), Some(2), "an older record does not replace a newer one");
        Watched::offer(&mut copies, "web".into(), secret(&two.retry()));
        assert_eq!(seq(&copies), Some(3));
        // Edited by hand into something that does not decode: that is what the server holds.
        let mut corrupt = secret(&two);
        corrupt.data = Some(BTreeMap::from([(KEY.to_owned(), ByteString(b"not gzip".to_vec()))]));
        Watched::offer(&mut copies, "web".into(), corrupt);
        assert_eq!(seq(&copies), None, "a copy that cannot be read is taken, to be replaced");
        assert!(copies.contains_key("web"));
    }
}
