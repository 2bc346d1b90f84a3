//! The two `SessionStore`s — redb and NATS JetStream — given the same calls give the same
//! answers.

use std::path::PathBuf;

use cema_adapt::{CloudAdapter, CloudConfig};
use cema_cloud::{RedbStore, SessionRecord, SessionStore};
use cema_fleet::{JetStreamStore, NatsServer};
use cema_model::Model;

fn model(name: &str) -> Model {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/{name}.safetensors"));
    Model::load(&p, &cema_model::cpu()).unwrap()
}

/// What a store answers to one script of calls.
fn script(store: &dyn SessionStore, snapshot: &[u8], image: usize) -> Vec<String> {
    let record = SessionRecord {
        model_id: "edge".into(),
        next_seq: 0,
        applied_seq: None,
    };
    let mut out = Vec::new();
    store.create("cam.1", &record, snapshot).unwrap();
    for seq in 0..4u64 {
        // Odd uploads carry edge statistics (issue #25's extension), even ones do not.
        let stats = format!("statistics of {seq}");
        let stats = (seq % 2 == 1).then_some(stats.as_bytes());
        store
            .append_upload(
                "cam.1",
                seq,
                &vec![seq as u8; image * (seq as usize + 1)],
                stats,
            )
            .unwrap();
    }
    // The same seq again is refused and changes nothing.
    out.push(format!(
        "again: {}",
        store.append_upload("cam.1", 3, &[0; 4], None).is_err()
    ));
    store
        .commit_round("cam.1", 1, snapshot, image, 10_000)
        .unwrap();
    let sessions = store.sessions().unwrap();
    out.push(format!("sessions: {sessions:?}"));
    let after: Vec<(u64, usize, Option<String>)> = store
        .uploads_after("cam.1", Some(1))
        .unwrap()
        .into_iter()
        .map(|u| {
            let stats = u.stats.map(|s| String::from_utf8(s).unwrap());
            (u.seq, u.pixels.len(), stats)
        })
        .collect();
    assert_eq!(after[1].2.as_deref(), Some("statistics of 3"), "{after:?}");
    out.push(format!("after 1: {after:?}"));
    // The newest 2 samples up to seq 1: the last of seq 0's one... and seq 1's two.
    out.push(format!(
        "tail: {:?}",
        store.replay_tail("cam.1", Some(1), image, 2).unwrap()
    ));
    out.push(format!(
        "tail none: {:?}",
        store.replay_tail("cam.1", None, image, 2).unwrap()
    ));
    out.push(format!(
        "snapshot: {}",
        store.snapshot("cam.1").unwrap().as_deref() == Some(snapshot)
    ));
    out.push(format!("unknown: {:?}", store.snapshot("nobody").unwrap()));
    out.push(format!("ready: {}", store.ready(1 << 20).is_ok()));
    out
}

#[test]
fn redb_and_jetstream_stores_answer_alike() {
    let (edge, foundation) = (model("edge"), model("foundation"));
    let i = &edge.card.input;
    let image = i.height * i.width * i.channels;
    let adapter = CloudAdapter::new(
        foundation,
        edge.clone(),
        edge.card.name.clone(),
        3,
        CloudConfig::default(),
    )
    .unwrap();
    let snapshot = adapter.snapshot().to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(&dir.path().join("cloud.redb")).unwrap();
    let nats = NatsServer::start(&dir.path().join("nats")).unwrap();
    let js = JetStreamStore::connect(&nats.url(), &edge.card.name).unwrap();
    let expected = script(&redb, &snapshot, image);
    assert_eq!(script(&js, &snapshot, image), expected);
    assert!(expected[0].ends_with("true"), "{expected:?}");
}
