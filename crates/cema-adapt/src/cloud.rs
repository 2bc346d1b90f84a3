//! The cloud side of CEMA (SPEC §3 "Cloud"), one instance per edge session: adapt the foundation
//! on uploads, distil it into the student (the cloud's copy of the edge's norm state), publish.

use std::collections::HashMap;

use cema_model::{
    cema_distill_grad, entropy_margin, self_weighted_entropy_grad, tensors, DistillWeights, Model,
    ModelError, NamedTensors, NormMode, NormState, Sgd, SgdConfig,
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
    /// Replace the foundation's source running statistics with those of the first uploaded
    /// batch, as the released code does for both models (SPEC §3 "TBR").
    #[serde(default = "yes")]
    pub init_foundation_stats: bool,
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
            init_foundation_stats: true,
            seed: 0,
        }
    }
}

fn yes() -> bool {
    true
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
    counters: CloudCounters,
    last_round: RoundReport,
    foundation_stats_initialised: bool,
}

/// The foundation can teach `student`: it sees the same images (height, width, channels) and
/// predicts as many classes. A cloud checks this once at start-up, before any session.
pub fn check_compatible(foundation: &Model, student: &Model) -> Result<(), AdaptError> {
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
    Ok(())
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
        check_compatible(&foundation, &student)?;
        let (si, sc) = (&student.card.input, student.card.architecture.num_classes());
        if config.batch == 0 {
            return Err(AdaptError::Incompatible(
                "batch size must be positive".into(),
            ));
        }
        let image_size = si.height * si.width * si.channels;
        Ok(CloudAdapter {
            foundation_sgd: Sgd::new(SgdConfig::momentum(config.foundation_lr, config.momentum)),
            student_sgd: Sgd::new(SgdConfig::momentum(config.student_lr, config.momentum)),
            replay: ReplayBuffer::new(image_size, config.replay_capacity),
            e0: entropy_margin(sc),
            image_size,
            pending: Vec::new(),
            counters: CloudCounters::default(),
            last_round: RoundReport::default(),
            foundation_stats_initialised: false,
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
    /// The teacher's (the foundation's, eval mode) predicted classes for `n` images, changing
    /// nothing: for diagnostics of what the edge's selection keeps and drops.
    pub fn teacher_predictions(&mut self, pixels: &[u8], n: usize) -> Result<Vec<u32>, AdaptError> {
        Ok(self.foundation.predict(pixels, n, NormMode::Running)?)
    }

    /// Uploaded samples not yet used in a fresh batch.
    pub fn pending(&self) -> usize {
        self.pending.len() / self.image_size
    }
    pub fn last_round(&self) -> &RoundReport {
        &self.last_round
    }

    /// Installs the edge's own norm state into the student (e.g. after the edge took its running
    /// statistics from its first test batch), keeping the version: the student mirrors the edge.
    /// Validated all-or-nothing like an edge update.
    pub fn sync_student(&mut self, state: &NormState) -> Result<(), AdaptError> {
        self.check_model(state)?;
        self.student.apply_norm_state(state)?;
        Ok(())
    }

    /// Installs the edge's running statistics into the student, keeping its γ and β (an edge
    /// that tracks its own statistics sends them with its uploads).
    pub fn sync_student_stats(&mut self, state: &NormState) -> Result<(), AdaptError> {
        self.check_model(state)?;
        self.student.apply_norm_stats(state)?;
        Ok(())
    }

    fn check_model(&self, state: &NormState) -> Result<(), AdaptError> {
        if state.model_id != self.model_id {
            return Err(AdaptError::WrongModel {
                expected: self.model_id.clone(),
                found: state.model_id.clone(),
            });
        }
        Ok(())
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

    /// Frees what this adapter holds only to go faster inside a round (the foundation's folded
    /// inference net). A cloud holding many sessions calls it after each round; the next round
    /// rebuilds it, as it would anyway once the foundation has adapted.
    pub fn release_caches(&mut self) {
        self.foundation.release_folded();
        self.student.release_folded();
    }

    /// One round (SPEC §3 cloud steps 1–5): for every full batch of B pending samples, adapt the
    /// foundation on it and distil on it plus 3B replay samples (once the buffer holds
    /// `replay_min`); with no full batch but a warm buffer, one replay-only distillation step on
    /// 4B samples. Publishes the student's norm state as version v+1, or returns `None` when
    /// there was nothing to learn from.
    pub fn step(&mut self) -> Result<Option<NormState>, AdaptError> {
        // Refused before anything is learned: a version must never repeat or regress.
        if self.version >= cema_wire::MAX_NORM_VERSION {
            return Err(AdaptError::VersionExhausted(self.version));
        }
        let b = self.config.batch;
        // The replay sampler is seeded per round from (seed, version) rather than carried along,
        // so a session restored from a snapshot draws exactly what it would have drawn.
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config
                .seed
                .wrapping_add(self.version.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        );
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
                    .sample_into(&mut rng, self.config.replay_ratio * b, &mut batch)
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
            let replay = self.replay.sample_into(&mut rng, k, &mut batch);
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
        if self.config.init_foundation_stats && !self.foundation_stats_initialised {
            self.foundation.init_running_stats(pixels, n)?;
            self.foundation_stats_initialised = true;
        }
        let (e0, classes) = (self.e0, self.foundation.card.architecture.num_classes());
        let out = self
            .foundation
            .norm_affine_backward(pixels, n, NormMode::Tbr, true, |l| {
                self_weighted_entropy_grad(l, classes, e0)
            })?;
        let lr = self.config.foundation_lr;
        self.foundation_sgd
            .step_host(self.foundation.store_mut(), out.grads, lr);
        self.counters.foundation_steps += 1;
        Ok(out.loss)
    }

    /// Cloud step 2: teacher logits in eval mode (no gradient), student in TBR mode, the CEMA
    /// distillation loss, one SGD step on the student's norm affine.
    fn distill(&mut self, pixels: &[u8], n: usize) -> Result<f32, AdaptError> {
        let teacher = self.foundation.logits(pixels, n, NormMode::Running)?;
        let (e0, k) = (self.e0, self.config.distill);
        let classes = self.student.card.architecture.num_classes();
        let out = self
            .student
            .norm_affine_backward(pixels, n, NormMode::Tbr, true, |s| {
                cema_distill_grad(s, &teacher, classes, e0, k)
            })?;
        let lr = self.config.student_lr;
        self.student_sgd
            .step_host(self.student.store_mut(), out.grads, lr);
        self.counters.distillation_steps += 1;
        Ok(out.loss)
    }
}

/// Everything of a [`CloudAdapter`] that is not its frozen weights or its replay buffer: what a
/// cloud persists after each round so that a restarted process resumes the session exactly.
/// The replay buffer is left out on purpose: it is the tail of the upload log, which the cloud
/// keeps anyway, and re-reading it is cheaper than rewriting megabytes per round.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudSnapshot {
    pub meta: SnapshotMeta,
    /// `student.*`, `foundation.*`, `student_sgd.*`, `foundation_sgd.*` by PyTorch name.
    pub tensors: NamedTensors,
    /// Uploaded pixels not yet used in a fresh batch (fewer than B images).
    pub pending: Vec<u8>,
}

/// The scalar part of a [`CloudSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub model_id: String,
    pub version: u64,
    pub counters: CloudCounters,
    pub foundation_stats_initialised: bool,
}

const SNAPSHOT_FORMAT: &str = "cema-cloud-snapshot/1";

impl CloudSnapshot {
    /// One safetensors blob (meta as JSON in its header) followed by the pending pixels.
    pub fn to_bytes(&self) -> Vec<u8> {
        let meta = HashMap::from([
            ("format".to_string(), SNAPSHOT_FORMAT.to_string()),
            (
                "meta".to_string(),
                serde_json::to_string(&self.meta).expect("meta serialises"),
            ),
        ]);
        let st = tensors::to_safetensors(&self.tensors, Some(meta));
        let mut out = Vec::with_capacity(8 + st.len() + self.pending.len());
        out.extend_from_slice(&(st.len() as u64).to_le_bytes());
        out.extend_from_slice(&st);
        out.extend_from_slice(&self.pending);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdaptError> {
        let bad = |m: String| AdaptError::Snapshot(m);
        if bytes.len() < 8 {
            return Err(bad(format!("{} bytes is too short", bytes.len())));
        }
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let st = bytes.get(8..8usize.saturating_add(n)).ok_or_else(|| {
            bad(format!(
                "declares {n} bytes of tensors, has {}",
                bytes.len() - 8
            ))
        })?;
        let tensors =
            tensors::from_safetensors(st, "cloud snapshot").map_err(|e| bad(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(st).map_err(|e| bad(e.to_string()))?;
        let header = header.metadata().clone().unwrap_or_default();
        if header.get("format").map(String::as_str) != Some(SNAPSHOT_FORMAT) {
            return Err(bad(format!(
                "format is {:?}, expected {SNAPSHOT_FORMAT}",
                header.get("format")
            )));
        }
        let meta = header
            .get("meta")
            .ok_or_else(|| bad("no meta".into()))
            .and_then(|m| serde_json::from_str(m).map_err(|e| bad(format!("meta: {e}"))))?;
        Ok(CloudSnapshot {
            meta,
            tensors,
            pending: bytes[8 + n..].to_vec(),
        })
    }
}

fn prefixed(prefix: &str, t: NamedTensors, out: &mut NamedTensors) {
    out.extend(t.into_iter().map(|(k, v)| (format!("{prefix}.{k}"), v)));
}

fn unprefixed(prefix: &str, t: &NamedTensors) -> NamedTensors {
    let p = format!("{prefix}.");
    t.iter()
        .filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), v.clone())))
        .collect()
}

impl CloudAdapter {
    pub fn snapshot(&self) -> CloudSnapshot {
        let mut tensors = NamedTensors::new();
        let student = self.student.norm_state(&self.model_id, self.version);
        let foundation = self.foundation.norm_state(&self.model_id, self.version);
        prefixed("student", student.tensors, &mut tensors);
        prefixed("foundation", foundation.tensors, &mut tensors);
        prefixed(
            "student_sgd",
            self.student_sgd.state(self.student.store()),
            &mut tensors,
        );
        prefixed(
            "foundation_sgd",
            self.foundation_sgd.state(self.foundation.store()),
            &mut tensors,
        );
        CloudSnapshot {
            meta: SnapshotMeta {
                model_id: self.model_id.clone(),
                version: self.version,
                counters: self.counters.clone(),
                foundation_stats_initialised: self.foundation_stats_initialised,
            },
            tensors,
            pending: self.pending.clone(),
        }
    }

    /// Resumes from a snapshot of this session; `replay` is the replay buffer's content, oldest
    /// first (the last `replay_capacity` samples uploaded up to the snapshot). All-or-nothing:
    /// on error the adapter is unchanged.
    pub fn restore(&mut self, snap: &CloudSnapshot, replay: &[u8]) -> Result<(), AdaptError> {
        if snap.meta.model_id != self.model_id {
            return Err(AdaptError::WrongModel {
                expected: self.model_id.clone(),
                found: snap.meta.model_id.clone(),
            });
        }
        if !snap.pending.len().is_multiple_of(self.image_size)
            || !replay.len().is_multiple_of(self.image_size)
        {
            return Err(AdaptError::Snapshot(format!(
                "pending ({} B) or replay ({} B) is not whole {}-byte images",
                snap.pending.len(),
                replay.len(),
                self.image_size
            )));
        }
        let mut next = self.clone();
        let state = |prefix: &str| NormState {
            model_id: snap.meta.model_id.clone(),
            version: snap.meta.version,
            tensors: unprefixed(prefix, &snap.tensors),
        };
        next.student.apply_norm_state(&state("student"))?;
        next.foundation.apply_norm_state(&state("foundation"))?;
        next.student_sgd
            .load_state(
                next.student.store(),
                &unprefixed("student_sgd", &snap.tensors),
            )
            .map_err(AdaptError::Snapshot)?;
        next.foundation_sgd
            .load_state(
                next.foundation.store(),
                &unprefixed("foundation_sgd", &snap.tensors),
            )
            .map_err(AdaptError::Snapshot)?;
        next.version = snap.meta.version;
        next.counters = snap.meta.counters.clone();
        next.foundation_stats_initialised = snap.meta.foundation_stats_initialised;
        next.pending = snap.pending.clone();
        next.replay = ReplayBuffer::new(self.image_size, self.config.replay_capacity);
        next.replay.push(replay);
        *self = next;
        Ok(())
    }

    /// Bytes of one uploaded image.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Bytes this session holds besides the frozen weights and its replay buffer: two norm
    /// states, two sets of momentum buffers and the pending pixels (reported per session).
    pub fn session_bytes(&self) -> usize {
        let snap = self.snapshot();
        snap.tensors
            .values()
            .map(|t| t.data.len() * 4)
            .sum::<usize>()
            + snap.pending.len()
    }
}
