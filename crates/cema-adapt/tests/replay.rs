//! The cloud's FIFO replay buffer and the 1:3 mixing of new and replayed samples (SPEC §3).

mod common;

use cema_adapt::{CloudAdapter, CloudConfig, ReplayBuffer};
use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn replay_buffer_is_fifo_with_a_capacity() {
    let mut r = ReplayBuffer::new(2, 3);
    r.push(&[0, 0, 1, 1]);
    r.push(&[2, 2, 3, 3, 4, 4]);
    assert_eq!(r.len(), 3);
    assert_eq!((r.get(0), r.get(2)), (&[2u8, 2][..], &[4u8, 4][..]));
    // Sampling draws distinct images; asking for more than held gives all of them.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut out = Vec::new();
    assert_eq!(r.sample_into(&mut rng, 10, &mut out), 3);
    let mut firsts: Vec<u8> = out.chunks(2).map(|c| c[0]).collect();
    firsts.sort();
    assert_eq!(firsts, vec![2, 3, 4]);
}

#[test]
fn cloud_replay_keeps_the_last_uploads() {
    let cfg = CloudConfig {
        replay_capacity: 100,
        batch: 1000,
        ..CloudConfig::default()
    };
    let mut cloud = CloudAdapter::new(tiny_foundation(1), tiny_edge(2), "tiny", 0, cfg).unwrap();
    let px = images(0, 150);
    cloud.receive(&px, 150).unwrap();
    assert_eq!(cloud.replay().len(), 100);
    assert_eq!(cloud.replay().get(0), &px[50 * IMAGE..51 * IMAGE]);
    assert_eq!(cloud.counters().samples_received, 150);
    // A malformed upload is refused without touching the queue.
    assert!(cloud.receive(&px[..IMAGE + 1], 1).is_err());
    assert_eq!(cloud.pending(), 150);
}

#[test]
fn distillation_batches_mix_one_new_to_three_replayed_once_the_buffer_is_warm() {
    let mut cloud = CloudAdapter::new(
        tiny_foundation(1),
        tiny_edge(2),
        "tiny",
        0,
        CloudConfig::default(),
    )
    .unwrap();
    // Nothing pending, empty buffer: no round.
    assert!(cloud.step().unwrap().is_none());
    let px = images(0, 8 * 32 + 31);
    for round in 0..8 {
        cloud
            .receive(&px[round * 32 * IMAGE..(round + 1) * 32 * IMAGE], 32)
            .unwrap();
        let state = cloud.step().unwrap().expect("a full batch publishes");
        assert_eq!(state.version, round as u64 + 1);
        let steps = &cloud.last_round().steps;
        assert_eq!(steps.len(), 1);
        let replay = if cloud.replay().len() >= 256 { 96 } else { 0 };
        assert_eq!(
            (steps[0].new, steps[0].replay),
            (32, replay),
            "round {round}"
        );
        assert!(steps[0].foundation_loss.is_some());
    }
    // Round 8 saw a 256-sample buffer: 32 new + 96 replayed.
    assert_eq!(cloud.last_round().steps[0].replay, 96);
    // No full batch pending (31 < 32) but a warm buffer: one replay-only step on 4B = 128.
    cloud.receive(&px[256 * IMAGE..], 31).unwrap();
    let state = cloud.step().unwrap().unwrap();
    assert_eq!(state.version, 9);
    let s = &cloud.last_round().steps[0];
    assert_eq!((s.new, s.replay, s.foundation_loss), (0, 128, None));
    assert_eq!(cloud.pending(), 31);
    let c = cloud.counters();
    assert_eq!(
        (
            c.rounds,
            c.foundation_steps,
            c.distillation_steps,
            c.replay_only_steps
        ),
        (9, 8, 9, 1)
    );
}

#[test]
fn a_cloud_session_is_deterministic_given_its_seed() {
    let cfg = CloudConfig {
        batch: 8,
        replay_min: 16,
        seed: 7,
        ..CloudConfig::default()
    };
    let run = |cfg: CloudConfig| {
        let mut cloud =
            CloudAdapter::new(tiny_foundation(1), tiny_edge(2), "tiny", 0, cfg).unwrap();
        // 5 rounds of 8: from round 2 on, 24 of the 16..40 buffered samples are drawn.
        let px = images(0, 40);
        let mut last = None;
        for r in 0..5 {
            cloud
                .receive(&px[r * 8 * IMAGE..(r + 1) * 8 * IMAGE], 8)
                .unwrap();
            last = cloud.step().unwrap();
        }
        last = cloud.step().unwrap().or(last); // a replay-only round
        last.unwrap()
    };
    let (a, b) = (run(cfg), run(cfg));
    assert_eq!(a, b);
    let c = run(CloudConfig { seed: 8, ..cfg });
    assert_ne!(
        a.tensors, c.tensors,
        "another seed draws other replay samples"
    );
}
