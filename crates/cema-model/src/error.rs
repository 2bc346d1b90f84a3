use std::path::PathBuf;

/// Everything that can go wrong loading, validating or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: not a readable PyTorch checkpoint: {reason}")]
    Pytorch { path: PathBuf, reason: String },
    #[error("{path}: invalid model card: {reason}")]
    Card { path: PathBuf, reason: String },
    #[error("invalid architecture: {0}")]
    Arch(String),
    #[error(
        "{source_name}: tensor `{name}` is missing (the architecture expects shape {expected:?})"
    )]
    MissingTensor {
        source_name: String,
        name: String,
        expected: Vec<usize>,
    },
    #[error(
        "{source_name}: tensor `{name}` has shape {found:?}, the architecture expects {expected:?}"
    )]
    ShapeMismatch {
        source_name: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{source_name}: unexpected tensor `{name}` (not part of this architecture)")]
    UnexpectedTensor { source_name: String, name: String },
    #[error("{source_name}: tensor `{name}` has dtype {dtype}; expected a float type (F32, F16, BF16 or F64)")]
    Dtype {
        source_name: String,
        name: String,
        dtype: String,
    },
    #[error(
        "{source_name}: tensor `{name}` holds a non-finite value (NaN or Inf) at index {index}"
    )]
    NonFinite {
        source_name: String,
        name: String,
        index: usize,
    },
    #[error("{source_name}: checksum mismatch: card says {expected}, file has {found}")]
    Checksum {
        source_name: String,
        expected: String,
        found: String,
    },
    #[error("input batch: {0}")]
    Input(String),
    #[error("precision: {0}")]
    Precision(String),
    #[error("backend `{spec}`: {reason}")]
    Backend { spec: String, reason: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
