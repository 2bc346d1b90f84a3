mod common;

use std::fs;

use cema_data::cifar_c::{self, CorruptedDir, LABELS_FILE};
use cema_data::npy::{self, Dtype};
use cema_data::{DataError, ImageSet};
use common::{assert_names, sample_set};

fn severities(n: usize, h: usize, w: usize, c: usize) -> [ImageSet; 5] {
    std::array::from_fn(|s| {
        let mut set = sample_set(n, h, w, c, 40 * s as u8);
        set.labels = sample_set(n, 1, 1, 1, 0).labels;
        set
    })
}

#[test]
fn round_trip_gray_and_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let gray = severities(4, 6, 5, 1);
    let rgb = severities(3, 4, 4, 3);
    cifar_c::write_corruption(dir.path(), "fog", &gray).unwrap();
    cifar_c::write_corruption(dir.path(), "snow", &rgb).unwrap();
    cifar_c::write_labels(dir.path(), &gray[0].labels).unwrap();

    let cd = CorruptedDir::open(dir.path()).unwrap();
    assert_eq!(cd.corruptions(), ["fog", "snow"]);
    assert_eq!(
        npy::NpyFile::open(&cd.corruption_path("fog"))
            .unwrap()
            .shape(),
        [20, 6, 5]
    );
    assert_eq!(
        npy::NpyFile::open(&cd.corruption_path("snow"))
            .unwrap()
            .shape(),
        [15, 4, 4, 3]
    );
    let labels_file = npy::NpyFile::open(&cd.labels_path()).unwrap();
    assert_eq!(labels_file.dtype(), Dtype::I64);
    assert_eq!(cd.labels().unwrap().len(), 20);
    assert_eq!(cd.images_per_severity("fog").unwrap(), 4);

    for s in 1..=5u8 {
        assert_eq!(
            cd.load("fog", s).unwrap(),
            gray[s as usize - 1],
            "severity {s}"
        );
    }
    // The rgb file has 3 images per severity while labels.npy has 5·4: a mismatch.
    let err = cd.load("snow", 1).unwrap_err();
    match &err {
        DataError::CountMismatch { images, labels, .. } => assert_eq!((*images, *labels), (15, 20)),
        e => panic!("{e}"),
    }
    assert_names(&err, &cd.corruption_path("snow"));
    assert!(err.to_string().contains(LABELS_FILE));

    // A separate folder where the rgb set matches its labels.
    let dir2 = tempfile::tempdir().unwrap();
    cifar_c::write_corruption(dir2.path(), "snow", &rgb).unwrap();
    cifar_c::write_labels(dir2.path(), &rgb[0].labels).unwrap();
    let cd2 = CorruptedDir::open(dir2.path()).unwrap();
    for s in 1..=5u8 {
        assert_eq!(cd2.load("snow", s).unwrap(), rgb[s as usize - 1]);
    }
}

#[test]
fn reads_hand_made_release_layout() {
    // As the original release: (5N, H, W, C) uint8 and 5N int64 labels, written without our writer.
    let dir = tempfile::tempdir().unwrap();
    let n = 2;
    let pixels: Vec<u8> = (0..5 * n * 2 * 2 * 3).map(|i| i as u8).collect();
    npy::write_u8(
        &dir.path().join("gaussian_noise.npy"),
        &[5 * n, 2, 2, 3],
        &pixels,
    )
    .unwrap();
    let labels: Vec<u32> = (0..5 * n as u32).map(|i| i % n as u32 + 3).collect();
    npy::write_labels(&dir.path().join(LABELS_FILE), &labels, Dtype::I64).unwrap();
    let cd = CorruptedDir::open(dir.path()).unwrap();
    let s3 = cd.load("gaussian_noise", 3).unwrap();
    assert_eq!(s3.len(), 2);
    assert_eq!((s3.height, s3.width, s3.channels), (2, 2, 3));
    assert_eq!(s3.images, pixels[2 * n * 12..3 * n * 12]);
    assert_eq!(s3.labels, [3, 4]);

    // Labels of one severity only (N, int32) are accepted too.
    npy::write_labels(&dir.path().join(LABELS_FILE), &[7, 8], Dtype::I32).unwrap();
    assert_eq!(cd.load("gaussian_noise", 5).unwrap().labels, [7, 8]);
}

#[test]
fn label_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    cifar_c::write_corruption(dir.path(), "zoom_blur", &severities(3, 2, 2, 1)).unwrap();
    npy::write_labels(&dir.path().join(LABELS_FILE), &[0; 7], Dtype::I64).unwrap();
    let cd = CorruptedDir::open(dir.path()).unwrap();
    let err = cd.load("zoom_blur", 1).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 15,
                labels: 7,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, &dir.path().join("zoom_blur.npy"));
}

#[test]
fn missing_labels_unknown_corruption_bad_severity() {
    let dir = tempfile::tempdir().unwrap();
    cifar_c::write_corruption(dir.path(), "frost", &severities(1, 2, 2, 1)).unwrap();
    let cd = CorruptedDir::open(dir.path()).unwrap();

    let err = cd.load("frost", 1).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &dir.path().join(LABELS_FILE));

    let err = cd.load("fogg", 1).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &dir.path().join("fogg.npy"));
    assert!(err.to_string().contains("available: frost"), "{err}");

    for s in [0u8, 6] {
        let err = cd.load("frost", s).unwrap_err();
        assert!(matches!(err, DataError::InvalidArgument { .. }), "{err}");
        assert_names(&err, &dir.path().join("frost.npy"));
    }
    for bad in ["../x", "labels", ""] {
        assert!(matches!(
            cd.load(bad, 1).unwrap_err(),
            DataError::InvalidArgument { .. }
        ));
    }

    let nowhere = dir.path().join("nowhere");
    let err = CorruptedDir::open(&nowhere).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &nowhere);
}

#[test]
fn bad_shapes() {
    let dir = tempfile::tempdir().unwrap();
    npy::write_u8(&dir.path().join("odd.npy"), &[7, 2, 2], &[0; 28]).unwrap();
    npy::write_u8(&dir.path().join("flat.npy"), &[10, 4], &[0; 40]).unwrap();
    npy::write_labels(&dir.path().join(LABELS_FILE), &[0; 10], Dtype::I64).unwrap();
    let cd = CorruptedDir::open(dir.path()).unwrap();
    for name in ["odd", "flat"] {
        let err = cd.load(name, 1).unwrap_err();
        assert!(matches!(err, DataError::BadShape { .. }), "{name}: {err}");
        assert_names(&err, &dir.path().join(format!("{name}.npy")));
    }
}

#[test]
fn writer_checks_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut sets = severities(2, 3, 3, 1);
    sets[3] = sample_set(2, 4, 3, 1, 0);
    let err = cifar_c::write_corruption(dir.path(), "pixelate", &sets).unwrap_err();
    assert!(matches!(err, DataError::InvalidArgument { .. }), "{err}");
    assert!(err.to_string().contains("severity 4"), "{err}");
    assert_names(&err, &dir.path().join("pixelate.npy"));
    assert!(!dir.path().join("pixelate.npy").exists());

    // Overwriting is atomic and the folder holds only the final files.
    cifar_c::write_corruption(dir.path(), "pixelate", &severities(2, 3, 3, 1)).unwrap();
    cifar_c::write_corruption(dir.path(), "pixelate", &severities(2, 3, 3, 1)).unwrap();
    cifar_c::write_labels(dir.path(), &[1, 2]).unwrap();
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["labels.npy", "pixelate.npy"]);
}
