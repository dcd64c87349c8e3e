//! The bytes a read answers with ([`Bytes`]), in buffers used again and again.
//!
//! A read of 1 MiB needs a buffer of 1 MiB. The allocator hands out a fresh mapping for
//! anything that large (`crate::cache::heap` fixes the threshold at 128 KiB, so that
//! memory goes back to the system) and unmaps it when freed: 256 page faults and a TLB
//! shootdown across the daemon's threads for every request, which measured as much as
//! the read itself. The buffers of answered reads are kept instead, a few of them (as
//! many as the kernel keeps reads in flight for one sequential reader), and taken for the
//! next read: a buffer is zeroed once, when it grows, never per read.

use std::fmt;
use std::ops::Deref;

use parking_lot::Mutex;

/// Buffers kept for reuse at most.
const KEPT: usize = 8;

/// The smallest and largest buffers kept: smaller ones cost nothing to allocate, larger
/// ones are rare (a read spans at most 1 MiB plus a unit on each side, and the room to
/// align it for direct I/O).
const KEEP_MIN: usize = 64 << 10;
const KEEP_MAX: usize = 2 << 20;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Bytes read for a caller: a slice of a buffer that goes back to the pool when dropped.
pub struct Bytes {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Bytes {
    /// No bytes.
    pub fn empty() -> Bytes {
        Bytes::from(Vec::new())
    }

    /// A copy of `bytes`, in a buffer of the pool.
    pub fn copy_of(bytes: &[u8]) -> Bytes {
        let mut buf = take(bytes.len());
        buf[..bytes.len()].copy_from_slice(bytes);
        Bytes::within(buf, 0, bytes.len())
    }

    /// Bytes `start..end` of `buf` (a buffer from [`take`]).
    pub(super) fn within(buf: Vec<u8>, start: usize, end: usize) -> Bytes {
        debug_assert!(start <= end && end <= buf.len());
        Bytes { buf, start, end }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self[..].to_vec()
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(buf: Vec<u8>) -> Bytes {
        let end = buf.len();
        Bytes { buf, start: 0, end }
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self[..], f)
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        self[..] == other[..]
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        &self[..] == other
    }
}

impl PartialEq<&[u8]> for Bytes {
    fn eq(&self, other: &&[u8]) -> bool {
        &self[..] == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Bytes {
    fn eq(&self, other: &[u8; N]) -> bool {
        self[..] == other[..]
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Bytes {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self[..] == other[..]
    }
}

impl PartialEq<Vec<u8>> for Bytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self[..] == other[..]
    }
}

/// A buffer of at least `len` initialized bytes (what it holds is of no meaning): one
/// of the pool, grown if it is shorter, or a new one.
pub(super) fn take(len: usize) -> Vec<u8> {
    let found = if (KEEP_MIN..=KEEP_MAX).contains(&len) {
        let mut free = FREE.lock();
        // The first long enough, else any (growing one costs less than a new one).
        match free.iter().position(|b| b.len() >= len) {
            Some(i) => Some(free.swap_remove(i)),
            None => free.pop(),
        }
    } else {
        None
    };
    let mut buf = found.unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

fn give_back(buf: Vec<u8>) {
    if !(KEEP_MIN..=KEEP_MAX).contains(&buf.len()) {
        return;
    }
    let mut free = FREE.lock();
    if free.len() < KEPT {
        free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_the_slice_asked_and_buffers_come_back() {
        let mut buf = take(100 << 10);
        assert!(buf.len() >= 100 << 10);
        buf[10..15].copy_from_slice(b"hello");
        let b = Bytes::within(buf, 10, 15);
        assert_eq!(b, b"hello");
        assert_eq!(b.to_vec(), b"hello".to_vec());
        drop(b);
        // Another test may take it first: only check that a buffer of the size comes back.
        let again = take(90 << 10);
        assert!(again.len() >= 90 << 10);
        assert_eq!(Bytes::copy_of(b"abc"), b"abc");
        assert_eq!(Bytes::empty().len(), 0);
        assert_eq!(Bytes::from(vec![1, 2]), vec![1u8, 2]);
    }

    #[test]
    fn the_pool_keeps_few_buffers_of_bounded_size() {
        for _ in 0..3 * KEPT {
            drop(Bytes::from(vec![0u8; KEEP_MIN]));
        }
        drop(Bytes::from(vec![0u8; KEEP_MAX + 1]));
        let free = FREE.lock();
        assert!(free.len() <= KEPT);
        assert!(free.iter().all(|b| b.len() <= KEEP_MAX));
    }
}
