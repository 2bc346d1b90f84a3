//! cema's adaptation engine: CEMA's edge and cloud as explicit state machines, independent of
//! any transport and of any I/O, so the same code runs in one process (the benchmark) and behind
//! a network (the services).
//!
//! - [`EdgeAdapter`]: owns the edge [`Model`](cema_model::Model); [`EdgeAdapter::process`]
//!   predicts with running statistics (forward only), then selects samples to upload with an
//!   [`EntropyFilter`] (dynamic `E_max`, `E_min`, redundancy; SPEC §3 edge steps 1–4);
//!   [`EdgeAdapter::apply_update`] hot-swaps a validated, newer [`NormState`](cema_model::NormState).
//!   Configured by [`EdgeConfig`] (`default()` = the paper's method, `released()` = the released
//!   code's switches); [`EdgeState`] (filter + [`EdgeCounters`]) is serde-serialisable.
//! - [`CloudAdapter`]: one per edge session; foundation adaptation, distillation into the
//!   student with a FIFO [`ReplayBuffer`], publication of norm state v+1 (SPEC §3 cloud steps
//!   1–5). Configured by [`CloudConfig`]; deterministic given its seed.
//! - [`Method`]: one trait over [`Source`], [`BnAdapt`], [`Tent`], [`Eata`], [`Foundation`],
//!   [`Cema`] (edge + cloud wired synchronously, K = 1) and [`RandomUpload`] (the same wiring
//!   with a [`RandomSelector`] in place of the entropy filters), for the evaluation protocol of
//!   SPEC §4.
//!
//! All tensor code, including the losses, lives in `cema-model`; this crate only moves host
//! vectors and norm states between models.

mod cloud;
mod edge;
mod error;
mod filter;
mod methods;
mod replay;

pub use cloud::{
    check_compatible, CloudAdapter, CloudConfig, CloudCounters, CloudSnapshot, RoundReport,
    SnapshotMeta, StepReport,
};
pub use edge::{gather, EdgeAdapter, EdgeBatch, EdgeCounters, EdgeState, Pick, RandomSelector};
pub use error::AdaptError;
pub use filter::{default_epsilon, EdgeConfig, EntropyFilter, Selection};
pub use methods::{
    BnAdapt, Cema, Dropped, Eata, Foundation, GradConfig, Method, MethodBatch, Quota, RandomUpload,
    Source, Tent, UploadRule, UNCERTAIN_TRACK_MOMENTUM,
};
pub use replay::ReplayBuffer;
