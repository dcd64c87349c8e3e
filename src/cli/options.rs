//! The mount helper: `mount -t vm0fs` and `/etc/fstab` run this program as
//! `/sbin/mount.vm0fs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`. Its options are vm0fs's flags
//! in fstab form (`cache_size=20G`, `allow_other`), the kernel's `exec`/`noexec`,
//! `suid`/`nosuid` and `dev`/`nodev` (passed on as asked), and the generic options of
//! mount(8), which say nothing to vm0fs and are ignored.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::MountArgs;
use vm0fs::config::{self, ApiUrlSource};
use vm0fs::size::ByteSize;

/// Whether this program was started as a mount(8) helper (`/sbin/mount.vm0fs` or
/// `/sbin/mount.fuse.vm0fs`, usually a symlink to `vm0fs`).
pub fn is_mount_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mount.vm0fs" || name == "mount.fuse.vm0fs"
}

/// Options of mount(8) and fstab that say nothing to vm0fs: accepted and ignored.
fn is_generic_mount_option(o: &str) -> bool {
    matches!(
        o,
        // mount(8) passes `rw` unless told `ro`; the mount is read-only either way.
        "defaults"
            | "ro"
            | "rw"
            | "auto"
            | "noauto"
            | "nofail"
            | "_netdev"
            | "nouser"
            | "owner"
            | "group"
            | "atime"
            | "noatime"
            | "relatime"
            | "async"
            | "sync"
            | "nodiratime"
            | "comment"
    ) || o.starts_with("x-")
        || o.starts_with("user=")
        || o.starts_with("comment=")
}

/// Parse the arguments mount(8) gives a helper: `SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`.
/// SOURCE is ignored; OPTIONS are vm0fs's flags in fstab form (`cache_size=20G`, `allow_other`).
pub fn from_mount_helper(args: &[String]) -> anyhow::Result<MountArgs> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut m_fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.extend(
                it.next()
                    .context("-o needs a value, e.g. -o token_file=/etc/vm0fs/token")?
                    .split(',')
                    .map(String::from),
            ),
            o if o.starts_with("-o") => options.extend(o[2..].split(',').map(String::from)),
            // The type, which mount(8) passes to a helper whose name lacks it: known.
            "-t" => {
                it.next();
            }
            // sloppy, no-mtab, verbose: nothing to do for a FUSE mount.
            "-s" | "-n" | "-v" => {}
            // "fake": mount(8) -f wants everything done but the mount itself.
            "-f" => m_fake = true,
            o if o.starts_with('-') => bail!("unknown mount helper option {o:?}"),
            p => positional.push(p.to_string()),
        }
    }
    let [_source, mountpoint] = <[String; 2]>::try_from(positional).map_err(|p| {
        anyhow::anyhow!("usage: mount.vm0fs vm0fs MOUNTPOINT -o OPTIONS (got {p:?})")
    })?;
    let env_url = std::env::var("VM0_API_URL").ok();
    let mut m = MountArgs {
        mountpoint: PathBuf::from(mountpoint),
        api_url_source: match env_url {
            Some(_) => ApiUrlSource::Env,
            None => ApiUrlSource::Default,
        },
        api_url: env_url.unwrap_or_else(|| config::DEFAULT_API_URL.to_string()),
        token_file: None,
        cache_dir: None,
        cache_size: ByteSize(config::DEFAULT_CACHE_SIZE),
        metadata_ttl: config::DEFAULT_METADATA_TTL.as_secs(),
        runs_since: config::DEFAULT_RUNS_SINCE.as_secs(),
        runs_limit: config::DEFAULT_RUNS_LIMIT,
        foreground: false,
        allow_other: false,
        allow_root: false,
        threads: config::DEFAULT_THREADS,
        downloads: config::DEFAULT_DOWNLOADS,
        log_level: "info".into(),
        progress_interval: 2.0,
        track_opens: false,
        no_passthrough: false,
        noexec: false,
        suid: false,
        dev: false,
        daemon_child: false,
        fake: m_fake,
    };
    for o in options.iter().filter(|o| !o.is_empty()) {
        // Passed to the kernel as asked; a later option wins, as with mount(8).
        match o.as_str() {
            "exec" => m.noexec = false,
            "noexec" => m.noexec = true,
            "suid" => m.suid = true,
            "nosuid" => m.suid = false,
            "dev" => m.dev = true,
            "nodev" => m.dev = false,
            // mount(8): "user" and "users" imply noexec, nosuid and nodev, unless a later
            // option says otherwise (`user,exec`).
            "user" | "users" => {
                m.noexec = true;
                m.suid = false;
                m.dev = false;
            }
            o if is_generic_mount_option(o) => {}
            o => set_option(&mut m, o)?,
        }
    }
    Ok(m)
}

/// Set the vm0fs option `o` (`key` or `key=value`) on `m`.
fn set_option(m: &mut MountArgs, o: &str) -> anyhow::Result<()> {
    {
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o, None),
        };
        let need =
            || value.with_context(|| format!("mount option {key} needs a value ({key}=...)"));
        match key {
            "api_url" => {
                m.api_url = need()?.to_string();
                m.api_url_source = ApiUrlSource::MountOption;
            }
            "token_file" => m.token_file = Some(PathBuf::from(need()?)),
            "cache_dir" => m.cache_dir = Some(PathBuf::from(need()?)),
            "cache_size" => m.cache_size = need()?.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            "metadata_ttl" => {
                m.metadata_ttl = need()?.parse().with_context(|| format!("metadata_ttl={:?} is not a number of seconds", value))?;
            }
            "threads" => m.threads = need()?.parse().with_context(|| format!("threads={value:?} is not a number"))?,
            "downloads" => m.downloads = need()?.parse().with_context(|| format!("downloads={value:?} is not a number"))?,
            "log_level" => m.log_level = need()?.to_string(),
            "runs_since" => {
                m.runs_since = super::parse_age(need()?).map_err(|e| anyhow::anyhow!("runs_since: {e}"))?;
            }
            "runs_limit" => {
                m.runs_limit = need()?.parse().ok().filter(|n| *n >= 1).with_context(|| format!("runs_limit={value:?} is not a number of runs (at least 1)"))?;
            }
            "progress_interval" => {
                m.progress_interval = need()?.parse().with_context(|| format!("progress_interval={value:?} is not a number of seconds"))?;
            }
            "allow_other" => m.allow_other = true,
            "allow_root" => m.allow_root = true,
            "track_opens" => m.track_opens = true,
            "no_passthrough" => m.no_passthrough = true,
            other => bail!(
                "unknown mount option {other:?}; vm0fs takes api_url, token_file, cache_dir, cache_size, metadata_ttl, runs_since, runs_limit, threads, downloads, log_level, progress_interval, allow_other, allow_root, track_opens, no_passthrough, and the kernel's exec, noexec, suid, nosuid, dev, nodev"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn mount_helper_options_map_to_flags() {
        let m = from_mount_helper(&args(
            "vm0fs /mnt/vm0 -o rw=no,noauto,nofail,_netdev,x-systemd.automount,token_file=/etc/vm0fs/token,cache_dir=/var/cache/vm0fs,cache_size=20G,allow_other,metadata_ttl=5,threads=4,log_level=debug,api_url=http://127.0.0.1:1/v1",
        ));
        // `rw=no` is not the `rw` flag but it is not a vm0fs option either.
        assert!(m.is_err());
        let m = from_mount_helper(&args(
            "vm0fs /mnt/vm0 -n -o noauto,nofail,_netdev,x-systemd.automount,token_file=/etc/vm0fs/token -o cache_dir=/var/cache/vm0fs,cache_size=20G,allow_other,metadata_ttl=5,threads=4,downloads=2,log_level=debug,api_url=http://127.0.0.1:1/v1,track_opens,no_passthrough",
        ))
        .unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/vm0"));
        assert_eq!(m.token_file, Some(PathBuf::from("/etc/vm0fs/token")));
        assert_eq!(m.cache_dir, Some(PathBuf::from("/var/cache/vm0fs")));
        assert_eq!(m.cache_size, ByteSize(20 << 30));
        assert!(m.allow_other && !m.allow_root && !m.foreground);
        assert!(m.track_opens && m.no_passthrough);
        assert_eq!(
            (m.metadata_ttl, m.threads, m.downloads, m.log_level.as_str()),
            (5, 4, 2, "debug")
        );
        assert_eq!(m.api_url, "http://127.0.0.1:1/v1");
    }

    #[test]
    fn mount_helper_refuses_unknown_options_with_the_list() {
        assert!(
            from_mount_helper(&args("vm0fs /m -o rw")).is_ok(),
            "mount(8) passes rw by default"
        );
        let err = from_mount_helper(&args("vm0fs /m -o colour=blue"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("colour") && err.contains("token_file"),
            "{err}"
        );
        let err = from_mount_helper(&args("/m")).unwrap_err().to_string();
        assert!(err.contains("usage"), "{err}");
    }

    #[test]
    fn helper_names() {
        assert!(is_mount_helper(std::ffi::OsStr::new("/sbin/mount.vm0fs")));
        assert!(is_mount_helper(std::ffi::OsStr::new("mount.fuse.vm0fs")));
        assert!(!is_mount_helper(std::ffi::OsStr::new("/usr/bin/vm0fs")));
    }

    #[test]
    fn kernel_options_are_passed_and_the_last_one_wins() {
        let m = from_mount_helper(&args("vm0fs /m -o rw,noexec")).unwrap();
        assert!(m.noexec && !m.suid && !m.dev);
        let m = from_mount_helper(&args("vm0fs /m -o noexec,exec,suid,dev")).unwrap();
        assert!(!m.noexec && m.suid && m.dev);
        // As mount(8) reads "user": noexec, nosuid, nodev unless overridden after it.
        let m = from_mount_helper(&args("vm0fs /m -o suid,user")).unwrap();
        assert!(m.noexec && !m.suid && !m.dev);
        let m = from_mount_helper(&args("vm0fs /m -o user,exec")).unwrap();
        assert!(!m.noexec);
        let flags = m.to_argv();
        assert!(!flags.contains(&"--noexec".into()), "{flags:?}");
        let m = from_mount_helper(&args("vm0fs /m -o noexec")).unwrap();
        assert!(m.to_argv().contains(&"--noexec".into()));
    }
}
