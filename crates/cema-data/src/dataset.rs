//! The named datasets with a fixed train/test split that cema trains, evaluates and benchmarks on.
//!
//! One value picks the loader, the image geometry and the class names, so that a command taking
//! `--dataset` needs no per-dataset branches of its own. A corrupted copy of a dataset's test set
//! (the CIFAR-10-C layout) is read with [`crate::cifar_c`]; this module gives the clean set it is
//! checked against.

use std::path::{Path, PathBuf};

use crate::cifar::{self, Cifar100Label};
use crate::error::{DataError, Result};
use crate::{fashion_mnist, photo, ImageSet, Split};

/// Where the CIFAR loaders look without a folder: `data/` holding the extracted tarball folder
/// (`data/cifar-10-batches-bin`, `data/cifar-100-binary`), beside `data/fashion-mnist-c`.
pub const CIFAR_DEFAULT_DIR: &str = "data";

/// A dataset with a fixed train/test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    /// Fashion-MNIST: 28×28 gray, 10 classes (Debian's `dataset-fashion-mnist`).
    FashionMnist,
    /// CIFAR-10, binary version: 32×32 RGB, 10 classes.
    Cifar10,
    /// CIFAR-100, binary version, fine labels: 32×32 RGB, 100 classes.
    Cifar100,
    /// A few labelled ImageNet photographs (`scripts/setup.sh` installs 20), each as 16 views of
    /// 224×224 RGB, 1000 classes; a test split only ([`crate::photo::load_imagenet_photos`]).
    ImagenetPhotos,
}

impl Dataset {
    pub const ALL: [Dataset; 4] = [
        Dataset::FashionMnist,
        Dataset::Cifar10,
        Dataset::Cifar100,
        Dataset::ImagenetPhotos,
    ];

    /// The name model cards, manifests and `--dataset` use.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Cifar10 => "cifar10",
            Dataset::Cifar100 => "cifar100",
            Dataset::ImagenetPhotos => "imagenet-photos",
        }
    }

    /// The dataset called `name` (see [`Dataset::name`]).
    pub fn from_name(name: &str) -> Option<Dataset> {
        Dataset::ALL.into_iter().find(|d| d.name() == name)
    }

    /// (height, width, channels) of every image.
    pub fn geometry(self) -> (usize, usize, usize) {
        match self {
            Dataset::FashionMnist => (fashion_mnist::SIDE, fashion_mnist::SIDE, 1),
            Dataset::Cifar10 | Dataset::Cifar100 => (cifar::SIDE, cifar::SIDE, 3),
            Dataset::ImagenetPhotos => {
                (photo::IMAGENET_PHOTOS_SIDE, photo::IMAGENET_PHOTOS_SIDE, 3)
            }
        }
    }

    pub fn num_classes(self) -> usize {
        match self {
            Dataset::FashionMnist => fashion_mnist::CLASSES.len(),
            Dataset::Cifar10 => cifar::CIFAR10_CLASSES.len(),
            Dataset::Cifar100 => Cifar100Label::Fine.num_classes() as usize,
            Dataset::ImagenetPhotos => 1000,
        }
    }

    /// The folder [`Dataset::load`] reads for `dir`: Fashion-MNIST resolves as
    /// [`fashion_mnist::resolve_dir`] does (argument, `$CEMA_FASHION_MNIST_DIR`, Debian's folder);
    /// CIFAR takes the argument, else [`CIFAR_DEFAULT_DIR`].
    pub fn resolve_dir(self, dir: Option<&Path>) -> PathBuf {
        match self {
            Dataset::FashionMnist => fashion_mnist::resolve_dir(dir),
            Dataset::Cifar10 | Dataset::Cifar100 => dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(CIFAR_DEFAULT_DIR)),
            Dataset::ImagenetPhotos => dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(photo::IMAGENET_PHOTOS_DIR)),
        }
    }

    /// Loads one split from the folder [`Dataset::resolve_dir`] gives for `dir`.
    pub fn load(self, dir: Option<&Path>, split: Split) -> Result<ImageSet> {
        let dir = self.resolve_dir(dir);
        match self {
            Dataset::FashionMnist => fashion_mnist::load(Some(&dir), split),
            Dataset::Cifar10 => cifar::load_cifar10(&dir, split),
            Dataset::Cifar100 => cifar::load_cifar100(&dir, split, Cifar100Label::Fine),
            Dataset::ImagenetPhotos => match split {
                Split::Test => photo::load_imagenet_photos(
                    &dir,
                    photo::IMAGENET_PHOTOS_SIDE,
                    photo::IMAGENET_PHOTOS_VIEWS,
                ),
                Split::Train => Err(DataError::InvalidArgument {
                    path: dir,
                    reason: "imagenet-photos has a test split only (20 photographs)".into(),
                }),
            },
        }
    }

    /// Class names in label order. CIFAR-100's come from the `fine_label_names.txt` its tarball
    /// ships beside the data, when that file is in `dir`; otherwise they are the label numbers
    /// (the names are metadata: nothing depends on them but the model card's readability).
    pub fn class_names(self, dir: Option<&Path>) -> Vec<String> {
        let owned = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        match self {
            Dataset::FashionMnist => owned(&fashion_mnist::CLASSES),
            Dataset::Cifar10 => owned(&cifar::CIFAR10_CLASSES),
            // The names are in the ImageNet models' cards; the labels are class indices.
            Dataset::ImagenetPhotos => (0..1000).map(|i| i.to_string()).collect(),
            Dataset::Cifar100 => {
                let n = self.num_classes();
                let dir = self.resolve_dir(dir);
                let names = [
                    dir.join("fine_label_names.txt"),
                    dir.join(cifar::CIFAR100_SUBDIR)
                        .join("fine_label_names.txt"),
                ]
                .iter()
                .find_map(|p| std::fs::read_to_string(p).ok())
                .map(|text| {
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect::<Vec<_>>()
                });
                match names {
                    Some(v) if v.len() == n => v,
                    _ => (0..n).map(|i| i.to_string()).collect(),
                }
            }
        }
    }
}

impl std::fmt::Display for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_geometry_matches_the_loaders() {
        for d in Dataset::ALL {
            assert_eq!(Dataset::from_name(d.name()), Some(d));
            assert_eq!(
                d.class_names(Some(Path::new("/nonexistent"))).len(),
                d.num_classes()
            );
        }
        assert_eq!(Dataset::from_name("mnist"), None);
        assert_eq!(Dataset::Cifar10.geometry(), (32, 32, 3));
        assert_eq!(Dataset::FashionMnist.geometry(), (28, 28, 1));
    }

    #[test]
    fn cifar100_names_come_from_the_tarball_file_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join(cifar::CIFAR100_SUBDIR);
        std::fs::create_dir(&sub).unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("class{i}")).collect();
        std::fs::write(sub.join("fine_label_names.txt"), names.join("\n") + "\n\n").unwrap();
        assert_eq!(Dataset::Cifar100.class_names(Some(dir.path())), names);
        // A file with the wrong number of lines is ignored rather than trusted.
        std::fs::write(sub.join("fine_label_names.txt"), "a\nb\n").unwrap();
        assert_eq!(Dataset::Cifar100.class_names(Some(dir.path()))[7], "7");
    }

    #[test]
    fn a_missing_cifar_folder_names_the_file_and_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Dataset::Cifar10
            .load(Some(dir.path()), Split::Test)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("cifar-10-binary"),
            "{err}"
        );
    }
}
