mod common;

use std::path::Path;

use cema_data::fashion_mnist::{self, Split, CLASSES, INSTALL_HINT};
use cema_data::{idx, DataError};
use common::{assert_names, sample_set};

#[test]
fn loads_a_fixture_folder() {
    let dir = tempfile::tempdir().unwrap();
    let train = sample_set(6, 28, 28, 1, 1);
    let test = sample_set(4, 28, 28, 1, 2);
    for (split, set) in [(Split::Train, &train), (Split::Test, &test)] {
        let (i, l) = fashion_mnist::file_names(split);
        idx::write_image_set(&dir.path().join(i), &dir.path().join(l), set, true).unwrap();
    }
    assert_eq!(
        fashion_mnist::load(Some(dir.path()), Split::Train).unwrap(),
        train
    );
    assert_eq!(
        fashion_mnist::load(Some(dir.path()), Split::Test).unwrap(),
        test
    );
}

#[test]
fn accepts_decompressed_files() {
    let dir = tempfile::tempdir().unwrap();
    let set = sample_set(3, 28, 28, 1, 5);
    idx::write_image_set(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &dir.path().join("t10k-labels-idx1-ubyte"),
        &set,
        false,
    )
    .unwrap();
    assert_eq!(
        fashion_mnist::load(Some(dir.path()), Split::Test).unwrap(),
        set
    );
}

#[test]
fn missing_files_say_how_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let err = fashion_mnist::load(Some(dir.path()), Split::Test).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    assert_names(&err, &dir.path().join("t10k-images-idx3-ubyte.gz"));
    let msg = err.to_string();
    assert!(
        msg.contains("install it with: apt-get install -y dataset-fashion-mnist"),
        "{msg}"
    );
    assert!(msg.contains("CEMA_FASHION_MNIST_DIR"), "{msg}");
    assert!(msg.contains(INSTALL_HINT));

    // Images present, labels missing: the labels file is named.
    let set = sample_set(2, 28, 28, 1, 0);
    let (i, l) = fashion_mnist::file_names(Split::Test);
    idx::write(&dir.path().join(i), &[2, 28, 28], &set.images, true).unwrap();
    let err = fashion_mnist::load(Some(dir.path()), Split::Test).unwrap_err();
    assert_names(&err, &dir.path().join(l));
}

#[test]
fn labels_must_be_below_ten() {
    let dir = tempfile::tempdir().unwrap();
    let mut set = sample_set(2, 28, 28, 1, 0);
    set.labels[1] = 10;
    let (i, l) = fashion_mnist::file_names(Split::Train);
    idx::write_image_set(&dir.path().join(i), &dir.path().join(l), &set, true).unwrap();
    let err = fashion_mnist::load(Some(dir.path()), Split::Train).unwrap_err();
    assert!(matches!(err, DataError::BadLabel { index: 1, .. }), "{err}");
    assert_names(&err, &dir.path().join(l));
}

#[test]
fn class_names() {
    assert_eq!(CLASSES.len(), 10);
    assert_eq!(CLASSES[0], "T-shirt/top");
    assert_eq!(CLASSES[9], "Ankle boot");
}

/// The real test split, when the Debian package is installed.
#[test]
fn real_test_split() {
    let dir = Path::new(fashion_mnist::DEFAULT_DIR);
    let (images, _) = fashion_mnist::file_names(Split::Test);
    if !dir.join(images).is_file() {
        eprintln!(
            "note: {} absent, skipping the real Fashion-MNIST test",
            dir.display()
        );
        return;
    }
    let set = fashion_mnist::load(Some(dir), Split::Test).unwrap();
    assert_eq!(set.len(), 10_000);
    assert_eq!((set.height, set.width, set.channels), (28, 28, 1));
    assert_eq!(set.images.len(), 10_000 * 28 * 28);
    assert!(set.labels.iter().all(|&l| l < 10));
    // Balanced: 1 000 per class.
    let mut counts = [0usize; 10];
    set.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [1000; 10]);
}
