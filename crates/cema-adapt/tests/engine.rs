//! The edge and cloud state machines on tiny models: what may change, versions, rejections.

mod common;

use cema_adapt::{AdaptError, CloudAdapter, CloudConfig, EdgeAdapter, EdgeConfig};
use cema_model::{Kind, NormMode};
use common::*;

#[test]
fn a_cloud_round_moves_only_norm_affine_and_running_statistics_and_bumps_the_version() {
    let cfg = CloudConfig {
        batch: 16,
        ..CloudConfig::default()
    };
    let mut cloud = CloudAdapter::new(tiny_foundation(1), tiny_edge(2), "tiny", 5, cfg).unwrap();
    let (s0, f0) = (
        cloud.student().state_dict(),
        cloud.foundation().state_dict(),
    );
    cloud.receive(&images(0, 16), 16).unwrap();
    let state = cloud.step().unwrap().unwrap();
    assert_eq!(
        (state.model_id.as_str(), state.version, cloud.version()),
        ("tiny", 6, 6)
    );
    for (model, before) in [(cloud.student(), &s0), (cloud.foundation(), &f0)] {
        assert_only(model, before, |k| k.is_norm_state());
        for kind in [
            Kind::NormWeight,
            Kind::NormBias,
            Kind::RunningMean,
            Kind::RunningVar,
        ] {
            assert!(
                kind_changed(model, before, kind),
                "{} {kind:?} did not move",
                model.card.name
            );
        }
    }
    // The published state is the student's norm state, nothing else.
    assert_eq!(state, cloud.student().norm_state("tiny", 6));
    assert!(state
        .tensors
        .keys()
        .all(|n| !n.starts_with("conv") && !n.starts_with("fc")));
}

#[test]
fn edge_predicts_with_running_statistics_and_changes_nothing() {
    let mut model = tiny_edge(3);
    sharpen(&mut model, 20.0);
    let px = images(0, 64);
    let expected = model.clone().predict(&px, 64, NormMode::Running).unwrap();
    let before = model.state_dict();
    let mut edge = EdgeAdapter::new(model, "tiny", 0, EdgeConfig::default());
    let b = edge.process(&px, 64).unwrap();
    assert_eq!(b.predictions, expected);
    assert_eq!(edge.model().state_dict(), before);
    let c = edge.counters();
    assert_eq!(c.samples_seen, 64);
    assert_eq!(c.uploaded as usize, b.upload.len());
    assert_eq!(
        c.uploaded + c.dropped_too_uncertain + c.dropped_too_certain + c.dropped_redundant,
        64
    );
    assert_eq!(c.bytes_up as usize, b.upload.len() * IMAGE);
    assert!(
        edge.process(&px[..IMAGE - 1], 1).is_err(),
        "a short batch is an error"
    );
}

#[test]
fn apply_update_rejects_wrong_model_stale_version_and_nan_keeping_the_old_state() {
    let mut edge = EdgeAdapter::new(tiny_edge(3), "tiny", 2, EdgeConfig::default());
    let mut cloud = CloudAdapter::new(
        tiny_foundation(1),
        tiny_edge(3),
        "tiny",
        2,
        CloudConfig {
            batch: 8,
            ..Default::default()
        },
    )
    .unwrap();
    cloud.receive(&images(0, 8), 8).unwrap();
    let good = cloud.step().unwrap().unwrap();
    assert_eq!(good.version, 3);
    let before = edge.model().state_dict();

    let mut wrong = good.clone();
    wrong.model_id = "other".into();
    assert!(matches!(
        edge.apply_update(&wrong),
        Err(AdaptError::WrongModel { .. })
    ));
    let mut stale = good.clone();
    stale.version = 2;
    assert!(matches!(
        edge.apply_update(&stale),
        Err(AdaptError::StaleVersion {
            current: 2,
            offered: 2
        })
    ));
    let mut nan = good.clone();
    nan.tensors.values_mut().last().unwrap().data[0] = f32::NAN;
    assert!(matches!(edge.apply_update(&nan), Err(AdaptError::Model(_))));
    assert_eq!(
        edge.model().state_dict(),
        before,
        "rejected updates leave the model untouched"
    );
    assert_eq!(edge.version(), 2);
    assert_eq!(edge.counters().updates_rejected, 3);

    edge.apply_update(&good).unwrap();
    assert_eq!(edge.version(), 3);
    assert_eq!(edge.model().norm_state("tiny", 3), good);
    // Re-applying the same version is stale now.
    assert!(edge.apply_update(&good).is_err());
    let c = edge.counters();
    assert_eq!((c.updates_applied, c.updates_rejected), (1, 4));
    assert_eq!(c.bytes_down, 5 * good.to_bytes().len() as u64);
}

#[test]
fn edge_state_round_trips_through_serde() {
    let mut model = tiny_edge(3);
    sharpen(&mut model, 20.0);
    let mut edge = EdgeAdapter::new(model.clone(), "tiny", 0, EdgeConfig::default());
    edge.process(&images(0, 32), 32).unwrap();
    let json = serde_json::to_string(edge.state()).unwrap();
    let mut other = EdgeAdapter::new(model, "tiny", 0, EdgeConfig::default());
    other.restore(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(other.counters(), edge.counters());
    let mut foreign = EdgeAdapter::new(tiny_edge(3), "not-tiny", 0, EdgeConfig::default());
    assert!(foreign
        .restore(serde_json::from_str(&json).unwrap())
        .is_err());
}
