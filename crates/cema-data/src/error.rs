//! The one error type of this crate.
//!
//! Every variant carries the path of the file (or folder) it is about, because a data error is only
//! actionable when the user knows which of several thousand files to look at.

use std::io;
use std::path::{Path, PathBuf};

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong while reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    // -- the file system ------------------------------------------------------------------------
    /// An I/O error other than "not found".
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file or folder that should exist does not; `hint` says how to get it.
    #[error("{}: not found; {hint}", path.display())]
    Missing { path: PathBuf, hint: String },
    /// A folder that should hold images or arrays holds none.
    #[error("{}: no {what} found", path.display())]
    Empty { path: PathBuf, what: String },

    // -- container structure --------------------------------------------------------------------
    /// The leading magic bytes are not those of the expected format.
    #[error("{}: bad magic number: expected {expected}, found {found}", path.display())]
    BadMagic {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The file ends before the data its header declares.
    #[error("{}: truncated: needs {expected_bytes} bytes but holds only {got}", path.display())]
    Truncated {
        path: PathBuf,
        expected_bytes: u64,
        got: u64,
    },
    /// The file holds more bytes than its header declares, so the header is probably wrong.
    #[error("{}: {got} bytes where the header declares {expected_bytes}; the header does not describe the data", path.display())]
    TrailingData {
        path: PathBuf,
        expected_bytes: u64,
        got: u64,
    },
    /// A fixed-size-record file (CIFAR) whose length is not a whole number of records.
    #[error("{}: truncated record at byte offset {offset}: a record is {record_bytes} bytes but only {remaining} remain", path.display())]
    TruncatedRecord {
        path: PathBuf,
        offset: u64,
        record_bytes: usize,
        remaining: u64,
    },
    /// The gzip stream is corrupt (bad deflate data, CRC mismatch, cut short).
    #[error("{}: corrupt gzip stream: {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The header cannot be parsed or is inconsistent.
    #[error("{}: bad header: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: String },
    /// An element type this crate does not read.
    #[error("{}: unsupported dtype {dtype}", path.display())]
    UnknownDtype { path: PathBuf, dtype: String },
    /// A valid file using a feature this crate deliberately does not support.
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// The array has a shape that does not fit its role (e.g. images that are not `(N, H, W[, C])`).
    #[error("{}: bad shape {shape:?}: {reason}", path.display())]
    BadShape {
        path: PathBuf,
        shape: Vec<usize>,
        reason: String,
    },

    // -- contents -------------------------------------------------------------------------------
    /// The images file and the labels file disagree on the number of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },
    /// A label outside `0..limit`.
    #[error("{}: label #{index} is {value}, outside 0..{limit}", path.display())]
    BadLabel {
        path: PathBuf,
        index: usize,
        value: i64,
        limit: u64,
    },
    /// An image whose size differs from the first image of the set.
    #[error("{}: image is {}x{} (h x w) but {} is {}x{}; all images of a set must have one size (or ask for a resize)",
        path.display(), found.0, found.1, reference.display(), expected.0, expected.1)]
    MixedSizes {
        path: PathBuf,
        /// The file that set the expected size.
        reference: PathBuf,
        expected: (usize, usize),
        found: (usize, usize),
    },
    /// The image codec could not decode the file.
    #[error("{}: cannot decode image: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: Box<image::ImageError>,
    },
    /// A caller-supplied argument is invalid for this file or folder (bad severity, inconsistent sets).
    #[error("{}: {reason}", path.display())]
    InvalidArgument { path: PathBuf, reason: String },
}

impl DataError {
    /// The file or folder the error is about (the images file for [`DataError::CountMismatch`]).
    pub fn path(&self) -> &Path {
        match self {
            DataError::Io { path, .. }
            | DataError::Missing { path, .. }
            | DataError::Empty { path, .. }
            | DataError::BadMagic { path, .. }
            | DataError::Truncated { path, .. }
            | DataError::TrailingData { path, .. }
            | DataError::TruncatedRecord { path, .. }
            | DataError::Gzip { path, .. }
            | DataError::BadHeader { path, .. }
            | DataError::UnknownDtype { path, .. }
            | DataError::Unsupported { path, .. }
            | DataError::BadShape { path, .. }
            | DataError::BadLabel { path, .. }
            | DataError::MixedSizes { path, .. }
            | DataError::Decode { path, .. }
            | DataError::InvalidArgument { path, .. } => path,
            DataError::CountMismatch { images_path, .. } => images_path,
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Like [`DataError::io`], but "not found" becomes [`DataError::Missing`] with `hint`.
    pub(crate) fn open(path: &Path, source: io::Error, hint: &str) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                hint: hint.to_string(),
            }
        } else {
            DataError::io(path, source)
        }
    }

    pub(crate) fn bad_header(path: &Path, reason: impl Into<String>) -> Self {
        DataError::BadHeader {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        DataError::InvalidArgument {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
