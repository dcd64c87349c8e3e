//! Where each file's content lies in a version's tar stream (the archive, decompressed): what
//! a version larger than the cache needs to read a file again from the archive by a range
//! request, without its content on disk.
//!
//! A table by node (the nodes of the version's index): the offset of the file's first content
//! byte in the tar stream, its content then lying there whole and in order; or, for a GNU
//! sparse member (whose stored data is a map of runs, expanded by the tar reader), the offset
//! of its header, from which the member is read again. The image is untrusted on load, like
//! every file of the cache: magic, format, length and checksum are checked, and every offset
//! is checked against the tar stream's length when it is used.
//!
//! ```text
//! header   32 bytes    magic "VM0FSPOS", format (u32), count (u32), CRC-32 (u32), 0 (12)
//! entries  8 bytes * count    u64: NONE, an offset, or SPARSE | the header's offset
//! ```

use std::io;

use super::checks::checksum;

/// Bump when the byte image changes; `tests::positions_format_is_pinned` pins it.
pub const POSITIONS_FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"VM0FSPOS";
const HEADER: usize = 32;
const CRC_AT: usize = 16;
/// Not a file (a directory, a symlink, a node of no content).
const NONE: u64 = u64::MAX;
/// The offset is of the member's header, read again with the tar reader.
const SPARSE: u64 = 1 << 63;

/// Where one file's content lies in the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Its content, whole and in order, from this offset.
    Data(u64),
    /// A GNU sparse member whose header is at this offset.
    Sparse { header: u64 },
}

/// The table of a version's files, by node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    at: Vec<u64>,
}

impl Positions {
    /// Record where node `node`'s content lies (a later record of the same node replaces it).
    pub fn set(&mut self, node: u32, at: At) {
        let i = node as usize;
        if self.at.len() <= i {
            self.at.resize(i + 1, NONE);
        }
        self.at[i] = match at {
            At::Data(offset) => offset & !SPARSE,
            At::Sparse { header } => SPARSE | (header & !SPARSE),
        };
    }

    /// Where node `node`'s content lies; `None` for a node with none recorded.
    pub fn get(&self, node: u32) -> Option<At> {
        match *self.at.get(node as usize)? {
            NONE => None,
            v if v & SPARSE != 0 => Some(At::Sparse {
                header: v & !SPARSE,
            }),
            v => Some(At::Data(v)),
        }
    }

    /// How many nodes the table covers.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The byte image (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 * self.at.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&POSITIONS_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.at.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; HEADER - 16]);
        for v in &self.at {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = checksum(&out);
        out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Read an image back, checking everything the encoding fixes.
    pub fn decode(image: &[u8]) -> io::Result<Positions> {
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        if image.len() < HEADER || &image[..8] != MAGIC {
            return Err(bad("not a positions file".into()));
        }
        let word = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap_or([0; 4]));
        let format = word(8);
        if format != POSITIONS_FORMAT_VERSION {
            return Err(bad(format!(
                "positions format {format}, expected {POSITIONS_FORMAT_VERSION}"
            )));
        }
        let count = word(12) as usize;
        if image.len() != HEADER + 8 * count {
            return Err(bad(format!(
                "{} bytes for {count} positions, expected {}",
                image.len(),
                HEADER + 8 * count
            )));
        }
        let mut copy = image.to_vec();
        copy[CRC_AT..CRC_AT + 4].fill(0);
        if checksum(&copy) != word(CRC_AT) {
            return Err(bad("the positions fail their checksum".into()));
        }
        let at = image[HEADER..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0xff; 8])))
            .collect();
        Ok(Positions { at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_damage_is_an_error() {
        let mut p = Positions::default();
        p.set(0, At::Data(0));
        p.set(3, At::Sparse { header: 1536 });
        p.set(5, At::Data(1 << 40));
        let image = p.encode();
        let back = Positions::decode(&image).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.get(0), Some(At::Data(0)));
        assert_eq!(back.get(1), None);
        assert_eq!(back.get(3), Some(At::Sparse { header: 1536 }));
        assert_eq!(back.get(5), Some(At::Data(1 << 40)));
        assert_eq!(back.get(99), None);
        for cut in 0..image.len() {
            assert!(Positions::decode(&image[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..image.len() {
            let mut bad = image.clone();
            bad[i] ^= 0x40;
            assert!(Positions::decode(&bad).is_err(), "byte {i} flipped");
        }
    }

    /// The byte image is pinned: change it and bump [`POSITIONS_FORMAT_VERSION`] (a cache
    /// of the previous format is then discarded at start, see `cache::disk`).
    #[test]
    fn positions_format_is_pinned() {
        let mut p = Positions::default();
        p.set(1, At::Data(512));
        p.set(2, At::Sparse { header: 2048 });
        let image = p.encode();
        assert_eq!(image.len(), 32 + 3 * 8);
        assert_eq!(checksum(&image), 0x0a65_20fe, "{:02x?}", image);
    }
}
