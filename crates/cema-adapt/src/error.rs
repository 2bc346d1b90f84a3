use cema_model::ModelError;

/// Why an adaptation call failed. The adapter's state is unchanged whenever one is returned.
#[derive(Debug, thiserror::Error)]
pub enum AdaptError {
    #[error("norm state is for model `{found}`, this edge runs `{expected}`")]
    WrongModel { expected: String, found: String },
    #[error("norm state version {offered} is not newer than the installed version {current}")]
    StaleVersion { current: u64, offered: u64 },
    #[error("norm state version {0} is the last one the protocol allows: no next version can be published")]
    VersionExhausted(u64),
    #[error("foundation and student are incompatible: {0}")]
    Incompatible(String),
    #[error("cloud snapshot: {0}")]
    Snapshot(String),
    #[error("{0}")]
    Model(#[from] ModelError),
}
