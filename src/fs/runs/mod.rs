//! Runs and agents in the mount:
//!
//! ```text
//! runs/<run-id>/{run.json,status,prompt,error,logs,logs.jsonl,events.jsonl,metrics.json}
//! runs/<run-id>/artifact        -> ../../artifacts/<artifact_name>/<artifact_version>
//! runs/<run-id>/volumes/<name>  -> ../../../volumes/<name>/<version id>
//! runs/<run-id>/agent           -> ../../agents/<agent_name>
//! agents/<name>/{agent.json,versions.json}
//! agents/<name>/runs/<run-id>   -> ../../../runs/<run-id>
//! agents/<name>/runs/latest     -> ../../../runs/<its newest run-id>
//! runs/latest                   -> <the newest run-id>
//! runs/by-status/<status>/<id>  -> ../../<id>
//! runs/<8+ hex prefix>          -> <run-id>   (when named, never listed)
//! runs/<run-id>/logs.d/<level>  the lines of `logs` at that level
//! ```
//!
//! This room holds the tree of those paths and the attributes, links and contents of each
//! node ([`RunNode`]); `Fs`'s operations hand every node of it here. The listings (recent
//! runs within `--runs-since` and `--runs-limit`, agents, an agent's files) follow the
//! metadata TTL through the generic listings; any run id is also looked up directly, and an
//! unknown one is remembered for a moment. What a run's files hold, and keeping them (final
//! runs once, on disk; live runs growing while they are read), is the business of [`crate::runs`].

#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::api::RunId;
use crate::ids::Ino;
use crate::metadata::Unavailable;
use crate::runs::{
    safe_name, RunFile, RunStore, Runs, RunsApi, RunsConfig, SyncError, View, RUNS_LIST_TTL,
};

use super::attr::{FileKind, TimedAttr, IMMUTABLE_TTL};
use super::handles::{read_at, slice_at, Handle, OpenFile, OpenedHandle, Pin};
use super::inode::MetaNode;
use super::wait::ThreadPolicy;
use super::{DirItem, Fs, FsError, Result};

/// What a node of the runs' and agents' tree names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunNode {
    RunsDir,
    AgentsDir,
    Run(RunId),
    File(RunId, RunFile),
    Artifact(RunId),
    VolumesDir(RunId),
    Volume(RunId, String),
    AgentLink(RunId),
    Agent(String),
    AgentJson(String),
    AgentVersions(String),
    AgentRunsDir(String),
    AgentRun(String, RunId),
    /// `runs/latest` and `agents/<name>/runs/latest`, with the run each named when looked
    /// up: a new newest run makes a new node (the kernel may keep a link's target as long
    /// as its inode).
    Latest(RunId),
    AgentLatest(String, RunId),
    ByStatusDir,
    StatusDir(&'static str),
    StatusRun(&'static str, RunId),
    /// A prefix of a run id, named in `runs/`.
    Prefix(String),
    LogsDir(RunId),
    LevelLog(RunId, &'static str),
}

/// The names in `runs/` that are not run ids.
pub const LATEST: &str = "latest";
pub const BY_STATUS: &str = "by-status";
pub const LOGS_DIR: &str = "logs.d";

/// The environment variable that sets how long (in ms) a live run nobody reads is still
/// followed, instead of [`crate::runs::FOLLOW_IDLE`]; for tests.
pub const FOLLOW_IDLE_ENV: &str = "VM0FS_FOLLOW_IDLE_MS";

/// The environment variable that sets how many event streams are read at once, instead of
/// [`crate::runs::MAX_STREAMS`]; for tests of the runs that wait for one.
pub const MAX_STREAMS_ENV: &str = "VM0FS_MAX_STREAMS";

pub const RUNS_DIR: &str = "runs";
pub const AGENTS_DIR: &str = "agents";

impl From<SyncError> for FsError {
    fn from(e: SyncError) -> FsError {
        match e {
            SyncError::Api(e) => FsError::Remote(e),
            SyncError::Io(e) => FsError::Io(e),
        }
    }
}

impl From<Unavailable<SyncError>> for FsError {
    fn from(e: Unavailable<SyncError>) -> FsError {
        match e {
            Unavailable::Failed(e) => match &*e {
                SyncError::Api(e) => FsError::Remote(e.clone()),
                // Shared by every caller of the fetch: each gets its own copy.
                SyncError::Io(e) => FsError::Io(io::Error::new(e.kind(), e.to_string())),
            },
            Unavailable::NoAnswer { waited } => FsError::NoAnswer { waited },
            Unavailable::WouldBlock => FsError::WouldBlock,
            Unavailable::Interrupted => FsError::Interrupted,
        }
    }
}

/// A run's or agent's file, to read.
pub enum Readable {
    /// A file of a run in the cache directory; `live`: it may still grow.
    File {
        file: std::fs::File,
        size: u64,
        live: bool,
    },
    /// An agent's file, or a run's made when read; `live`: a later read may differ.
    Bytes { data: Vec<u8>, live: bool },
}

impl Readable {
    /// Up to `size` bytes at `offset`.
    pub fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>> {
        match self {
            Readable::File { file, .. } => read_at(file, offset, size),
            Readable::Bytes { data, .. } => Ok(slice_at(data, offset, size)),
        }
    }
}

impl Fs {
    /// The handle of an open file of the runs' tree. A live run's file grows: its reads go
    /// to the daemon (direct I/O), so no stale, shorter copy is ever served.
    pub(super) fn run_opened(&self, r: Readable) -> OpenedHandle {
        match r {
            Readable::File { file, size, live } => OpenedHandle {
                fh: self
                    .handles
                    .add(Handle::File(OpenFile::whole(file, Pin::Nothing))),
                direct_io: live,
                immutable: !live,
                size,
            },
            Readable::Bytes { data, live } => OpenedHandle {
                size: data.len() as u64,
                fh: self.handles.add(Handle::Static(data)),
                direct_io: live,
                immutable: false,
            },
        }
    }

    fn runs(&self) -> Result<&Runs> {
        self.runs.as_ref().ok_or(FsError::NotFound)
    }

    /// Whether the mount shows runs and agents.
    pub(super) fn has_runs(&self) -> bool {
        self.runs.is_some()
    }

    /// `runs` and `agents` in the root.
    pub(super) fn root_run_dirs(&self) -> Vec<(&'static str, RunNode)> {
        if self.has_runs() {
            vec![
                (RUNS_DIR, RunNode::RunsDir),
                (AGENTS_DIR, RunNode::AgentsDir),
            ]
        } else {
            Vec::new()
        }
    }

    fn node_ino(&self, n: RunNode) -> Ino {
        self.inodes.lock().meta_ino(MetaNode::Run(n))
    }

    fn timed(
        &self,
        ino: Ino,
        kind: FileKind,
        size: u64,
        mtime: SystemTime,
        ttl: Duration,
    ) -> TimedAttr {
        let (perm, nlink) = match kind {
            FileKind::Directory => (0o555, 2),
            FileKind::RegularFile => (0o444, 1),
            FileKind::Symlink => (0o777, 1),
        };
        TimedAttr {
            attr: self.attr(ino, kind, size, perm, nlink, mtime),
            ttl,
        }
    }

    /// Run `id` as far as its directory's attributes go (a row of the listing will do):
    /// known, listed, or found by a direct request. An unknown id is remembered as such for
    /// a moment.
    fn run_row(&self, id: &RunId) -> Result<Arc<crate::api::Run>> {
        let runs = self.runs()?;
        if let Some(run) = runs.state.known(id) {
            return Ok(run);
        }
        if let Some(run) = runs.lists.peek(&None).and_then(|l| l.get(id).cloned()) {
            return Ok(run);
        }
        self.run_detail(id)
    }

    /// Run `id`'s detail (its artifact, volumes, error): kept (a live run's refreshed in
    /// the background once it is more than a moment old), else asked of the API within
    /// the wait bound, as the thread's policy allows.
    fn run_detail(&self, id: &RunId) -> Result<Arc<crate::api::Run>> {
        let runs = self.runs()?;
        if let Some(run) = runs.state.known_detail(id) {
            return Ok(run);
        }
        if runs.state.missed(id) {
            return Err(FsError::NotFound);
        }
        Ok((*runs.details.get(id, &ThreadPolicy)?).clone())
    }

    /// Where a run's files are: at hand at once, else fetched on a thread of their own and
    /// waited for within the bound, as the thread's policy allows (never on a FUSE worker).
    fn run_view(&self, id: &RunId) -> Result<View> {
        let runs = self.runs()?;
        if runs.state.missed(id) {
            return Err(FsError::NotFound);
        }
        // Twice at most: a final run's files may leave the cache between the fetch and the
        // look that follows it.
        for _ in 0..2 {
            if let Some(view) = runs.state.at_hand(id) {
                return Ok(view);
            }
            runs.files.renew(id, &ThreadPolicy)?;
        }
        runs.state.at_hand(id).ok_or(FsError::NotFound)
    }

    /// A file of a run made from its detail (and metrics) alone, when its files are not
    /// kept: reading `status` asks the API for the detail, never for the logs. `None`: the
    /// file is read from the run's files.
    fn detail_made(&self, id: &RunId, f: RunFile) -> Result<Option<(Vec<u8>, bool)>> {
        let runs = self.runs()?;
        if !f.from_detail() || runs.state.ready(id) {
            return Ok(None);
        }
        let run = self.run_detail(id)?;
        let data = match f {
            RunFile::Metrics => runs.state.metrics_file(&run)?.to_vec(),
            _ => crate::runs::detail_file(&run, f).ok_or(FsError::NotFound)?,
        };
        Ok(Some((data, !run.is_final())))
    }

    /// `logs.d/<level>` of a run: the lines of its `logs` at that level.
    fn level_log(&self, id: &RunId, level: &str) -> Result<(Vec<u8>, View)> {
        let view = self.run_view(id)?;
        let data = crate::runs::level_lines(&view.dir().join(RunFile::Logs.name()), level);
        match data {
            Ok(data) => Ok((data, view)),
            // The live directory may have just become the final one: look again once.
            Err(_) => {
                let view = self.run_view(id)?;
                let data = crate::runs::level_lines(&view.dir().join(RunFile::Logs.name()), level)?;
                Ok((data, view))
            }
        }
    }

    /// A listing of runs, fetched again (and waited for, within the listings' bound) when
    /// it is older than [`RUNS_LIST_TTL`]: `ls runs` shows a run started seconds ago.
    fn fresh_runs(
        &self,
        lists: &crate::metadata::Listings<crate::runs::RunListSource>,
        key: &Option<String>,
    ) -> std::result::Result<Arc<crate::runs::RunList>, Unavailable<crate::api::ApiError>> {
        let list = lists.get(key, &ThreadPolicy)?;
        if list.fetched.elapsed() <= RUNS_LIST_TTL {
            return Ok(list);
        }
        // A pick that finds nothing in a stale listing has it fetched again and waited for
        // (as the thread's policy allows: a FUSE worker hands the operation to a waiter).
        match lists.find(key, &ThreadPolicy, |l| {
            (l.fetched.elapsed() <= RUNS_LIST_TTL).then_some(())
        }) {
            Ok(_) => lists.get(key, &ThreadPolicy),
            Err(e @ (Unavailable::WouldBlock | Unavailable::Interrupted)) => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "refreshing a runs listing failed; serving the one held");
                Ok(list)
            }
        }
    }

    /// The newest run (of agent `agent`, by name), as a listing at most [`RUNS_LIST_TTL`]
    /// old says.
    fn newest_run(&self, agent: Option<&str>) -> Result<RunId> {
        let runs = self.runs()?;
        let key = match agent {
            Some(name) => Some(self.find_agent(name)?.id),
            None => None,
        };
        let list = self.fresh_runs(&runs.lists, &key)?;
        Ok(list.runs.first().ok_or(FsError::NotFound)?.id.clone())
    }

    /// The one run whose id starts with `prefix`, among the runs listed and kept.
    fn run_by_prefix(&self, prefix: &str) -> Result<RunId> {
        let runs = self.runs()?;
        let start = RunId::parse(prefix).ok_or(FsError::NotFound)?;
        let matching = |list: &crate::runs::RunList| -> Vec<RunId> {
            list.by_id
                .range(start.clone()..)
                .take_while(|(id, _)| id.as_str().starts_with(prefix))
                .map(|(id, _)| id.clone())
                .take(2)
                .collect()
        };
        let mut found: Vec<RunId> = runs
            .lists
            .find(&None, &ThreadPolicy, |l| {
                let m: Vec<RunId> = matching(l);
                (!m.is_empty()).then_some(m)
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        for id in runs.state.store.ids() {
            if id.starts_with(prefix) {
                if let Some(id) = RunId::parse(&id) {
                    if !found.contains(&id) {
                        found.push(id);
                    }
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => {
                tracing::info!(prefix, "no run id starts with this prefix");
                Err(FsError::NotFound)
            }
            _ => {
                tracing::info!(
                    prefix,
                    "ambiguous run id prefix: more than one run starts with it"
                );
                Err(FsError::NotFound)
            }
        }
    }

    /// What `..` of a directory of the runs' tree is.
    pub(super) fn run_parent(&self, n: &RunNode) -> MetaNode {
        MetaNode::Run(match n {
            RunNode::Run(_) => RunNode::RunsDir,
            RunNode::VolumesDir(id) => RunNode::Run(id.clone()),
            RunNode::Agent(_) => RunNode::AgentsDir,
            RunNode::AgentRunsDir(name) => RunNode::Agent(name.clone()),
            RunNode::ByStatusDir => RunNode::RunsDir,
            RunNode::StatusDir(_) => RunNode::ByStatusDir,
            RunNode::LogsDir(id) => RunNode::Run(id.clone()),
            _ => return MetaNode::Root,
        })
    }

    /// `lookup` of `name` in a directory of the runs' tree.
    pub(super) fn run_lookup(&self, dir: RunNode, name: &str) -> Result<TimedAttr> {
        let child = match dir {
            RunNode::RunsDir if name == LATEST => RunNode::Latest(self.newest_run(None)?),
            RunNode::RunsDir if name == BY_STATUS => RunNode::ByStatusDir,
            RunNode::RunsDir if is_run_prefix(name) => {
                self.run_by_prefix(name)?;
                RunNode::Prefix(name.to_string())
            }
            RunNode::RunsDir => {
                let id = RunId::parse(name).ok_or(FsError::NotFound)?;
                self.run_row(&id)?;
                RunNode::Run(id)
            }
            RunNode::ByStatusDir => RunNode::StatusDir(
                crate::runs::STATUSES
                    .into_iter()
                    .find(|s| *s == name)
                    .ok_or(FsError::NotFound)?,
            ),
            RunNode::StatusDir(status) => {
                let id = RunId::parse(name).ok_or(FsError::NotFound)?;
                let runs = self.runs()?;
                let key = Some(status.to_string());
                runs.by_status
                    .find(&key, &ThreadPolicy, |l| l.get(&id).map(|_| ()))?
                    .ok_or(FsError::NotFound)?;
                RunNode::StatusRun(status, id)
            }
            RunNode::LogsDir(id) => RunNode::LevelLog(
                id,
                crate::runs::LEVELS
                    .into_iter()
                    .find(|l| *l == name)
                    .ok_or(FsError::NotFound)?,
            ),
            RunNode::AgentsDir => {
                let runs = self.runs()?;
                runs.agents
                    .find(&(), &ThreadPolicy, |m| m.get(name).map(|_| ()))?
                    .ok_or(FsError::NotFound)?;
                RunNode::Agent(name.to_string())
            }
            RunNode::Run(id) => match name {
                "artifact" => RunNode::Artifact(id),
                "volumes" => RunNode::VolumesDir(id),
                "agent" => RunNode::AgentLink(id),
                LOGS_DIR => RunNode::LogsDir(id),
                _ => RunNode::File(id, RunFile::from_name(name).ok_or(FsError::NotFound)?),
            },
            RunNode::VolumesDir(id) => RunNode::Volume(id, name.to_string()),
            RunNode::Agent(agent) => match name {
                "agent.json" => RunNode::AgentJson(agent),
                "versions.json" => RunNode::AgentVersions(agent),
                "runs" => RunNode::AgentRunsDir(agent),
                _ => return Err(FsError::NotFound),
            },
            RunNode::AgentRunsDir(agent) if name == LATEST => {
                let id = self.newest_run(Some(&agent))?;
                RunNode::AgentLatest(agent, id)
            }
            RunNode::AgentRunsDir(agent) => {
                let id = RunId::parse(name).ok_or(FsError::NotFound)?;
                RunNode::AgentRun(agent, id)
            }
            RunNode::Latest(_)
            | RunNode::AgentLatest(..)
            | RunNode::StatusRun(..)
            | RunNode::Prefix(_)
            | RunNode::LevelLog(..)
            | RunNode::File(..)
            | RunNode::Artifact(_)
            | RunNode::Volume(..)
            | RunNode::AgentLink(_)
            | RunNode::AgentJson(_)
            | RunNode::AgentVersions(_)
            | RunNode::AgentRun(..) => return Err(FsError::NotDir),
        };
        let ino = self.node_ino(child.clone());
        self.run_attr(ino, child)
    }

    /// The attributes of a node of the runs' tree (which must exist).
    pub(super) fn run_attr(&self, ino: Ino, n: RunNode) -> Result<TimedAttr> {
        let meta_ttl = self.config.metadata_ttl;
        let dir = |mtime| self.timed(ino, FileKind::Directory, 0, mtime, meta_ttl);
        Ok(match n {
            RunNode::RunsDir | RunNode::AgentsDir | RunNode::ByStatusDir => dir(self.started),
            RunNode::StatusDir(_) => {
                self.timed(ino, FileKind::Directory, 0, self.started, Duration::ZERO)
            }
            RunNode::LogsDir(id) => {
                let run = self.run_row(&id)?;
                self.timed(
                    ino,
                    FileKind::Directory,
                    0,
                    run.created_at,
                    self.link_ttl(&run),
                )
            }
            RunNode::LevelLog(id, level) => {
                let (data, view) = self.level_log(&id, level)?;
                let run = view.run();
                let (ttl, mtime) = if view.is_final() {
                    (IMMUTABLE_TTL, run.completed_at.unwrap_or(run.created_at))
                } else {
                    let logs = std::fs::metadata(view.dir().join(RunFile::Logs.name()));
                    (
                        Duration::ZERO,
                        logs.and_then(|m| m.modified()).unwrap_or(run.created_at),
                    )
                };
                self.timed(ino, FileKind::RegularFile, data.len() as u64, mtime, ttl)
            }
            RunNode::Run(id) => {
                let run = self.run_row(&id)?;
                let ttl = if run.is_final() {
                    meta_ttl
                } else {
                    Duration::ZERO
                };
                self.timed(ino, FileKind::Directory, 0, run.created_at, ttl)
            }
            RunNode::File(id, f) => {
                if let Some((data, live)) = self.detail_made(&id, f)? {
                    let run = self.run_detail(&id)?;
                    let (ttl, mtime) = if live {
                        (Duration::ZERO, run.created_at)
                    } else {
                        (IMMUTABLE_TTL, run.completed_at.unwrap_or(run.created_at))
                    };
                    return Ok(self.timed(
                        ino,
                        FileKind::RegularFile,
                        data.len() as u64,
                        mtime,
                        ttl,
                    ));
                }
                let view = self.run_view(&id)?;
                let run = view.run();
                if !f.present(&run) {
                    return Err(FsError::NotFound);
                }
                // The live directory may have just become the final one: look again once.
                let (view, meta) = match std::fs::metadata(view.dir().join(f.name())) {
                    Ok(meta) => (view, meta),
                    Err(_) => {
                        let view = self.run_view(&id)?;
                        let meta = std::fs::metadata(view.dir().join(f.name()))?;
                        (view, meta)
                    }
                };
                // A final run's files date from its end; a live one's from their last change
                // (which also tells the kernel to drop what it cached of them).
                let (ttl, mtime) = if view.is_final() {
                    (IMMUTABLE_TTL, run.completed_at.unwrap_or(run.created_at))
                } else {
                    (Duration::ZERO, meta.modified()?)
                };
                self.timed(ino, FileKind::RegularFile, meta.len(), mtime, ttl)
            }
            RunNode::VolumesDir(id) => {
                let run = self.run_detail(&id)?;
                self.timed(
                    ino,
                    FileKind::Directory,
                    0,
                    run.created_at,
                    self.link_ttl(&run),
                )
            }
            RunNode::Artifact(_)
            | RunNode::Volume(..)
            | RunNode::AgentLink(_)
            | RunNode::AgentRun(..)
            | RunNode::Latest(_)
            | RunNode::AgentLatest(..)
            | RunNode::StatusRun(..)
            | RunNode::Prefix(_) => {
                let (target, mtime, ttl) = self.run_link(&n)?;
                self.timed(ino, FileKind::Symlink, target.len() as u64, mtime, ttl)
            }
            RunNode::Agent(name) => {
                let agent = self.find_agent(&name)?;
                dir(agent.updated_at)
            }
            RunNode::AgentRunsDir(name) => {
                let agent = self.find_agent(&name)?;
                dir(agent.updated_at)
            }
            RunNode::AgentJson(ref name) | RunNode::AgentVersions(ref name) => {
                let (bytes, at) = self.agent_file(&n, name)?;
                self.timed(ino, FileKind::RegularFile, bytes.len() as u64, at, meta_ttl)
            }
        })
    }

    /// Links of a final run never change; a live run's may appear (its artifact, once
    /// committed).
    fn link_ttl(&self, run: &crate::api::Run) -> Duration {
        if run.is_final() {
            IMMUTABLE_TTL
        } else {
            Duration::ZERO
        }
    }

    fn find_agent(&self, name: &str) -> Result<crate::api::Agent> {
        self.runs()?
            .agents
            .find(&(), &ThreadPolicy, |m| m.get(name).cloned())?
            .ok_or(FsError::NotFound)
    }

    fn agent_file(&self, n: &RunNode, name: &str) -> Result<(Vec<u8>, SystemTime)> {
        let agent = self.find_agent(name)?;
        let files = self.runs()?.agent_files.get(&agent.id, &ThreadPolicy)?;
        let bytes = match n {
            RunNode::AgentJson(_) => files.agent_json.clone(),
            _ => files.versions_json.clone(),
        };
        Ok((bytes, files.updated_at))
    }

    /// A link's target, the time it dates from and its TTL.
    fn run_link(&self, n: &RunNode) -> Result<(String, SystemTime, Duration)> {
        match n {
            RunNode::Artifact(id) => {
                let run = self.run_detail(id)?;
                match (&run.artifact_name, &run.artifact_version) {
                    (Some(name), Some(v)) if safe_name(name) => Ok((
                        format!("../../artifacts/{name}/{v}"),
                        run.created_at,
                        self.link_ttl(&run),
                    )),
                    _ => Err(FsError::NotFound),
                }
            }
            RunNode::Volume(id, name) => {
                let run = self.run_detail(id)?;
                let v = run
                    .volumes
                    .get(name)
                    .filter(|_| safe_name(name))
                    .ok_or(FsError::NotFound)?;
                Ok((
                    format!("../../../volumes/{name}/{v}"),
                    run.created_at,
                    self.link_ttl(&run),
                ))
            }
            RunNode::AgentLink(id) => {
                let run = self.run_detail(id)?;
                if !safe_name(&run.agent_name) {
                    return Err(FsError::NotFound);
                }
                Ok((
                    format!("../../agents/{}", run.agent_name),
                    run.created_at,
                    IMMUTABLE_TTL,
                ))
            }
            RunNode::Latest(id) => Ok((id.to_string(), self.started, Duration::ZERO)),
            RunNode::AgentLatest(_, id) => {
                Ok((format!("../../../runs/{id}"), self.started, Duration::ZERO))
            }
            RunNode::Prefix(prefix) => {
                let id = self.run_by_prefix(prefix)?;
                Ok((id.to_string(), self.started, self.config.metadata_ttl))
            }
            RunNode::StatusRun(status, id) => {
                let key = Some(status.to_string());
                let list = self.runs()?.by_status.get(&key, &ThreadPolicy)?;
                let run = list.get(id).ok_or(FsError::NotFound)?;
                Ok((format!("../../{id}"), run.created_at, Duration::ZERO))
            }
            RunNode::AgentRun(agent, id) => {
                let agent = self.find_agent(agent)?;
                let list = self
                    .runs()?
                    .lists
                    .get(&Some(agent.id.clone()), &ThreadPolicy)?;
                let run = list.get(id).ok_or(FsError::NotFound)?;
                Ok((
                    format!("../../../runs/{id}"),
                    run.created_at,
                    self.config.metadata_ttl,
                ))
            }
            _ => Err(FsError::NotSymlink),
        }
    }

    pub(super) fn run_readlink(&self, n: RunNode) -> Result<Vec<u8>> {
        Ok(self.run_link(&n)?.0.into_bytes())
    }

    /// What a file of the runs' tree reads from. A live run's read keeps it followed.
    pub(super) fn run_content(&self, n: RunNode) -> Result<Readable> {
        match &n {
            RunNode::File(id, f) => {
                if let Some((data, live)) = self.detail_made(id, *f)? {
                    return Ok(Readable::Bytes { data, live });
                }
                // The live directory may have just become the final one: look again once.
                let mut last = None;
                for _ in 0..2 {
                    let view = self.run_view(id)?;
                    if !f.present(&view.run()) {
                        return Err(FsError::NotFound);
                    }
                    match std::fs::File::open(view.dir().join(f.name())) {
                        Ok(file) => {
                            let size = file.metadata()?.len();
                            return Ok(Readable::File {
                                file,
                                size,
                                live: !view.is_final(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(last.map_or(FsError::NotFound, FsError::Io))
            }
            RunNode::AgentJson(name) | RunNode::AgentVersions(name) => Ok(Readable::Bytes {
                data: self.agent_file(&n, name)?.0,
                live: false,
            }),
            RunNode::LevelLog(id, level) => {
                let (data, view) = self.level_log(id, level)?;
                Ok(Readable::Bytes {
                    data,
                    live: !view.is_final(),
                })
            }
            _ => Err(FsError::IsDir),
        }
    }

    /// The entries of a directory of the runs' tree (after `.` and `..`).
    pub(super) fn run_dir_items(&self, n: RunNode, items: &mut Vec<DirItem>) -> Result<()> {
        let item = |name: &str, entry: TimedAttr| DirItem {
            name: OsString::from_vec(name.as_bytes().to_vec()),
            entry,
        };
        let meta_ttl = self.config.metadata_ttl;
        match n {
            RunNode::RunsDir => {
                let runs = self.runs()?;
                let node = RunNode::ByStatusDir;
                let a = self.run_attr(self.node_ino(node.clone()), node)?;
                items.push(item(BY_STATUS, a));
                match self.fresh_runs(&runs.lists, &None) {
                    Ok(list) => {
                        if let Some(newest) = list.runs.first() {
                            let node = RunNode::Latest(newest.id.clone());
                            let a = self.timed(
                                self.node_ino(node),
                                FileKind::Symlink,
                                newest.id.as_str().len() as u64,
                                self.started,
                                Duration::ZERO,
                            );
                            items.push(item(LATEST, a));
                        }
                        items.reserve(list.runs.len());
                        for run in &list.runs {
                            let ino = self.node_ino(RunNode::Run(run.id.clone()));
                            let ttl = if run.is_final() {
                                meta_ttl
                            } else {
                                Duration::ZERO
                            };
                            let a = self.timed(ino, FileKind::Directory, 0, run.created_at, ttl);
                            items.push(item(run.id.as_str(), a));
                        }
                    }
                    // The API is away: the final runs kept in the cache are still there.
                    Err(e @ (Unavailable::Failed(_) | Unavailable::NoAnswer { .. }))
                        if !runs.state.store.ids().is_empty() =>
                    {
                        tracing::warn!(error = %e, "listing runs failed; showing the final runs kept in the cache");
                        for id in runs.state.store.ids() {
                            let Some(id) = RunId::parse(&id) else {
                                continue;
                            };
                            let node = RunNode::Run(id.clone());
                            if let Ok(a) = self.run_attr(self.node_ino(node.clone()), node) {
                                items.push(item(id.as_str(), a));
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            RunNode::AgentsDir => {
                let agents = self.runs()?.agents.get(&(), &ThreadPolicy)?;
                for (name, a) in agents.iter() {
                    let ino = self.node_ino(RunNode::Agent(name.clone()));
                    items.push(item(
                        name,
                        self.timed(ino, FileKind::Directory, 0, a.updated_at, meta_ttl),
                    ));
                }
            }
            RunNode::Run(id) => {
                let view = self.run_view(&id)?;
                let run = view.run();
                for f in RunFile::ALL.into_iter().filter(|f| f.present(&run)) {
                    let node = RunNode::File(id.clone(), f);
                    let a = self.run_attr(self.node_ino(node.clone()), node)?;
                    items.push(item(f.name(), a));
                }
                let mut links = vec![
                    (LOGS_DIR, RunNode::LogsDir(id.clone())),
                    ("volumes", RunNode::VolumesDir(id.clone())),
                ];
                if run.artifact_version.is_some() {
                    links.push(("artifact", RunNode::Artifact(id.clone())));
                }
                links.push(("agent", RunNode::AgentLink(id.clone())));
                for (name, node) in links {
                    if let Ok(a) = self.run_attr(self.node_ino(node.clone()), node) {
                        items.push(item(name, a));
                    }
                }
            }
            RunNode::VolumesDir(id) => {
                let run = self.run_detail(&id)?;
                for name in run.volumes.keys().filter(|n| safe_name(n)) {
                    let node = RunNode::Volume(id.clone(), name.clone());
                    let a = self.run_attr(self.node_ino(node.clone()), node)?;
                    items.push(item(name, a));
                }
            }
            RunNode::Agent(name) => {
                for (file, node) in [
                    ("agent.json", RunNode::AgentJson(name.clone())),
                    ("versions.json", RunNode::AgentVersions(name.clone())),
                    ("runs", RunNode::AgentRunsDir(name.clone())),
                ] {
                    let a = self.run_attr(self.node_ino(node.clone()), node)?;
                    items.push(item(file, a));
                }
            }
            RunNode::AgentRunsDir(name) => {
                let agent = self.find_agent(&name)?;
                let list = self.fresh_runs(&self.runs()?.lists, &Some(agent.id.clone()))?;
                if let Some(newest) = list.runs.first() {
                    let node = RunNode::AgentLatest(name.clone(), newest.id.clone());
                    let target = format!("../../../runs/{}", newest.id);
                    let a = self.timed(
                        self.node_ino(node),
                        FileKind::Symlink,
                        target.len() as u64,
                        self.started,
                        Duration::ZERO,
                    );
                    items.push(item(LATEST, a));
                }
                for run in &list.runs {
                    let node = RunNode::AgentRun(name.clone(), run.id.clone());
                    let target = format!("../../../runs/{}", run.id);
                    let a = self.timed(
                        self.node_ino(node),
                        FileKind::Symlink,
                        target.len() as u64,
                        run.created_at,
                        meta_ttl,
                    );
                    items.push(item(run.id.as_str(), a));
                }
            }
            RunNode::ByStatusDir => {
                for status in crate::runs::STATUSES {
                    let node = RunNode::StatusDir(status);
                    let a = self.run_attr(self.node_ino(node.clone()), node)?;
                    items.push(item(status, a));
                }
            }
            RunNode::StatusDir(status) => {
                let runs = self.runs()?;
                let list = self.fresh_runs(&runs.by_status, &Some(status.to_string()))?;
                for run in &list.runs {
                    let node = RunNode::StatusRun(status, run.id.clone());
                    let target = format!("../../{}", run.id);
                    let a = self.timed(
                        self.node_ino(node),
                        FileKind::Symlink,
                        target.len() as u64,
                        run.created_at,
                        Duration::ZERO,
                    );
                    items.push(item(run.id.as_str(), a));
                }
            }
            RunNode::LogsDir(id) => {
                for level in crate::runs::LEVELS {
                    let node = RunNode::LevelLog(id.clone(), level);
                    let a = self.run_attr(self.node_ino(node.clone()), node)?;
                    items.push(item(level, a));
                }
            }
            _ => return Err(FsError::NotDir),
        }
        Ok(())
    }

    /// Show runs and agents, asked of `api`, their files kept in the cache directory.
    pub fn with_runs(
        mut self,
        api: Arc<dyn RunsApi>,
        config: RunsConfig,
    ) -> Result<Fs, crate::cache::CacheError> {
        let store = RunStore::open(&self.cache)?;
        let runs = Runs::new(
            api,
            store,
            config,
            self.activity.clone(),
            self.config.metadata_ttl,
            self.saved.clone(),
        );
        // A test knob: how long a live run nobody reads is still followed, so that a test
        // of the first read after an idle time need not sleep the 30 s.
        if let Some(ms) = std::env::var(FOLLOW_IDLE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            runs.state.set_follow_idle(Duration::from_millis(ms));
        }
        // Another: fewer event streams, so that a test reads more live runs than that.
        if let Some(max) = std::env::var(MAX_STREAMS_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            runs.state.set_max_streams(max);
        }
        self.runs = Some(runs);
        Ok(self)
    }
}

/// Whether `name` in `runs/` is a prefix of a run id rather than an id: 8 to 35 lowercase
/// hex digits and dashes (a run id is a 36-character UUID).
fn is_run_prefix(name: &str) -> bool {
    (8..36).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_hexdigit())
        && name
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-'))
}
