//! The evaluation protocol of SPEC §4, as a library: every method sees the same streams (the test
//! set under one corruption and severity, in a fixed shuffled order, in batches) and is scored on
//! the predictions it returned for each batch before any update that batch triggered (online
//! accuracy), with its uploads, bytes on the wire, updates and wall time.
//!
//! [`BenchConfig`] is the typed configuration, [`run`] executes it over a test set and the models,
//! and [`Report`] is the typed result (serialised as `results.json`). Each (method, stream) result
//! is recorded as soon as it is measured ([`records`]), so an interrupted run resumes. `cema bench`
//! only parses flags into a [`BenchConfig`] and writes the report's files.

mod methods;
pub mod records;
mod report;
mod run;
mod stream;

pub use methods::{MethodKey, Preset, Protocol, Settings};
pub use report::{MethodSummary, Report, StreamReport};
pub use run::{
    rates_from, run, BenchConfig, BenchError, Models, Observer, Outcome, RandomRate, StreamSpec,
};
pub use stream::{run_stream, stream, stream_order, Corrupted, StreamResult, TeacherCounts};
