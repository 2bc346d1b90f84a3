//! The cema cloud past one machine (issue #21, docs/design/past-one-machine.md): stateless
//! [`gateway`]s that speak protocol v1 to edges and keep nothing, and [`worker`]s that own slots
//! of devices by lease and run their rounds, over NATS JetStream. The wire protocol, the edge and
//! `cema-adapt` are unchanged; the one-process `cema cloud` stays the default.
//!
//! What lives where ([`layout::Fleet`]): uploads in one stream per model, a subject per slot and
//! device; each session's record (the edge's first norm state, then the snapshot after its last
//! committed round) in a KV bucket; published norm states in another, which gateways watch;
//! slot leases and worker membership in two KV buckets whose entries expire.

pub mod entry;
pub mod gateway;
pub mod layout;
pub mod server;
pub mod store;
pub mod worker;

pub use gateway::{Gateway, GatewayOptions};
pub use layout::{Fleet, FleetConfig};
pub use server::NatsServer;
pub use store::JetStreamStore;
pub use worker::{Worker, WorkerOptions};
