//! The identifiers vm0fs passes between its layers, each a type of its own.
//!
//! Inode numbers, file handles, version ids, storage ids and storage names were once all
//! bare `u64`s and `String`s, and nothing stopped one from being passed where another was
//! meant. Each now has a newtype: swapping two no longer compiles. `VersionId` is also the
//! one place where a version id is checked, so every `VersionId` in the program is known to
//! be 64 lowercase hex characters (safe as a file name and as a cache key).

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A FUSE inode number, as the kernel sees it. `Ino::ROOT` is the mount's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    pub const ROOT: Ino = Ino(1);
}

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A file or directory handle that vm0fs handed to the kernel at `open` or `opendir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fh(pub u64);

impl fmt::Display for Fh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The length of a version id: a SHA-256 in hex.
pub const VERSION_ID_LEN: usize = 64;

/// The id of one immutable version: 64 lowercase hex characters (a SHA-256 over its
/// content, per the API contract). Only [`VersionId::parse`] makes one, so holding a
/// `VersionId` means it was checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionId(Box<str>);

/// Why a string is not a version id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a version id (64 lowercase hex characters)")]
pub struct BadVersionId {
    pub value: String,
}

impl VersionId {
    pub fn parse(s: &str) -> Result<VersionId, BadVersionId> {
        if s.len() == VERSION_ID_LEN && is_lower_hex(s) {
            Ok(VersionId(s.into()))
        } else {
            Err(BadVersionId {
                value: s.chars().take(80).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first eight characters, for messages and the log.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

/// Whether `s` is non-empty and made of `0-9a-f` only (the form of ids and id prefixes).
pub fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TryFrom<String> for VersionId {
    type Error = BadVersionId;
    fn try_from(s: String) -> Result<VersionId, BadVersionId> {
        VersionId::parse(&s)
    }
}

impl From<VersionId> for String {
    fn from(v: VersionId) -> String {
        v.0.into()
    }
}

/// Text types that are only ever compared, hashed, printed and borrowed as `&str`.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> $name {
                $name(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name(s)
            }
        }

        // So that maps keyed by this type can be searched with a plain `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

text_id!(
    /// The id of a volume or an artifact: a UUID as the API gives it. It names the storage in
    /// API paths; users never see it in the mount.
    StorageId
);

text_id!(
    /// The name of a volume or an artifact (unique per kind): its directory in the mount.
    StorageName
);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for VersionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for VersionId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for VersionId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ids_are_64_lowercase_hex() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(VersionId::parse(&good).unwrap().as_str(), good);
        assert_eq!(VersionId::parse(&good).unwrap().short(), "01234567");
        for bad in [
            String::new(),
            good[..63].to_string(),
            format!("{good}0"),
            good.to_uppercase(),
            format!("{}g", &good[..63]),
            format!("{}/", &good[..63]),
            "../".repeat(21) + "a",
        ] {
            assert!(VersionId::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn version_ids_are_checked_when_deserialized() {
        let good = "ab".repeat(32);
        let v: VersionId = serde_json::from_str(&format!("{good:?}")).unwrap();
        assert_eq!(v.as_str(), good);
        assert_eq!(serde_json::to_string(&v).unwrap(), format!("{good:?}"));
        assert!(serde_json::from_str::<VersionId>("\"../etc\"").is_err());
    }

    #[test]
    fn lower_hex() {
        assert!(is_lower_hex("0af9"));
        assert!(!is_lower_hex(""));
        assert!(!is_lower_hex("0AF9"));
        assert!(!is_lower_hex("0xaf"));
    }
}
