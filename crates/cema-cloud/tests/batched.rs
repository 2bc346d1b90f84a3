//! Rounds of several sessions batched into one pass (`CloudOptions::batch_sessions`) over the
//! real service: every device ends with the versions and norm states it gets when its rounds
//! run one at a time.

mod common;

use std::time::{Duration, Instant};

use cema_model::NormState;
use cema_wire::UploadStamp;
use common::*;

const DEVICES: usize = 4;
const UPLOADS: u64 = 3;

/// Every device's latest norm state after `UPLOADS` uploads each, and the metrics page.
fn run(batch_sessions: usize) -> (Vec<NormState>, String) {
    let data = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(data.path(), |o| {
        o.batch_sessions = batch_sessions;
        o.workers = 1;
        // Rounds slow enough that the other devices' uploads queue up behind the first.
        o.round_delay = Duration::from_millis(150);
        o.devices = (0..DEVICES)
            .map(|d| (format!("dev-{d}"), format!("tok-{d}")))
            .collect();
    });
    let clients: Vec<_> = (0..DEVICES)
        .map(|d| cloud.client(&format!("dev-{d}"), &format!("tok-{d}")))
        .collect();
    for c in &clients {
        c.open_session(&edge_state(0).to_bytes()).unwrap();
    }
    let stamp = UploadStamp {
        model_id: MODEL_ID.into(),
        height: 28,
        width: 28,
        channels: 1,
    };
    for seq in 0..UPLOADS {
        for (d, c) in clients.iter().enumerate() {
            // Each device its own images, so a pass that mixed sessions up would show.
            let px = images(100 * d + seq as usize, 16);
            c.upload(&stamp.encode(seq, 0, &px, None), false).unwrap();
        }
    }
    let t = Instant::now();
    while cloud.sessions().iter().any(|s| s.version < UPLOADS) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{:?}",
            cloud.sessions()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let states = clients
        .iter()
        .map(|c| NormState::from_bytes(&c.latest_state().unwrap(), "state").unwrap())
        .collect();
    let metrics = cloud.get("/metrics");
    (states, metrics)
}

fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{page}"))
}

#[test]
fn batched_rounds_publish_what_rounds_one_at_a_time_publish() {
    let (alone, page) = run(1);
    assert_eq!(
        metric(&page, "cema_cloud_round_sessions_sum"),
        metric(&page, "cema_cloud_round_sessions_count"),
        "one session per round"
    );
    let (batched, page) = run(DEVICES);
    let (sum, count) = (
        metric(&page, "cema_cloud_round_sessions_sum"),
        metric(&page, "cema_cloud_round_sessions_count"),
    );
    assert!(
        sum > count,
        "some rounds ran together: {sum} sessions in {count} rounds"
    );
    for (d, (a, b)) in alone.iter().zip(&batched).enumerate() {
        assert_eq!(a.version, UPLOADS, "dev-{d}");
        assert_eq!(b.version, a.version, "dev-{d}");
        for (name, t) in &a.tensors {
            let u = &b.tensors[name].data;
            let scale = t.data.iter().chain(u).fold(1e-3f32, |m, v| m.max(v.abs()));
            let d_max = t
                .data
                .iter()
                .zip(u)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d_max <= 1e-4 * scale, "dev-{d} {name}: |Δ| {d_max}");
        }
    }
    assert_ne!(
        alone[0].tensors, alone[1].tensors,
        "the devices learned apart"
    );
}
