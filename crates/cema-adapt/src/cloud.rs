//! The cloud side of CEMA (SPEC §3 "Cloud"), one instance per edge session: adapt the foundation
//! on uploads, distil it into the student (the cloud's copy of the edge's norm state), publish.

use std::collections::HashMap;

use cema_model::{
    cema_distill_grad, entropy_margin, self_weighted_entropy_grad, tensors, DistillWeights,
    HostBackward, Model, ModelError, NamedTensors, NormMode, NormState, Sgd, SgdConfig,
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
        Self::step_many(&mut [self])
            .pop()
            .expect("one result per adapter")
    }

    /// The rounds of several sessions at once, each exactly as [`CloudAdapter::step`] would run
    /// it (same steps, same replay draws, same versions), with the model work of every step
    /// batched across the sessions: the sessions' k-th foundation steps are one pass, then their
    /// teachers' logits, then their students' distillation steps. Where the models share their
    /// frozen weights (sessions of one cloud do) a pass runs each convolution once over all the
    /// sessions' samples, every norm layer per session (see `Model::norm_affine_backward_many`);
    /// the norm states then equal those of separate rounds within float rounding. Returns one
    /// result per adapter, in order.
    pub fn step_many(
        adapters: &mut [&mut CloudAdapter],
    ) -> Vec<Result<Option<NormState>, AdaptError>> {
        let mut results: Vec<Option<Result<Option<NormState>, AdaptError>>> =
            (0..adapters.len()).map(|_| None).collect();
        // Each session's steps, decided up front: what a step learns from never depends on what
        // an earlier step of the round learned.
        let mut work: Vec<Vec<Work>> = Vec::with_capacity(adapters.len());
        for (a, r) in adapters.iter_mut().zip(&mut results) {
            // Refused before anything is learned: a version must never repeat or regress.
            if a.version >= cema_wire::MAX_NORM_VERSION {
                *r = Some(Err(AdaptError::VersionExhausted(a.version)));
                work.push(Vec::new());
                continue;
            }
            work.push(a.plan_round());
        }
        let mut reports: Vec<Vec<StepReport>> = vec![Vec::new(); adapters.len()];
        let rounds = work.iter().map(Vec::len).max().unwrap_or(0);
        for k in 0..rounds {
            let live = |i: usize, results: &[Option<_>]| results[i].is_none() && work[i].len() > k;
            // Step 1: the foundations, on fresh samples only.
            let adapt: Vec<usize> = (0..adapters.len())
                .filter(|&i| live(i, &results))
                .filter(|&i| work[i][k].fresh && adapters[i].config.adapt_foundation)
                .collect();
            let losses = Self::adapt_foundations(adapters, &adapt, &work, k);
            let mut foundation_loss = vec![None; adapters.len()];
            for (i, l) in adapt.iter().zip(losses) {
                match l {
                    Ok(l) => foundation_loss[*i] = Some(l),
                    Err(e) => results[*i] = Some(Err(e)),
                }
            }
            // Step 2: every session's teacher logits, then its student's distillation step.
            let distil: Vec<usize> = (0..adapters.len()).filter(|&i| live(i, &results)).collect();
            let losses = Self::distill_many(adapters, &distil, &work, k);
            for (i, l) in distil.iter().zip(losses) {
                match l {
                    Ok(distill_loss) => {
                        let w = &work[*i][k];
                        if !w.fresh {
                            adapters[*i].counters.replay_only_steps += 1;
                        }
                        reports[*i].push(StepReport {
                            new: if w.fresh {
                                adapters[*i].config.batch
                            } else {
                                0
                            },
                            replay: w.replay,
                            foundation_loss: foundation_loss[*i],
                            distill_loss,
                        });
                    }
                    Err(e) => results[*i] = Some(Err(e)),
                }
            }
        }
        adapters
            .iter_mut()
            .zip(results)
            .zip(reports)
            .map(|((a, r), steps)| match r {
                Some(r) => r,
                None if steps.is_empty() => Ok(None),
                None => {
                    a.version += 1;
                    a.counters.rounds += 1;
                    a.last_round = RoundReport {
                        steps,
                        version: a.version,
                    };
                    Ok(Some(a.student.norm_state(&a.model_id, a.version)))
                }
            })
            .collect()
    }

    /// This round's steps: every full batch of pending samples (taken out of `pending`) with
    /// its replay draw, or one replay-only step.
    fn plan_round(&mut self) -> Vec<Work> {
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
            let mut batch: Vec<u8> = self.pending.drain(..b * self.image_size).collect();
            let replay = if self.replay.len() >= self.config.replay_min {
                self.replay
                    .sample_into(&mut rng, self.config.replay_ratio * b, &mut batch)
            } else {
                0
            };
            steps.push(Work {
                fresh: true,
                batch,
                n: b + replay,
                replay,
            });
        }
        if steps.is_empty() && self.replay.len() >= self.config.replay_min {
            // SPEC §3 step 3. This step distils only: the foundation is adapted on fresh uploads
            // alone (step 1 names "the batch" of new samples), so replay never re-adapts it.
            let mut batch = Vec::new();
            let k = self.config.replay_only_factor * b;
            let replay = self.replay.sample_into(&mut rng, k, &mut batch);
            steps.push(Work {
                fresh: false,
                batch,
                n: replay,
                replay,
            });
        }
        steps
    }

    /// Cloud step 1 for the sessions `which` (their step `k` is fresh): TBR forward (running
    /// statistics move), loss `mean[E_f · 1/exp(E_f − E0)]` with constant weights, one SGD step
    /// on norm affine. One result per session in `which`.
    fn adapt_foundations(
        adapters: &mut [&mut CloudAdapter],
        which: &[usize],
        work: &[Vec<Work>],
        k: usize,
    ) -> Vec<Result<f32, AdaptError>> {
        let fresh = |i: usize| {
            let b = adapters[i].config.batch;
            (&work[i][k].batch[..b * adapters[i].image_size], b)
        };
        let inputs: Vec<(&[u8], usize)> = which.iter().map(|&i| fresh(i)).collect();
        for (&i, (pixels, n)) in which.iter().zip(&inputs) {
            let a = &mut *adapters[i];
            if a.config.init_foundation_stats && !a.foundation_stats_initialised {
                if let Err(e) = a.foundation.init_running_stats(pixels, *n) {
                    return vec_err(which.len(), e.into());
                }
                a.foundation_stats_initialised = true;
            }
        }
        let losses: Vec<_> = which
            .iter()
            .map(|&i| {
                let a = &adapters[i];
                let (e0, classes) = (a.e0, a.foundation.card.architecture.num_classes());
                move |l: &[f32]| self_weighted_entropy_grad(l, classes, e0)
            })
            .collect();
        let mut models = pick(adapters, which, |a| &mut a.foundation);
        let outs =
            Model::norm_affine_backward_many(&mut models, &inputs, NormMode::Tbr, true, losses);
        drop(models);
        step_each(adapters, which, outs, |a, grads| {
            let lr = a.config.foundation_lr;
            a.foundation_sgd
                .step_host(a.foundation.store_mut(), grads, lr);
            a.counters.foundation_steps += 1;
        })
    }

    /// Cloud step 2 for the sessions `which`: teacher logits in eval mode (no gradient), student
    /// in TBR mode, the CEMA distillation loss, one SGD step on the student's norm affine.
    fn distill_many(
        adapters: &mut [&mut CloudAdapter],
        which: &[usize],
        work: &[Vec<Work>],
        k: usize,
    ) -> Vec<Result<f32, AdaptError>> {
        let inputs: Vec<(&[u8], usize)> = which
            .iter()
            .map(|&i| (&work[i][k].batch[..], work[i][k].n))
            .collect();
        let mut models = pick(adapters, which, |a| &mut a.foundation);
        let teachers = Model::logits_many(&mut models, &inputs, NormMode::Running);
        drop(models);
        let teachers = match teachers {
            Ok(t) => t,
            Err(e) => return vec_err(which.len(), e.into()),
        };
        let losses: Vec<_> = which
            .iter()
            .zip(&teachers)
            .map(|(&i, teacher)| {
                let a = &adapters[i];
                let (e0, kd) = (a.e0, a.config.distill);
                let classes = a.student.card.architecture.num_classes();
                move |s: &[f32]| cema_distill_grad(s, teacher, classes, e0, kd)
            })
            .collect();
        let mut models = pick(adapters, which, |a| &mut a.student);
        let outs =
            Model::norm_affine_backward_many(&mut models, &inputs, NormMode::Tbr, true, losses);
        drop(models);
        step_each(adapters, which, outs, |a, grads| {
            let lr = a.config.student_lr;
            a.student_sgd.step_host(a.student.store_mut(), grads, lr);
            a.counters.distillation_steps += 1;
        })
    }
}

/// One step of a planned round.
struct Work {
    /// The batch starts with B fresh samples (and the foundation adapts on them).
    fresh: bool,
    /// Fresh samples, then replay samples.
    batch: Vec<u8>,
    n: usize,
    replay: usize,
}

/// Mutable borrows of one model of each adapter in `which` (ascending indices).
fn pick<'a>(
    adapters: &'a mut [&mut CloudAdapter],
    which: &[usize],
    model: impl Fn(&mut CloudAdapter) -> &mut Model,
) -> Vec<&'a mut Model> {
    adapters
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| which.contains(i))
        .map(|(_, a)| model(a))
        .collect()
}

/// A failure of a pass shared by `n` sessions: the first gets the error, the others are told.
/// Each session's own SGD step (`step`) from its gradients in a batched backward's results, and
/// its loss; a failed pass fails every session in it.
fn step_each(
    adapters: &mut [&mut CloudAdapter],
    which: &[usize],
    outs: Result<Vec<HostBackward>, ModelError>,
    step: impl Fn(&mut CloudAdapter, Vec<(usize, Vec<f32>)>),
) -> Vec<Result<f32, AdaptError>> {
    match outs {
        Err(e) => vec_err(which.len(), e.into()),
        Ok(outs) => which
            .iter()
            .zip(outs)
            .map(|(&i, out)| {
                step(&mut *adapters[i], out.grads);
                Ok(out.loss)
            })
            .collect(),
    }
}

fn vec_err<T>(n: usize, e: AdaptError) -> Vec<Result<T, AdaptError>> {
    let msg = e.to_string();
    let mut out = vec![Err(e)];
    out.extend((1..n).map(|_| {
        Err(AdaptError::Model(ModelError::Input(format!(
            "a pass shared with another session failed: {msg}"
        ))))
    }));
    out.truncate(n);
    out
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
