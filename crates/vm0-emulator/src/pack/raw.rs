//! Tar archives written by hand, for the tests of a reader that must survive anything:
//! members with raw name and link bytes (everything `tar::Builder` refuses to write: `..`,
//! absolute paths, raw link names), GNU long headers and pax headers around raw members,
//! and decompression bombs streamed through the system's `gzip` so that hundreds of MiB
//! never sit in memory uncompressed.
//!
//! Like the builders of [`super::build`], these panic on what a test should never ask for.

use std::io::Write;
use std::process::{Command, Stdio};

use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

use super::pax_record;

/// mtime of hand-made members.
const MTIME: u64 = 1_700_000_000;

/// A tar archive built member by member, with raw name and link bytes where needed.
pub struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for RawTar {
    fn default() -> Self {
        Self::new()
    }
}

fn gnu_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl RawTar {
    pub fn new() -> RawTar {
        RawTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    /// A member whose name and link name (at most 100 bytes each) go into the header as
    /// they are, bypassing every check of the tar crate's builder.
    pub fn raw(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        assert!(
            name.len() <= 100 && link.len() <= 100,
            "raw names are at most 100 bytes"
        );
        let mut h = gnu_header(kind, mode, data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.builder
            .append(&h, data)
            .expect("writing into memory cannot fail");
        self
    }

    /// A regular file with a raw name.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), b"", mode, data)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Directory, name.as_bytes(), b"", mode, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            name.as_bytes(),
            target.as_bytes(),
            0o777,
            b"",
        )
    }

    pub fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Link,
            name.as_bytes(),
            target.as_bytes(),
            0o644,
            b"",
        )
    }

    /// A character or block device node.
    pub fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = gnu_header(kind, 0o666, 0);
        h.set_path(name).expect("a name the tar format can hold");
        h.set_device_major(major)
            .expect("a GNU header has device fields");
        h.set_device_minor(minor)
            .expect("a GNU header has device fields");
        h.set_cksum();
        self.builder
            .append(&h, &[][..])
            .expect("writing into memory cannot fail");
        self
    }

    /// A member whose (long) name and link name travel in GNU `L` and `K` headers, raw.
    pub fn gnu_long(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        for (long_kind, value) in [
            (EntryType::GNULongName, name),
            (EntryType::GNULongLink, link),
        ] {
            if value.len() > 100 {
                let mut body = value.to_vec();
                body.push(0);
                let mut h = gnu_header(long_kind, 0o644, body.len() as u64);
                h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
                h.set_cksum();
                self.builder
                    .append(&h, &body[..])
                    .expect("writing into memory cannot fail");
            }
        }
        let short = |v: &[u8]| v[..v.len().min(100)].to_vec();
        self.raw(kind, &short(name), &short(link), mode, data)
    }

    /// A pax extended header with `records`, then the member it applies to (whose own name
    /// and link name are placeholders, raw).
    pub fn pax(
        &mut self,
        records: &[(&str, &[u8])],
        kind: EntryType,
        placeholder: &str,
        link: &[u8],
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.raw(EntryType::XHeader, b"PaxHeaders/member", b"", 0o644, &body);
        self.raw(kind, placeholder.as_bytes(), link, mode, data)
    }

    /// The tar bytes (with the end-of-archive marker).
    pub fn tar(self) -> Vec<u8> {
        self.builder
            .into_inner()
            .expect("writing into memory cannot fail")
    }

    pub fn gz(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

/// `data` gzip-compressed at the fast level, as a whole in memory.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data)
        .and_then(|()| enc.finish())
        .expect("writing into memory cannot fail")
}

/// What a write into the pipe to `gzip` fails on: gzip died, and the test with it.
const TO_GZIP: &str = "write to gzip's input";

/// The output of the system's `gzip -1` on what `write` writes: fast even in a debug build
/// (where the `flate2` encoder takes seconds per 100 MiB), for the bombs of hundreds of MiB.
pub fn gzip_stream(write: impl FnOnce(&mut dyn Write)) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-1")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).expect("read gzip's output");
        out
    });
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().expect("stdin is piped"));
        write(&mut stdin);
        stdin.flush().expect(TO_GZIP);
    }
    assert!(
        child.wait().expect("wait for gzip").success(),
        "gzip failed"
    );
    reader.join().expect("the reader of gzip's output panicked")
}

/// Write `len` bytes of `byte`, in pieces.
fn write_repeated(out: &mut dyn Write, byte: u8, len: u64) {
    let chunk = vec![byte; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).expect(TO_GZIP);
        left -= n as u64;
    }
}

/// Zero padding to the next 512-byte block after `len` bytes of member data.
fn write_padding(out: &mut dyn Write, len: u64) {
    let pad = (512 - (len % 512) as usize) % 512;
    out.write_all(&vec![0u8; pad]).expect(TO_GZIP);
}

/// A tar.gz of `count` files `name-<i>` of `len` zero bytes each, never in memory whole.
pub fn zero_bomb(name: &str, count: usize, len: u64) -> Vec<u8> {
    gzip_stream(|out| {
        for i in 0..count {
            let mut h = gnu_header(EntryType::Regular, 0o644, len);
            h.set_path(format!("{name}-{i}"))
                .expect("a name the tar format can hold");
            h.set_cksum();
            out.write_all(h.as_bytes()).expect(TO_GZIP);
            write_repeated(out, 0, len);
            write_padding(out, len);
        }
        out.write_all(&[0u8; 1024]).expect(TO_GZIP);
    })
}

/// A tar.gz whose first member has a pax header (`huge_pax`) or a GNU long name
/// (`!huge_pax`) of `len` bytes, followed by a small file.
pub fn huge_header_archive(huge_pax: bool, len: u64) -> Vec<u8> {
    gzip_stream(|out| {
        let (kind, body_len) = if huge_pax {
            // One record: "<n> comment=<len bytes>\n", where n counts the whole record.
            let body = len + " comment=\n".len() as u64;
            let mut n = body + 1;
            while n != body + n.to_string().len() as u64 {
                n = body + n.to_string().len() as u64;
            }
            (EntryType::XHeader, n)
        } else {
            (EntryType::GNULongName, len + 1)
        };
        let mut h = gnu_header(kind, 0o644, body_len);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_cksum();
        out.write_all(h.as_bytes()).expect(TO_GZIP);
        if huge_pax {
            write!(out, "{body_len} comment=").expect(TO_GZIP);
            write_repeated(out, b'a', len);
            out.write_all(b"\n").expect(TO_GZIP);
        } else {
            write_repeated(out, b'n', len);
            out.write_all(&[0]).expect(TO_GZIP);
        }
        write_padding(out, body_len);
        let data = b"behind a huge header\n";
        let mut h = gnu_header(EntryType::Regular, 0o644, data.len() as u64);
        h.set_path("after-huge-header.txt")
            .expect("a short relative name");
        h.set_cksum();
        out.write_all(h.as_bytes()).expect(TO_GZIP);
        out.write_all(data).expect(TO_GZIP);
        write_padding(out, data.len() as u64);
        out.write_all(&[0u8; 1024]).expect(TO_GZIP);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_names_and_pax_records_reach_the_reader_unchanged() {
        let mut t = RawTar::new();
        t.raw(EntryType::Regular, b"../escape", b"", 0o644, b"x");
        t.pax(
            &[("path", b"from/pax.txt")],
            EntryType::Regular,
            "placeholder",
            b"",
            0o644,
            b"y",
        );
        let tar_bytes = t.tar();
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let names: Vec<Vec<u8>> = archive
            .entries()
            .expect("a tar stream")
            .map(|e| e.expect("a member").path_bytes().into_owned())
            .collect();
        assert_eq!(names, [b"../escape".to_vec(), b"from/pax.txt".to_vec()]);
    }
}
