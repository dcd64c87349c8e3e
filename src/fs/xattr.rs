//! Extended attributes: `user.vm0.*` on storages and versions, so that `getfattr -d`
//! answers "where does this come from" without another tool. Nothing else carries any.

use std::ffi::OsStr;

use crate::ids::Ino;

use super::inode::{MetaNode, Resolved};
use super::{Fs, FsError, Result};
use crate::dates::format_time;

impl Fs {
    /// The names of the extended attributes of `ino`, NUL-terminated, as `listxattr` wants.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for (name, _) in self.xattrs(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        // `ls -l` asks every entry for its SELinux label and its ACL, and the kernel caches
        // no answer of a FUSE file system (vm0fs does not ask it to handle ACLs, see
        // `fuse::ask_kernel`). "Not supported" (rather than "no such attribute") is the
        // truth for these namespaces, and `ls` remembers it for the whole device, so a
        // listing costs one such round trip for each instead of one per entry.
        let bytes = name.as_encoded_bytes();
        if [&b"security."[..], b"trusted.", b"system."]
            .iter()
            .any(|ns| bytes.starts_with(ns))
        {
            return Err(FsError::NotSupported);
        }
        // Any other name is answered without resolving anything.
        let name = name
            .to_str()
            .filter(|n| n.starts_with("user.vm0."))
            .ok_or(FsError::NoAttr)?;
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttr)
    }

    /// What the API says of a storage or a version.
    fn xattrs(&self, ino: Ino) -> Result<Vec<(&'static str, String)>> {
        let mut out = Vec::new();
        match self.resolve(ino)? {
            Resolved::Meta(MetaNode::Storage { kind, name }) => {
                let s = self.find_storage(kind, name.as_str())?;
                out.push(("user.vm0.kind", kind.singular().to_string()));
                out.push(("user.vm0.id", s.id.to_string()));
                out.push(("user.vm0.name", s.name.to_string()));
                if let Some(v) = s.current_version_id {
                    out.push(("user.vm0.current_version_id", v.to_string()));
                }
                out.push(("user.vm0.created_at", format_time(s.created_at)));
                out.push(("user.vm0.updated_at", format_time(s.updated_at)));
            }
            Resolved::Meta(MetaNode::Version {
                kind,
                name,
                version,
            }) => {
                let s = self.find_storage(kind, name.as_str())?;
                let v = self.find_version(kind, &name, version.as_str())?;
                out.push(("user.vm0.kind", kind.singular().to_string()));
                out.push(("user.vm0.id", s.id.to_string()));
                out.push(("user.vm0.name", s.name.to_string()));
                out.push(("user.vm0.version_id", v.id.to_string()));
                out.push(("user.vm0.created_at", format_time(v.created_at)));
                if let Some(by) = v.created_by {
                    out.push(("user.vm0.created_by", by));
                }
                if let Some(m) = v.message {
                    out.push(("user.vm0.message", m));
                }
                // Only what the API said: an unknown size is not 0.
                if let Some(size) = v.size {
                    out.push(("user.vm0.size", size.to_string()));
                }
                if let Some(count) = v.file_count {
                    out.push(("user.vm0.file_count", count.to_string()));
                }
            }
            _ => {}
        }
        Ok(out)
    }
}
