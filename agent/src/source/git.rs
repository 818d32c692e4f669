//! Git source (gix): follows one branch of one repository into a local bare cache, reads files
//! from a commit's tree without a worktree, and exports a bundle's subtree to disk for the
//! renderers after checking every path of it (`shared::tree`).
//!
//! Cost: a poll is one handshake (protocol v2: capabilities, then `ls-refs` for the one branch);
//! when the branch did not move, gix sees every wanted object present and asks for no pack.
//! When it moved, only the objects the cache lacks are sent.
//!
//! TLS: gix's reqwest transport ignores `http.sslCAInfo`, so the CA is not configured through
//! git config at all: the client is given a rustls `ClientConfig` that trusts exactly the
//! configured CA (or the web PKI roots without one), the same policy as the registry adapter,
//! and nothing else in the process is affected. The cache repository is opened isolated from
//! the machine's git config and environment (`GIT_SSL_CAINFO`, credential helpers, `insteadOf`).
//!
//! gix is blocking: call these methods from `spawn_blocking` in async code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::remote::Direction;
use shared::tree::{self, TreeError};

use super::secret::{Secret, SecretError, SecretSource};
use super::{RequestCounts, error_chain};

/// The tracking ref in the cache: one per followed branch.
fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Settings of the git source.
#[derive(Debug, Clone)]
pub struct GitOptions {
    /// `https://...` or `file://...`; never with credentials in it.
    pub url: String,
    /// The branch to follow.
    pub branch: String,
    pub auth: Option<GitAuth>,
    /// PEM bundle: with it, only these CAs are trusted for this source.
    pub ca_file: Option<PathBuf>,
    /// The bare cache repository (created when missing, re-created when corrupt).
    pub cache_dir: PathBuf,
    /// Files above this size are refused (`shared::tree::DEFAULT_MAX_FILE_SIZE`).
    pub max_file_size: u64,
    /// Time limit of one HTTP request (a pack download included).
    pub timeout: Duration,
}

/// Basic credentials: a user and a password or token, read fresh for every poll.
#[derive(Debug, Clone)]
pub struct GitAuth {
    pub username: String,
    pub password: SecretSource,
}

impl GitOptions {
    /// From the node config; relative files are relative to `base` (the config's folder).
    pub fn from_config(cfg: &shared::config::AgentConfig, base: &Path) -> GitOptions {
        let g = &cfg.git;
        GitOptions {
            url: g.url.clone(),
            branch: g.reference.clone(),
            auth: g
                .auth
                .as_ref()
                .map(|c| GitAuth { username: c.username.clone(), password: SecretSource::from_config(c, base) }),
            ca_file: g.ca_file.as_ref().map(|f| base.join(f)),
            cache_dir: base.join(&cfg.state_dir).join("git").join(shared::tree::cache_name(&g.url)),
            max_file_size: tree::DEFAULT_MAX_FILE_SIZE,
            timeout: Duration::from_secs(300),
        }
    }
}

/// A commit as status and logs show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Commit {
    /// Full hex object id.
    pub id: String,
    /// Committer time, seconds since the Unix epoch.
    pub time: i64,
    /// First line of the message.
    pub summary: String,
}

/// How the followed branch moved since the previous poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// The branch points where it did; nothing was downloaded.
    Unchanged,
    /// First fetch into an empty (or re-created) cache.
    New,
    FastForward,
    /// The branch was rewritten (force-push): the new commit does not descend from the old.
    Forced,
}

/// The result of one poll.
#[derive(Debug, Clone)]
pub struct Poll {
    pub commit: Commit,
    /// The commit the cache held before, when it held one.
    pub previous: Option<String>,
    pub change: Change,
    /// The cache was found corrupt and rebuilt from scratch during this poll.
    pub recloned: bool,
}

/// Why a git operation failed; never carries a secret. Variants are named after the failing step.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{url}: {reason}")]
    Fetch { url: String, reason: String, transient: bool },
    #[error("{url}: authentication failed for {account:?}")]
    Unauthorized { url: String, account: String },
    #[error("{url}: branch {branch:?} not found (deleted or never pushed?)")]
    BranchNotFound { url: String, branch: String },
    #[error("git credentials for {url}: {source}")]
    Credentials {
        url: String,
        #[source]
        source: SecretError,
    },
    #[error("CA file {file}: {reason}")]
    Ca { file: String, reason: String },
    #[error("git cache {path}: {reason}")]
    Cache { path: String, reason: String },
    #[error("commit {commit}: {reason}")]
    Read { commit: String, reason: String },
    #[error("commit {commit}: {source}")]
    Content {
        commit: String,
        #[source]
        source: TreeError,
    },
    #[error("commit {commit}: {path}: not found")]
    NotFound { commit: String, path: String },
    #[error("writing {path}: {reason}")]
    Export { path: String, reason: String },
}

impl GitError {
    /// Whether a later poll may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, GitError::Fetch { transient: true, .. })
    }

    /// A stable short name for metrics and status.
    pub fn reason(&self) -> &'static str {
        match self {
            GitError::Fetch { .. } => "FetchFailed",
            GitError::Unauthorized { .. } => "Unauthorized",
            GitError::BranchNotFound { .. } => "BranchNotFound",
            GitError::Credentials { .. } => "CredentialsUnreadable",
            GitError::Ca { .. } => "CaUnreadable",
            GitError::Cache { .. } => "CacheUnusable",
            GitError::Read { .. } | GitError::NotFound { .. } => "ReadFailed",
            GitError::Content { .. } => "UnsafeContent",
            GitError::Export { .. } => "ExportFailed",
        }
    }
}

/// One file of a commit's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Path relative to the repository root.
    pub path: String,
    pub size: u64,
    pub kind: FileKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Executable,
    Symlink,
}

/// The git source of one repository and branch.
pub struct GitSource {
    opts: GitOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    secret: Option<Secret>,
    /// One poll at a time per cache (gix takes its own file locks; this keeps our checks sane).
    lock: Mutex<()>,
    /// Polls by outcome (`unchanged`, `fetched`, `recloned`, `unauthorized`, ...).
    pub counters: Arc<RequestCounts>,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource").field("url", &self.opts.url).field("branch", &self.opts.branch).finish()
    }
}

impl GitSource {
    pub fn new(opts: GitOptions) -> Result<GitSource, GitError> {
        let tls = if opts.url.starts_with("https://") { Some(Arc::new(tls_config(&opts)?)) } else { None };
        let secret = opts.auth.as_ref().map(|a| Secret::new(a.password.clone()));
        Ok(GitSource { opts, tls, secret, lock: Mutex::new(()), counters: Arc::new(RequestCounts::default()) })
    }

    pub fn options(&self) -> &GitOptions {
        &self.opts
    }

    /// The URL as it may be shown (credentials stripped, should any have slipped in).
    pub fn shown_url(&self) -> String {
        shared::redact::url(&self.opts.url)
    }

    /// Checks the remote branch and fetches what is new. A corrupt cache is rebuilt once.
    pub fn poll(&self) -> Result<Poll, GitError> {
        let _guard = self.lock.lock().expect("git poll lock");
        let result = match self.open_cache() {
            Ok(repo) => match self.fetch(&repo) {
                Err(GitError::Cache { .. }) => self.reclone(),
                other => other,
            },
            Err(GitError::Cache { .. }) => self.reclone(),
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(p) if p.recloned => "recloned",
            Ok(p) if p.change == Change::Unchanged => "unchanged",
            Ok(_) => "fetched",
            Err(GitError::Unauthorized { .. }) => "unauthorized",
            Err(GitError::BranchNotFound { .. }) => "branch_not_found",
            Err(_) => "failed",
        };
        self.counters.record("poll", outcome);
        result
    }

    /// The commit the cache last fetched, without any network access (for status after a
    /// restart, and for working from what is known while the server is down).
    pub fn last_fetched(&self) -> Result<Option<Commit>, GitError> {
        let repo = self.open_cache()?;
        let id = match repo.try_find_reference(tracking_ref(&self.opts.branch).as_str()) {
            Ok(Some(mut r)) => r.peel_to_id().map_err(|e| self.cache_err(&e))?.detach(),
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.cache_err(&e)),
        };
        commit_info(&repo, id).map(Some)
    }

    /// Every file under `dir` (relative to the repository root; `.` for all) at `commit`, with
    /// unsafe paths refused.
    pub fn list(&self, commit: &str, dir: &str) -> Result<Vec<TreeFile>, GitError> {
        let repo = self.open_cache()?;
        let tree = subtree(&repo, commit, dir)?;
        let mut out = Vec::new();
        walk(&repo, commit, tree, &dir_prefix(dir), &mut |path, entry| {
            let kind = match entry.mode.kind() {
                gix::object::tree::EntryKind::Blob => FileKind::File,
                gix::object::tree::EntryKind::BlobExecutable => FileKind::Executable,
                gix::object::tree::EntryKind::Link => FileKind::Symlink,
                // Submodules cannot be rendered; they are not part of any bundle.
                gix::object::tree::EntryKind::Commit | gix::object::tree::EntryKind::Tree => return Ok(()),
            };
            let size = repo.find_header(entry.oid).map_err(|e| read_err(commit, &e))?.size();
            out.push(TreeFile { path: path.to_owned(), size, kind });
            Ok(())
        })?;
        Ok(out)
    }

    /// The commit's signature (its `gpgsig` header; `None` when unsigned) and the bytes it signs
    /// (the commit object without that header), as git verifies them.
    pub fn commit_signature(&self, commit: &str) -> Result<(Option<Vec<u8>>, Vec<u8>), GitError> {
        let repo = self.open_cache()?;
        let id = gix::ObjectId::from_hex(commit.as_bytes())
            .map_err(|e| GitError::Read { commit: commit.to_owned(), reason: format!("not a commit id: {e}") })?;
        let c = repo.find_commit(id).map_err(|e| read_err(commit, &e))?;
        Ok(match c.signature().map_err(|e| read_err(commit, &e))? {
            None => (None, c.data.clone()),
            Some((sig, signed)) => (Some(sig.to_vec()), Vec::from(gix::bstr::BString::from(signed))),
        })
    }

    /// Whether `commit` passes `git.verify` (allowed signers read from their file, relative to
    /// `base`): the status line either way, `commit 1a2b3c signed by ci@... (ssh key SHA256:...)`
    /// or why not.
    pub fn verify_commit(
        &self,
        commit: &str,
        spec: &shared::commit_sig::GitVerifySpec,
        base: &Path,
    ) -> Result<String, String> {
        use shared::commit_sig::{parse_allowed_signers, parse_openpgp_keys, verify_commit};
        let allowed = read_key_file(spec.ssh_allowed_signers.as_deref(), base, parse_allowed_signers)
            .map_err(|e| format!("git.verify.sshAllowedSigners {e}"))?
            .unwrap_or_default();
        let openpgp = read_key_file(spec.openpgp_keys.as_deref(), base, parse_openpgp_keys)
            .map_err(|e| format!("git.verify.openpgpKeys {e}"))?
            .unwrap_or_default();
        let (signature, signed) = self.commit_signature(commit).map_err(|e| e.to_string())?;
        let verdict = verify_commit(signature.as_deref(), &signed, &allowed, &openpgp);
        let line = verdict.describe(commit);
        if verdict.is_signed() { Ok(line) } else { Err(line) }
    }

    /// The id of the tree `dir` at `commit`: the same for every store that reads the same
    /// content (a bundle's release, `shared::waves::release_id`).
    pub fn tree_id(&self, commit: &str, dir: &str) -> Result<String, GitError> {
        let repo = self.open_cache()?;
        Ok(subtree(&repo, commit, dir)?.id.to_string())
    }

    /// [`Git::tree_id`] of each of `dirs`, the cache opened once (a poll asks it of every bundle
    /// with a kept plan); `None` for a folder that cannot be read.
    pub fn tree_ids(&self, commit: &str, dirs: &[String]) -> Result<Vec<Option<String>>, GitError> {
        let repo = self.open_cache()?;
        Ok(dirs.iter().map(|d| subtree(&repo, commit, d).ok().map(|t| t.id.to_string())).collect())
    }

    /// The content of one file at `commit`, following symlinks that stay inside `root`.
    pub fn read(&self, commit: &str, path: &str, root: &str) -> Result<Vec<u8>, GitError> {
        let repo = self.open_cache()?;
        let tree = commit_tree(&repo, commit)?;
        self.read_in(&repo, commit, &tree, path, root)
    }

    /// Writes the subtree `dir` at `commit` into `dest` (created; must not exist or be empty).
    /// Every path is checked, symlinks are resolved inside `dir` and written as plain copies, and
    /// files above the size limit are refused, so nothing from the repository can reach outside
    /// `dest`. On error `dest` may hold part of the files; callers use a fresh temporary folder.
    pub fn export(&self, commit: &str, dir: &str, dest: &Path) -> Result<Vec<String>, GitError> {
        let repo = self.open_cache()?;
        let root_tree = commit_tree(&repo, commit)?;
        let tree = subtree(&repo, commit, dir)?;
        let prefix = dir_prefix(dir);
        let mut entries = Vec::new();
        walk(&repo, commit, tree, &prefix, &mut |path, entry| {
            if matches!(entry.mode.kind(), gix::object::tree::EntryKind::Commit) {
                return Ok(());
            }
            entries.push(path.to_owned());
            Ok(())
        })?;
        let export_err =
            |p: &Path, e: std::io::Error| GitError::Export { path: p.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(dest).map_err(|e| export_err(dest, e))?;
        let mut written = Vec::with_capacity(entries.len());
        for path in entries {
            let data = self.read_in(&repo, commit, &root_tree, &path, dir)?;
            let rel = path.strip_prefix(&prefix).unwrap_or(&path);
            // check_path above guarantees `rel` is plain names joined by `/`.
            let target = dest.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| export_err(parent, e))?;
            }
            std::fs::write(&target, &data).map_err(|e| export_err(&target, e))?;
            written.push(rel.to_owned());
        }
        Ok(written)
    }

    fn read_in(
        &self,
        repo: &gix::Repository,
        commit: &str,
        root_tree: &gix::Tree<'_>,
        path: &str,
        root: &str,
    ) -> Result<Vec<u8>, GitError> {
        let content = |source| GitError::Content { commit: commit.to_owned(), source };
        let mut current = path.to_owned();
        for _ in 0..=tree::MAX_SYMLINK_HOPS {
            tree::check_path(&current).map_err(content)?;
            if !tree::is_within(&current, root) {
                return Err(content(TreeError::SymlinkEscapes {
                    path: path.to_owned(),
                    target: current,
                    root: root.to_owned(),
                }));
            }
            let entry = root_tree
                .clone()
                .peel_to_entry_by_path(&current)
                .map_err(|e| read_err(commit, &e))?
                .ok_or_else(|| GitError::NotFound { commit: commit.to_owned(), path: current.clone() })?;
            let size = repo.find_header(entry.oid()).map_err(|e| read_err(commit, &e))?.size();
            tree::check_size(&current, size, self.opts.max_file_size).map_err(content)?;
            let blob = repo.find_object(entry.oid()).map_err(|e| read_err(commit, &e))?;
            match entry.mode().kind() {
                gix::object::tree::EntryKind::Blob | gix::object::tree::EntryKind::BlobExecutable => {
                    return Ok(blob.detach().data);
                }
                gix::object::tree::EntryKind::Link => {
                    let target = blob.data.to_str_lossy().into_owned();
                    current = tree::resolve_symlink(&current, &target, root).map_err(content)?;
                }
                _ => {
                    return Err(GitError::Read {
                        commit: commit.to_owned(),
                        reason: format!("{current}: not a file (a folder or a submodule)"),
                    });
                }
            }
        }
        Err(content(TreeError::SymlinkLoop { path: path.to_owned() }))
    }

    fn cache_err(&self, e: &dyn std::error::Error) -> GitError {
        GitError::Cache { path: self.opts.cache_dir.display().to_string(), reason: error_chain(e) }
    }

    /// Opens the cache, creating it when missing. `Cache` errors mean "rebuild it".
    fn open_cache(&self) -> Result<gix::Repository, GitError> {
        let dir = &self.opts.cache_dir;
        let repo = if dir.join("HEAD").exists() || dir.join("objects").exists() {
            gix::open_opts(dir, isolated()).map_err(|e| self.cache_err(&e))?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| self.cache_err(&e))?;
            gix::ThreadSafeRepository::init_opts(
                dir,
                gix::create::Kind::Bare,
                gix::create::Options::default(),
                isolated(),
            )
            .map_err(|e| self.cache_err(&e))?
            .to_thread_local()
        };
        // The tracking ref must lead to a readable commit and tree, else the cache is corrupt.
        if let Ok(Some(mut r)) = repo.try_find_reference(tracking_ref(&self.opts.branch).as_str()) {
            let id = r.peel_to_id().map_err(|e| self.cache_err(&e))?.detach();
            let commit = repo.find_commit(id).map_err(|e| self.cache_err(&e))?;
            commit.tree().map_err(|e| self.cache_err(&e))?;
        }
        Ok(repo)
    }

    fn reclone(&self) -> Result<Poll, GitError> {
        let dir = &self.opts.cache_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| self.cache_err(&e))?;
        }
        let repo = self.open_cache()?;
        let mut poll = self.fetch(&repo)?;
        poll.recloned = true;
        Ok(poll)
    }

    fn fetch(&self, repo: &gix::Repository) -> Result<Poll, GitError> {
        let url = self.shown_url();
        let local = tracking_ref(&self.opts.branch);
        let previous = match repo.try_find_reference(local.as_str()) {
            Ok(Some(mut r)) => Some(r.peel_to_id().map_err(|e| self.cache_err(&e))?.detach()),
            Ok(None) => None,
            Err(e) => return Err(self.cache_err(&e)),
        };
        let spec = format!("+refs/heads/{}:{local}", self.opts.branch);
        let remote = repo
            .remote_at(self.opts.url.as_str())
            .map_err(|e| GitError::Fetch { url: url.clone(), reason: error_chain(&e), transient: false })?
            .with_refspecs(Some(spec.as_str()), Direction::Fetch)
            .map_err(|e| GitError::Fetch { url: url.clone(), reason: error_chain(&e), transient: false })?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let mut conn = remote.connect(Direction::Fetch).map_err(|e| self.fetch_err(&e))?;
        let account = match (&self.opts.auth, &self.secret) {
            (Some(auth), Some(secret)) => {
                let password =
                    secret.read().map_err(|source| GitError::Credentials { url: url.clone(), source })?.value;
                let acct = gix::sec::identity::Account {
                    username: auth.username.clone(),
                    password,
                    oauth_refresh_token: None,
                };
                // Sent with the first request, so a poll is not a 401 and a retry.
                conn.transport_mut().set_identity(acct).map_err(|e| self.fetch_err(&e))?;
                Some(auth.username.clone())
            }
            _ => None,
        };
        let refused = Arc::new(AtomicBool::new(false));
        let refused_in = refused.clone();
        let mut conn = conn.with_credentials(move |action| {
            // Credentials were sent up front; a challenge means they were refused. Answering
            // nothing stops gix from prompting or asking helpers.
            if matches!(action, gix::credentials::helper::Action::Get(_)) {
                refused_in.store(true, Ordering::Relaxed);
            }
            Ok(None)
        });
        if let Some(options) = self.transport_options(repo)? {
            conn = conn.with_transport_options(options);
        }
        let interrupt = AtomicBool::new(false);
        let auth_failed = |e: &gix::Error| refused.load(Ordering::Relaxed) || e.is_unauthenticated();
        let unauthorized =
            || GitError::Unauthorized { url: url.clone(), account: account.clone().unwrap_or("anonymous".into()) };
        let prepare = conn
            .prepare_fetch(gix::progress::Discard, gix::remote::ref_map::Options::default())
            .map_err(|e| if auth_failed(&e) { unauthorized() } else { self.fetch_err(&e) })?;
        let is_ours = |m: &gix::remote::fetch::refmap::Mapping| m.local.as_ref().is_some_and(|l| l == local.as_str());
        if !prepare.ref_map().mappings.iter().any(is_ours) {
            return Err(GitError::BranchNotFound { url, branch: self.opts.branch.clone() });
        }
        let outcome = prepare
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| if auth_failed(&e) { unauthorized() } else { self.fetch_err(&e) })?;
        let Some(index) = outcome.ref_map.mappings.iter().position(is_ours) else {
            return Err(GitError::BranchNotFound { url, branch: self.opts.branch.clone() });
        };
        let mapping = &outcome.ref_map.mappings[index];
        let Some(id) = mapping.remote.as_id().map(|id| id.to_owned()) else {
            return Err(GitError::BranchNotFound { url, branch: self.opts.branch.clone() });
        };
        let update_refs = match &outcome.status {
            gix::remote::fetch::Status::NoPackReceived { update_refs, .. } => update_refs,
            gix::remote::fetch::Status::Change { update_refs, .. } => update_refs,
        };
        use gix::remote::fetch::refs::update::Mode;
        let change = match update_refs.updates.get(index).map(|u| &u.mode) {
            Some(Mode::NoChangeNeeded) => Change::Unchanged,
            Some(Mode::FastForward) => Change::FastForward,
            Some(Mode::New) => Change::New,
            Some(Mode::Forced) if previous.is_none() => Change::New,
            Some(Mode::Forced) => Change::Forced,
            Some(other) => {
                return Err(GitError::Fetch {
                    url,
                    reason: format!("updating {local} was refused: {other}"),
                    transient: false,
                });
            }
            None => {
                return Err(GitError::Fetch { url, reason: "no ref update reported".into(), transient: false });
            }
        };
        let commit = commit_info(repo, id).map_err(|e| match e {
            // The server sent a tip whose commit we cannot read: treat the cache as corrupt.
            GitError::Read { reason, .. } => {
                GitError::Cache { path: self.opts.cache_dir.display().to_string(), reason }
            }
            other => other,
        })?;
        Ok(Poll { commit, previous: previous.map(|p| p.to_string()), change, recloned: false })
    }

    fn fetch_err(&self, e: &(dyn std::error::Error + 'static)) -> GitError {
        let reason = error_chain(e);
        GitError::Fetch { url: self.shown_url(), reason, transient: true }
    }

    /// HTTP transport options from the (isolated) repo config, with our TLS config and timeout.
    fn transport_options(&self, repo: &gix::Repository) -> Result<Option<Box<dyn std::any::Any>>, GitError> {
        let Some(tls) = self.tls.clone() else { return Ok(None) };
        use gix::protocol::transport::client::blocking_io::http;
        let base = repo.transport_options(self.opts.url.as_str(), None).map_err(|e| GitError::Fetch {
            url: self.shown_url(),
            reason: error_chain(&e),
            transient: false,
        })?;
        let mut options = base.and_then(|b| b.downcast::<http::Options>().ok()).map(|b| *b).unwrap_or_default();
        let timeout = self.opts.timeout;
        let backend = http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                Ok(builder.tls_backend_preconfigured((*tls).clone()).timeout(timeout))
            })),
            configure_request: None,
        };
        options.backend = Some(Arc::new(Mutex::new(backend)));
        Ok(Some(Box::new(options)))
    }
}

/// Open options that ignore the machine's git config and `GIT_*` environment.
fn isolated() -> gix::open::Options {
    gix::open::Options::isolated()
}

fn tls_config(opts: &GitOptions) -> Result<rustls::ClientConfig, GitError> {
    super::tls_client_config(opts.ca_file.as_deref()).map_err(|reason| GitError::Ca {
        file: opts.ca_file.as_deref().map_or_else(|| "(web PKI roots)".into(), |f| f.display().to_string()),
        reason,
    })
}

fn commit_info(repo: &gix::Repository, id: gix::ObjectId) -> Result<Commit, GitError> {
    let commit = repo.find_commit(id).map_err(|e| read_err(&id.to_string(), &e))?;
    let time = commit.time().map_err(|e| read_err(&id.to_string(), &e))?.seconds;
    let summary = commit.message().map_err(|e| read_err(&id.to_string(), &e))?.summary().to_str_lossy().into_owned();
    Ok(Commit { id: id.to_string(), time, summary })
}

fn commit_tree<'r>(repo: &'r gix::Repository, commit: &str) -> Result<gix::Tree<'r>, GitError> {
    let id = gix::ObjectId::from_hex(commit.as_bytes())
        .map_err(|e| GitError::Read { commit: commit.to_owned(), reason: format!("not a commit id: {e}") })?;
    let c = repo.find_commit(id).map_err(|e| read_err(commit, &e))?;
    c.tree().map_err(|e| read_err(commit, &e))
}

fn subtree<'r>(repo: &'r gix::Repository, commit: &str, dir: &str) -> Result<gix::Tree<'r>, GitError> {
    let mut root = commit_tree(repo, commit)?;
    let prefix = dir_prefix(dir);
    if prefix.is_empty() {
        return Ok(root);
    }
    let dir = prefix.trim_end_matches('/');
    tree::check_path(dir).map_err(|source| GitError::Content { commit: commit.to_owned(), source })?;
    let entry = root
        .peel_to_entry_by_path(dir)
        .map_err(|e| read_err(commit, &e))?
        .ok_or_else(|| GitError::NotFound { commit: commit.to_owned(), path: dir.to_owned() })?;
    if !entry.mode().is_tree() {
        return Err(GitError::Read { commit: commit.to_owned(), reason: format!("{dir}: not a folder") });
    }
    entry.object().map_err(|e| read_err(commit, &e))?.try_into_tree().map_err(|e| read_err(commit, &e))
}

/// `""` for the root, else `dir/`.
fn dir_prefix(dir: &str) -> String {
    let d = dir.trim_matches('/');
    if d.is_empty() || d == "." { String::new() } else { format!("{d}/") }
}

/// Calls `f` for every non-tree entry below `tree`, with its full path; checks every path.
fn walk(
    repo: &gix::Repository,
    commit: &str,
    tree: gix::Tree<'_>,
    prefix: &str,
    f: &mut dyn FnMut(&str, &gix::objs::tree::EntryRef<'_>) -> Result<(), GitError>,
) -> Result<(), GitError> {
    let decoded = tree.decode().map_err(|e| read_err(commit, &e))?;
    for entry in &decoded.entries {
        let path = format!("{prefix}{}", entry.filename.to_str_lossy());
        tree::check_path(&path).map_err(|source| GitError::Content { commit: commit.to_owned(), source })?;
        if entry.mode.is_tree() {
            let sub = repo
                .find_object(entry.oid)
                .map_err(|e| read_err(commit, &e))?
                .try_into_tree()
                .map_err(|e| read_err(commit, &e))?;
            walk(repo, commit, sub, &format!("{path}/"), f)?;
        } else {
            f(&path, entry)?;
        }
    }
    Ok(())
}

fn read_err(commit: &str, e: &dyn std::error::Error) -> GitError {
    GitError::Read { commit: commit.to_owned(), reason: error_chain(e) }
}

/// One of `git.verify`'s key files (relative to `base`) read and parsed: `None` when it is not
/// set; the error names the file as written, and why (`agent validate` and each poll say the
/// same).
pub fn read_key_file<T>(
    file: Option<&str>,
    base: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    let Some(f) = file else { return Ok(None) };
    let text = std::fs::read_to_string(base.join(f)).map_err(|e| format!("{f}: cannot read: {e}"))?;
    parse(&text).map(Some).map_err(|e| format!("{f}: {e}"))
}
