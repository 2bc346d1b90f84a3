//! Source training: determinism given the seed, and `--resume` equal to an uninterrupted run.

mod common;

use cema_model::{cpu, Arch, Labelled, Model, TrainConfig, TrainEvent};
use common::fmnist_card;

fn tiny_set() -> Option<cema_data::ImageSet> {
    match cema_data::fashion_mnist::load(None, cema_data::Split::Train) {
        Ok(s) => Some(s.take(128)),
        Err(e) => {
            eprintln!("note: skipping, Fashion-MNIST not available: {e}");
            None
        }
    }
}

/// Trains on `set` through the model crate's view of it.
fn train(
    m: &mut Model,
    set: &cema_data::ImageSet,
    cfg: &TrainConfig,
    ckpt: Option<&std::path::Path>,
    resume: bool,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> cema_model::Result<Vec<cema_model::EpochReport>> {
    let view = Labelled::new(&set.images, &set.labels, set.geometry())?;
    cema_model::train(m, view, None, cfg, ckpt, resume, on_event)
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch: 32,
        lr: 0.05,
        ..TrainConfig::default()
    }
}

fn fresh() -> Model {
    Model::init(
        fmnist_card(Arch::CifarResnet {
            depth: 8,
            width: 4,
            in_channels: 1,
            num_classes: 10,
        }),
        &cpu(),
        3,
    )
    .unwrap()
}

#[test]
fn training_is_deterministic_and_resume_equals_an_uninterrupted_run() {
    let Some(set) = tiny_set() else { return };
    let dir = tempfile::tempdir().unwrap();

    let mut a = fresh();
    let ha = train(&mut a, &set, &cfg(2), None, false, &mut |_| {}).unwrap();
    let mut b = fresh();
    train(&mut b, &set, &cfg(2), None, false, &mut |_| {}).unwrap();
    assert_eq!(a.state_dict(), b.state_dict(), "same seed, same weights");
    assert_eq!(ha.len(), 2);
    assert!(ha.iter().all(|r| r.train_loss.is_finite()));

    // Interrupted after epoch 1 of 2, then resumed from the checkpoint.
    let ckpt = dir.path().join("m.ckpt");
    let mut c = fresh();
    let mut first_half = cfg(2);
    first_half.stop_after = Some(1);
    let h1 = train(&mut c, &set, &first_half, Some(&ckpt), false, &mut |_| {}).unwrap();
    assert_eq!(h1.len(), 1);
    assert_ne!(c.state_dict(), a.state_dict());
    let mut d = fresh();
    let h = train(&mut d, &set, &cfg(2), Some(&ckpt), true, &mut |_| {}).unwrap();
    assert_eq!(h.len(), 2, "history carries the resumed epoch");
    assert_eq!(
        d.state_dict(),
        a.state_dict(),
        "resumed weights equal the uninterrupted run"
    );
}

#[test]
fn training_moves_every_weight_kind_and_checks_geometry() {
    let Some(set) = tiny_set() else { return };
    let mut m = fresh();
    let before = m.state_dict();
    train(&mut m, &set, &cfg(1), None, false, &mut |_| {}).unwrap();
    let after = m.state_dict();
    for name in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "fc.bias",
        "layer2.0.downsample.0.weight",
    ] {
        assert_ne!(before[name].data, after[name].data, "{name} did not train");
    }
    let mut wrong = set.clone();
    wrong.height = 14;
    wrong.width = 56;
    let e = train(&mut m, &wrong, &cfg(1), None, false, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("expects 28×28×1"), "{e}");
}
