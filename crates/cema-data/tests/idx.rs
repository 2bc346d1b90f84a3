mod common;

use std::fs;
use std::io::Write;

use cema_data::idx::{self, IdxArray};
use cema_data::DataError;
use common::{assert_names, sample_set};
use flate2::write::GzEncoder;
use flate2::Compression;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Raw IDX bytes written by hand, independent of the crate's writer.
fn raw_idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn round_trip_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let set = sample_set(7, 5, 4, 1, 3);
    for gz in [false, true] {
        let ip = dir.path().join(format!("images-{gz}"));
        let lp = dir.path().join(format!("labels-{gz}"));
        idx::write_image_set(&ip, &lp, &set, gz).unwrap();
        assert_eq!(fs::read(&ip).unwrap().starts_with(&idx::GZIP_MAGIC), gz);
        let back = idx::load(&ip, &lp, Some(10)).unwrap();
        assert_eq!(back, set);
    }
    // Several channels go to a 4-d file.
    let rgb = sample_set(3, 2, 2, 3, 9);
    let (ip, lp) = (dir.path().join("rgb-i"), dir.path().join("rgb-l"));
    idx::write_image_set(&ip, &lp, &rgb, true).unwrap();
    assert_eq!(idx::read(&ip).unwrap().dims, vec![3, 2, 2, 3]);
    assert_eq!(idx::load(&ip, &lp, None).unwrap(), rgb);
}

#[test]
fn reads_hand_written_bytes() {
    let bytes = raw_idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let want = IdxArray {
        dims: vec![2, 3],
        data: vec![1, 2, 3, 4, 5, 6],
    };
    let p = std::path::Path::new("mem");
    assert_eq!(idx::decode(&bytes, p).unwrap(), want);
    assert_eq!(idx::decode(&gzip(&bytes), p).unwrap(), want);
    assert_eq!(idx::encode(&[2, 3], &want.data, false, p).unwrap(), bytes);
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.gz");
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &p);
}

#[test]
fn bad_magic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad");
    fs::write(&p, b"\x01\x02\x08\x01\0\0\0\0").unwrap();
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::BadMagic { .. }), "{err}");
    assert_names(&err, &p);
    assert!(err.to_string().contains("0x01020801"), "{err}");
}

#[test]
fn truncated_raw_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let full = raw_idx(&[4, 3], &[7; 12]);
    for (name, bytes) in [
        ("raw", full[..full.len() - 2].to_vec()),
        ("gz", gzip(&full[..full.len() - 2])),
        ("header", full[..6].to_vec()),
    ] {
        let p = dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        let err = idx::read(&p).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{name}: {err}");
        assert_names(&err, &p);
    }
    let p = dir.path().join("raw");
    match idx::read(&p).unwrap_err() {
        DataError::Truncated {
            expected_bytes,
            got,
            ..
        } => assert_eq!((expected_bytes, got), (4 + 8 + 12, 4 + 8 + 10)),
        e => panic!("{e}"),
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = raw_idx(&[2], &[1, 2]);
    bytes.push(9);
    for (name, b) in [("raw", bytes.clone()), ("gz", gzip(&bytes))] {
        let p = dir.path().join(name);
        fs::write(&p, b).unwrap();
        let err = idx::read(&p).unwrap_err();
        assert!(
            matches!(err, DataError::TrailingData { .. }),
            "{name}: {err}"
        );
        assert_names(&err, &p);
    }
}

#[test]
fn corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = gzip(&raw_idx(&[64], &[5; 64]));
    // Damage the CRC in the trailer: the deflate data stay valid, so only the check can notice.
    let n = gz.len();
    gz[n - 8] ^= 0xff;
    let p = dir.path().join("crc.gz");
    fs::write(&p, &gz).unwrap();
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_names(&err, &p);

    // Garbage after a valid gzip header: an invalid deflate block type.
    let mut garbage = gzip(b"")[..10].to_vec();
    garbage.extend_from_slice(&[0xff; 32]);
    let p = dir.path().join("garbage.gz");
    fs::write(&p, &garbage).unwrap();
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_names(&err, &p);
}

#[test]
fn unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("floats");
    let mut bytes = raw_idx(&[1], &[0, 0, 0, 0]);
    bytes[2] = 0x0D;
    fs::write(&p, bytes).unwrap();
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::UnknownDtype { .. }), "{err}");
    assert!(err.to_string().contains("f32"), "{err}");
    assert_names(&err, &p);
}

#[test]
fn lying_header_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    // Declares 4 G × 4 G × 4 G bytes; must fail on the size check, not on allocation.
    let p = dir.path().join("huge");
    fs::write(&p, raw_idx(&[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3])).unwrap();
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
    assert_names(&err, &p);
    // 4 GB declared, a few bytes present (raw and gzip).
    let bytes = raw_idx(&[u32::MAX], &[1, 2, 3]);
    for (name, b) in [("big", bytes.clone()), ("big.gz", gzip(&bytes))] {
        let p = dir.path().join(name);
        fs::write(&p, b).unwrap();
        let err = idx::read(&p).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{name}: {err}");
    }
}

#[test]
fn zero_dimensions_and_wrong_rank() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero");
    fs::write(&p, [0, 0, 8, 0]).unwrap();
    let err = idx::read(&p).unwrap_err();
    assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
    assert_names(&err, &p);

    // A labels file passed as images.
    let p = dir.path().join("labels");
    fs::write(&p, raw_idx(&[3], &[1, 2, 3])).unwrap();
    let err = idx::read_images(&p).unwrap_err();
    assert!(matches!(err, DataError::BadShape { .. }), "{err}");
    assert_names(&err, &p);
}

#[test]
fn count_mismatch_and_bad_label() {
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("i");
    let lp = dir.path().join("l");
    fs::write(&ip, raw_idx(&[2, 1, 1], &[1, 2])).unwrap();
    fs::write(&lp, raw_idx(&[3], &[0, 1, 2])).unwrap();
    let err = idx::load(&ip, &lp, None).unwrap_err();
    match &err {
        DataError::CountMismatch { images, labels, .. } => assert_eq!((*images, *labels), (2, 3)),
        e => panic!("{e}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&ip.display().to_string()) && msg.contains(&lp.display().to_string()));

    fs::write(&lp, raw_idx(&[2], &[0, 12])).unwrap();
    let err = idx::load(&ip, &lp, Some(10)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 1,
                value: 12,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, &lp);
}

#[test]
fn writer_rejects_inconsistent_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w");
    let err = idx::write(&p, &[2, 2], &[1, 2, 3], false).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument { .. }), "{err}");
    assert!(!p.exists());
}
