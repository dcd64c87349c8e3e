//! Runs and agents in the mount:
//!
//! ```text
//! runs/<run-id>/{run.json,status,prompt,error,logs,logs.jsonl,events.jsonl,metrics.json}
//! runs/<run-id>/artifact        -> ../../artifacts/<artifact_name>/<artifact_version>
//! runs/<run-id>/volumes/<name>  -> ../../../volumes/<name>/<version id>
//! runs/<run-id>/agent           -> ../../agents/<agent_name>
//! agents/<name>/{agent.json,versions.json}
//! agents/<name>/runs/<run-id>   -> ../../../runs/<run-id>
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
use crate::runs::{safe_name, RunFile, RunStore, Runs, RunsApi, RunsConfig, SyncError, View};

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
}

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
    /// An agent's file.
    Bytes(Vec<u8>),
}

impl Readable {
    /// Up to `size` bytes at `offset`.
    pub fn read_at(&self, offset: u64, size: u32) -> Result<Vec<u8>> {
        match self {
            Readable::File { file, .. } => read_at(file, offset, size),
            Readable::Bytes(data) => Ok(slice_at(data, offset, size)),
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
            Readable::Bytes(data) => OpenedHandle {
                size: data.len() as u64,
                fh: self.handles.add(Handle::Static(data)),
                direct_io: false,
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

    /// What `..` of a directory of the runs' tree is.
    pub(super) fn run_parent(&self, n: &RunNode) -> MetaNode {
        MetaNode::Run(match n {
            RunNode::Run(_) => RunNode::RunsDir,
            RunNode::VolumesDir(id) => RunNode::Run(id.clone()),
            RunNode::Agent(_) => RunNode::AgentsDir,
            RunNode::AgentRunsDir(name) => RunNode::Agent(name.clone()),
            _ => return MetaNode::Root,
        })
    }

    /// `lookup` of `name` in a directory of the runs' tree.
    pub(super) fn run_lookup(&self, dir: RunNode, name: &str) -> Result<TimedAttr> {
        let child = match dir {
            RunNode::RunsDir => {
                let id = RunId::parse(name).ok_or(FsError::NotFound)?;
                self.run_row(&id)?;
                RunNode::Run(id)
            }
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
                _ => RunNode::File(id, RunFile::from_name(name).ok_or(FsError::NotFound)?),
            },
            RunNode::VolumesDir(id) => RunNode::Volume(id, name.to_string()),
            RunNode::Agent(agent) => match name {
                "agent.json" => RunNode::AgentJson(agent),
                "versions.json" => RunNode::AgentVersions(agent),
                "runs" => RunNode::AgentRunsDir(agent),
                _ => return Err(FsError::NotFound),
            },
            RunNode::AgentRunsDir(agent) => {
                let id = RunId::parse(name).ok_or(FsError::NotFound)?;
                RunNode::AgentRun(agent, id)
            }
            RunNode::File(..)
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
            RunNode::RunsDir | RunNode::AgentsDir => dir(self.started),
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
            | RunNode::AgentRun(..) => {
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
            RunNode::AgentJson(name) | RunNode::AgentVersions(name) => {
                Ok(Readable::Bytes(self.agent_file(&n, name)?.0))
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
                match runs.lists.get(&None, &ThreadPolicy) {
                    Ok(list) => {
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
                let mut links = vec![("volumes", RunNode::VolumesDir(id.clone()))];
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
                let list = self
                    .runs()?
                    .lists
                    .get(&Some(agent.id.clone()), &ThreadPolicy)?;
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
        self.runs = Some(Runs::new(
            api,
            store,
            config,
            self.activity.clone(),
            self.config.metadata_ttl,
            self.cache.root(),
        ));
        Ok(self)
    }
}
