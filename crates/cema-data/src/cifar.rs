//! CIFAR-10 and CIFAR-100 "binary version" batches.
//!
//! CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`, records of one label byte
//! plus 3072 pixel bytes. CIFAR-100: `train.bin` and `test.bin`, records of a coarse label byte, a
//! fine label byte and 3072 pixel bytes. Pixels are planar (all red, then green, then blue, each
//! 32×32 row-major) and are converted to interleaved NHWC here.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::{ImageSet, Split};

/// Side of every CIFAR image.
pub const SIDE: usize = 32;
/// Pixel bytes per record (3 × 32 × 32).
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The folder the CIFAR-10 / CIFAR-100 tarballs extract to.
pub const CIFAR10_SUBDIR: &str = "cifar-10-batches-bin";
pub const CIFAR100_SUBDIR: &str = "cifar-100-binary";

/// Which of the two CIFAR-100 labels to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cifar100Label {
    /// The 20 superclasses.
    Coarse,
    /// The 100 classes.
    #[default]
    Fine,
}

impl Cifar100Label {
    pub fn num_classes(self) -> u32 {
        match self {
            Cifar100Label::Coarse => 20,
            Cifar100Label::Fine => 100,
        }
    }
}

/// Parses fixed-size records: `label_bytes` label bytes (the one at `label_at` is used), then the
/// planar image.
fn parse_records(
    bytes: &[u8],
    path: &Path,
    label_bytes: usize,
    label_at: usize,
    num_classes: u32,
) -> Result<ImageSet> {
    let record = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            what: "records (the file is empty)".into(),
        });
    }
    let whole = bytes.len() / record;
    if !bytes.len().is_multiple_of(record) {
        return Err(DataError::TruncatedRecord {
            path: path.to_path_buf(),
            offset: (whole * record) as u64,
            record_bytes: record,
            remaining: (bytes.len() % record) as u64,
        });
    }
    let mut images = vec![0u8; whole * IMAGE_BYTES];
    let mut labels = Vec::with_capacity(whole);
    let plane = SIDE * SIDE;
    for (i, (rec, out)) in bytes
        .chunks_exact(record)
        .zip(images.chunks_exact_mut(IMAGE_BYTES))
        .enumerate()
    {
        let label = u32::from(rec[label_at]);
        if label >= num_classes {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                index: i,
                value: label.into(),
                limit: num_classes.into(),
            });
        }
        labels.push(label);
        let px = &rec[label_bytes..];
        let (r, g, b) = (&px[..plane], &px[plane..2 * plane], &px[2 * plane..]);
        for (p, o) in out.chunks_exact_mut(3).enumerate() {
            o[0] = r[p];
            o[1] = g[p];
            o[2] = b[p];
        }
    }
    Ok(ImageSet {
        images,
        labels,
        height: SIDE,
        width: SIDE,
        channels: 3,
    })
}

fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| DataError::open(path, e, hint))
}

const CIFAR10_HINT: &str = "download the CIFAR-10 binary version (cifar-10-binary.tar.gz) and \
     point at the extracted cifar-10-batches-bin folder";
const CIFAR100_HINT: &str = "download the CIFAR-100 binary version (cifar-100-binary.tar.gz) and \
     point at the extracted cifar-100-binary folder";

/// Reads one CIFAR-10 batch file.
pub fn read_cifar10_batch(path: &Path) -> Result<ImageSet> {
    let bytes = read_file(path, CIFAR10_HINT)?;
    parse_records(&bytes, path, 1, 0, 10)
}

/// Parses CIFAR-10 batch bytes held in memory; `path` is only used in errors.
pub fn parse_cifar10(bytes: &[u8], path: &Path) -> Result<ImageSet> {
    parse_records(bytes, path, 1, 0, 10)
}

/// Reads one CIFAR-100 file with the chosen label.
pub fn read_cifar100_file(path: &Path, label: Cifar100Label) -> Result<ImageSet> {
    let bytes = read_file(path, CIFAR100_HINT)?;
    parse_cifar100(&bytes, path, label)
}

/// Parses CIFAR-100 bytes held in memory; `path` is only used in errors.
pub fn parse_cifar100(bytes: &[u8], path: &Path, label: Cifar100Label) -> Result<ImageSet> {
    let at = match label {
        Cifar100Label::Coarse => 0,
        Cifar100Label::Fine => 1,
    };
    parse_records(bytes, path, 2, at, label.num_classes())
}

/// `dir` itself when it holds `probe`, else the tarball's folder inside it when that does.
fn batches_dir(dir: &Path, subdir: &str, probe: &str) -> PathBuf {
    if !dir.join(probe).is_file() && dir.join(subdir).join(probe).is_file() {
        dir.join(subdir)
    } else {
        dir.to_path_buf()
    }
}

/// The CIFAR-10 file names of `split`.
pub fn cifar10_files(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    }
}

/// Loads CIFAR-10 from `dir` (the `cifar-10-batches-bin` folder or its parent): the five training
/// batches concatenated in order, or the test batch.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<ImageSet> {
    let files = cifar10_files(split);
    let dir = batches_dir(dir, CIFAR10_SUBDIR, &files[0]);
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    // Fail on a missing batch before spending time on the others.
    if let Some(p) = paths.iter().find(|p| !p.is_file()) {
        return Err(DataError::Missing {
            path: p.clone(),
            hint: CIFAR10_HINT.into(),
        });
    }
    let mut out: Option<ImageSet> = None;
    for p in &paths {
        let set = read_cifar10_batch(p)?;
        match &mut out {
            None => out = Some(set),
            Some(all) => {
                all.images.extend_from_slice(&set.images);
                all.labels.extend_from_slice(&set.labels);
            }
        }
    }
    // `files` is never empty, so neither is `out`.
    out.ok_or_else(|| DataError::Empty {
        path: dir,
        what: "CIFAR-10 batches".into(),
    })
}

/// The CIFAR-100 file name of `split`.
pub fn cifar100_file(split: Split) -> &'static str {
    match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    }
}

/// Loads CIFAR-100 from `dir` (the `cifar-100-binary` folder or its parent).
pub fn load_cifar100(dir: &Path, split: Split, label: Cifar100Label) -> Result<ImageSet> {
    let file = cifar100_file(split);
    let dir = batches_dir(dir, CIFAR100_SUBDIR, file);
    read_cifar100_file(&dir.join(file), label)
}
