//! Uploads that carry the edge's running statistics (issue #25's `edge-stats` extension of v1):
//! the student learns with them, they survive a restart while their round is pending, bad ones
//! are refused before anything is stored, and uploads without them work as before.

mod common;

use std::time::{Duration, Instant};

use cema_model::{cpu, Model, NormState};
use cema_wire::{UploadStamp, FEATURE_EDGE_STATS};
use common::*;

fn stamp() -> UploadStamp {
    UploadStamp {
        model_id: MODEL_ID.into(),
        height: 28,
        width: 28,
        channels: 1,
    }
}

/// The edge model's statistics, moved by `shift` (a drifted stream's, as an edge tracks them).
fn stats(shift: f32) -> NormState {
    let m = Model::load(&models_dir().join("edge.safetensors"), &cpu()).unwrap();
    let mut s = m.norm_stats(MODEL_ID, 0);
    for (name, t) in s.tensors.iter_mut() {
        for v in t.data.iter_mut() {
            if name.ends_with("running_var") {
                *v *= 1.0 + shift;
            } else {
                *v += shift;
            }
        }
    }
    s
}

fn upload_with(seq: u64, n: usize, stats: Option<&NormState>) -> Vec<u8> {
    let bytes = stats.map(NormState::to_stats_bytes);
    stamp().encode(seq, 0, &images(seq as usize, n), bytes.as_deref())
}

/// Uploads 0..4 (each with statistics when `with_stats`), waiting for each round, into a fresh
/// cloud; the published state.
fn run(with_stats: bool) -> NormState {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let c = cloud.client("dev-a", "tok-a");
    let info = c.open_session(&edge_state(0).to_bytes()).unwrap();
    assert!(info.features.iter().any(|f| f == FEATURE_EDGE_STATS));
    for seq in 0..4 {
        let s = with_stats.then(|| stats(0.25 * (seq + 1) as f32));
        c.upload(&upload_with(seq, 24, s.as_ref()), true).unwrap();
    }
    NormState::from_bytes(&c.latest_state().unwrap(), "published").unwrap()
}

#[test]
fn the_student_learns_with_the_edge_statistics_and_pending_ones_survive_a_restart() {
    let (plain, shared) = (run(false), run(true));
    assert_eq!(plain.version, shared.version);
    let moved = plain
        .tensors
        .iter()
        .filter(|(k, t)| k.contains(".running_") && t.data != shared.tensors[*k].data)
        .count();
    assert!(moved > 0, "the statistics sent changed nothing");
    let affine_moved = plain
        .tensors
        .iter()
        .any(|(k, t)| !k.contains(".running_") && t.data != shared.tensors[k].data);
    assert!(
        affine_moved,
        "γ, β learned with other statistics must differ"
    );

    // The same uploads into a cloud stopped while their rounds are pending: restarted, it runs
    // them with the statistics it stored and publishes exactly the same state.
    let data = tempfile::tempdir().unwrap();
    let slow = |o: &mut cema_cloud::CloudOptions| o.round_delay = Duration::from_millis(1500);
    let cloud = TestCloud::start(data.path(), slow);
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    for seq in 0..4 {
        let s = stats(0.25 * (seq + 1) as f32);
        c.upload(&upload_with(seq, 24, Some(&s)), false).unwrap();
    }
    cloud.stop();
    let cloud = TestCloud::start(data.path(), |_| {});
    let pending = cloud.sessions()[0].rounds;
    assert!(
        pending < 4,
        "every round ran before the stop: nothing was pending"
    );
    let t = Instant::now();
    while cloud.sessions()[0].rounds < 4 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "pending rounds never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = cloud.client("dev-a", "tok-a");
    let resumed = NormState::from_bytes(&c.latest_state().unwrap(), "resumed").unwrap();
    assert_eq!(resumed, shared, "resumed after {pending} rounds");
}

#[test]
fn bad_edge_statistics_are_refused_naming_them_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |_| {});
    let health: serde_json::Value = serde_json::from_str(&cloud.get("/health")).unwrap();
    assert_eq!(health["features"], serde_json::json!([FEATURE_EDGE_STATS]));
    let c = cloud.client("dev-a", "tok-a");
    c.open_session(&edge_state(0).to_bytes()).unwrap();
    let good = stats(0.5);
    let edit = |f: &dyn Fn(&mut NormState)| {
        let mut s = good.clone();
        f(&mut s);
        s.to_stats_bytes()
    };
    let var = |s: &NormState| {
        s.tensors
            .keys()
            .find(|k| k.ends_with("running_var"))
            .cloned()
    };
    let mut short = good.to_stats_bytes();
    short.truncate(short.len() - 4);
    let mut foreign = good.to_stats_bytes();
    foreign[0] ^= 1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "NaN",
            edit(&|s| {
                let k = var(s).unwrap();
                s.tensors.get_mut(&k).unwrap().data[1] = f32::NAN;
            }),
            "non-finite",
        ),
        (
            "negative variance",
            edit(&|s| {
                let k = var(s).unwrap();
                s.tensors.get_mut(&k).unwrap().data[0] = -1.0;
            }),
            "negative variance",
        ),
        ("one value short", short, "take"),
        ("another layout", foreign, "another layout"),
        (
            "a tensor missing",
            edit(&|s| {
                let k = var(s).unwrap();
                s.tensors.remove(&k);
            }),
            "take",
        ),
        ("a whole norm state", edge_state(0).to_stats_bytes(), "take"),
        ("safetensors", good.to_bytes(), "take"),
    ];
    for (what, bytes, says) in cases {
        let body = stamp().encode(0, 0, &images(0, 2), Some(&bytes));
        let (status, code, _) = refused_code(c.upload(&body, false));
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{what}");
        let message = match c.upload(&body, false) {
            Err(cema_edge::ClientError::Refused { error, .. }) => error.message,
            other => panic!("{what}: {other:?}"),
        };
        assert!(
            message.contains("edge statistics") && message.to_lowercase().contains(says),
            "{what}: {message}"
        );
    }
    // Nothing was stored: upload 0 is still the next, with or without statistics.
    assert_eq!(cloud.sessions()[0].next_seq, 0);
    c.upload(&upload_with(0, 2, Some(&good)), true).unwrap();
    c.upload(&upload_with(1, 2, None), true).unwrap();
    let s = &cloud.sessions()[0];
    assert_eq!((s.next_seq, s.samples, s.queued), (2, 4, 0));
}
