//! Archives built in memory for tests, with the tar details real archives carry: owners,
//! modes, directories listed after their children, GNU long names, pax headers with
//! fractional mtimes, symlinks and hard links.
//!
//! These builders panic on what a test should never ask for (a path the tar format cannot
//! hold): a test that builds a broken fixture must fail at once, where it went wrong.

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

/// Deterministic bytes (an LCG), so that content checks catch any offset error.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// A tar.gz under construction.
pub struct ArchiveBuilder {
    tar: tar::Builder<GzEncoder<Vec<u8>>>,
    uid: u64,
    gid: u64,
}

impl Default for ArchiveBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ArchiveBuilder {
    pub fn new() -> Self {
        Self::with_level(1)
    }

    /// An archive compressed at gzip level `level` (1 to 9; `new` is 1, the fastest).
    /// At level 1 the deflate encoder writes blocks of a megabyte or more; `gzip` and
    /// `tar -z` write 6, whose blocks are tens of KiB (what a seek index can stop at).
    pub fn with_level(level: u32) -> Self {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        ArchiveBuilder {
            tar: tar::Builder::new(GzEncoder::new(Vec::new(), Compression::new(level))),
            uid: uid.into(),
            gid: gid.into(),
        }
    }

    fn header(&self, kind: EntryType, mode: u32, mtime: u64, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_size(size);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h
    }

    /// A regular file (long names get a GNU long-name header).
    pub fn file(&mut self, path: &str, mode: u32, mtime: u64, data: &[u8]) -> &mut Self {
        let mut h = self.header(EntryType::Regular, mode, mtime, data.len() as u64);
        self.tar
            .append_data(&mut h, path, data)
            .expect("a path the tar format can hold");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32, mtime: u64) -> &mut Self {
        let mut h = self.header(EntryType::Directory, mode, mtime, 0);
        self.tar
            .append_data(&mut h, path, &[][..])
            .expect("a path the tar format can hold");
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str, mtime: u64) -> &mut Self {
        let mut h = self.header(EntryType::Symlink, 0o777, mtime, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("a path and target the tar format can hold");
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str, mtime: u64) -> &mut Self {
        let mut h = self.header(EntryType::Link, 0o644, mtime, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("a path and target the tar format can hold");
        self
    }

    /// A regular file whose name and fractional mtime travel in a pax extended header.
    pub fn pax_file(&mut self, path: &str, mode: u32, mtime: &str, data: &[u8]) -> &mut Self {
        let mut records = Vec::new();
        records.extend(pax_record("path", path.as_bytes()));
        records.extend(pax_record("mtime", mtime.as_bytes()));
        let mut xh = self.header(EntryType::XHeader, 0o644, 0, records.len() as u64);
        xh.set_path("PaxHeaders.0/entry")
            .expect("a short relative name");
        xh.set_cksum();
        self.tar
            .append(&xh, &records[..])
            .expect("writing into memory cannot fail");
        let secs: u64 = mtime
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("a pax mtime of the form SECONDS[.FRACTION]");
        let mut h = self.header(EntryType::Regular, mode, secs, data.len() as u64);
        // The ustar name is a placeholder; readers take the pax path.
        h.set_path("pax-placeholder")
            .expect("a short relative name");
        h.set_cksum();
        self.tar
            .append(&h, data)
            .expect("writing into memory cannot fail");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.tar
            .into_inner()
            .and_then(|gz| gz.finish())
            .expect("writing into memory cannot fail")
    }
}

/// One pax record: `"<len> <key>=<value>\n"`, where `len` counts the whole record,
/// its own digits included (POSIX `pax`, "extended header").
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// The archive of the mount tests: nested directories (some entries after their
/// children), empty files, sizes around the 4 KiB and 128 KiB boundaries, unicode and space
/// names, a long pax name and a long GNU name, modes 0600/0755/0444, symlinks and a hard link.
pub fn feature_archive() -> Vec<u8> {
    let t = 1_700_000_000u64;
    let mut b = ArchiveBuilder::new();
    b.file("README.md", 0o644, t, b"# Agent output\n\nSee docs/.\n");
    b.file("empty.txt", 0o644, t + 1, b"");
    b.file("secret.key", 0o600, t + 2, b"not really a key\n");
    b.file("run.sh", 0o755, t + 3, b"#!/bin/sh\necho hi\n");
    b.file("frozen.txt", 0o444, t + 4, b"read only\n");
    for (i, size) in [4095usize, 4096, 4097, 131071, 131072, 131073]
        .into_iter()
        .enumerate()
    {
        b.file(
            &format!("sizes/f{size}.bin"),
            0o644,
            t + 10 + i as u64,
            &pattern(size, size as u64),
        );
    }
    // Large enough to be read through kernel passthrough where the kernel offers it.
    b.file("sizes/big.bin", 0o644, t + 16, &pattern(3 << 19, 7));
    b.dir("sizes", 0o755, t + 20);
    // Children first, their directory entries after.
    b.file("docs/guide/intro.md", 0o644, t + 30, b"intro\n");
    b.file("docs/guide/deep/er/still.txt", 0o644, t + 31, b"deep\n");
    b.dir("docs/guide/deep/er", 0o755, t + 32);
    b.dir("docs/guide/deep", 0o750, t + 33);
    b.dir("docs/guide", 0o755, t + 34);
    // (Members of a directory stay together: GNU tar restores a directory's mtime once it
    // has moved past it, so a later member inside would touch it again.)
    b.symlink("docs/same-dir", "guide/intro.md", t + 61);
    b.dir("docs", 0o755, t + 35);
    b.dir("données", 0o755, t + 40);
    b.file(
        "données/résumé final.txt",
        0o644,
        t + 41,
        "ünïcödé ✓\n".as_bytes(),
    );
    b.file("with space.txt", 0o644, t + 42, b"spaces\n");
    b.file("日本語.md", 0o644, t + 43, "こんにちは\n".as_bytes());
    let long_dir =
        "a-long-directory-name-that-goes-on-and-on/another-long-directory-name-for-good-measure";
    b.dir("a-long-directory-name-that-goes-on-and-on", 0o755, t + 50);
    b.dir(long_dir, 0o755, t + 51);
    b.file(
        &format!("{long_dir}/gnu-long-file-name-well-past-one-hundred-bytes.txt"),
        0o644,
        t + 52,
        b"gnu long\n",
    );
    b.pax_file(
        &format!("{long_dir}/pax-long-file-name-with-fractional-mtime-also-past-one-hundred.txt"),
        0o644,
        "1700000053.123456789",
        b"pax long\n",
    );
    b.symlink("link-to-readme", "README.md", t + 60);
    b.symlink("absolute", "/etc/hostname", t + 65);
    // GNU tar creates links whose target climbs with `..` only at the very end, touching
    // their parent directory's mtime after it was restored; keep such a link at the top.
    b.symlink("up", "../outside/of/the/version", t + 64);
    b.symlink("dangling", "does/not/exist", t + 62);
    b.hardlink("readme-hardlink.md", "README.md", t + 63);
    b.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_pax_record_counts_its_own_digits() {
        // Around the lengths where the count gains a digit (9 -> 10, 99 -> 100, 999 -> 1000).
        for value_len in [
            0usize, 1, 2, 3, 88, 89, 90, 91, 92, 93, 94, 986, 987, 988, 989,
        ] {
            let value = vec![b'v'; value_len];
            let record = pax_record("path", &value);
            let text = std::str::from_utf8(&record).expect("ASCII");
            let (len, rest) = text.split_once(' ').expect("a length, then a space");
            assert_eq!(len.parse::<usize>().ok(), Some(record.len()), "{text:?}");
            assert_eq!(rest.as_bytes(), [b"path=", &value[..], b"\n"].concat());
        }
    }

    #[test]
    fn the_tar_crate_reads_what_the_builder_writes() {
        let mut b = ArchiveBuilder::new();
        b.file("a.txt", 0o640, 1_700_000_000, b"hello");
        b.pax_file("deep/pax.txt", 0o644, "1700000001.5", b"pax");
        b.symlink("link", "a.txt", 1_700_000_002);
        let gz = b.finish();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut seen = Vec::new();
        for entry in archive.entries().expect("a tar stream") {
            let mut entry = entry.expect("a member");
            let path = entry.path().expect("a path").display().to_string();
            let mut data = String::new();
            entry.read_to_string(&mut data).expect("UTF-8 content");
            seen.push((path, entry.header().mode().expect("a mode"), data));
        }
        let want = [
            ("a.txt", 0o640, "hello"),
            ("deep/pax.txt", 0o644, "pax"),
            ("link", 0o777, ""),
        ]
        .map(|(p, m, d)| (p.to_string(), m, d.to_string()));
        assert_eq!(seen, want);
    }
}
