//! The cloud side of CEMA (SPEC §3 "Cloud"), one instance per edge session: adapt the foundation
//! on uploads, distil it into the student (the cloud's copy of the edge's norm state), publish.

use cema_model::{
    cema_distill_loss, entropy_margin, self_weighted_entropy, to_input, DistillWeights, Model,
    ModelError, NormMode, NormState, Sgd, SgdConfig, Trainable,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::AdaptError;
use crate::replay::ReplayBuffer;

/// The cloud's constants (SPEC §3; defaults are the paper's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CloudConfig {
    /// B: uploaded samples per adaptation batch.
    pub batch: usize,
    /// Replay buffer capacity (FIFO).
    pub replay_capacity: usize,
    /// Replay is mixed in (and replay-only steps happen) once the buffer holds this many.
    pub replay_min: usize,
    /// Replay samples per new sample in a distillation batch (3: B new + 3B replay).
    pub replay_ratio: usize,
    /// A replay-only step uses this many batches' worth of samples (4B).
    pub replay_only_factor: usize,
    pub foundation_lr: f64,
    pub student_lr: f64,
    pub momentum: f64,
    pub distill: DistillWeights,
    /// Off: the foundation stays as shipped (an ablation; SPEC's method adapts it).
    pub adapt_foundation: bool,
    /// Seeds the replay sampler (ChaCha8): a session is deterministic given its seed.
    pub seed: u64,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            batch: 32,
            replay_capacity: 10_000,
            replay_min: 256,
            replay_ratio: 3,
            replay_only_factor: 4,
            foundation_lr: 0.00025,
            student_lr: 0.0025,
            momentum: 0.9,
            distill: DistillWeights::default(),
            adapt_foundation: true,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudCounters {
    pub samples_received: u64,
    /// Calls of [`CloudAdapter::step`] that did work and published a state.
    pub rounds: u64,
    pub foundation_steps: u64,
    pub distillation_steps: u64,
    pub replay_only_steps: u64,
}

/// One distillation step of a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// New (just uploaded) samples in the batch; 0 for a replay-only step.
    pub new: usize,
    /// Samples drawn from the replay buffer.
    pub replay: usize,
    /// The foundation's loss, when it was adapted on this batch.
    pub foundation_loss: Option<f32>,
    pub distill_loss: f32,
}

/// What the last productive [`CloudAdapter::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub steps: Vec<StepReport>,
    pub version: u64,
}

/// One edge session's cloud state.
#[derive(Debug, Clone)]
pub struct CloudAdapter {
    config: CloudConfig,
    foundation: Model,
    student: Model,
    model_id: String,
    version: u64,
    e0: f32,
    image_size: usize,
    pending: Vec<u8>,
    replay: ReplayBuffer,
    foundation_sgd: Sgd,
    student_sgd: Sgd,
    rng: ChaCha8Rng,
    counters: CloudCounters,
    last_round: RoundReport,
}

impl CloudAdapter {
    /// `student` is a copy of the edge's model with the norm state of `version`; `model_id`
    /// names it. The foundation must see the same images and predict the same classes.
    pub fn new(
        foundation: Model,
        student: Model,
        model_id: impl Into<String>,
        version: u64,
        config: CloudConfig,
    ) -> Result<Self, AdaptError> {
        let (fc, sc) = (
            foundation.card.architecture.num_classes(),
            student.card.architecture.num_classes(),
        );
        if fc != sc {
            return Err(AdaptError::Incompatible(format!(
                "foundation has {fc} classes, student {sc}"
            )));
        }
        let (fi, si) = (&foundation.card.input, &student.card.input);
        if (fi.height, fi.width, fi.channels) != (si.height, si.width, si.channels) {
            return Err(AdaptError::Incompatible(format!(
                "foundation takes {}×{}×{} images, student {}×{}×{}",
                fi.height, fi.width, fi.channels, si.height, si.width, si.channels
            )));
        }
        if config.batch == 0 {
            return Err(AdaptError::Incompatible(
                "batch size must be positive".into(),
            ));
        }
        let image_size = si.height * si.width * si.channels;
        Ok(CloudAdapter {
            foundation_sgd: Sgd::new(SgdConfig::momentum(config.foundation_lr, config.momentum)),
            student_sgd: Sgd::new(SgdConfig::momentum(config.student_lr, config.momentum)),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            replay: ReplayBuffer::new(image_size, config.replay_capacity),
            e0: entropy_margin(sc),
            image_size,
            pending: Vec::new(),
            counters: CloudCounters::default(),
            last_round: RoundReport::default(),
            model_id: model_id.into(),
            version,
            foundation,
            student,
            config,
        })
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }
    pub fn counters(&self) -> &CloudCounters {
        &self.counters
    }
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn student(&self) -> &Model {
        &self.student
    }
    pub fn foundation(&self) -> &Model {
        &self.foundation
    }
    pub fn replay(&self) -> &ReplayBuffer {
        &self.replay
    }
    /// Uploaded samples not yet used in a fresh batch.
    pub fn pending(&self) -> usize {
        self.pending.len() / self.image_size
    }
    pub fn last_round(&self) -> &RoundReport {
        &self.last_round
    }

    /// Queues `n` uploaded u8 images (NHWC) and appends them to the replay buffer.
    pub fn receive(&mut self, pixels: &[u8], n: usize) -> Result<(), AdaptError> {
        if pixels.len() != n * self.image_size {
            return Err(AdaptError::Model(ModelError::Input(format!(
                "{} bytes for {n} uploaded images of {} bytes each",
                pixels.len(),
                self.image_size
            ))));
        }
        self.pending.extend_from_slice(pixels);
        self.replay.push(pixels);
        self.counters.samples_received += n as u64;
        Ok(())
    }

    /// One round (SPEC §3 cloud steps 1–5): for every full batch of B pending samples, adapt the
    /// foundation on it and distil on it plus 3B replay samples (once the buffer holds
    /// `replay_min`); with no full batch but a warm buffer, one replay-only distillation step on
    /// 4B samples. Publishes the student's norm state as version v+1, or returns `None` when
    /// there was nothing to learn from.
    pub fn step(&mut self) -> Result<Option<NormState>, AdaptError> {
        let b = self.config.batch;
        let mut steps = Vec::new();
        while self.pending() >= b {
            let fresh: Vec<u8> = self.pending.drain(..b * self.image_size).collect();
            let foundation_loss = if self.config.adapt_foundation {
                Some(self.adapt_foundation(&fresh, b)?)
            } else {
                None
            };
            let mut batch = fresh;
            let replay = if self.replay.len() >= self.config.replay_min {
                self.replay
                    .sample_into(&mut self.rng, self.config.replay_ratio * b, &mut batch)
            } else {
                0
            };
            let distill_loss = self.distill(&batch, b + replay)?;
            steps.push(StepReport {
                new: b,
                replay,
                foundation_loss,
                distill_loss,
            });
        }
        if steps.is_empty() && self.replay.len() >= self.config.replay_min {
            // SPEC §3 step 3. This step distils only: the foundation is adapted on fresh uploads
            // alone (step 1 names "the batch" of new samples), so replay never re-adapts it.
            let mut batch = Vec::new();
            let k = self.config.replay_only_factor * b;
            let replay = self.replay.sample_into(&mut self.rng, k, &mut batch);
            let distill_loss = self.distill(&batch, replay)?;
            self.counters.replay_only_steps += 1;
            steps.push(StepReport {
                new: 0,
                replay,
                foundation_loss: None,
                distill_loss,
            });
        }
        if steps.is_empty() {
            return Ok(None);
        }
        self.version += 1;
        self.counters.rounds += 1;
        self.last_round = RoundReport {
            steps,
            version: self.version,
        };
        Ok(Some(self.student.norm_state(&self.model_id, self.version)))
    }

    /// Cloud step 1: TBR forward (running statistics move), loss
    /// `mean[E_f · 1/exp(E_f − E0)]` with constant weights, one SGD step on norm affine.
    fn adapt_foundation(&mut self, pixels: &[u8], n: usize) -> Result<f32, AdaptError> {
        let x = to_input(
            &self.foundation.card.input,
            pixels,
            n,
            self.foundation.net.device(),
        )?;
        let e0 = self.e0;
        let out =
            self.foundation
                .net
                .backward(x, NormMode::Tbr, true, Trainable::NormAffine, |l| {
                    self_weighted_entropy(l, e0)
                });
        let lr = self.config.foundation_lr;
        self.foundation_sgd
            .step(self.foundation.net.store_mut(), out.grads, lr);
        self.counters.foundation_steps += 1;
        Ok(out.loss)
    }

    /// Cloud step 2: teacher logits in eval mode (no gradient), student in TBR mode, the CEMA
    /// distillation loss, one SGD step on the student's norm affine.
    fn distill(&mut self, pixels: &[u8], n: usize) -> Result<f32, AdaptError> {
        let teacher = self.foundation.logits(pixels, n, NormMode::Running)?;
        let x = to_input(
            &self.student.card.input,
            pixels,
            n,
            self.student.net.device(),
        )?;
        let (e0, k) = (self.e0, self.config.distill);
        let out = self
            .student
            .net
            .backward(x, NormMode::Tbr, true, Trainable::NormAffine, |s| {
                cema_distill_loss(s, &teacher, e0, k)
            });
        let lr = self.config.student_lr;
        self.student_sgd
            .step(self.student.net.store_mut(), out.grads, lr);
        self.counters.distillation_steps += 1;
        Ok(out.loss)
    }
}
