//! The baselines and CEMA behind the `Method` trait, on tiny models: who may change what.

mod common;

use cema_adapt::{
    BnAdapt, Cema, CloudConfig, Eata, EdgeConfig, Foundation, GradConfig, Method, Pick,
    RandomSelector, RandomUpload, Source, Tent,
};
use cema_model::{Kind, NormMode};
use common::*;

fn run(method: &mut dyn Method, batches: usize) -> Vec<u32> {
    let mut preds = Vec::new();
    for b in 0..batches {
        let out = method.process(&images(b * 32, 32), 32).unwrap();
        assert_eq!(out.predictions.len(), 32);
        preds.extend(out.predictions);
    }
    preds
}

#[test]
fn source_and_bn_adapt_change_nothing() {
    let model = tiny_edge(4);
    let before = model.state_dict();
    let mut source = Source {
        model: model.clone(),
    };
    let preds = run(&mut source, 2);
    assert_eq!(source.model().state_dict(), before);
    let mut m = model.clone();
    assert_eq!(
        preds[..32],
        m.predict(&images(0, 32), 32, NormMode::Running).unwrap()[..]
    );
    let mut bn = BnAdapt { model };
    let preds = run(&mut bn, 2);
    assert_eq!(bn.model().state_dict(), before);
    assert_eq!(
        preds[..32],
        m.predict(&images(0, 32), 32, NormMode::Batch).unwrap()[..]
    );
}

#[test]
fn tent_changes_only_norm_affine_and_predicts_before_its_update() {
    let model = tiny_edge(4);
    let before = model.state_dict();
    let mut first = model
        .clone()
        .predict(&images(0, 32), 32, NormMode::Batch)
        .unwrap();
    let mut tent = Tent::new(
        model,
        GradConfig {
            lr: 0.01,
            momentum: 0.9,
        },
    );
    let preds = run(&mut tent, 2);
    assert_only(tent.model(), &before, |k| k.is_norm_affine());
    assert!(kind_changed(tent.model(), &before, Kind::NormWeight));
    assert!(kind_changed(tent.model(), &before, Kind::NormBias));
    first.truncate(32);
    assert_eq!(preds[..32], first[..]);
}

#[test]
fn eata_changes_only_norm_affine_and_only_when_samples_pass() {
    let mut model = tiny_edge(4);
    sharpen(&mut model, 20.0);
    let before = model.state_dict();
    let mut eata = Eata::new(
        model.clone(),
        GradConfig {
            lr: 0.01,
            momentum: 0.9,
        },
        None,
    );
    run(&mut eata, 2);
    assert_only(eata.model(), &before, |k| k.is_norm_affine());
    assert!(eata.filter().seen == 64);
    assert!(
        kind_changed(eata.model(), &before, Kind::NormBias),
        "some samples passed E0"
    );

    // A near-uniform model keeps no sample (E ≥ E0 everywhere): no step at all.
    let mut flat = tiny_edge(4);
    sharpen(&mut flat, 1e-3);
    let before = flat.state_dict();
    let mut eata = Eata::new(flat, GradConfig::default(), None);
    let out = eata.process(&images(0, 32), 32).unwrap();
    assert!(!out.updated);
    assert_eq!(eata.model().state_dict(), before);
}

#[test]
fn cema_uploads_a_subset_and_installs_cloud_updates_between_batches() {
    let mut edge = tiny_edge(4);
    sharpen(&mut edge, 20.0);
    let before = edge.state_dict();
    let cloud = CloudConfig {
        batch: 8,
        replay_min: 16,
        ..CloudConfig::default()
    };
    let mut cema = Cema::new(edge, tiny_foundation(5), EdgeConfig::default(), cloud).unwrap();
    let mut uploaded = 0;
    let mut updates = 0;
    for b in 0..4 {
        let out = cema.process(&images(b * 32, 32), 32).unwrap();
        uploaded += out.uploaded;
        updates += out.updated as u64;
    }
    let e = cema.edge().counters();
    assert_eq!(e.samples_seen, 128);
    assert_eq!(e.uploaded as usize, uploaded);
    assert!(
        uploaded > 0 && uploaded < 128,
        "uploads are a strict subset: {uploaded}"
    );
    assert_eq!(cema.cloud().counters().samples_received as usize, uploaded);
    assert!(updates > 0);
    assert_eq!(e.updates_applied, updates);
    assert_eq!(cema.edge().version(), cema.cloud().version());
    assert_only(cema.model(), &before, |k| k.is_norm_state());
    assert_eq!(
        cema.model().norm_state("x", 0).tensors,
        cema.cloud().student().norm_state("x", 0).tensors
    );
}

#[test]
fn foundation_predicts_with_running_statistics_and_uploads_everything() {
    let model = tiny_foundation(5);
    let before = model.state_dict();
    let mut f = Foundation {
        model: model.clone(),
    };
    assert_eq!(f.name(), "foundation");
    let out = f.process(&images(0, 32), 32).unwrap();
    assert_eq!(out.uploaded, 32);
    assert_eq!(out.selected, (0..32).collect::<Vec<_>>());
    assert_eq!(out.bytes_up, (32 * IMAGE) as u64);
    assert_eq!(out.bytes_down, 0);
    assert!(!out.updated);
    let mut m = model;
    assert_eq!(
        out.predictions,
        m.predict(&images(0, 32), 32, NormMode::Running).unwrap()
    );
    assert_eq!(f.model().state_dict(), before);
}

#[test]
fn random_selector_hits_its_rate_and_is_deterministic() {
    let mut a = RandomSelector::new(0.25, 7);
    let mut b = RandomSelector::new(0.25, 7);
    let mut total = 0;
    for _ in 0..10 {
        let k = a.select(30);
        assert_eq!(k, b.select(30));
        assert!(k.windows(2).all(|w| w[0] < w[1]) && k.iter().all(|&i| i < 30));
        total += k.len();
    }
    // 0.25 · 300 = 75, exactly, whatever the batch boundaries.
    assert_eq!(total, 75);
    assert!(RandomSelector::new(0.0, 1).select(64).is_empty());
    assert_eq!(RandomSelector::new(2.0, 1).select(64).len(), 64);
    // Another seed picks other samples.
    let (mut c, mut d) = (RandomSelector::new(0.5, 1), RandomSelector::new(0.5, 2));
    assert_ne!(c.select(64), d.select(64));
}

#[test]
fn highest_entropy_pick_takes_the_same_quota_from_the_uncertain_end() {
    let mut u = RandomSelector::new(0.25, 7);
    let mut h = RandomSelector::new(0.25, 7).with_pick(Pick::HighestEntropy);
    assert_eq!(h.pick(), Pick::HighestEntropy);
    // 8 samples: entropies with a tie (indices 1 and 6) and the quota 0.25 · 8 = 2 per batch.
    let e = [0.1, 2.0, 0.5, 1.0, 0.0, 1.5, 2.0, 0.3];
    assert_eq!(h.select_among(&e), vec![1, 6]);
    assert_eq!(u.select_among(&e).len(), 2);
    // The quota carries over batches exactly as the uniform one's: 0.25 · 6 = 1.5 → 1, then 2.
    let e6 = [0.0, 0.9, 0.1, 0.2, 0.8, 0.3];
    assert_eq!(h.select_among(&e6), vec![1]);
    assert_eq!(h.select_among(&e6), vec![1, 4]);
    // A uniform selector ranks nothing: the same draws as select(n) with the same seed.
    let (mut a, mut b) = (RandomSelector::new(0.5, 3), RandomSelector::new(0.5, 3));
    assert_eq!(a.select_among(&[0.0; 64]), b.select(64));
}

#[test]
fn entropy_strata_pick_takes_one_sample_from_each_stratum_of_the_entropy_ranks() {
    // 12 samples whose entropy rank is their index reversed (index 11 the most uncertain); a
    // quota of 0.25 · 12 = 3 per batch, so the strata are ranks 0–3, 4–7 and 8–11.
    let e: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
    let mut s = RandomSelector::new(0.25, 11).with_pick(Pick::EntropyStrata);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let kept = s.select_among(&e);
        // Ascending indices, one in each stratum: indices 8–11, 4–7, 0–3.
        assert_eq!(kept.len(), 3);
        assert!(
            kept[0] < 4 && (4..8).contains(&kept[1]) && kept[2] >= 8,
            "{kept:?}"
        );
        seen.extend(kept);
    }
    // Uniform within its stratum: over 50 batches every sample was drawn.
    assert_eq!(seen.len(), 12);
    // A full quota takes the whole batch; a quota of one, any sample.
    assert_eq!(
        RandomSelector::new(1.0, 1)
            .with_pick(Pick::EntropyStrata)
            .select_among(&e),
        (0..12).collect::<Vec<_>>()
    );
    let one = RandomSelector::new(1.0 / 12.0 + 1e-6, 1)
        .with_pick(Pick::EntropyStrata)
        .select_among(&e);
    assert_eq!(one.len(), 1);
}

#[test]
fn random_upload_uploads_at_its_rate_through_the_cema_wiring() {
    let edge = tiny_edge(4);
    let before = edge.state_dict();
    let cloud = CloudConfig {
        batch: 8,
        replay_min: 16,
        ..CloudConfig::default()
    };
    // A flat (near-uniform) edge: CEMA's filters would upload nothing; random upload does not
    // look at entropies at all.
    let mut r = RandomUpload::new(
        edge,
        tiny_foundation(5),
        EdgeConfig::default(),
        cloud,
        0.25,
        3,
    )
    .unwrap();
    assert_eq!(r.name(), "random_upload");
    let (mut uploaded, mut updates, mut bytes_up) = (0, 0, 0);
    for b in 0..4 {
        let out = r.process(&images(b * 32, 32), 32).unwrap();
        assert_eq!(out.predictions.len(), 32);
        assert_eq!(out.uploaded, 8, "0.25 · 32");
        assert_eq!(out.selected.len(), out.uploaded);
        uploaded += out.uploaded;
        updates += out.updated as u64;
        bytes_up += out.bytes_up;
    }
    let e = r.edge().counters();
    assert_eq!(e.uploaded as usize, uploaded);
    assert_eq!(e.bytes_up, bytes_up);
    // Pixels, plus the norm state sent once after the first batch set the running statistics.
    let state = r
        .edge()
        .model()
        .norm_state(r.edge().model_id(), 0)
        .to_bytes();
    assert_eq!(bytes_up, (uploaded * IMAGE + state.len()) as u64);
    assert_eq!(e.dropped_too_uncertain + e.dropped_redundant, 0);
    assert_eq!(r.cloud().counters().samples_received as usize, uploaded);
    assert_eq!(updates, 4, "a full cloud batch every batch");
    assert_eq!(e.updates_applied, updates);
    assert!(e.bytes_down > 0);
    assert_only(r.model(), &before, |k| k.is_norm_state());

    r.set_rate(0.0);
    assert_eq!(r.rate(), 0.0);
    assert_eq!(r.process(&images(0, 32), 32).unwrap().uploaded, 0);
}
