//! The gateway against a real nats-server on loopback, with no worker: what it checks and
//! answers by itself (sessions, sequence numbers, backpressure, bad input), and that sessions
//! survive a nats-server killed and restarted on its file storage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cema_edge::{ClientError, CloudClient};
use cema_fleet::{FleetConfig, Gateway, GatewayOptions, NatsServer};
use cema_model::Model;
use cema_wire::{encode_upload, Dtype, ErrorCode, UploadHeader, FEATURE_EDGE_STATS};

fn edge_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/edge.safetensors")
}

/// A gateway serving on loopback from its own runtime, until dropped.
struct Served {
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn serve(nats: &NatsServer, max_queued: usize) -> Served {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = GatewayOptions {
        nats: nats.url(),
        edge_model: edge_path(),
        devices: HashMap::from([("cam-1".to_string(), "tok".to_string())]),
        max_body: 1 << 20,
        max_queued,
        fleet: FleetConfig::default(),
    };
    let url = rt.block_on(async {
        let gateway: Arc<Gateway> = Gateway::open(options).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(cema_cloud::http::serve(
            listener,
            gateway,
            std::future::pending(),
        ));
        url
    });
    Served { url, _rt: rt }
}

struct Device {
    client: CloudClient,
    model: Model,
}

impl Device {
    fn new(url: &str, token: &str) -> Device {
        Device {
            client: CloudClient::new(url, "cam-1", token, Duration::from_secs(20)),
            model: Model::load(&edge_path(), &cema_model::cpu()).unwrap(),
        }
    }

    fn state(&self) -> Vec<u8> {
        let id = self.model.card.name.clone();
        self.model.norm_state(&id, 0).to_bytes()
    }

    fn body(&self, seq: u64, n: usize) -> Vec<u8> {
        self.body_with(seq, n, None)
    }

    /// With the edge's statistics (issue #25's extension).
    fn body_with(&self, seq: u64, n: usize, stats: Option<&[u8]>) -> Vec<u8> {
        let i = &self.model.card.input;
        let header = UploadHeader {
            seq,
            norm_version: 0,
            model_id: self.model.card.name.clone(),
            n: n as u32,
            height: i.height as u16,
            width: i.width as u16,
            channels: i.channels as u8,
            dtype: Dtype::U8,
        };
        encode_upload(
            &header,
            stats,
            &vec![7u8; n * i.height * i.width * i.channels],
        )
    }
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> (u16, ErrorCode, Option<u64>) {
    match r {
        Err(ClientError::Refused { status, error, .. }) => (
            status,
            error.error_code().expect("a known code"),
            error.expected_seq,
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_gateway_keeps_sequence_numbers_exact_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path()).unwrap();
    let g = serve(&nats, 3);
    let d = Device::new(&g.url, "tok");
    // No session yet.
    assert_eq!(
        refused(d.client.upload(&d.body(0, 1), false)).1,
        ErrorCode::NoSession
    );
    assert_eq!(refused(d.client.latest_state()).1, ErrorCode::NoSession);
    // A wrong token changes nothing.
    let intruder = Device::new(&g.url, "nope");
    assert_eq!(refused(intruder.client.open_session(&d.state())).0, 401);
    // A norm state that is not one.
    assert_eq!(refused(d.client.open_session(b"not safetensors")).0, 400);

    let info = d.client.open_session(&d.state()).unwrap();
    assert!(info.created);
    assert_eq!((info.version, info.next_seq), (0, 0));
    let latest =
        cema_model::NormState::from_bytes(&d.client.latest_state().unwrap(), "state").unwrap();
    assert_eq!(
        (latest.model_id.as_str(), latest.version),
        (d.model.card.name.as_str(), 0)
    );

    // Statistics that are not the edge model's are refused before anything is published.
    assert!(info.features.iter().any(|f| f == FEATURE_EDGE_STATS));
    let mut stats = d.model.norm_stats(&d.model.card.name, 0);
    stats.tensors.values_mut().next().unwrap().data[0] = f32::NAN;
    let bad = d.body_with(0, 2, Some(&stats.to_stats_bytes()));
    assert_eq!(
        refused(d.client.upload(&bad, false)).1,
        ErrorCode::BadRequest
    );

    let ack = d.client.upload(&d.body(0, 2), false).unwrap();
    assert_eq!((ack.seq, ack.next_seq, ack.queued), (0, 1, 1));
    // Again, and ahead of time: 409 naming the next expected.
    assert_eq!(
        refused(d.client.upload(&d.body(0, 2), false)),
        (409, ErrorCode::BadSequence, Some(1))
    );
    assert_eq!(
        refused(d.client.upload(&d.body(5, 2), false)),
        (409, ErrorCode::BadSequence, Some(1))
    );
    // Garbage is 400; the sequence is untouched.
    assert_eq!(refused(d.client.upload(b"garbage", false)).0, 400);
    let good = d.model.norm_stats(&d.model.card.name, 0).to_stats_bytes();
    d.client
        .upload(&d.body_with(1, 0, Some(&good)), false)
        .unwrap();
    d.client.upload(&d.body(2, 1), false).unwrap();
    // No worker learns: the fourth waiting upload is refused with a retry hint.
    let (status, code, _) = refused(d.client.upload(&d.body(3, 1), false));
    assert_eq!((status, code), (429, ErrorCode::Overloaded));

    // Resuming reports where the device is.
    let again = d.client.open_session(&d.state()).unwrap();
    assert!(!again.created);
    assert_eq!((again.version, again.next_seq), (0, 3));
}

#[test]
fn sessions_survive_a_killed_and_restarted_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(dir.path()).unwrap();
    let g = serve(&nats, 64);
    let d = Device::new(&g.url, "tok");
    d.client.open_session(&d.state()).unwrap();
    for seq in 0..3 {
        d.client.upload(&d.body(seq, 1), false).unwrap();
    }
    nats.restart().unwrap();
    // The gateway's client reconnects on its own; until it has, answers are 503s.
    let t = std::time::Instant::now();
    let info = loop {
        match d.client.open_session(&d.state()) {
            Ok(info) => break info,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(20), "no recovery: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(!info.created);
    assert_eq!(info.next_seq, 3);
    assert_eq!(d.client.upload(&d.body(3, 1), false).unwrap().next_seq, 4);
}
