mod common;

use std::fs;

use cema_data::cifar::{self, Cifar100Label, IMAGE_BYTES};
use cema_data::{DataError, ImageSet, Split};
use common::{assert_names, sample_set};

/// Encodes NHWC images as CIFAR records (label bytes + planar CHW), independently of the reader.
fn records(set: &ImageSet, label_bytes: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..set.len() {
        out.extend(label_bytes(i));
        let img = set.image(i);
        for c in 0..3 {
            out.extend(img.iter().skip(c).step_by(3));
        }
    }
    out
}

fn cifar_set(n: usize, seed: u8) -> ImageSet {
    sample_set(n, 32, 32, 3, seed)
}

#[test]
fn cifar10_batch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let set = cifar_set(3, 1);
    let p = dir.path().join("test_batch.bin");
    fs::write(&p, records(&set, |i| vec![set.labels[i] as u8])).unwrap();
    assert_eq!(cifar::read_cifar10_batch(&p).unwrap(), set);
    // A known pixel: record 0, channel G (plane 1), row 0, column 1 is NHWC byte 1·3 + 1.
    let bytes = fs::read(&p).unwrap();
    assert_eq!(set.images[4], bytes[1 + 1024 + 1]);
}

#[test]
fn cifar10_train_concatenates_batches_and_finds_the_tarball_folder() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(cifar::CIFAR10_SUBDIR);
    fs::create_dir(&dir).unwrap();
    let batches: Vec<ImageSet> = (0..5).map(|b| cifar_set(2, b * 50)).collect();
    for (b, set) in batches.iter().enumerate() {
        let bytes = records(set, |i| vec![set.labels[i] as u8]);
        fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), bytes).unwrap();
    }
    let all = cifar::load_cifar10(root.path(), Split::Train).unwrap();
    assert_eq!(all.len(), 10);
    for (b, set) in batches.iter().enumerate() {
        assert_eq!(all.select(&[2 * b, 2 * b + 1]), *set);
    }
    assert_eq!(cifar::load_cifar10(&dir, Split::Train).unwrap(), all);

    let err = cifar::load_cifar10(root.path(), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert!(err.path().ends_with("test_batch.bin"), "{err}");
}

#[test]
fn cifar100_coarse_and_fine() {
    let dir = tempfile::tempdir().unwrap();
    let set = cifar_set(4, 7);
    let coarse = [3u8, 19, 0, 5];
    let fine = [99u8, 42, 0, 17];
    let p = dir.path().join("train.bin");
    fs::write(&p, records(&set, |i| vec![coarse[i], fine[i]])).unwrap();
    let f = cifar::load_cifar100(dir.path(), Split::Train, Cifar100Label::Fine).unwrap();
    let c = cifar::read_cifar100_file(&p, Cifar100Label::Coarse).unwrap();
    assert_eq!(f.images, set.images);
    assert_eq!(c.images, set.images);
    assert_eq!(f.labels, fine.map(u32::from));
    assert_eq!(c.labels, coarse.map(u32::from));
}

#[test]
fn truncated_record_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let set = cifar_set(2, 0);
    let mut bytes = records(&set, |i| vec![set.labels[i] as u8]);
    bytes.truncate(3073 + 100);
    let p = dir.path().join("data_batch_1.bin");
    fs::write(&p, &bytes).unwrap();
    let err = cifar::read_cifar10_batch(&p).unwrap_err();
    match &err {
        DataError::TruncatedRecord {
            offset,
            record_bytes,
            remaining,
            ..
        } => assert_eq!((*offset, *record_bytes, *remaining), (3073, 3073, 100)),
        e => panic!("{e}"),
    }
    assert_names(&err, &p);
    assert!(err.to_string().contains("byte offset 3073"), "{err}");

    // The same bytes read as CIFAR-100 (3074-byte records).
    let err = cifar::read_cifar100_file(&p, Cifar100Label::Fine).unwrap_err();
    assert!(
        matches!(err, DataError::TruncatedRecord { offset: 3074, .. }),
        "{err}"
    );
}

#[test]
fn bad_labels_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let set = cifar_set(2, 0);
    let p = dir.path().join("b.bin");
    fs::write(&p, records(&set, |i| vec![if i == 1 { 10 } else { 0 }])).unwrap();
    let err = cifar::read_cifar10_batch(&p).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadLabel {
                index: 1,
                value: 10,
                limit: 10,
                ..
            }
        ),
        "{err}"
    );
    assert_names(&err, &p);

    fs::write(&p, records(&set, |_| vec![20, 0])).unwrap();
    let err = cifar::read_cifar100_file(&p, Cifar100Label::Coarse).unwrap_err();
    assert!(
        matches!(err, DataError::BadLabel { limit: 20, .. }),
        "{err}"
    );
    assert!(cifar::read_cifar100_file(&p, Cifar100Label::Fine).is_ok());

    fs::write(&p, b"").unwrap();
    let err = cifar::read_cifar10_batch(&p).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
    assert_names(&err, &p);

    let missing = dir.path().join("test.bin");
    let err = cifar::load_cifar100(dir.path(), Split::Test, Cifar100Label::Fine).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &missing);
    assert_eq!(IMAGE_BYTES, 3072);
}
