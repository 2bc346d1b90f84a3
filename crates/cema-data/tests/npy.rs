mod common;

use std::fs;

use cema_data::npy::{self, Dtype, NpyArray, NpyData, NpyFile};
use cema_data::DataError;
use common::assert_names;

/// A file with a hand-written header dict, as another NumPy version (or Python 2) might write it.
fn with_header(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = b"\x93NUMPY".to_vec();
    v.extend_from_slice(&[version, 0]);
    let text = format!("{dict}\n");
    if version == 1 {
        v.extend_from_slice(&(text.len() as u16).to_le_bytes());
    } else {
        v.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn round_trip_u8_images() {
    let dir = tempfile::tempdir().unwrap();
    for shape in [vec![3, 4, 5], vec![2, 3, 4, 3], vec![0, 8, 8]] {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).map(|i| (i * 13) as u8).collect();
        let p = dir.path().join(format!("{}d.npy", shape.len()));
        npy::write_u8(&p, &shape, &data).unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(bytes.len() % 64, n % 64, "header padded to 64 bytes");
        assert_eq!(npy::read_u8(&p).unwrap(), (shape.clone(), data.clone()));
        let mem = npy::parse(&bytes, &p).unwrap();
        assert_eq!(mem.shape, shape);
        assert_eq!(mem.data, NpyData::U8(data));
    }
}

#[test]
fn round_trip_labels_all_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let labels = vec![0u32, 9, 3, 255, 1];
    for dtype in [Dtype::U8, Dtype::I32, Dtype::I64] {
        let p = dir.path().join(format!("{dtype:?}.npy"));
        npy::write_labels(&p, &labels, dtype).unwrap();
        let f = NpyFile::open(&p).unwrap();
        assert_eq!(f.dtype(), dtype);
        assert_eq!(f.shape(), &[5]);
        assert_eq!(npy::read_labels(&p).unwrap(), labels);
    }
    let too_big = npy::write_labels(&dir.path().join("x.npy"), &[256], Dtype::U8).unwrap_err();
    assert!(
        matches!(too_big, DataError::InvalidArgument { .. }),
        "{too_big}"
    );
}

#[test]
fn reads_row_slices() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rows.npy");
    let data: Vec<u8> = (0..60).collect();
    npy::write_u8(&p, &[10, 2, 3], &data).unwrap();
    let mut f = NpyFile::open(&p).unwrap();
    assert_eq!(f.rows().unwrap(), 10);
    assert_eq!(f.read_rows_u8(4, 3).unwrap(), data[24..42]);
    assert_eq!(f.read_rows_u8(0, 1).unwrap(), data[..6]);
    let err = f.read_rows_u8(9, 2).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument { .. }), "{err}");
    assert_names(&err, &p);

    let lp = dir.path().join("l.npy");
    npy::write_labels(&lp, &[5, 6, 7, 8], Dtype::I64).unwrap();
    assert_eq!(
        NpyFile::open(&lp).unwrap().read_rows_labels(1, 2).unwrap(),
        [6, 7]
    );
}

#[test]
fn reads_version_2_and_3_and_python2_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            2,
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }",
        ),
        (
            3,
            "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), 'note': 'héllo'}",
        ),
        (
            1,
            "{'shape': (2L, 2L), 'fortran_order': False, 'descr': '|u1'}",
        ),
        (
            1,
            "{\"descr\":\"<u1\",\"fortran_order\":False,\"shape\":[2,2]}",
        ),
    ];
    for (i, (version, dict)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("{i}.npy"));
        fs::write(&p, with_header(version, dict, &[1, 2, 3, 4])).unwrap();
        let f = NpyFile::open(&p).unwrap_or_else(|e| panic!("{dict}: {e}"));
        assert_eq!(f.header().version.0, version);
        assert_eq!(npy::read_u8(&p).unwrap(), (vec![2, 2], vec![1, 2, 3, 4]));
    }
    // int32 and int64 payloads, little-endian.
    let p = dir.path().join("i32.npy");
    let mut data = Vec::new();
    for x in [3i32, 1, 4] {
        data.extend_from_slice(&x.to_le_bytes());
    }
    fs::write(
        &p,
        with_header(
            1,
            "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }",
            &data,
        ),
    )
    .unwrap();
    assert_eq!(
        npy::read(&p).unwrap(),
        NpyArray {
            shape: vec![3],
            data: NpyData::I32(vec![3, 1, 4])
        }
    );
}

fn expect_err(name: &str, bytes: &[u8]) -> (DataError, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    fs::write(&p, bytes).unwrap();
    let err = npy::read(&p).unwrap_err();
    assert_names(&err, &p);
    // The in-memory parser agrees with the file reader.
    let mem = npy::parse(bytes, &p).unwrap_err();
    assert_eq!(
        std::mem::discriminant(&mem),
        std::mem::discriminant(&err),
        "{mem} vs {err}"
    );
    (err, p, dir)
}

#[test]
fn fortran_order_is_refused() {
    let bytes = with_header(
        1,
        "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 2), }",
        &[0; 4],
    );
    let (err, ..) = expect_err("f.npy", &bytes);
    assert!(matches!(err, DataError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("fortran_order"), "{err}");
}

#[test]
fn unknown_dtypes() {
    for descr in ["<f4", ">i8", "<U10", "|b1"] {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
        let (err, ..) = expect_err("d.npy", &with_header(1, &dict, &[0; 8]));
        assert!(
            matches!(err, DataError::UnknownDtype { .. }),
            "{descr}: {err}"
        );
        assert!(err.to_string().contains(descr), "{err}");
    }
    let structured = "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (1,), }";
    let (err, ..) = expect_err("s.npy", &with_header(1, structured, &[0; 4]));
    assert!(matches!(err, DataError::UnknownDtype { .. }), "{err}");

    // Labels where images are required.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("labels.npy");
    npy::write_labels(&p, &[1, 2], Dtype::I64).unwrap();
    let err = npy::read_u8(&p).unwrap_err();
    assert!(matches!(err, DataError::UnknownDtype { .. }), "{err}");
    assert_names(&err, &p);
}

#[test]
fn bad_magic_and_version() {
    let (err, ..) = expect_err("m.npy", b"PK\x03\x04 this is a zip");
    assert!(matches!(err, DataError::BadMagic { .. }), "{err}");
    let mut v = with_header(1, "{}", &[]);
    v[6] = 9;
    let (err, ..) = expect_err("v.npy", &v);
    assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
    assert!(err.to_string().contains("version 9"), "{err}");
}

#[test]
fn bad_headers() {
    for dict in [
        "{'descr': '|u1', 'shape': (2,), }",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (-2,), }",
        "{'descr': '|u1', 'fortran_order': False, 'shape': 'x', }",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (2,) ",
        "not a dict",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
    ] {
        let (err, ..) = expect_err("h.npy", &with_header(1, dict, &[0; 2]));
        assert!(matches!(err, DataError::BadHeader { .. }), "{dict}: {err}");
    }
    // A header length far beyond any real header.
    let mut v = b"\x93NUMPY\x02\x00".to_vec();
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    let (err, ..) = expect_err("big.npy", &v);
    assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
}

#[test]
fn truncated_and_trailing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.npy");
    npy::write_u8(&p, &[4, 4], &[1; 16]).unwrap();
    let good = fs::read(&p).unwrap();

    let (err, ..) = expect_err("t.npy", &good[..good.len() - 1]);
    match err {
        DataError::Truncated {
            expected_bytes,
            got,
            ..
        } => assert_eq!(
            (expected_bytes, got),
            (good.len() as u64, good.len() as u64 - 1)
        ),
        e => panic!("{e}"),
    }
    // Cut inside the header.
    let (err, ..) = expect_err("th.npy", &good[..40]);
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");

    let mut longer = good.clone();
    longer.push(0);
    let (err, ..) = expect_err("x.npy", &longer);
    assert!(matches!(err, DataError::TrailingData { .. }), "{err}");

    // A shape claiming far more data than present fails on the length check.
    let huge = with_header(
        1,
        "{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000000,), }",
        &[0; 8],
    );
    let (err, ..) = expect_err("huge.npy", &huge);
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
}

#[test]
fn negative_labels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("neg.npy");
    npy::write(
        &p,
        &NpyArray {
            shape: vec![3],
            data: NpyData::I64(vec![0, -1, 2]),
        },
    )
    .unwrap();
    let err = npy::read_labels(&p).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 1,
                value: -1,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, &p);
    // Labels must be one-dimensional.
    let p2 = dir.path().join("2d.npy");
    npy::write_u8(&p2, &[2, 2], &[0; 4]).unwrap();
    let err = npy::read_labels(&p2).unwrap_err();
    assert!(matches!(err, DataError::BadShape { .. }), "{err}");
}

#[test]
fn missing_and_bad_writer_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("none.npy");
    let err = npy::read(&p).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &p);
    let err = npy::write_u8(&p, &[2, 2], &[0; 3]).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument { .. }), "{err}");
    assert!(!p.exists());
    // Writing leaves no temporary files behind.
    npy::write_u8(&p, &[1], &[0]).unwrap();
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("none.npy")]);
}
