//! The CIFAR-10-C layout: a folder of `<corruption>.npy` files plus `labels.npy`.
//!
//! Each corruption file is uint8 (5·N, H, W, C) — or (5·N, H, W) for one channel — holding the
//! five severities stacked in order: rows `[0, N)` are severity 1, `[N, 2N)` severity 2, and so on.
//! `labels.npy` holds the N labels repeated five times (int64 in the original release); a file of
//! just N labels is accepted as well.
//!
//! [`CorruptedDir::load`] reads only the rows of the requested severity: a CIFAR-10-C file is
//! 150 MB and an evaluation usually wants one severity at a time.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::fsutil::is_hidden;
use crate::npy::{self, Dtype, NpyFile};
use crate::ImageSet;

/// Number of severities stacked in each file.
pub const SEVERITIES: u8 = 5;
/// Name of the labels file.
pub const LABELS_FILE: &str = "labels.npy";

const LAYOUT_HINT: &str =
    "expected a CIFAR-10-C style folder holding <corruption>.npy files and labels.npy";

/// A folder in the CIFAR-10-C layout.
#[derive(Debug, Clone)]
pub struct CorruptedDir {
    dir: PathBuf,
    corruptions: Vec<String>,
}

impl CorruptedDir {
    /// Lists the corruptions present (every `*.npy` except `labels.npy`), sorted by name.
    pub fn open(dir: impl AsRef<Path>) -> Result<CorruptedDir> {
        let dir = dir.as_ref();
        let entries = fs::read_dir(dir).map_err(|e| DataError::open(dir, e, LAYOUT_HINT))?;
        let mut corruptions = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            let name = entry.file_name();
            if is_hidden(&name) {
                continue;
            }
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".npy") {
                if name != LABELS_FILE && !stem.is_empty() {
                    corruptions.push(stem.to_string());
                }
            }
        }
        corruptions.sort();
        Ok(CorruptedDir {
            dir: dir.to_path_buf(),
            corruptions,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of the corruptions present, sorted.
    pub fn corruptions(&self) -> &[String] {
        &self.corruptions
    }

    pub fn contains(&self, corruption: &str) -> bool {
        self.corruptions.iter().any(|c| c == corruption)
    }

    /// Path of a corruption's file (whether or not it exists).
    pub fn corruption_path(&self, corruption: &str) -> PathBuf {
        self.dir.join(format!("{corruption}.npy"))
    }

    pub fn labels_path(&self) -> PathBuf {
        self.dir.join(LABELS_FILE)
    }

    /// Number of images per severity (N) of `corruption`, from its header alone.
    pub fn images_per_severity(&self, corruption: &str) -> Result<usize> {
        let file = self.open_images(corruption)?;
        Ok(file.rows()? / SEVERITIES as usize)
    }

    /// The N images of one severity (1–5) and their labels, reading only those rows.
    pub fn load(&self, corruption: &str, severity: u8) -> Result<ImageSet> {
        if !(1..=SEVERITIES).contains(&severity) {
            return Err(DataError::invalid(
                &self.corruption_path(corruption),
                format!("severity {severity} is outside 1..={SEVERITIES}"),
            ));
        }
        let mut images = self.open_images(corruption)?;
        let rows = images.rows()?;
        let n = rows / SEVERITIES as usize;
        let shape = images.shape().to_vec();
        let (height, width) = (shape[1], shape[2]);
        let channels = shape.get(3).copied().unwrap_or(1);

        let labels_path = self.labels_path();
        let mut labels = NpyFile::open(&labels_path).map_err(|e| match e {
            DataError::Missing { path, .. } => DataError::Missing {
                path,
                hint: LAYOUT_HINT.into(),
            },
            e => e,
        })?;
        let label_count = labels.rows()?;
        let start = (severity - 1) as usize * n;
        let labels = if label_count == rows {
            labels.read_rows_labels(start, n)?
        } else if label_count == n {
            labels.read_rows_labels(0, n)?
        } else {
            return Err(DataError::CountMismatch {
                images_path: images.path().to_path_buf(),
                labels_path,
                images: rows,
                labels: label_count,
            });
        };
        let pixels = images.read_rows_u8(start, n)?;
        Ok(ImageSet {
            images: pixels,
            labels,
            height,
            width,
            channels,
        })
    }

    /// All labels in `labels.npy` (5·N in the original layout).
    pub fn labels(&self) -> Result<Vec<u32>> {
        npy::read_labels(&self.labels_path())
    }

    fn open_images(&self, corruption: &str) -> Result<NpyFile> {
        check_name(&self.dir, corruption)?;
        let path = self.corruption_path(corruption);
        if !self.contains(corruption) && !path.is_file() {
            let available = if self.corruptions.is_empty() {
                "the folder holds no corruption files".to_string()
            } else {
                format!("available: {}", self.corruptions.join(", "))
            };
            return Err(DataError::Missing {
                path,
                hint: format!("unknown corruption '{corruption}'; {available}"),
            });
        }
        let file = NpyFile::open(&path)?;
        let shape = file.shape();
        if shape.len() != 3 && shape.len() != 4 {
            return Err(DataError::BadShape {
                path,
                shape: shape.to_vec(),
                reason: "corruption files must be (5·N, H, W) or (5·N, H, W, C)".into(),
            });
        }
        if !shape[0].is_multiple_of(SEVERITIES as usize) {
            return Err(DataError::BadShape {
                path,
                shape: shape.to_vec(),
                reason: format!("the first dimension must be {SEVERITIES} × images per severity"),
            });
        }
        if file.dtype() != Dtype::U8 {
            return Err(DataError::UnknownDtype {
                path,
                dtype: format!("'{}' where '|u1' images are required", file.dtype().descr()),
            });
        }
        Ok(file)
    }
}

/// Names become file names, so anything that could leave the folder or collide is refused.
fn check_name(dir: &Path, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "labels"
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0']);
    if bad {
        return Err(DataError::invalid(
            dir,
            format!("'{name}' is not a valid corruption name"),
        ));
    }
    Ok(())
}

/// Writes `<dir>/<name>.npy` from the five severities (each a set of N images of one size),
/// atomically. One channel is written as (5·N, H, W), more as (5·N, H, W, C), as in the releases.
pub fn write_corruption(dir: &Path, name: &str, per_severity: &[ImageSet; 5]) -> Result<()> {
    check_name(dir, name)?;
    let path = dir.join(format!("{name}.npy"));
    let first = &per_severity[0];
    for (i, set) in per_severity.iter().enumerate() {
        let same = set.len() == first.len()
            && set.height == first.height
            && set.width == first.width
            && set.channels == first.channels;
        if !same {
            return Err(DataError::invalid(
                &path,
                format!(
                    "severity {} has {} images of {}x{}x{} but severity 1 has {} of {}x{}x{}",
                    i + 1,
                    set.len(),
                    set.height,
                    set.width,
                    set.channels,
                    first.len(),
                    first.height,
                    first.width,
                    first.channels
                ),
            ));
        }
        if set.images.len() != set.len() * set.image_size() {
            return Err(DataError::invalid(
                &path,
                format!(
                    "severity {} holds {} pixel bytes, not {} images × {}",
                    i + 1,
                    set.images.len(),
                    set.len(),
                    set.image_size()
                ),
            ));
        }
    }
    let mut shape = vec![first.len() * SEVERITIES as usize, first.height, first.width];
    if first.channels != 1 {
        shape.push(first.channels);
    }
    npy::write_streamed(&path, Dtype::U8, &shape, |w: &mut dyn Write| {
        per_severity.iter().try_for_each(|s| w.write_all(&s.images))
    })
}

/// Writes `<dir>/labels.npy` as int64: the N labels of one severity, repeated five times.
pub fn write_labels(dir: &Path, labels: &[u32]) -> Result<()> {
    let mut all = Vec::with_capacity(labels.len() * SEVERITIES as usize);
    for _ in 0..SEVERITIES {
        all.extend_from_slice(labels);
    }
    npy::write_labels(&dir.join(LABELS_FILE), &all, Dtype::I64)
}
