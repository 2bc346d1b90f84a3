//! Fashion-MNIST (and MNIST, which uses the same files): four IDX files in one folder.
//!
//! The folder is, in order of priority: the `dir` argument, the `CEMA_FASHION_MNIST_DIR` environment
//! variable, then [`DEFAULT_DIR`] where Debian's `dataset-fashion-mnist` package installs the files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::{idx, ImageSet};

pub use crate::Split;

/// Where `apt-get install -y dataset-fashion-mnist` puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Environment variable naming a folder that holds the four files.
pub const DIR_ENV: &str = "CEMA_FASHION_MNIST_DIR";
/// How to get the files; part of every "missing" error.
pub const INSTALL_HINT: &str = "install it with: apt-get install -y dataset-fashion-mnist \
     (or point CEMA_FASHION_MNIST_DIR / --data-dir at a folder holding the four files)";

/// Class names, in label order.
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Side of each (square, one-channel) image.
pub const SIDE: usize = 28;

/// Names of the (images, labels) files of `split`, gzip'd as distributed.
pub fn file_names(split: Split) -> (&'static str, &'static str) {
    match split {
        Split::Train => ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        Split::Test => ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
}

/// The folder [`load`] reads: `dir`, else `$CEMA_FASHION_MNIST_DIR`, else [`DEFAULT_DIR`].
pub fn resolve_dir(dir: Option<&Path>) -> PathBuf {
    resolve_dir_from(dir, std::env::var_os(DIR_ENV))
}

/// An empty variable counts as unset, as shells make `VAR= cmd` easy to write by accident.
fn resolve_dir_from(dir: Option<&Path>, env: Option<OsString>) -> PathBuf {
    if let Some(d) = dir {
        return d.to_path_buf();
    }
    match env {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_DIR),
    }
}

/// The file to read for `name`: the `.gz` as distributed, else an already-decompressed copy.
fn locate(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(name);
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(name.trim_end_matches(".gz"));
    if raw.is_file() {
        return Ok(raw);
    }
    Err(DataError::Missing {
        path: gz,
        hint: INSTALL_HINT.to_string(),
    })
}

/// Loads one split: 28×28×1 images, labels in `0..10`.
pub fn load(dir: Option<&Path>, split: Split) -> Result<ImageSet> {
    let dir = resolve_dir(dir);
    let (images, labels) = file_names(split);
    // Both located before either is read, so a missing labels file fails fast.
    let images = locate(&dir, images)?;
    let labels = locate(&dir, labels)?;
    idx::load(&images, &labels, Some(CLASSES.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_beats_env_beats_default() {
        let arg = Path::new("/arg");
        assert_eq!(resolve_dir_from(Some(arg), Some("/env".into())), arg);
        assert_eq!(
            resolve_dir_from(None, Some("/env".into())),
            Path::new("/env")
        );
        assert_eq!(
            resolve_dir_from(None, Some("".into())),
            Path::new(DEFAULT_DIR)
        );
        assert_eq!(resolve_dir_from(None, None), Path::new(DEFAULT_DIR));
    }
}
