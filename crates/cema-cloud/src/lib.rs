//! The cema cloud service (SPEC §2, issue #4): per-device CEMA sessions behind protocol v1
//! (docs/protocol.md). [`service`] holds the sessions and runs adaptation rounds on worker
//! threads, off the request path; [`store`] makes sessions durable; [`http`] is the transport.

pub mod dashboard;
pub mod frontend;
pub mod http;
pub mod metrics;
pub mod service;
pub mod store;

pub use frontend::Frontend;
pub use http::HttpLimits;
pub use service::{Cloud, CloudOptions, Published, Refusal, Session, SessionView};
pub use store::{RedbStore, SessionRecord, SessionStore, StoreError};
