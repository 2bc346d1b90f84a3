//! The edge's selection criteria (SPEC §3 edge steps 2–4) on hand-made logits.

use cema_adapt::{default_epsilon, EdgeConfig, EntropyFilter};
use cema_model::{entropy_margin, entropy_rows};

const C: usize = 10;

/// A row confident in `class` with logit `margin` over the rest.
fn row(class: usize, margin: f32) -> Vec<f32> {
    let mut r = vec![0.0; C];
    r[class] = margin;
    r
}

fn batch(rows: &[Vec<f32>]) -> Vec<f32> {
    rows.concat()
}

#[test]
fn thresholds_follow_the_class_count() {
    let f = EntropyFilter::new(EdgeConfig::default(), C);
    assert!((f.e0 - 0.4 * 10f32.ln()).abs() < 1e-6);
    assert!((f.e_min - 0.02 * 10f32.ln()).abs() < 1e-6);
    assert!((f.epsilon - 0.4).abs() < 1e-6);
    assert!((default_epsilon(1000) - 0.05).abs() < 1e-6);
    let mid = default_epsilon(100);
    assert!(mid < 0.4 && mid > 0.05);
    assert!(
        (default_epsilon(2) - 0.4).abs() < 1e-6 && (default_epsilon(21_000) - 0.05).abs() < 1e-6
    );
    let f = EntropyFilter::new(
        EdgeConfig {
            epsilon: Some(0.2),
            ..EdgeConfig::default()
        },
        C,
    );
    assert_eq!(f.epsilon, 0.2);
}

#[test]
fn each_criterion_drops_its_sample() {
    let mut f = EntropyFilter::new(EdgeConfig::default(), C);
    let uncertain = vec![0.0; C]; // uniform: E = ln 10 > E0
    let certain = row(3, 30.0); // E ≈ 0 < E_min
    let good = row(0, 4.0); // E ≈ 0.72, between E_min (0.046) and E0 (0.92)
    let e = entropy_rows(
        &batch(&[uncertain.clone(), certain.clone(), good.clone()]),
        C,
    );
    assert!(e[0] >= f.e0 && e[1] <= f.e_min && e[2] > f.e_min && e[2] < f.e0);

    let s = f.select(&batch(&[uncertain, certain, good.clone()]));
    assert_eq!(s.kept, vec![2]);
    assert_eq!((s.too_uncertain, s.too_certain, s.redundant), (1, 1, 0));
    assert_eq!(s.e_max, f.e0, "E_max is E0 during warm-up");
    // The first kept batch initialises m; the same direction is now redundant, another is kept.
    let other = row(5, 4.0);
    let s = f.select(&batch(&[good.clone(), other]));
    assert_eq!(s.kept, vec![1]);
    assert_eq!(s.redundant, 1);
    // m moved 10% toward class 5's probabilities: m ← 0.9 m + 0.1 p.
    let m = f.mean_probs.clone().unwrap();
    let p_good = cema_model::softmax_rows(&good, C);
    assert!((m[0] - (0.9 * p_good[0] + 0.1 * p_good[5])).abs() < 1e-6);
}

#[test]
fn released_preset_keeps_certain_samples_and_a_fixed_emax() {
    let mut f = EntropyFilter::new(
        EdgeConfig {
            warmup: 2,
            ..EdgeConfig::released()
        },
        C,
    );
    let s = f.select(&batch(&[row(3, 30.0), row(4, 30.0)]));
    // E_min off: the confident sample is kept (the second one too: first batch, no m yet).
    assert_eq!(s.kept, vec![0, 1]);
    for _ in 0..5 {
        let s = f.select(&batch(&[vec![0.0; C], row(1, 5.0)]));
        assert_eq!(s.e_max, f.e0, "released: E_max fixed at E0");
    }
}

#[test]
fn redundancy_filter_can_be_switched_off() {
    let cfg = EdgeConfig {
        redundancy: false,
        ..EdgeConfig::default()
    };
    let mut f = EntropyFilter::new(cfg, C);
    f.select(&row(0, 4.0));
    let s = f.select(&batch(&[row(0, 4.0), row(0, 4.0)]));
    assert_eq!(s.kept, vec![0, 1]);
}

#[test]
fn dynamic_emax_tracks_the_running_mean_entropy_after_warm_up() {
    let lambda = 0.8f32;
    let cfg = EdgeConfig {
        warmup: 4,
        lambda,
        ..EdgeConfig::default()
    };
    let mut f = EntropyFilter::new(cfg, C);
    let e0 = entropy_margin(C);
    let high = row(0, 3.0); // E ≈ 1.03
    let low = row(0, 6.0); // E ≈ 0.13
    let (eh, el) = {
        let e = entropy_rows(&batch(&[high.clone(), low.clone()]), C);
        (e[0] as f64, e[1] as f64)
    };
    // Warm-up (2 of 4 samples): E_max = E0, λ not applied yet.
    let s = f.select(&batch(&[high.clone(), high.clone()]));
    assert_eq!(s.e_max, e0);
    assert!(f.warm_mean.is_none());
    // Warm-up completes on this batch: Ē_warm = Ē_t, so E_max = λ·E0.
    let s = f.select(&batch(&[high.clone(), high.clone()]));
    assert!((f.warm_mean.unwrap() - eh).abs() < 1e-6);
    assert!((s.e_max - lambda * e0).abs() < 1e-5);
    // Confident samples pull the running mean down, and the bar tightens with it.
    let mut expected_sum = 4.0 * eh;
    let mut seen = 4.0;
    let mut last = s.e_max;
    for _ in 0..3 {
        let s = f.select(&batch(&[
            low.clone(),
            low.clone(),
            low.clone(),
            low.clone(),
        ]));
        expected_sum += 4.0 * el;
        seen += 4.0;
        let expected = lambda as f64 * e0 as f64 * (expected_sum / seen) / eh;
        assert!(
            (s.e_max as f64 - expected).abs() < 1e-5,
            "{} vs {expected}",
            s.e_max
        );
        assert!(s.e_max < last);
        last = s.e_max;
    }
    // A sample below E0 but above the tightened E_max is now dropped as too uncertain.
    let mid = row(0, 4.0);
    let em = entropy_rows(&mid, C)[0];
    assert!(em < e0);
    let s = f.select(&mid);
    assert!(em >= s.e_max);
    assert_eq!(s.too_uncertain, 1);
}

#[test]
fn filter_state_round_trips_through_serde() {
    let mut f = EntropyFilter::new(
        EdgeConfig {
            warmup: 2,
            ..EdgeConfig::default()
        },
        C,
    );
    f.select(&batch(&[row(0, 4.0), row(1, 4.0), row(2, 3.0)]));
    let json = serde_json::to_string(&f).unwrap();
    let mut back: EntropyFilter = serde_json::from_str(&json).unwrap();
    // serde_json's default float parsing may differ in the last ulp of an f64: compare the
    // state field by field and the decisions exactly.
    assert_eq!(
        (back.seen, back.config, back.epsilon),
        (f.seen, f.config, f.epsilon)
    );
    assert_eq!(back.mean_probs, f.mean_probs);
    assert!((back.warm_mean.unwrap() - f.warm_mean.unwrap()).abs() < 1e-12);
    let next = batch(&[row(0, 4.0), row(7, 4.0), vec![0.0; C]]);
    let (a, b) = (f.select(&next), back.select(&next));
    assert_eq!(a.kept, b.kept);
    assert!((a.e_max - b.e_max).abs() < 1e-6);
}

#[test]
fn a_budget_sets_each_batchs_threshold_so_its_share_passes() {
    let cfg = EdgeConfig {
        budget: Some(0.25),
        redundancy: false,
        ..EdgeConfig::default()
    };
    let mut f = EntropyFilter::new(cfg, C);
    // Eight samples: margins 1..8 over the rest (entropy falls as the margin grows), and one
    // so certain that E ≤ E_min; a quarter of 8 is 2 per batch.
    let mut rows: Vec<Vec<f32>> = (1..=7).map(|m| row(m % C, m as f32)).collect();
    rows.push(row(0, 40.0));
    let logits = batch(&rows);
    let e = entropy_rows(&logits, C);
    let s = f.select(&logits);
    // The two lowest entropies above E_min: margins 7 and 6 (indices 6 and 5); index 7 is
    // too certain; the five above the chosen threshold are too uncertain.
    assert_eq!(s.kept, vec![5, 6]);
    assert_eq!((s.too_uncertain, s.too_certain, s.redundant), (5, 1, 0));
    assert_eq!(s.e_max, e[4], "the threshold is the first entropy left out");
    // Even a threshold above E0 when the budget asks for it: 3/4 of 8 is 6 of the 7 candidates.
    let mut wide = EntropyFilter::new(
        EdgeConfig {
            budget: Some(0.75),
            ..cfg
        },
        C,
    );
    let s = wide.select(&logits);
    assert_eq!(s.kept, vec![1, 2, 3, 4, 5, 6]);
    assert!(s.e_max > wide.e0 && s.too_uncertain == 1);
    // Over batches the fraction carries: 0.25 · 6 = 1.5 → 1, then 2.
    let six = batch(&rows[..6]);
    let mut g = EntropyFilter::new(cfg, C);
    assert_eq!(g.select(&six).kept.len(), 1);
    assert_eq!(g.select(&six).kept.len(), 2);
    // Fewer candidates than the share: every candidate goes, and the shortfall is not owed.
    let mut h = EntropyFilter::new(
        EdgeConfig {
            budget: Some(1.0),
            ..cfg
        },
        C,
    );
    assert_eq!(h.select(&logits).kept.len(), 7);
    assert_eq!(h.select(&logits).kept.len(), 7);
    assert_eq!(h.owed, 0.0);
}

#[test]
fn under_a_budget_redundant_samples_give_their_place_to_the_next() {
    let cfg = EdgeConfig {
        budget: Some(0.5),
        ..EdgeConfig::default()
    };
    let mut f = EntropyFilter::new(cfg, C);
    // First batch: nothing is redundant yet; m becomes class 0's direction.
    let first = batch(&[row(0, 4.0), row(0, 4.5)]);
    assert_eq!(f.select(&first).kept.len(), 1);
    // Then the two most confident are class 0 again (redundant): the budget of 2 of 4 goes to
    // the next two.
    let next = batch(&[row(0, 6.0), row(0, 5.5), row(3, 3.0), row(4, 2.0)]);
    let s = f.select(&next);
    assert_eq!(s.kept, vec![2, 3]);
    assert_eq!((s.redundant, s.too_uncertain), (2, 0));
}
