//! Datasets for cema.
//!
//! Every loader produces an [`ImageSet`]: u8 pixels in NHWC order plus integer labels. Pixels stay u8
//! end to end (they are what edges upload); conversion to normalised floats happens in `cema-model`.
//!
//! One module per on-disk format:
//!
//! - [`fashion_mnist`]: Fashion-MNIST from the Debian package (or any folder with the four IDX
//!   files) — [`fashion_mnist::load`], [`fashion_mnist::CLASSES`].
//! - [`idx`]: the IDX container (raw or gzip) under it — [`idx::read`], [`idx::load`], [`idx::write`].
//! - [`npy`]: NumPy `.npy` reading and writing — [`npy::NpyFile`] (header + seek), [`npy::parse`],
//!   [`npy::write_u8`], [`npy::write_labels`].
//! - [`cifar_c`]: the CIFAR-10-C layout (`<corruption>.npy` + `labels.npy`) — [`cifar_c::CorruptedDir`],
//!   [`cifar_c::write_corruption`], [`cifar_c::write_labels`].
//! - [`cifar`]: CIFAR-10/100 binary batches — [`cifar::load_cifar10`], [`cifar::load_cifar100`].
//! - [`dataset`]: the named datasets with a train/test split (Fashion-MNIST, CIFAR-10, CIFAR-100)
//!   behind one [`Dataset`] value: loader, geometry, class names.
//! - [`folder`]: class folders of PNG/JPEG images and the ImageNet-C layout —
//!   [`folder::load_class_folders`], [`folder::load_imagenet_c`].
//!
//! Every fallible function returns [`Result`], whose [`DataError`] names the file and what is wrong
//! with it. The binary parsers (IDX, NPY, CIFAR) never panic on malformed input and never allocate
//! more than the file really holds, whatever its header claims; `tests/fuzz.rs` checks that.
//! Writers go through a temporary file and a rename, so readers never see half a file.

pub mod cifar;
pub mod cifar_c;
pub mod dataset;
mod error;
pub mod fashion_mnist;
pub mod folder;
mod fsutil;
pub use fsutil::write_file_atomic;
pub mod idx;
mod imageset;
pub mod npy;
pub mod photo;

pub use dataset::Dataset;
pub use error::{DataError, Result};
pub use imageset::ImageSet;

/// Which part of a dataset with a fixed train/test split to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}
