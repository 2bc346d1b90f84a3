//! Source training on a clean labelled set: SGD (Nesterov momentum), cosine schedule, weight decay,
//! random crop with padding + horizontal flip. Deterministic given the seed: epoch `e` draws its
//! shuffle and augmentation from its own RNG (seed, e), so a resumed run equals an uninterrupted one.

use std::path::{Path, PathBuf};

use crate::labelled::Labelled;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::error::{ModelError, Result};
use crate::input::to_input;
use crate::model::Model;
use crate::net::{argmax_rows, cross_entropy};
use crate::norm::NormMode;
use crate::optim::{Sgd, SgdConfig};
use crate::store::{tensor_to_vec, Trainable};
use crate::tensors;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Random-crop padding in pixels (0 disables).
    pub pad: usize,
    pub flip: bool,
    pub seed: u64,
    /// Stop after this many epochs although the schedule spans `epochs` (a time-boxed session);
    /// a later run with `resume` continues exactly where this one stopped.
    #[serde(default)]
    pub stop_after: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 15,
            batch: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
            pad: 2,
            flip: true,
            seed: 0,
            stop_after: None,
        }
    }
}

/// Progress events for a UI.
pub enum TrainEvent<'a> {
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f32,
        acc: f64,
    },
    Epoch(&'a EpochReport),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: Option<f64>,
    pub lr_end: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    epochs_done: usize,
    config: TrainConfig,
    history: Vec<EpochReport>,
}

/// Where the per-epoch checkpoint lives: `<out>.ckpt/`.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

fn augment(
    src: &[u8],
    dst: &mut [u8],
    (h, w, c): (usize, usize, usize),
    pad: usize,
    flip: bool,
    rng: &mut ChaCha8Rng,
) {
    let (dy, dx) = if pad > 0 {
        (
            rng.random_range(0..=2 * pad) as isize - pad as isize,
            rng.random_range(0..=2 * pad) as isize - pad as isize,
        )
    } else {
        (0, 0)
    };
    let mirror = flip && rng.random_bool(0.5);
    for y in 0..h {
        for x in 0..w {
            let sy = y as isize + dy;
            let sx0 = x as isize + dx;
            let sx = if mirror { w as isize - 1 - sx0 } else { sx0 };
            for ch in 0..c {
                dst[(y * w + x) * c + ch] =
                    if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[((sy as usize) * w + sx as usize) * c + ch]
                    } else {
                        0
                    };
            }
        }
    }
}

/// Trains `model` in place. With a checkpoint directory present (`resume`), continues from it.
/// Returns the per-epoch history (including resumed epochs).
pub fn train(
    model: &mut Model,
    train_set: Labelled<'_>,
    test_set: Option<Labelled<'_>>,
    cfg: &TrainConfig,
    ckpt: Option<&Path>,
    resume: bool,
    on_event: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<Vec<EpochReport>> {
    model.check_geometry(train_set.geometry())?;
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(ModelError::Input(
            "batch and epochs must be positive".into(),
        ));
    }
    let mut sgd = Sgd::new(SgdConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        dampening: 0.0,
        weight_decay: cfg.weight_decay,
        nesterov: cfg.nesterov,
    });
    let mut history = Vec::new();
    let mut start_epoch = 0;
    if let (Some(dir), true) = (ckpt, resume) {
        let state_file = dir.join("state.json");
        if state_file.exists() {
            let text = std::fs::read_to_string(&state_file).map_err(|source| ModelError::Io {
                path: state_file.clone(),
                source,
            })?;
            let st: ResumeState = serde_json::from_str(&text).map_err(|e| ModelError::Card {
                path: state_file.clone(),
                reason: e.to_string(),
            })?;
            let w = tensors::read_file(&dir.join("weights.safetensors"))?;
            crate::checkpoint::load_into(&mut model.net, &w, "checkpoint weights", false)?;
            let m = tensors::read_file(&dir.join("momentum.safetensors"))?;
            sgd.load_state(model.net.store(), &m)
                .map_err(ModelError::Input)?;
            start_epoch = st.epochs_done;
            history = st.history;
        }
    }
    let (h, w, c) = train_set.geometry();
    let size = train_set.image_size();
    let steps = train_set.len() / cfg.batch;
    let total_steps = (cfg.epochs * steps).max(1);
    let mut batch_px = vec![0u8; cfg.batch * size];
    let mut labels = vec![0u32; cfg.batch];
    for epoch in start_epoch..cfg.epochs {
        if cfg.stop_after.is_some_and(|s| epoch >= s) {
            break;
        }
        let t0 = std::time::Instant::now();
        let mut rng =
            ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64);
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        for s in 0..steps {
            let gstep = epoch * steps + s;
            lr = 0.5
                * cfg.lr
                * (1.0 + (std::f64::consts::PI * gstep as f64 / total_steps as f64).cos());
            for (k, &i) in order[s * cfg.batch..(s + 1) * cfg.batch].iter().enumerate() {
                augment(
                    train_set.image(i),
                    &mut batch_px[k * size..(k + 1) * size],
                    (h, w, c),
                    cfg.pad,
                    cfg.flip,
                    &mut rng,
                );
                labels[k] = train_set.labels()[i];
            }
            let x = to_input(&model.card.input, &batch_px, cfg.batch, model.net.device())?;
            let out = model
                .net
                .backward(x, NormMode::Batch, true, Trainable::All, |logits| {
                    cross_entropy(logits, &labels)
                });
            if !out.loss.is_finite() {
                return Err(ModelError::Input(format!(
                    "training diverged: loss {} at epoch {} step {}",
                    out.loss,
                    epoch + 1,
                    s
                )));
            }
            sgd.step(model.net.store_mut(), out.grads, lr);
            let preds = argmax_rows(
                &tensor_to_vec(out.logits),
                model.card.architecture.num_classes(),
            );
            let ok = preds.iter().zip(&labels).filter(|(p, y)| p == y).count();
            loss_sum += out.loss as f64 * cfg.batch as f64;
            correct += ok;
            seen += cfg.batch;
            on_event(TrainEvent::Step {
                epoch,
                step: s,
                steps,
                loss: out.loss,
                acc: ok as f64 / cfg.batch as f64,
            });
        }
        let test_acc = match test_set {
            Some(t) => Some(model.accuracy(t, NormMode::Running, 500)?),
            None => None,
        };
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc,
            lr_end: lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        history.push(report.clone());
        on_event(TrainEvent::Epoch(&report));
        if let Some(dir) = ckpt {
            std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
                path: dir.into(),
                source,
            })?;
            write_atomic(
                &dir.join("weights.safetensors"),
                &tensors::to_safetensors(&model.state_dict(), None),
            )?;
            write_atomic(
                &dir.join("momentum.safetensors"),
                &tensors::to_safetensors(&sgd.state(model.net.store()), None),
            )?;
            let st = ResumeState {
                epochs_done: epoch + 1,
                config: cfg.clone(),
                history: history.clone(),
            };
            write_atomic(
                &dir.join("state.json"),
                serde_json::to_string_pretty(&st)
                    .expect("serialises")
                    .as_bytes(),
            )?;
        }
    }
    Ok(history)
}
