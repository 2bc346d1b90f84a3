//! The cema edge runtime (SPEC §2, issue #4): forward-only inference that never waits on the
//! network, entropy-filtered uploads on a background uplink under a byte budget, and validated
//! hot-swaps of the norm states the cloud pushes.

pub mod client;
pub mod downlink;
pub mod edge;
pub mod runtime;
pub mod uplink;

pub use client::{ClientError, CloudClient};
pub use edge::{CloudLink, Edge, EdgeCounters, Prediction};
pub use runtime::{run_stream, EdgeError, EdgeOptions, EdgeReport};
pub use uplink::{Uplink, UplinkConfig, UplinkCounters};
