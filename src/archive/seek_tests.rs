//! Tests of the gzip checkpoints: every checkpoint resumes to exactly the bytes of a full
//! decode, across members and block kinds; damaged, truncated and hostile archives and
//! index images are errors, never panics; the index image is pinned. One ignored test is
//! the benchmark against flate2 (run it in release, see its comment).

use std::io::{self, BufReader, Read, Write};

use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;

use super::seek::*;

const SPACING: u64 = 64 * 1024;

/// Text-like content: words of a fixed vocabulary, numbers and line breaks (compresses
/// about 3:1, like source code and logs).
fn text(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let vocabulary: Vec<String> = (0..1500)
        .map(|_| {
            let n = rng.usize(2..10);
            (0..n).map(|_| rng.alphabetic()).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        match rng.u8(..) {
            0..=7 => out.push(b'\n'),
            8..=15 => out.extend(rng.u32(..).to_string().bytes()),
            _ => out.extend(vocabulary[rng.usize(..vocabulary.len())].bytes()),
        }
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn random(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
}

/// A tar of `files` files of up to `max` bytes each, `random_share` of them random bytes,
/// the rest text-like.
fn tar_like(seed: u64, files: usize, max: usize, random_share: f64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..files {
        let len = rng.usize(0..max);
        let content = if rng.f64() < random_share {
            random(&mut rng, len)
        } else {
            text(&mut rng, len)
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                format!("dir{}/file{i}.txt", i % 7),
                &content[..],
            )
            .unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::new(level));
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// gzip with a sync flush every `piece` bytes: many small (fixed-Huffman) blocks, each
/// followed by an empty stored block that realigns the stream to a byte.
fn gzip_flushed(data: &[u8], piece: usize) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::new(6));
    for chunk in data.chunks(piece) {
        encoder.write_all(chunk).unwrap();
        encoder.flush().unwrap();
    }
    encoder.finish().unwrap()
}

/// The reference decode: flate2 (zlib-rs) over all members.
fn reference(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::bufread::MultiGzDecoder::new(gz)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The forward pass with an input buffer of `capacity` and reads of `read` bytes.
fn checkpoint_with(
    gz: &[u8],
    spacing: u64,
    capacity: usize,
    read: usize,
) -> io::Result<(Vec<u8>, SeekIndex)> {
    let mut reader = Checkpointer::with_spacing(BufReader::with_capacity(capacity, gz), spacing)?;
    let mut out = Vec::new();
    let mut buf = vec![0; read];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let index = reader
        .into_index()
        .expect("a stream read to its end has an index");
    Ok((out, index))
}

fn checkpoint(gz: &[u8], spacing: u64) -> (Vec<u8>, SeekIndex) {
    checkpoint_with(gz, spacing, 64 * 1024, 256 * 1024).unwrap()
}

fn resume(gz: &[u8], point: &Checkpoint) -> io::Result<Vec<u8>> {
    let start = usize::try_from(point.input).unwrap();
    let mut out = Vec::new();
    inflate_from(point, &gz[start..])?.read_to_end(&mut out)?;
    Ok(out)
}

/// Checks the forward pass against flate2 and every checkpoint's resume against the full
/// decode; returns the index.
fn check_archive(gz: &[u8], spacing: u64) -> SeekIndex {
    let full = reference(gz);
    let (out, index) = checkpoint(gz, spacing);
    assert!(out == full, "the forward pass differs from flate2's decode");
    assert_eq!(index.uncompressed_len, full.len() as u64);
    assert_eq!(index.compressed_len, gz.len() as u64);
    assert_eq!(index.spacing, spacing);
    check_points(gz, &index, &full);
    index
}

fn check_points(gz: &[u8], index: &SeekIndex, full: &[u8]) {
    let first = index.points.first().expect("the first member's start");
    assert_eq!(first.output, 0);
    assert!(first.window.is_empty());
    for pair in index.points.windows(2) {
        assert!(pair[0].input < pair[1].input && pair[0].output < pair[1].output);
        assert!(pair[1].input - pair[0].input >= index.spacing, "{pair:?}");
    }
    for point in &index.points {
        let start = usize::try_from(point.output).unwrap();
        assert!(point.bits < 8);
        assert!(point.window.len() <= WINDOW_SIZE);
        assert!(full[..start].ends_with(&point.window), "{point:?}");
        let again = resume(gz, point).unwrap();
        assert!(
            again == full[start..],
            "resuming from {point:?} differs from the full decode"
        );
    }
}

#[test]
fn seek_resume_from_every_checkpoint_matches_the_full_decode() {
    let data = tar_like(1, 60, 150_000, 0.2);
    for level in [1, 6, 9] {
        let gz = gzip(&data, level);
        let index = check_archive(&gz, SPACING);
        // zlib-rs's level 1 (zlib-ng's "quick" deflate) writes blocks of a megabyte or more:
        // few boundaries to stop at.
        if level > 1 {
            assert!(
                index.points.len() >= 8,
                "level {level}: {}",
                index.points.len()
            );
        }
        // The point for an offset lies at or before it.
        for offset in [0, 1, 100_000, index.uncompressed_len - 1] {
            let point = index.point_for(offset).unwrap();
            assert!(point.output <= offset);
        }
    }
}

#[test]
fn seek_test_data_has_checkpoints_with_and_without_stray_bits() {
    let data = tar_like(2, 40, 100_000, 0.1);
    let mut with_bits = 0;
    let mut without = 0;
    for gz in [gzip(&data, 6), gzip_flushed(&data, 3000)] {
        let index = check_archive(&gz, 16 * 1024);
        for p in &index.points[1..] {
            if p.bits == 0 {
                without += 1;
            } else {
                with_bits += 1;
            }
        }
    }
    assert!(
        with_bits > 0 && without > 0,
        "{with_bits} with bits, {without} without"
    );
}

#[test]
fn seek_block_kinds_stored_fixed_dynamic_and_one_huge_block() {
    let data = tar_like(3, 30, 100_000, 0.3);
    // Level 0: stored blocks only (byte-aligned, bits 0 at every boundary).
    let index = check_archive(&gzip(&data, 0), SPACING);
    assert!(index.points.len() > 5);
    assert!(index.points.iter().all(|p| p.bits == 0));
    // Small flushed pieces: fixed-Huffman blocks between empty stored ones.
    check_archive(&gzip_flushed(&data, 500), SPACING);
    // Dynamic blocks.
    check_archive(&gzip(&data, 9), SPACING);
    // Zeros: each 258-byte match is one symbol, so a block spans megabytes and there is
    // no boundary to checkpoint at inside it.
    let zeros = vec![0u8; 8 << 20];
    let gz = gzip(&zeros, 9);
    let index = check_archive(&gz, 1024);
    assert!(index.points.len() <= 4, "{:?}", index.points);
}

/// Members of different kinds back to back, an empty one among them: checkpoints fall in
/// each, some at a member's start, and each resume reads on through the later members.
#[test]
fn seek_multi_member_checkpoints_and_resume_across_members() {
    let a = tar_like(4, 20, 100_000, 0.2);
    let b = tar_like(5, 20, 100_000, 0.5);
    let c = tar_like(6, 10, 50_000, 0.0);
    let members = [
        gzip(&a, 6),
        gzip(&[], 6),
        gzip(&b, 1),
        gzip_flushed(&c, 4000),
    ];
    let gz: Vec<u8> = members.concat();
    let index = check_archive(&gz, SPACING);
    let mut start = 0u64;
    let mut starts = Vec::new();
    for m in &members {
        let end = start + m.len() as u64;
        let inside = index
            .points
            .iter()
            .filter(|p| p.input >= start && p.input < end)
            .count();
        // (Level 1 writes huge blocks: maybe none to stop at.)
        assert!(
            m.len() < 4 * SPACING as usize || inside > 0,
            "no checkpoint in a member"
        );
        starts.push(start);
        start = end;
    }
    // A checkpoint without a window lies at a member's start, right after its 10-byte
    // header.
    for p in index.points.iter().filter(|p| p.window.is_empty()) {
        assert!(starts.contains(&(p.input - 10)), "{p:?}");
        assert_eq!(p.bits, 0);
    }
}

#[test]
fn seek_a_checkpoint_exactly_at_a_member_start() {
    // The first member alone passes the spacing: the second member's start is the first
    // place after it where a checkpoint can be.
    let first = gzip(&vec![7u8; 1 << 20], 9);
    let second = gzip(&tar_like(7, 10, 50_000, 0.0), 6);
    let gz = [first.clone(), second].concat();
    let index = check_archive(&gz, first.len() as u64 / 2);
    let p = index
        .points
        .iter()
        .find(|p| p.input == first.len() as u64 + 10)
        .expect("a checkpoint at the second member's start");
    assert_eq!((p.bits, p.window.len()), (0, 0));
    assert_eq!(p.output, 1 << 20);
}

#[test]
fn seek_empty_members_and_empty_archives() {
    // A stream of one empty member.
    let (out, index) = checkpoint(&gzip(&[], 6), SPACING);
    assert!(out.is_empty());
    assert_eq!(index.uncompressed_len, 0);
    assert_eq!(index.points.len(), 1);
    assert!(resume(&gzip(&[], 6), &index.points[0]).unwrap().is_empty());
    // Two empty members: still one checkpoint (the second adds no output).
    let gz = [gzip(&[], 6), gzip(&[], 0)].concat();
    let (_, index) = checkpoint(&gz, 1);
    assert_eq!(index.points.len(), 1);
    assert!(resume(&gz, &index.points[0]).unwrap().is_empty());
    // A 0-byte archive has no gzip member: an error, as with gzip -d.
    let err = checkpoint_with(&[], SPACING, 1024, 1024).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn seek_trailing_garbage_after_the_last_member_is_ignored() {
    let data = tar_like(8, 10, 50_000, 0.0);
    let gz = gzip(&data, 6);
    for tail in [&[0u8; 1024][..], b"garbage", b"\n"] {
        let damaged = [&gz[..], tail].concat();
        let mut reader = Checkpointer::with_spacing(&damaged[..], SPACING).unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert!(out == data);
        assert!(reader.trailing_data());
        assert_eq!(reader.compressed_bytes(), gz.len() as u64);
        let index = reader.into_index().unwrap();
        assert_eq!(index.compressed_len, gz.len() as u64);
        // The resume ignores it too.
        let point = index.points.last().unwrap();
        let again = resume(&damaged, point).unwrap();
        assert!(again == data[usize::try_from(point.output).unwrap()..]);
    }
}

#[test]
fn seek_crc_and_length_mismatches_are_errors_in_the_forward_pass() {
    let data = tar_like(9, 10, 50_000, 0.0);
    let gz = gzip(&data, 6);
    let n = gz.len();
    for (at, what) in [(n - 8, "CRC-32"), (n - 1, "ISIZE")] {
        let mut damaged = gz.clone();
        damaged[at] ^= 1;
        let err = checkpoint_with(&damaged, SPACING, 4096, 4096).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(what), "{err}");
        // Every later read repeats the error.
        let mut reader = Checkpointer::new(&damaged[..]).unwrap();
        let mut sink = Vec::new();
        assert!(reader.read_to_end(&mut sink).is_err());
        assert!(reader.read(&mut [0; 16]).is_err());
        assert!(!reader.is_finished());
    }
    // The same in a second member.
    let two = [gzip(&data, 1), gzip(&data, 6)].concat();
    let mut damaged = two.clone();
    let at = two.len() - 7;
    damaged[at] ^= 0x80;
    let err = checkpoint_with(&damaged, SPACING, 4096, 4096).unwrap_err();
    assert!(err.to_string().contains("CRC-32"), "{err}");
}

/// Every prefix of a one-member archive is an error (never a short read that looks
/// whole), in the forward pass and in a resume.
#[test]
fn seek_truncated_archives_are_errors() {
    let data = tar_like(10, 6, 20_000, 0.3);
    let gz = gzip(&data, 6);
    let (_, index) = checkpoint(&gz, 4096);
    assert!(index.points.len() > 2);
    for cut in 0..gz.len() {
        let err = checkpoint_with(&gz[..cut], 4096, 512, 4096).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ),
            "cut at {cut}: {err}"
        );
        // Resumes from every checkpoint: at some cuts (they take longer), and all near the
        // end (in the last block and the trailer).
        if cut % 37 != 0 && cut + 16 < gz.len() {
            continue;
        }
        for point in &index.points {
            if point.input as usize <= cut {
                let start = point.input as usize;
                let mut sink = Vec::new();
                let err = inflate_from(point, &gz[start..cut])
                    .unwrap()
                    .read_to_end(&mut sink)
                    .unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {err}");
            }
        }
    }
}

/// Each byte of a small archive changed: the forward pass gives the same content (a
/// changed header field that nothing checks, such as the mtime) or an error (a changed
/// header flag can make the rest read as a file name: then the stream ends too early); a
/// resume from each checkpoint never panics.
#[test]
fn seek_corrupt_archives_are_errors_not_panics() {
    let data = tar_like(11, 3, 12_000, 0.2);
    let gz = gzip_flushed(&data, 1500);
    let (_, index) = checkpoint(&gz, 2048);
    assert!(index.points.len() > 1);
    for at in 0..gz.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut damaged = gz.clone();
            damaged[at] ^= flip;
            match checkpoint_with(&damaged, 2048, 1000, 3000) {
                Ok((out, _)) => assert!(out == data, "byte {at} ^ {flip}: wrong content"),
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    ),
                    "{at}: {e}"
                ),
            }
            if flip != 0x80 {
                continue;
            }
            for point in &index.points {
                let start = point.input as usize;
                let mut sink = Vec::new();
                let _ = inflate_from(point, &damaged[start..])
                    .unwrap()
                    .read_to_end(&mut sink);
            }
        }
    }
}

/// A checkpoint that does not belong to the data (a stale index): an error or wrong bytes,
/// never a panic; an impossible one is refused.
#[test]
fn seek_foreign_and_invalid_checkpoints() {
    let gz = gzip(&tar_like(12, 20, 50_000, 0.1), 6);
    let (_, index) = checkpoint(&gz, 8192);
    for p in &index.points {
        for shift in [1usize, 3, 100] {
            let start = (p.input as usize + shift).min(gz.len());
            let mut sink = Vec::new();
            let _ = inflate_from(p, &gz[start..])
                .unwrap()
                .read_to_end(&mut sink);
        }
    }
    let mut bad = index.points[1].clone();
    bad.bits = 8;
    assert!(inflate_from(&bad, &gz[..]).is_err());
    bad.bits = 0;
    bad.window = vec![0; WINDOW_SIZE + 1];
    assert!(inflate_from(&bad, &gz[..]).is_err());
}

/// The checkpoints depend on the archive and the spacing alone, not on how it is read;
/// checkpoints can be taken while reading.
#[test]
fn seek_checkpoints_do_not_depend_on_read_sizes() {
    let gz = [
        gzip(&tar_like(13, 20, 60_000, 0.3), 6),
        gzip(&tar_like(14, 5, 60_000, 0.0), 9),
    ]
    .concat();
    let (out, expected) = checkpoint(&gz, 10_000);
    for (capacity, read) in [(1, 1), (7, 13), (4096, 100), (1 << 20, 1 << 20)] {
        let (again, index) = checkpoint_with(&gz, 10_000, capacity, read).unwrap();
        assert!(again == out);
        assert!(index == expected, "capacity {capacity}, reads of {read}");
    }
    let mut reader = Checkpointer::with_spacing(&gz[..], 10_000).unwrap();
    let mut taken = Vec::new();
    let mut buf = vec![0; 50_000];
    while reader.read(&mut buf).unwrap() > 0 {
        taken.extend(reader.take_checkpoints());
    }
    assert!(taken == expected.points);
    assert_eq!(reader.uncompressed_bytes(), out.len() as u64);
}

/// A tar reader reads the archive through the checkpointer as it does through flate2.
#[test]
fn seek_checkpointer_feeds_a_tar_reader() {
    let data = tar_like(15, 12, 30_000, 0.2);
    let gz = gzip(&data, 6);
    let reader = Checkpointer::with_spacing(&gz[..], SPACING).unwrap();
    let mut archive = tar::Archive::new(reader);
    let mut count = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        io::copy(&mut entry, &mut io::sink()).unwrap();
        count += 1;
    }
    assert_eq!(count, 12);
}

/// The readers can move to another thread (an unpack or a read may run on one), and an
/// unfinished pass has no index (its lengths would be wrong).
#[test]
fn seek_readers_are_send_and_an_unfinished_pass_has_no_index() {
    fn send<T: Send>(_: &T) {}
    let gz = gzip(&tar_like(19, 10, 50_000, 0.0), 6);
    let mut reader = Checkpointer::with_spacing(&gz[..], 4096).unwrap();
    send(&reader);
    let mut buf = [0; 1000];
    reader.read_exact(&mut buf).unwrap();
    assert!(!reader.is_finished());
    assert_eq!(reader.checkpoints().len(), 1);
    let point = reader.checkpoints()[0].clone();
    assert!(reader.into_index().is_none());
    let resume = inflate_from(&point, io::Cursor::new(gz[10..].to_vec())).unwrap();
    send(&resume);
    std::thread::spawn(move || {
        let mut resume = resume;
        let mut again = [0; 1000];
        resume.read_exact(&mut again).unwrap();
        assert_eq!(again, buf);
    })
    .join()
    .unwrap();
}

/// The index of `gz` with windows cut to their last 64 bytes (the image stays small, so
/// that tests that decode it once per byte stay fast).
fn small_index(gz: &[u8]) -> SeekIndex {
    let mut index = checkpoint(gz, 2048).1;
    for p in &mut index.points {
        p.window.drain(..p.window.len().saturating_sub(64));
    }
    index
}

#[test]
fn seek_index_round_trips() {
    let data = tar_like(16, 10, 40_000, 0.3);
    let gz = gzip(&data, 6);
    let index = checkpoint(&gz, 2048).1;
    let image = index.encode();
    assert_eq!(SeekIndex::decode(&image).unwrap(), index);
    // Points decoded from an image resume like the originals.
    for p in &SeekIndex::decode(&image).unwrap().points {
        let start = p.output as usize;
        assert!(resume(&gz, p).unwrap() == data[start..]);
    }
}

/// The byte layout in `SeekIndex`'s documentation. A change here must bump
/// `SEEK_FORMAT_VERSION`.
#[test]
fn seek_format_is_pinned() {
    let index = SeekIndex {
        compressed_len: 0x1_0000_0001,
        uncompressed_len: 0x300,
        spacing: 4 << 20,
        points: vec![
            Checkpoint {
                input: 10,
                output: 0,
                bits: 0,
                byte: 0,
                window: Vec::new(),
            },
            Checkpoint {
                input: 0x102,
                output: 0x201,
                bits: 3,
                byte: 0xa5,
                window: b"abcabcabc".to_vec(),
            },
        ],
    };
    let image = index.encode();
    let mut expected: Vec<u8> = Vec::new();
    // Header: magic, format 1, 2 points, lengths, spacing, CRC, 4 zero bytes.
    expected.extend(b"VM0FSEEK");
    expected.extend([1, 0, 0, 0]);
    expected.extend([2, 0, 0, 0]);
    expected.extend([1, 0, 0, 0, 1, 0, 0, 0]);
    expected.extend([0, 3, 0, 0, 0, 0, 0, 0]);
    expected.extend([0, 0, 0x40, 0, 0, 0, 0, 0]);
    expected.extend(&image[40..44]); // the CRC, checked below
    expected.extend([0; 4]);
    // Point 0: input 10, output 0, bits 0, byte 0, no window (deflated: an empty final
    // fixed block, 2 bytes).
    expected.extend([10, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend([0; 8]);
    expected.extend([0, 0, 0, 0, 2, 0, 0, 0]);
    expected.extend([3, 0]);
    // Point 1: input 0x102, output 0x201, bits 3, byte 0xa5, a window of 9 bytes, deflated
    // (its bytes are the compressor's: checked by inflating them).
    expected.extend([2, 1, 0, 0, 0, 0, 0, 0]);
    expected.extend([1, 2, 0, 0, 0, 0, 0, 0]);
    expected.extend([3, 0xa5, 9, 0]);
    let packed = &image[expected.len() + 4..];
    expected.extend((packed.len() as u32).to_le_bytes());
    expected.extend(packed);
    let mut window = Vec::new();
    flate2::read::DeflateDecoder::new(packed)
        .read_to_end(&mut window)
        .unwrap();
    assert_eq!(window, b"abcabcabc");
    assert!(
        image == expected,
        "the seek index image appears to have changed, bump SEEK_FORMAT_VERSION\n\
         actual:   {image:?}\nexpected: {expected:?}"
    );
    let mut crc = crc32fast::Hasher::new();
    crc.update(&image[..40]);
    crc.update(&image[44..]);
    assert_eq!(image[40..44], crc.finalize().to_le_bytes());
    assert_eq!(SEEK_FORMAT_VERSION, 1);
    assert_eq!(SeekIndex::decode(&image).unwrap(), index);
}

/// Rewrites the CRC of a changed image (what a bug could write, not just a bad disk).
fn reseal(image: &mut [u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&image[..40]);
    crc.update(&image[44..]);
    let crc = crc.finalize().to_le_bytes();
    image[40..44].copy_from_slice(&crc);
}

#[test]
fn seek_every_truncated_or_changed_index_image_is_refused() {
    let gz = gzip(&tar_like(17, 6, 20_000, 0.2), 6);
    let image = small_index(&gz).encode();
    assert!(SeekIndex::decode(&image).is_ok());
    for cut in 0..image.len() {
        assert!(SeekIndex::decode(&image[..cut]).is_err(), "cut at {cut}");
    }
    for at in 0..image.len() {
        for flip in [0x01, 0x80] {
            let mut damaged = image.clone();
            damaged[at] ^= flip;
            assert!(SeekIndex::decode(&damaged).is_err(), "byte {at} ^ {flip}");
            // Resealed: the checks behind the CRC refuse it or it decodes to something
            // that still holds (never a panic).
            reseal(&mut damaged);
            if let Ok(index) = SeekIndex::decode(&damaged) {
                assert_eq!(SeekIndex::decode(&index.encode()).unwrap(), index);
            }
        }
    }
    let mut longer = image.clone();
    longer.push(0);
    reseal(&mut longer);
    assert!(SeekIndex::decode(&longer).is_err());
    let mut newer = image.clone();
    newer[8] = 2;
    assert_eq!(
        SeekIndex::decode(&newer).unwrap_err(),
        SeekError::Version { found: 2 }
    );
}

/// Counts and lengths that claim more than the image holds: refused before anything is
/// allocated for them.
#[test]
fn seek_hostile_index_counts_are_refused() {
    let gz = gzip(&tar_like(18, 6, 20_000, 0.2), 6);
    let image = small_index(&gz).encode();
    for (at, value) in [
        (12, u32::MAX.to_le_bytes()),
        (48 + 20, u32::MAX.to_le_bytes()),
    ] {
        let mut damaged = image.clone();
        damaged[at..at + 4].copy_from_slice(&value);
        reseal(&mut damaged);
        assert!(SeekIndex::decode(&damaged).is_err());
    }
    // Out-of-order points.
    let mut index = small_index(&gz);
    index.points.swap(1, 2);
    assert!(SeekIndex::decode(&index.encode()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random content, level, members, spacing and read sizes: the forward pass matches
    /// flate2, each checkpoint resumes exactly, and the index survives its image.
    #[test]
    fn seek_random_archives_resume_exactly(
        seed in any::<u64>(),
        members in 1usize..4,
        level in 0u32..10,
        spacing in 1u64..40_000,
        capacity in 1usize..5000,
        read in 1usize..70_000,
    ) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut gz = Vec::new();
        for _ in 0..members {
            let len = rng.usize(0..150_000);
            let data = if rng.bool() { text(&mut rng, len) } else { random(&mut rng, len) };
            gz.extend(gzip(&data, level));
        }
        let full = reference(&gz);
        let (out, index) = checkpoint_with(&gz, spacing, capacity, read).unwrap();
        prop_assert!(out == full);
        check_points(&gz, &index, &full);
        prop_assert_eq!(SeekIndex::decode(&index.encode()).unwrap(), index);
    }
}

/// The benchmark against flate2 (not a pass/fail test). Run it in release:
/// `cargo test --release --lib seek_benchmark -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run by hand in release"]
fn seek_benchmark() {
    use std::time::Instant;

    fn drain(mut r: impl Read, read: usize) -> u64 {
        let mut buf = vec![0; read];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            total += n as u64;
        }
    }
    fn best_of<F: FnMut() -> u64>(mut f: F) -> (f64, u64) {
        let mut best = f64::MAX;
        let mut n = 0;
        for _ in 0..5 {
            let start = Instant::now();
            n = f();
            best = best.min(start.elapsed().as_secs_f64());
        }
        (best, n)
    }

    let start = Instant::now();
    let text_tar = tar_like(100, 3000, 140_000, 0.0);
    let random_tar = tar_like(101, 400, 160_000, 1.0);
    let mixed_tar = tar_like(102, 3000, 140_000, 0.2);
    println!("generated in {:.1} s", start.elapsed().as_secs_f64());
    for (name, tar) in [
        ("text-like", &text_tar),
        ("random", &random_tar),
        ("mixed (20% random files)", &mixed_tar),
    ] {
        let gz = gzip(tar, 6);
        let mb = tar.len() as f64 / 1e6;
        println!(
            "{name}: {:.1} MB tar, {:.1} MB gzip -6 (ratio {:.2})",
            mb,
            gz.len() as f64 / 1e6,
            tar.len() as f64 / gz.len() as f64
        );
        for read in [256 * 1024, 16 * 1024] {
            let (tf, n) = best_of(|| drain(flate2::bufread::GzDecoder::new(&gz[..]), read));
            assert_eq!(n, tar.len() as u64);
            println!(
                "  reads of {} KiB: flate2 bufread::GzDecoder {:.3} s, {:.0} MB/s",
                read >> 10,
                tf,
                mb / tf
            );
            // u64::MAX: a single checkpoint (the first member's start): the reader's own cost.
            for spacing in [1u64 << 20, 4 << 20, 8 << 20, u64::MAX] {
                let (tc, n) =
                    best_of(|| drain(Checkpointer::with_spacing(&gz[..], spacing).unwrap(), read));
                assert_eq!(n, tar.len() as u64);
                let label = match spacing {
                    u64::MAX => "start only".to_string(),
                    s => format!("{} MiB", s >> 20),
                };
                println!(
                    "    Checkpointer {label}: {:.3} s ({:.0} MB/s, {:+.1}%)",
                    tc,
                    mb / tc,
                    (tc / tf - 1.0) * 100.0
                );
            }
        }
        for spacing in [1u64 << 20, 4 << 20, 8 << 20] {
            let mut c = Checkpointer::with_spacing(&gz[..], spacing).unwrap();
            drain(&mut c, 256 * 1024);
            let index = c.into_index().unwrap();
            let points = index.points.len();
            let start = Instant::now();
            let image = index.encode().len();
            let encode = start.elapsed().as_secs_f64();
            println!(
                "  spacing {} MiB: {} points, index {} bytes = {:.3}% of the gzip, {:.0} bytes \
                 per point, encoded in {:.1} ms",
                spacing >> 20,
                points,
                image,
                image as f64 * 100.0 / gz.len() as f64,
                image as f64 / points.max(1) as f64,
                encode * 1e3,
            );
        }
    }
}

#[test]
fn seek_a_lean_decode_reads_each_window_back_from_the_image() {
    let gz = gzip(&tar_like(7, 40, 64 * 1024, 0.3), 6);
    let (_, index) = checkpoint(&gz, 64 * 1024);
    assert!(index.points.len() > 3, "{}", index.points.len());
    let image = index.encode();
    let (lean, windows) = SeekIndex::decode_lean(&image).unwrap();
    assert_eq!(windows.len(), index.points.len());
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&image).unwrap();
    for ((full, kept), at) in index.points.iter().zip(&lean.points).zip(&windows) {
        assert!(kept.window.is_empty());
        assert_eq!(
            (kept.input, kept.output, kept.bits),
            (full.input, full.output, full.bits)
        );
        assert_eq!(read_window(&file, at).unwrap(), full.window);
    }
    // A window read from a file that changed since is an error, not a wrong length.
    file.set_len(windows.last().unwrap().offset + 1).unwrap();
    assert!(read_window(&file, windows.last().unwrap()).is_err());
}

#[test]
fn seek_writer_makes_the_image_encode_makes_and_its_windows_read_back() {
    let data = tar_like(7, 300, 64 << 10, 0.4);
    let gz = gzip(&data, 6);
    let (_, index) = checkpoint(&gz, 64 << 10);
    assert!(index.points.len() > 3, "{}", index.points.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seek.bin");
    let mut writer = SeekWriter::create(&path).unwrap();
    let mut windows = Vec::new();
    for p in &index.points {
        let at = writer.push(p).unwrap();
        // Readable while the image is written.
        assert_eq!(read_window(writer.file(), &at).unwrap(), p.window);
        windows.push(at);
    }
    // Out of order: refused.
    assert!(writer.push(&index.points[0]).is_err());
    writer
        .finish(index.compressed_len, index.uncompressed_len, index.spacing)
        .unwrap();
    let image = std::fs::read(&path).unwrap();
    assert!(
        image == index.encode(),
        "the written image differs from encode's"
    );
    let (lean, at) = SeekIndex::decode_lean(&image).unwrap();
    assert_eq!(at, windows);
    assert_eq!(lean.points.len(), index.points.len());
}

/// The image read from a file a piece at a time decodes as the image in memory does, and
/// refuses what it refuses, with the same error: every truncation and every flipped byte.
#[test]
fn seek_an_index_read_from_its_file_decodes_as_its_image() {
    let gz = gzip(&tar_like(19, 6, 20_000, 0.2), 6);
    let image = small_index(&gz).encode();
    let from_file = |image: &[u8]| {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(image).unwrap();
        SeekIndex::decode_lean_file(&file)
    };
    assert_eq!(from_file(&image), SeekIndex::decode_lean(&image));
    assert!(from_file(&image).is_ok());
    for cut in (0..image.len()).step_by(7) {
        assert_eq!(
            from_file(&image[..cut]),
            SeekIndex::decode_lean(&image[..cut]),
            "cut at {cut}"
        );
    }
    for at in (0..image.len()).step_by(3) {
        let mut damaged = image.clone();
        damaged[at] ^= 0x10;
        let got = from_file(&damaged);
        assert!(got.is_err(), "byte {at}");
        assert_eq!(got, SeekIndex::decode_lean(&damaged), "byte {at}");
        reseal(&mut damaged);
        assert_eq!(
            from_file(&damaged),
            SeekIndex::decode_lean(&damaged),
            "byte {at}"
        );
    }
}
