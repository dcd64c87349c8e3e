//! The least any FUSE daemon can cost on this machine: a file system that answers every
//! request from memory at once, with the kernel settings vm0fs asks for. `scripts/bench.sh`
//! runs the same tools on it as on vm0fs and on local files, so that a ratio vm0fs misses
//! can be told apart from the price of the kernel's round trip itself (see
//! doc/BENCHMARKS.md, "The floor of a FUSE daemon").
//!
//! It replies as vm0fs does where that changes what the kernel asks (the same `INIT`
//! flags, open and `OPENDIR` flags, and a short first `READDIRPLUS`), so a ratio against it
//! is the daemon's own cost.
//!
//! It serves `DIRS` directories `dNNNN` of `FILES` files `fNNNNNN.txt` each, every file 15
//! bytes, like the bench's version of tiny files. Run as root; it mounts with mount(2), needs
//! no helper, and serves until the mount is unmounted (`umount -l MOUNTPOINT`).
//!
//! ```sh
//! cargo run --release --example fuse_floor -- MOUNTPOINT [--dirs 500] [--files 100] [--file PATH] [--threads 16] [--no-opendir]
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, Request, SessionACL,
};

#[derive(Parser)]
struct Args {
    mountpoint: PathBuf,
    /// Directories under the root.
    #[arg(long, default_value_t = 500)]
    dirs: u64,
    /// Files in each directory.
    #[arg(long, default_value_t = 100)]
    files: u64,
    /// FUSE worker threads (vm0fs' default: 16).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// A file to serve as `/file` too, read with `pread` at each `READ` (through its own
    /// page cache): the floor of a sequential read.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Answer the first `OPENDIR` with `ENOSYS`, so that the kernel opens directories
    /// without a round trip (vm0fs does not: see doc/BENCHMARKS.md, "Levers").
    #[arg(long)]
    no_opendir: bool,
}

/// Nothing here ever changes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const CONTENT: &[u8] = b"tiny file body\n";

/// Inodes: 1 the root, then the directories, then the files of each directory in turn.
struct Floor {
    dirs: u64,
    files: u64,
    no_opendir: bool,
    /// `--file`, and its size.
    file: Option<(File, u64)>,
}

enum Node {
    Root,
    Dir(u64),
    File,
    /// `--file`.
    Big,
}

impl Floor {
    fn node(&self, ino: INodeNo) -> Option<Node> {
        let i = ino.0;
        if i == 1 {
            return Some(Node::Root);
        }
        let i = i.checked_sub(2)?;
        if i < self.dirs {
            return Some(Node::Dir(i));
        }
        let f = i - self.dirs;
        if f < self.dirs * self.files {
            return Some(Node::File);
        }
        (f == self.dirs * self.files && self.file.is_some()).then_some(Node::Big)
    }

    fn big_ino(&self) -> INodeNo {
        INodeNo(2 + self.dirs + self.dirs * self.files)
    }

    fn dir_ino(&self, d: u64) -> INodeNo {
        INodeNo(2 + d)
    }

    fn file_ino(&self, d: u64, f: u64) -> INodeNo {
        INodeNo(2 + self.dirs + d * self.files + f)
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match self.node(ino)? {
            Node::Root => (FileType::Directory, 4096, 0o755, 2 + self.dirs as u32),
            Node::Dir(_) => (FileType::Directory, 4096, 0o755, 2),
            Node::File => (FileType::RegularFile, CONTENT.len() as u64, 0o644, 1),
            Node::Big => (FileType::RegularFile, self.file.as_ref()?.1, 0o644, 1),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    /// The entry at position `pos` of directory `ino` (`.` and `..` first).
    fn entry(&self, ino: INodeNo, pos: u64) -> Option<(INodeNo, FileType, String)> {
        let parent = match self.node(ino)? {
            Node::Root | Node::Dir(_) => INodeNo(1),
            Node::File | Node::Big => return None,
        };
        match pos {
            0 => return Some((ino, FileType::Directory, ".".into())),
            1 => return Some((parent, FileType::Directory, "..".into())),
            _ => {}
        }
        let at = pos - 2;
        match self.node(ino)? {
            Node::Root if at < self.dirs => {
                Some((self.dir_ino(at), FileType::Directory, format!("d{at:04}")))
            }
            Node::Root => (at == self.dirs && self.file.is_some())
                .then(|| (self.big_ino(), FileType::RegularFile, "file".into())),
            Node::Dir(d) => (at < self.files).then(|| {
                let name = format!("f{:06}.txt", d * self.files + at);
                (self.file_ino(d, at), FileType::RegularFile, name)
            }),
            Node::File | Node::Big => None,
        }
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Option<INodeNo> {
        let name = name.to_str()?;
        match self.node(parent)? {
            Node::Root if name == "file" => self.file.is_some().then(|| self.big_ino()),
            Node::Root => {
                let d: u64 = name.strip_prefix('d')?.parse().ok()?;
                (d < self.dirs && name == format!("d{d:04}")).then(|| self.dir_ino(d))
            }
            Node::Dir(d) => {
                let n: u64 = name.strip_prefix('f')?.strip_suffix(".txt")?.parse().ok()?;
                let f = n.checked_sub(d * self.files)?;
                (f < self.files && name == format!("f{n:06}.txt")).then(|| self.file_ino(d, f))
            }
            Node::File | Node::Big => None,
        }
    }
}

impl fuser::Filesystem for Floor {
    /// What vm0fs asks for by default (`vm0fs::fuse::ask_kernel` and `ask_no_open`), so
    /// that the kernel behaves the same.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        vm0fs::fuse::ask_kernel(config);
        vm0fs::fuse::ask_no_open(config);
        if self.no_opendir {
            let _ = config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|i| self.attr(i)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The kernel opens files without a round trip from then on.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.node(ino) {
            Some(Node::File) => {
                let from = (offset as usize).min(CONTENT.len());
                let to = (from + size as usize).min(CONTENT.len());
                reply.data(&CONTENT[from..to]);
            }
            Some(Node::Big) => {
                let Some((file, len)) = &self.file else {
                    return reply.error(Errno::EIO);
                };
                let want = u64::from(size).min(len.saturating_sub(offset)) as usize;
                let mut buf = vec![0; want];
                match file.read_at(&mut buf, offset) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => reply.error(Errno::from(e)),
                }
            }
            _ => reply.error(Errno::EISDIR),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut pos = offset;
        while let Some((i, kind, name)) = self.entry(ino, pos) {
            if reply.add(i, pos + 1, kind, &name) {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut pos = offset;
        let mut others = 0;
        while let Some((i, kind, name)) = self.entry(ino, pos) {
            // vm0fs' first reply of a directory: its directories and at most PROBE other
            // entries (`src/fs/plus.rs`); the kernel reads the rest with plain READDIR.
            if offset == 0 && kind != FileType::Directory {
                if others == vm0fs::fs::PROBE {
                    break;
                }
                others += 1;
            }
            let Some(attr) = self.attr(i) else { break };
            if reply.add(i, pos + 1, &name, &TTL, &attr, Generation(0)) {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// Mount with mount(2) (root only) and return the `/dev/fuse` descriptor that serves it.
fn attach(mountpoint: &std::path::Path) -> anyhow::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse")?;
    let fd = OwnedFd::from(dev);
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        fd.as_raw_fd()
    );
    nix::mount::mount(
        Some("fuse_floor"),
        mountpoint,
        Some("fuse.fuse_floor"),
        nix::mount::MsFlags::MS_RDONLY
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .with_context(|| format!("cannot mount at {} (run as root)", mountpoint.display()))?;
    Ok(fd)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Everything that can fail on input before the mount, so that a bad argument leaves
    // no mount behind.
    let file = match &args.file {
        Some(path) => {
            let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let len = f.metadata()?.len();
            Some((f, len))
        }
        None => None,
    };
    let floor = Floor {
        dirs: args.dirs,
        files: args.files,
        no_opendir: args.no_opendir,
        file,
    };
    let mut config = fuser::Config::default();
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    config.acl = SessionACL::All;
    let device = attach(&args.mountpoint)?;
    let served = fuser::Session::from_fd(floor, device, SessionACL::All, config)
        .context("the FUSE session did not start")
        // Until the mount goes (`umount -l`).
        .and_then(|session| {
            session
                .run()
                .context("the FUSE session ended with an error")
        });
    if served.is_err() {
        let _ = nix::mount::umount2(&args.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
    served
}
