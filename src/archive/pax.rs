//! The pax extension records the `tar` crate leaves to its caller (`mtime` with a fraction,
//! `size`, GNU sparse markers), and the permission bits and mtime of a member.

use std::io::{self, Read};

use super::tree::ModeTime;

/// What the member's pax extensions say that the `tar` crate does not apply itself.
#[derive(Default)]
pub(super) struct PaxFields {
    mtime: Option<(i64, u32)>,
    pub(super) size: Option<u64>,
    /// GNU sparse file in pax format (`GNU.sparse.*` keys): its data is a sparse map plus
    /// the non-hole parts, which the `tar` crate does not expand.
    pub(super) sparse: bool,
}

impl PaxFields {
    pub(super) fn of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<PaxFields> {
        let mut fields = PaxFields::default();
        if let Some(extensions) = entry.pax_extensions()? {
            // A malformed record is ignored, as the tar crate does for `path`.
            for ext in extensions.flatten() {
                match ext.key_bytes() {
                    b"mtime" => fields.mtime = parse_pax_time(ext.value_bytes()),
                    b"size" => {
                        fields.size = std::str::from_utf8(ext.value_bytes())
                            .ok()
                            .and_then(|v| v.parse().ok())
                    }
                    key if key.starts_with(b"GNU.sparse.") => fields.sparse = true,
                    _ => {}
                }
            }
        }
        Ok(fields)
    }
}

/// A pax time: decimal seconds, optionally negative, optionally with a fraction
/// (`1700000000.123456789`); digits past nanoseconds are dropped.
pub(super) fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = int.parse().ok()?;
    let mut nsec: u32 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |d| u32::from(d - b'0'));
        nsec = nsec * 10 + digit;
    }
    if !negative {
        Some((sec, nsec))
    } else if nsec == 0 {
        Some((-sec, 0))
    } else {
        // -1.25 s is 1.75 s before -1 s... that is, -2 s plus 0.75 s.
        Some((-sec - 1, 1_000_000_000 - nsec))
    }
}

/// The mtime a member's header gives, pax first.
fn member_mtime(header: &tar::Header, pax: &PaxFields) -> ModeTime {
    let (mtime_sec, mtime_nsec) = pax.mtime.unwrap_or_else(|| {
        let sec = header
            .mtime()
            .map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        (sec, 0)
    });
    ModeTime {
        perm: 0,
        mtime_sec,
        mtime_nsec,
    }
}

/// Permission bits and mtime of a member. Setuid and setgid are dropped: nothing on a
/// vm0fs mount should run with another user's rights.
pub(super) fn member_meta(header: &tar::Header, pax: &PaxFields) -> Result<ModeTime, String> {
    let mode = header
        .mode()
        .map_err(|_| "its header's mode field is unreadable".to_string())?;
    let perm = (mode & 0o7777 & !0o6000) as u16;
    Ok(ModeTime {
        perm,
        ..member_mtime(header, pax)
    })
}
