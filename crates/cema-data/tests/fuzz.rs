//! The binary parsers must return an error, never panic, on any input: arbitrary bytes, every
//! truncation of a small valid file, and random byte flips of valid files.
//!
//! Case counts are kept small enough for the whole file to run in a few seconds.

use std::io::Write;
use std::path::Path;

use cema_data::cifar::{self, Cifar100Label};
use cema_data::npy::{self, Dtype, NpyData};
use cema_data::{idx, DataError};
use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;

const P: &str = "fuzz-input";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn valid_idx() -> Vec<u8> {
    idx::encode(
        &[3, 4, 5],
        &(0..60).collect::<Vec<u8>>(),
        false,
        Path::new(P),
    )
    .unwrap()
}

fn valid_npy_u8() -> Vec<u8> {
    let mut v = npy::header_bytes(Dtype::U8, &[3, 2, 2, 1]);
    v.extend_from_slice(&[9; 12]);
    v
}

fn valid_npy_labels() -> Vec<u8> {
    let mut v = npy::header_bytes(Dtype::I64, &[3]);
    for x in [1i64, 2, 3] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A successful parse must at least be self-consistent.
fn check_idx(bytes: &[u8]) {
    if let Ok(a) = idx::decode(bytes, Path::new(P)) {
        assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
    }
}

fn check_npy(bytes: &[u8]) {
    match npy::parse(bytes, Path::new(P)) {
        Ok(a) => assert_eq!(a.shape.iter().product::<usize>(), a.data.len()),
        Err(e) => assert_eq!(e.path(), Path::new(P)),
    }
}

fn check_cifar(bytes: &[u8]) {
    if let Ok(s) = cifar::parse_cifar10(bytes, Path::new(P)) {
        assert_eq!(s.images.len(), s.len() * 3072);
    }
    let _ = cifar::parse_cifar100(bytes, Path::new(P), Cifar100Label::Fine);
}

fn flip(mut bytes: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    for &(i, x) in flips {
        let n = bytes.len();
        bytes[i % n] ^= x;
    }
    bytes
}

#[test]
fn every_truncation_of_valid_files_is_an_error() {
    let files = [
        ("idx", valid_idx()),
        ("idx.gz", gzip(&valid_idx())),
        ("npy u8", valid_npy_u8()),
        ("npy i64", valid_npy_labels()),
    ];
    for (name, full) in &files {
        assert!(
            name.starts_with("idx") && idx::decode(full, Path::new(P)).is_ok()
                || npy::parse(full, Path::new(P)).is_ok()
        );
        for cut in 0..full.len() {
            let prefix = &full[..cut];
            let r = if name.starts_with("idx") {
                idx::decode(prefix, Path::new(P)).map(|_| ())
            } else {
                npy::parse(prefix, Path::new(P)).map(|_| ())
            };
            let e = r.expect_err(&format!("{name} cut at {cut} parsed"));
            assert_eq!(e.path(), Path::new(P));
        }
    }
    // The file-based NPY reader agrees on a few cuts.
    let dir = tempfile::tempdir().unwrap();
    let full = valid_npy_u8();
    for cut in [0, 5, 9, 20, 64, 70, full.len() - 1] {
        let p = dir.path().join(format!("cut{cut}.npy"));
        std::fs::write(&p, &full[..cut]).unwrap();
        let e = npy::read(&p).unwrap_err();
        assert!(
            matches!(e, DataError::Truncated { .. } | DataError::BadMagic { .. }),
            "{e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check_idx(&bytes);
        check_npy(&bytes);
        check_cifar(&bytes);
    }

    /// Arbitrary bodies behind valid magic numbers, to get past the first check.
    #[test]
    fn arbitrary_bytes_after_magic(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 0u8..5) {
        let mut bytes = match kind {
            0 => vec![0, 0, 8],
            1 => idx::GZIP_MAGIC.to_vec(),
            2 => b"\x93NUMPY\x01\x00".to_vec(),
            3 => b"\x93NUMPY\x02\x00".to_vec(),
            _ => b"\x93NUMPY\x03\x00".to_vec(),
        };
        bytes.extend_from_slice(&body);
        check_idx(&bytes);
        check_npy(&bytes);
    }

    /// Header dicts made of the characters that matter to the literal parser.
    #[test]
    fn arbitrary_npy_header_text(text in "[{}()\\[\\]',:\" a-z_0-9L<|>-]{0,120}", data in proptest::collection::vec(any::<u8>(), 0..32)) {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(&data);
        check_npy(&bytes);
    }

    /// Valid-looking headers with random shapes: huge, zero, negative, many dimensions.
    #[test]
    fn arbitrary_npy_shapes(dims in proptest::collection::vec(any::<i64>(), 0..8), descr in prop::sample::select(vec!["|u1", "<i8", "<i4", "<f8"]), data_len in 0usize..64) {
        let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({},), }}\n", shape.join(", "));
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        bytes.extend_from_slice(dict.as_bytes());
        bytes.extend(std::iter::repeat_n(7u8, data_len));
        check_npy(&bytes);
    }

    /// Valid IDX headers with random dimensions (lying sizes).
    #[test]
    fn arbitrary_idx_dims(dims in proptest::collection::vec(any::<u32>(), 0..6), data_len in 0usize..64, gz in any::<bool>()) {
        let mut bytes = vec![0, 0, 8, dims.len() as u8];
        for d in &dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend(std::iter::repeat_n(1u8, data_len));
        if gz {
            bytes = gzip(&bytes);
        }
        check_idx(&bytes);
    }

    #[test]
    fn byte_flips_of_valid_files(flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..6)) {
        check_idx(&flip(valid_idx(), &flips));
        check_idx(&flip(gzip(&valid_idx()), &flips));
        check_npy(&flip(valid_npy_u8(), &flips));
        check_npy(&flip(valid_npy_labels(), &flips));
        let labels = flip(valid_npy_labels(), &flips);
        if let Ok(a) = npy::parse(&labels, Path::new(P)) {
            // Converting flipped labels must also fail cleanly.
            let _ = a.data.to_labels(Path::new(P), 0);
            if let NpyData::I64(v) = &a.data {
                prop_assert_eq!(v.len(), a.shape.iter().product::<usize>());
            }
        }
        let cifar_rec = vec![3u8; 2 * 3073];
        check_cifar(&flip(cifar_rec, &flips));
    }
}

proptest! {
    // Goes through the file system, so fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// The seeking reader (used by CIFAR-10-C) on flipped files: open, then read rows.
    #[test]
    fn npy_file_reader_on_flipped_files(flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4), start in 0usize..4, count in 0usize..4) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        std::fs::write(&p, flip(valid_npy_u8(), &flips)).unwrap();
        if let Ok(mut f) = npy::NpyFile::open(&p) {
            let _ = f.read_rows(start, count);
            let _ = f.read_all();
        }
        std::fs::write(&p, flip(valid_npy_labels(), &flips)).unwrap();
        let _ = npy::read_labels(&p);
        let _ = npy::read_u8(&p);
    }
}
