//! The pax extension records the `tar` crate leaves to its caller (`mtime` with a fraction,
//! `size`, GNU sparse markers), the header's numeric fields as GNU tar reads them (octal or
//! base-256, negative included), and the permission bits and mtime of a member.

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
                            .and_then(|v| v.parse().ok());
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

/// A numeric header field as GNU tar reads it: octal digits (between optional spaces and
/// NULs), or, when the first byte has its high bit set, base-256: the remaining bits of
/// the field, big-endian, in two's complement with bit 6 of the first byte as the sign
/// (GNU tar's `from_header`; it writes 0x80 before a large positive number and 0xff before
/// a negative one, such as a time before 1970). `None` for a field that is neither, or a
/// value outside `i64`.
pub(super) fn numeric_field(field: &[u8]) -> Option<i64> {
    let (&first, rest) = field.split_first()?;
    if first & 0x80 != 0 {
        let mut value = i128::from(first & 0x3f) - if first & 0x40 != 0 { 0x40 } else { 0 };
        for &b in rest {
            // At most 7 + 8 * 11 bits for a 12-byte field: far inside an i128.
            value = value.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        return i64::try_from(value).ok();
    }
    let text = field
        .iter()
        .position(|&b| b == 0)
        .map_or(field, |end| &field[..end]);
    let text = std::str::from_utf8(text).ok()?.trim_matches(' ');
    if text.is_empty() {
        return Some(0);
    }
    i64::from_str_radix(text, 8).ok()
}

/// The stored size a member's header gives, where GNU tar would read something other than
/// what the `tar` crate read (a negative base-256 size, or one past 2^64, whose bytes the
/// crate drops): `Some` with the words for the error, the tar data being unreadable from
/// there on.
pub(super) fn bad_size(header: &tar::Header) -> Option<String> {
    let field = &header.as_old().size;
    if field[0] & 0x80 == 0 {
        return None;
    }
    match numeric_field(field) {
        Some(size) if size >= 0 && header.size().ok() == Some(size as u64) => None,
        Some(size) => Some(format!("a member's size field says {size} bytes")),
        None => Some("a member's size field is past 2^63 bytes".to_string()),
    }
}

/// The mtime a member's header gives, pax first. An unreadable header mtime is 0.
fn member_mtime(header: &tar::Header, pax: &PaxFields) -> ModeTime {
    let (mtime_sec, mtime_nsec) = pax
        .mtime
        .unwrap_or_else(|| (numeric_field(&header.as_old().mtime).unwrap_or(0), 0));
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
