//! The edge and cloud state machines on tiny models: what may change, versions, rejections.

mod common;

use cema_adapt::{AdaptError, CloudAdapter, CloudConfig, EdgeAdapter, EdgeConfig, RandomSelector};
use cema_model::{Kind, Model, NormMode};
use common::*;

/// A cloud over the tiny models with B = 8, its student a copy of `tiny_edge(3)`.
fn cloud_b8(version: u64) -> CloudAdapter {
    let cfg = CloudConfig {
        batch: 8,
        ..Default::default()
    };
    CloudAdapter::new(tiny_foundation(1), tiny_edge(3), "tiny", version, cfg).unwrap()
}

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
    let cfg = EdgeConfig {
        init_stats: false,
        ..EdgeConfig::default()
    };
    let mut edge = EdgeAdapter::new(model, "tiny", 0, cfg);
    let b = edge.process(&px, 64).unwrap();
    assert!(!b.stats_initialised);
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
fn a_tracking_edge_moves_only_its_statistics_and_takes_only_affine_from_the_cloud() {
    let mut model = tiny_edge(3);
    sharpen(&mut model, 20.0);
    let px = images(0, 64);
    let expected = model.clone().predict(&px, 64, NormMode::Running).unwrap();
    let before = model.state_dict();
    let cfg = EdgeConfig {
        init_stats: false,
        track_stats: Some(0.1),
        share_stats: true,
        ..EdgeConfig::default()
    };
    let mut edge = EdgeAdapter::new(model, "tiny", 0, cfg);
    // Rate-matched, so the batch surely uploads (and its statistics go with the upload).
    edge.set_selector(Some(RandomSelector::new(0.25, 7)));
    let b = edge.process(&px, 64).unwrap();
    assert_eq!(
        b.predictions, expected,
        "predictions come from the statistics before the batch"
    );
    assert_only(edge.model(), &before, |k| k.is_buffer());
    assert!(kind_changed(edge.model(), &before, Kind::RunningMean));
    assert!(kind_changed(edge.model(), &before, Kind::RunningVar));

    let stats = b
        .stats
        .expect("an upload from a sharing edge carries its statistics");
    assert_eq!(b.upload.len(), 16);
    assert_eq!(stats, edge.model().norm_stats("tiny", 0), "after the batch");
    let mut cloud = cloud_b8(0);
    assert!(
        cloud.sync_student_stats(&edge.norm_state()).is_err(),
        "a whole norm state is not statistics"
    );
    cloud.sync_student_stats(&stats).unwrap();
    assert_eq!(
        cloud.student().state_dict()["bn1.running_mean"],
        edge.model().state_dict()["bn1.running_mean"],
        "shared statistics reach the student"
    );
    cloud.receive(&images(0, 8), 8).unwrap();
    let update = cloud.step().unwrap().unwrap();
    let mine = edge.model().state_dict();
    edge.apply_update(&update).unwrap();
    let after = edge.model().state_dict();
    for (name, t) in &after {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            assert_eq!(*t, mine[name], "{name}: the edge keeps its own statistics");
        } else if update.tensors.contains_key(name) {
            assert_eq!(*t, update.tensors[name], "{name}: affine from the cloud");
        }
    }
}

#[test]
fn apply_update_rejects_wrong_model_stale_version_and_nan_keeping_the_old_state() {
    let mut edge = EdgeAdapter::new(tiny_edge(3), "tiny", 2, EdgeConfig::default());
    let mut cloud = cloud_b8(2);
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

#[test]
fn the_first_batch_replaces_the_running_statistics_then_the_edge_is_frozen() {
    let model = tiny_edge(4);
    let px = images(0, 64);
    let batch_mode = model.clone().predict(&px, 64, NormMode::Batch).unwrap();
    let before = model.state_dict();
    let mut edge = EdgeAdapter::new(model, "tiny", 0, EdgeConfig::default());
    let b = edge.process(&px, 64).unwrap();
    assert!(b.stats_initialised);
    // Predictions of the first batch come from its own statistics...
    assert_eq!(b.predictions, batch_mode);
    // ...which become the running statistics; nothing else moves.
    assert_only(edge.model(), &before, |k| {
        matches!(k, Kind::RunningMean | Kind::RunningVar)
    });
    let mut m = edge.model().clone();
    assert_eq!(m.predict(&px, 64, NormMode::Running).unwrap(), batch_mode);
    // From the second batch on the edge predicts with those statistics and changes nothing.
    let after_first = edge.model().state_dict();
    let px2 = images(64, 64);
    let expected = m.predict(&px2, 64, NormMode::Running).unwrap();
    let b2 = edge.process(&px2, 64).unwrap();
    assert!(!b2.stats_initialised);
    assert_eq!(b2.predictions, expected);
    assert_eq!(edge.model().state_dict(), after_first);
    // The exported state is what the cloud's student starts from; it counts as uplink.
    let up = edge.counters().bytes_up;
    let state = edge.export_norm_state();
    assert_eq!(state, edge.model().norm_state("tiny", 0));
    assert_eq!(edge.counters().bytes_up - up, state.to_bytes().len() as u64);
}

#[test]
fn a_restored_cloud_session_continues_exactly_where_the_snapshot_left_off() {
    let cfg = CloudConfig {
        batch: 16,
        replay_min: 32,
        ..CloudConfig::default()
    };
    let mut a = CloudAdapter::new(tiny_foundation(1), tiny_edge(2), "tiny", 0, cfg).unwrap();
    for r in 0..3 {
        a.receive(&images(r * 24, 24), 24).unwrap();
        a.step().unwrap();
    }
    let snap = cema_adapt::CloudSnapshot::from_bytes(&a.snapshot().to_bytes()).unwrap();
    assert_eq!(snap, a.snapshot());
    assert_eq!(snap.pending.len(), a.pending() * IMAGE);
    let replay: Vec<u8> = (0..a.replay().len())
        .flat_map(|i| a.replay().get(i).to_vec())
        .collect();
    let mut b = CloudAdapter::new(tiny_foundation(1), tiny_edge(2), "tiny", 0, cfg).unwrap();
    b.restore(&snap, &replay).unwrap();
    assert_eq!(b.version(), a.version());
    assert_eq!(b.counters(), a.counters());
    for r in 3..5 {
        a.receive(&images(r * 24, 24), 24).unwrap();
        b.receive(&images(r * 24, 24), 24).unwrap();
        assert_eq!(a.step().unwrap(), b.step().unwrap(), "round {r}");
    }
    assert_eq!(a.foundation().state_dict(), b.foundation().state_dict());
    // A snapshot of another lineage, or torn bytes, is refused and changes nothing.
    let mut other = snap.clone();
    other.meta.model_id = "other".into();
    let before = b.snapshot();
    assert!(b.restore(&other, &replay).is_err());
    assert!(b.restore(&snap, &replay[..replay.len() - 1]).is_err());
    assert_eq!(b.snapshot(), before);
    let bytes = snap.to_bytes();
    assert!(cema_adapt::CloudSnapshot::from_bytes(&bytes[..100]).is_err());
}

#[test]
fn a_foundation_that_cannot_teach_the_student_is_refused_naming_what_differs() {
    let student = tiny_edge(1);
    assert!(cema_adapt::check_compatible(&tiny_foundation(1), &student).is_ok());
    let with = |num_classes, in_channels| {
        let mut c = card("other", 8);
        c.architecture = cema_model::Arch::CifarResnet {
            depth: 8,
            width: 8,
            in_channels,
            num_classes,
        };
        c.input.channels = in_channels;
        c.input.mean = vec![c.input.mean[0]; in_channels];
        c.input.std = vec![c.input.std[0]; in_channels];
        Model::init(c, &cema_model::cpu(), 1).unwrap()
    };
    let err = |f: &Model| match CloudAdapter::new(
        f.clone(),
        student.clone(),
        "tiny",
        0,
        CloudConfig::default(),
    ) {
        Err(AdaptError::Incompatible(why)) => why,
        other => panic!("expected Incompatible, got {:?}", other.map(|_| ())),
    };
    assert_eq!(err(&with(100, 1)), "foundation has 100 classes, student 10");
    assert_eq!(
        err(&with(CLASSES, 3)),
        "foundation takes 28×28×3 images, student 28×28×1"
    );
}

/// A transformer teacher: a tiny ViT (patch 7 on 28×28, one block), by timm's names.
fn tiny_vit_foundation(seed: u64) -> Model {
    let mut c = card("tiny-vit", 8);
    c.role = "foundation".into();
    c.architecture = cema_model::Arch::Vit {
        image_size: 28,
        patch: 7,
        in_channels: 1,
        dim: 16,
        depth: 1,
        heads: 2,
        mlp_dim: 32,
        num_classes: CLASSES,
    };
    Model::init(c, &cema_model::cpu(), seed).unwrap()
}

#[test]
fn a_vit_teacher_adapts_only_its_layernorm_affine_and_distils_into_the_cnn_student() {
    let cfg = CloudConfig {
        batch: 16,
        ..CloudConfig::default()
    };
    let mut cloud =
        CloudAdapter::new(tiny_vit_foundation(1), tiny_edge(2), "tiny", 0, cfg).unwrap();
    cloud.foundation().hand_written_paths().unwrap();
    let (s0, f0) = (
        cloud.student().state_dict(),
        cloud.foundation().state_dict(),
    );
    cloud.receive(&images(0, 16), 16).unwrap();
    let state = cloud.step().unwrap().unwrap();
    assert_eq!((state.version, cloud.version()), (1, 1));
    // The teacher has no running statistics: its entropy step moves LayerNorm γ/β and nothing else.
    let foundation = cloud.foundation();
    assert_only(foundation, &f0, |k| k.is_norm_affine());
    assert!(kind_changed(foundation, &f0, Kind::NormWeight));
    assert!(kind_changed(foundation, &f0, Kind::NormBias));
    assert!(foundation
        .norm_layers()
        .iter()
        .all(|l| l.kind == cema_model::NormKind::LayerNorm));
    // The student is the BatchNorm CNN it always was.
    assert_only(cloud.student(), &s0, |k| k.is_norm_state());
    assert_eq!(state, cloud.student().norm_state("tiny", 1));
    // A snapshot of the session (the ViT's γ/β and momentum inside) restores exactly.
    let snap = cloud.snapshot();
    let mut again =
        CloudAdapter::new(tiny_vit_foundation(1), tiny_edge(2), "tiny", 0, cfg).unwrap();
    again.restore(&snap, &images(0, 16)).unwrap();
    assert_eq!(
        again.foundation().state_dict(),
        cloud.foundation().state_dict()
    );
}

/// Largest |a − b| relative to the larger magnitude (at least 1e-3).
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().chain(b).fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn a_batched_round_of_many_sessions_equals_their_separate_rounds() {
    let cfg = |seed| CloudConfig {
        batch: 8,
        replay_min: 16,
        seed,
        ..CloudConfig::default()
    };
    let (f, e) = (tiny_foundation(1), tiny_edge(2));
    let new = |seed| CloudAdapter::new(f.clone(), e.clone(), "tiny", 0, cfg(seed)).unwrap();
    let mut batched: Vec<CloudAdapter> = (0..4).map(new).collect();
    let mut alone: Vec<CloudAdapter> = (0..4).map(new).collect();
    assert!(batched[0]
        .foundation()
        .shares_frozen_weights(batched[3].foundation()));
    assert!(batched[0]
        .student()
        .shares_frozen_weights(batched[3].student()));
    let mut replay_only = 0;
    for round in 0..5 {
        // Uneven uploads: some sessions have two fresh batches, some one, some none (a
        // replay-only step once their buffer is warm, or nothing at all before).
        for (s, (a, b)) in batched.iter_mut().zip(&mut alone).enumerate() {
            let n = [8, 17, 3, 12][s] * (round % 3);
            let px = images(100 * s + 20 * round, n);
            a.receive(&px, n).unwrap();
            b.receive(&px, n).unwrap();
        }
        let mut refs: Vec<&mut CloudAdapter> = batched.iter_mut().collect();
        let many = CloudAdapter::step_many(&mut refs);
        for (s, (got, b)) in many.into_iter().zip(&mut alone).enumerate() {
            let what = format!("round {round} session {s}");
            let got = got.unwrap();
            let want = b.step().unwrap();
            let a = &batched[s];
            assert_eq!(got.is_some(), want.is_some(), "{what}: published");
            assert_eq!(a.version(), b.version(), "{what}: version");
            assert_eq!(a.counters(), b.counters(), "{what}: counters");
            assert_eq!(a.pending(), b.pending(), "{what}: pending");
            let (ra, rb) = (a.last_round(), b.last_round());
            assert_eq!(ra.version, rb.version, "{what}");
            assert_eq!(ra.steps.len(), rb.steps.len(), "{what}: steps");
            for (x, y) in ra.steps.iter().zip(&rb.steps) {
                // The same samples: as many fresh and replay ones, the same draws (the losses
                // agree only if the batches do).
                assert_eq!((x.new, x.replay), (y.new, y.replay), "{what}");
                assert!((x.distill_loss - y.distill_loss).abs() < 1e-4, "{what}");
                match (x.foundation_loss, y.foundation_loss) {
                    (Some(p), Some(q)) => assert!((p - q).abs() < 1e-4, "{what}"),
                    (p, q) => assert_eq!(p.is_some(), q.is_some(), "{what}"),
                }
                replay_only += usize::from(x.new == 0);
            }
            if let (Some(x), Some(y)) = (got, want) {
                assert_eq!(x.version, y.version);
                for (name, t) in &x.tensors {
                    let d = rel_diff(&t.data, &y.tensors[name].data);
                    assert!(d < 1e-4, "{what}: published {name} differs by {d}");
                }
            }
            for (model, other) in [(a.foundation(), b.foundation()), (a.student(), b.student())] {
                let (x, y) = (model.state_dict(), other.state_dict());
                for (name, t) in &x {
                    let d = rel_diff(&t.data, &y[name].data);
                    assert!(d < 1e-4, "{what}: {name} differs by {d}");
                }
            }
        }
    }
    assert!(replay_only > 0, "the rounds included replay-only steps");
    // The sessions learned different things: a batch that mixed them up would show.
    assert_ne!(
        batched[0].student().norm_state("tiny", 0),
        batched[1].student().norm_state("tiny", 0)
    );
}

#[test]
fn a_session_that_cannot_publish_fails_alone_in_a_batched_round() {
    let cfg = CloudConfig {
        batch: 8,
        ..CloudConfig::default()
    };
    let (f, e) = (tiny_foundation(1), tiny_edge(2));
    let last = cema_wire::MAX_NORM_VERSION;
    let mut a = CloudAdapter::new(f.clone(), e.clone(), "tiny", 0, cfg).unwrap();
    let mut spent = CloudAdapter::new(f.clone(), e.clone(), "tiny", last, cfg).unwrap();
    let mut c = CloudAdapter::new(f, e, "tiny", 3, cfg).unwrap();
    for s in [&mut a, &mut spent, &mut c] {
        s.receive(&images(0, 8), 8).unwrap();
    }
    let out = CloudAdapter::step_many(&mut [&mut a, &mut spent, &mut c]);
    assert_eq!(out[0].as_ref().unwrap().as_ref().unwrap().version, 1);
    assert!(matches!(out[1], Err(AdaptError::VersionExhausted(v)) if v == last));
    assert_eq!(out[2].as_ref().unwrap().as_ref().unwrap().version, 4);
    assert_eq!(spent.version(), last);
    assert_eq!(spent.counters().rounds, 0);
}

#[test]
fn a_byte_budget_caps_every_rules_uplink_and_pays_the_statistics_once_per_upload() {
    use cema_adapt::{Quota, UploadRule};
    // 40 bytes per image seen: a batch of 16 earns 640 bytes, less than one 784-byte image, so
    // every rule saves up, and one that shares its statistics saves up for them too.
    let budget = 40.0;
    let (n, batches) = (16, 24);
    for rule in [
        UploadRule::Cema(Some(Quota::Bytes(budget))),
        UploadRule::Random(Quota::Bytes(budget)),
        UploadRule::Uncertain(Quota::Bytes(budget)),
    ] {
        let mut model = tiny_edge(3);
        sharpen(&mut model, 20.0);
        let (config, selector) = rule.configure(EdgeConfig::default(), 7);
        let mut edge = EdgeAdapter::new(model, "tiny", 0, config);
        edge.set_selector(selector);
        let fixed = match edge.shares_stats() {
            true => edge.model().norm_stats("tiny", 0).to_stats_bytes().len(),
            false => 0,
        };
        let (mut spent, mut uploads, mut idle) = (0usize, 0usize, 0usize);
        for b in 0..batches {
            let px = images(b * n, n);
            let per_image = px.len() / n;
            let out = edge.process(&px, n).unwrap();
            let stats = out.stats.as_ref().map_or(0, |s| s.to_stats_bytes().len());
            assert_eq!(stats, if out.upload.is_empty() { 0 } else { fixed });
            spent += out.upload.len() * per_image + stats;
            let unspent = budget * ((b + 1) * n) as f64 - spent as f64;
            assert!(unspent >= 0.0, "{rule:?}: {spent} B spent, {unspent} over");
            // A rate-matched rule takes all the credit pays for: what is left never pays for
            // one more image (the filters may find fewer candidates).
            if !matches!(rule, UploadRule::Cema(_)) {
                assert!(
                    unspent < (fixed + per_image) as f64,
                    "{rule:?}: {unspent} B unspent after batch {b}"
                );
            }
            if out.upload.is_empty() {
                idle += 1;
            } else {
                uploads += 1;
            }
        }
        assert!(uploads > 0, "{rule:?} never uploaded");
        // The counters count what the budget counts.
        assert_eq!(edge.counters().bytes_up as usize, spent, "{rule:?}");
        assert!(idle > 0, "{rule:?}: {idle} idle batches");
        assert_eq!(fixed > 0, matches!(rule, UploadRule::Uncertain(_)));
    }
}

#[test]
fn a_byte_budgets_unspent_credit_survives_a_restore() {
    use cema_adapt::{Quota, UploadRule};
    let mut model = tiny_edge(3);
    sharpen(&mut model, 20.0);
    // The model's own state is persisted apart from the edge's (cema-edge): keep it fixed.
    let base = EdgeConfig {
        init_stats: false,
        ..EdgeConfig::default()
    };
    let (config, _) = UploadRule::Cema(Some(Quota::Bytes(150.0))).configure(base, 0);
    let mut edge = EdgeAdapter::new(model.clone(), "tiny", 0, config);
    for b in 0..3 {
        edge.process(&images(b * 16, 16), 16).unwrap();
    }
    assert!(edge.state().byte_credit > 0.0);
    let json = serde_json::to_string(edge.state()).unwrap();
    let mut restored = EdgeAdapter::new(model, "tiny", 0, config);
    restored
        .restore(serde_json::from_str(&json).unwrap())
        .unwrap();
    for b in 3..8 {
        let px = images(b * 16, 16);
        assert_eq!(
            edge.process(&px, 16).unwrap().upload,
            restored.process(&px, 16).unwrap().upload
        );
    }
    assert_eq!(edge.state(), restored.state());
}
