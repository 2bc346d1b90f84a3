//! The error type of the binary and its exit codes (SPEC §7).
//!
//! | code | meaning | constructor |
//! |---|---|---|
//! | 0 | success | `Ok(())` |
//! | 1 | a failed check or run | [`CliError::failed`], or any `anyhow::Error` via `?` |
//! | 2 | usage or input error: bad flag value, missing/invalid input file, unwritable output | [`CliError::usage`], [`ResultExt::usage_err`] |
//!
//! Clap's own parse errors already exit 2 before a subcommand runs. A usage error's message must
//! name the file or flag at fault.

use std::fmt;
use std::process::ExitCode;

/// Exit code of a failed check or run.
pub const FAILED: u8 = 1;
/// Exit code of a usage or input error.
pub const USAGE: u8 = 2;

/// An error that knows its exit code. Displayed with its whole cause chain on one line.
#[derive(Debug)]
pub struct CliError {
    code: u8,
    error: anyhow::Error,
}

impl CliError {
    /// Exit 2: bad flag, missing or invalid input, unwritable output.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: USAGE,
            error: error.into(),
        }
    }

    /// Exit 1: the run itself failed (or a check it performs did not pass).
    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code: FAILED,
            error: error.into(),
        }
    }

    pub fn code(&self) -> u8 {
        self.code
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// `?` on an `anyhow::Error` means "the run failed" (exit 1); input errors must say so explicitly.
impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError::failed(error)
    }
}

/// Tags a `Result`'s error with an exit code and a context line.
pub trait ResultExt<T> {
    /// Exit 2, with `context` (which should name the flag or file) in front of the cause.
    fn usage_err<C: fmt::Display + Send + Sync + 'static>(self, context: C) -> Result<T, CliError>;
    /// Exit 1, with `context` in front of the cause.
    fn run_err<C: fmt::Display + Send + Sync + 'static>(self, context: C) -> Result<T, CliError>;
}

impl<T, E> ResultExt<T> for Result<T, E>
where
    E: Into<anyhow::Error>,
{
    fn usage_err<C: fmt::Display + Send + Sync + 'static>(self, context: C) -> Result<T, CliError> {
        self.map_err(|e| CliError::usage(e.into().context(context)))
    }

    fn run_err<C: fmt::Display + Send + Sync + 'static>(self, context: C) -> Result<T, CliError> {
        self.map_err(|e| CliError::failed(e.into().context(context)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e: Result<(), _> = Err(anyhow::anyhow!("no such file"));
        let e = e.usage_err("--data-dir /x").unwrap_err();
        assert_eq!(e.code(), USAGE);
        assert_eq!(e.to_string(), "--data-dir /x: no such file");
        let e: CliError = anyhow::anyhow!("boom").into();
        assert_eq!(e.code(), FAILED);
    }
}
