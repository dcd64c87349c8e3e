//! A compact map from (directory node, name) to node, for what an unpack holds in memory
//! for every member while the archive is read: its tree and what it has published.
//!
//! A hash map of owned names per directory costs about 100 bytes a name (the key's `Vec`,
//! its allocation, the table's slack, a table per directory). Here every name lives in one
//! byte arena and the table holds 24-byte records that point into it, hashed by
//! (directory, name): about 45 bytes a name. A removed name leaves its bytes in the arena;
//! removals are rare (a member that replaces an earlier one), and the arena is bounded by
//! the names the archive holds.

use std::hash::BuildHasher;

/// (directory, name) -> node.
#[derive(Default)]
pub(super) struct Names {
    table: hashbrown::HashTable<Rec>,
    arena: Vec<u8>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// One name: `len` bytes at `at` of the arena (a path component is at most 255 bytes).
#[derive(Clone, Copy)]
struct Rec {
    at: u64,
    dir: u32,
    node: u32,
    len: u8,
}

/// One name, as [`Names::iter`] yields it.
pub(super) struct Name<'a> {
    pub dir: u32,
    pub name: &'a [u8],
    pub node: u32,
}

fn name_in<'a>(arena: &'a [u8], r: &Rec) -> &'a [u8] {
    &arena[r.at as usize..r.at as usize + r.len as usize]
}

impl Names {
    fn hash(&self, dir: u32, name: &[u8]) -> u64 {
        self.hasher.hash_one((dir, name))
    }

    /// The node named `name` in `dir`.
    pub fn get(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let arena = &self.arena;
        self.table
            .find(self.hash(dir, name), |r| {
                r.dir == dir && name_in(arena, r) == name
            })
            .map(|r| r.node)
    }

    /// Name `node` `name` in `dir`, replacing what the name referred to. A name longer
    /// than 255 bytes is not kept (path rules refuse such names before they get here).
    pub fn insert(&mut self, dir: u32, name: &[u8], node: u32) {
        let hash = self.hash(dir, name);
        let (arena, hasher) = (&self.arena, &self.hasher);
        if let Some(r) = self
            .table
            .find_mut(hash, |r| r.dir == dir && name_in(arena, r) == name)
        {
            r.node = node;
            return;
        }
        let Ok(len) = u8::try_from(name.len()) else {
            return;
        };
        let rec = Rec {
            at: arena.len() as u64,
            dir,
            node,
            len,
        };
        self.table
            .insert_unique(hash, rec, |r| hasher.hash_one((r.dir, name_in(arena, r))));
        self.arena.extend_from_slice(name);
    }

    /// Forget `name` in `dir`; the node it referred to.
    pub fn remove(&mut self, dir: u32, name: &[u8]) -> Option<u32> {
        let hash = self.hash(dir, name);
        let arena = &self.arena;
        let entry = self
            .table
            .find_entry(hash, |r| r.dir == dir && name_in(arena, r) == name)
            .ok()?;
        Some(entry.remove().0.node)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Every name, in no particular order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = Name<'_>> {
        self.table.iter().map(|r| Name {
            dir: r.dir,
            name: name_in(&self.arena, r),
            node: r.node,
        })
    }
}

/// Every name of a [`Names`], sorted by directory and then name bytes, so that each
/// directory's entries are one run ([`SortedNames::run`]). The table is gone: only the
/// records and the arena are kept.
pub(super) struct SortedNames {
    recs: Vec<Rec>,
    arena: Vec<u8>,
}

impl Names {
    pub fn into_sorted(self) -> SortedNames {
        let Names { table, arena, .. } = self;
        let mut recs: Vec<Rec> = table.into_iter().collect();
        recs.sort_unstable_by(|a, b| (a.dir, name_in(&arena, a)).cmp(&(b.dir, name_in(&arena, b))));
        SortedNames { recs, arena }
    }
}

impl SortedNames {
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Name `i` in the sorted order.
    pub fn get(&self, i: usize) -> Name<'_> {
        let r = &self.recs[i];
        Name {
            dir: r.dir,
            name: name_in(&self.arena, r),
            node: r.node,
        }
    }

    /// Where the run of each directory starts: `starts[d]..starts[d + 1]` are the names in
    /// directory `d`, for `d` below `dirs`.
    pub fn starts(&self, dirs: usize) -> Vec<u32> {
        let mut starts = Vec::with_capacity(dirs + 1);
        let mut i = 0;
        for d in 0..=dirs {
            while i < self.recs.len() && (self.recs[i].dir as usize) < d {
                i += 1;
            }
            starts.push(i as u32);
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_directory_and_can_be_replaced_and_removed() {
        let mut n = Names::default();
        n.insert(0, b"a", 1);
        n.insert(1, b"a", 2);
        n.insert(0, b"b", 3);
        assert_eq!(n.get(0, b"a"), Some(1));
        assert_eq!(n.get(1, b"a"), Some(2));
        assert_eq!(n.get(1, b"b"), None);
        n.insert(0, b"a", 4);
        assert_eq!(n.get(0, b"a"), Some(4));
        assert_eq!(n.len(), 3);
        assert_eq!(n.remove(0, b"a"), Some(4));
        assert_eq!(n.remove(0, b"a"), None);
        assert_eq!(n.get(0, b"a"), None);
        let mut all: Vec<_> = n.iter().map(|e| (e.dir, e.name.to_vec(), e.node)).collect();
        all.sort();
        assert_eq!(all, vec![(0, b"b".to_vec(), 3), (1, b"a".to_vec(), 2)]);
        // Many names, through the table's growth.
        for i in 0..10_000u32 {
            n.insert(i % 7, format!("name-{i}").as_bytes(), i);
        }
        for i in 0..10_000u32 {
            assert_eq!(n.get(i % 7, format!("name-{i}").as_bytes()), Some(i));
        }
        let mut small = Names::default();
        small.insert(2, b"b", 7);
        small.insert(0, b"z", 5);
        small.insert(2, b"a", 6);
        small.insert(0, b"y", 4);
        let sorted = small.into_sorted();
        let got: Vec<_> = (0..sorted.len())
            .map(|i| {
                let e = sorted.get(i);
                (e.dir, e.name.to_vec(), e.node)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, b"y".to_vec(), 4),
                (0, b"z".to_vec(), 5),
                (2, b"a".to_vec(), 6),
                (2, b"b".to_vec(), 7)
            ]
        );
        assert_eq!(sorted.starts(3), vec![0, 2, 2, 4]);
        // Too long for a path component: not kept.
        n.insert(0, &[b'x'; 256], 9);
        assert_eq!(n.get(0, &[b'x'; 256]), None);
    }
}
