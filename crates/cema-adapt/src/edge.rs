//! The edge side of CEMA (SPEC §3 "Edge"): forward only, select, hot-swap norm states.

use cema_model::{argmax_rows, entropy_rows, Model, NormMode, NormState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::AdaptError;
use crate::filter::{EdgeConfig, EntropyFilter, Selection};

/// What the edge did with one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeBatch {
    /// Predicted classes, made with the norm state installed *before* this batch (SPEC §4 online
    /// accuracy).
    pub predictions: Vec<u32>,
    /// Indices into the batch of the samples selected for upload.
    pub upload: Vec<usize>,
    /// Entropy of every sample.
    pub entropies: Vec<f32>,
    /// The `E_max` the batch was judged against.
    pub e_max: f32,
    /// This batch replaced the source running statistics (its predictions used batch
    /// statistics): the cloud's student must be given [`EdgeAdapter::norm_state`] before it
    /// learns from this edge's uploads.
    pub stats_initialised: bool,
    /// With `EdgeConfig::share_stats`, for a batch that uploads something: the edge's running
    /// statistics after this batch ([`Model::norm_stats`]), to travel with the upload so the
    /// cloud's student normalises as the edge does. Counted as uplink.
    #[serde(skip)]
    pub stats: Option<NormState>,
}

/// The edge's counters (serialisable with the filter state for persistence and reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeCounters {
    pub samples_seen: u64,
    pub uploaded: u64,
    pub dropped_too_uncertain: u64,
    pub dropped_too_certain: u64,
    pub dropped_redundant: u64,
    pub updates_applied: u64,
    pub updates_rejected: u64,
    /// u8 pixels of the selected samples (what the uplink carries, headers aside).
    pub bytes_up: u64,
    /// Serialised norm states received (applied or not).
    pub bytes_down: u64,
}

/// The edge's persistent state apart from the model: which norm state is installed, the
/// selection state and the counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeState {
    pub model_id: String,
    pub version: u64,
    pub filter: EntropyFilter,
    pub counters: EdgeCounters,
    /// Whether the running statistics have been taken from a test batch yet.
    #[serde(default)]
    pub stats_initialised: bool,
    /// Under [`EdgeConfig::byte_budget`]: bytes earned and not yet spent.
    #[serde(default)]
    pub byte_credit: f64,
}

/// One edge device: owns its model and never computes a gradient.
#[derive(Debug, Clone)]
pub struct EdgeAdapter {
    model: Model,
    state: EdgeState,
    init_stats: bool,
    track_stats: Option<f32>,
    share_stats: bool,
    /// Rate-matched selection instead of the entropy filters (random upload and its picks).
    random: Option<RandomSelector>,
    byte_budget: Option<f64>,
    /// Bytes of the statistics section an upload carries when `share_stats` (else 0).
    stats_bytes: usize,
}

impl EdgeAdapter {
    /// `model_id` names the model (and its norm-state lineage); `version` is that of the norm
    /// state the model holds now (0 for the shipped checkpoint).
    pub fn new(
        model: Model,
        model_id: impl Into<String>,
        version: u64,
        config: EdgeConfig,
    ) -> Self {
        let classes = model.card.architecture.num_classes();
        let share_stats = config.track_stats.is_some() && config.share_stats;
        let stats_bytes = if share_stats {
            model.norm_stats("", 0).to_stats_bytes().len()
        } else {
            0
        };
        EdgeAdapter {
            model,
            state: EdgeState {
                model_id: model_id.into(),
                version,
                filter: EntropyFilter::new(config, classes),
                counters: EdgeCounters::default(),
                stats_initialised: false,
                byte_credit: 0.0,
            },
            init_stats: config.init_stats,
            track_stats: config.track_stats,
            share_stats,
            random: None,
            byte_budget: config.byte_budget,
            stats_bytes,
        }
    }

    /// Selects by `selector`'s quota and pick instead of the entropy filters (the random-upload
    /// baseline of SPEC §3 and issue #25's rules); `None` restores the filters. The filter state
    /// is left untouched while a selector runs, and the `dropped_*` counters do not move.
    pub fn set_selector(&mut self, selector: Option<RandomSelector>) {
        self.random = selector;
    }

    pub fn selector(&self) -> Option<&RandomSelector> {
        self.random.as_ref()
    }

    pub fn selector_mut(&mut self) -> Option<&mut RandomSelector> {
        self.random.as_mut()
    }

    /// Whether this edge sends its running statistics with its uploads
    /// (`EdgeConfig::share_stats`, which needs `track_stats`).
    pub fn shares_stats(&self) -> bool {
        self.share_stats
    }

    /// The norm state the edge predicts with now, under its current version.
    pub fn norm_state(&self) -> NormState {
        self.model
            .norm_state(&self.state.model_id, self.state.version)
    }

    /// [`norm_state`](Self::norm_state) for sending to the cloud; its bytes count as uplink.
    pub fn export_norm_state(&mut self) -> NormState {
        let state = self.norm_state();
        self.state.counters.bytes_up += state.to_bytes().len() as u64;
        state
    }

    /// Step 1's forward. The first batch of a stream may instead replace the running statistics
    /// with its own (forward only: no gradient on the edge) and predict with them.
    fn forward(&mut self, pixels: &[u8], n: usize) -> Result<(Vec<f32>, bool), AdaptError> {
        if self.init_stats && !self.state.stats_initialised && n > 1 {
            let logits = self.model.init_running_stats(pixels, n)?;
            self.state.stats_initialised = true;
            return Ok((logits, true));
        }
        if let (Some(m), true) = (self.track_stats, n > 1) {
            return Ok((self.model.logits_tracking(pixels, n, m)?, false));
        }
        Ok((self.model.logits(pixels, n, NormMode::Running)?, false))
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Whether this edge keeps its own running statistics (`EdgeConfig::track_stats`).
    pub fn tracks_stats(&self) -> bool {
        self.track_stats.is_some()
    }

    pub fn state(&self) -> &EdgeState {
        &self.state
    }

    pub fn counters(&self) -> &EdgeCounters {
        &self.state.counters
    }

    pub fn version(&self) -> u64 {
        self.state.version
    }

    pub fn model_id(&self) -> &str {
        &self.state.model_id
    }

    /// Restores persisted state; the model id must be this edge's.
    pub fn restore(&mut self, state: EdgeState) -> Result<(), AdaptError> {
        if state.model_id != self.state.model_id {
            return Err(AdaptError::WrongModel {
                expected: self.state.model_id.clone(),
                found: state.model_id,
            });
        }
        self.state = state;
        Ok(())
    }

    /// SPEC §3 edge steps 1–4 on `n` u8 images (NHWC): predictions first, from running
    /// statistics with no gradient (see [`EdgeBatch::stats_initialised`] for the first batch);
    /// then the selection: the entropy filters, or the selector of
    /// [`set_selector`](Self::set_selector).
    pub fn process(&mut self, pixels: &[u8], n: usize) -> Result<EdgeBatch, AdaptError> {
        let (logits, init) = self.forward(pixels, n)?;
        let classes = self.model.card.architecture.num_classes();
        let predictions = argmax_rows(&logits, classes);
        let per_image = pixels.len().checked_div(n).unwrap_or(0);
        let quota = self.byte_quota(n, per_image);
        let sel = match &mut self.random {
            None => match quota {
                None => self.state.filter.select(&logits),
                Some(k) => self.state.filter.select_count(&logits, k),
            },
            Some(selector) => {
                let entropies = entropy_rows(&logits, classes);
                Selection {
                    kept: match quota {
                        None => selector.select_among(&entropies),
                        Some(k) => selector.pick_count(&entropies, k),
                    },
                    entropies,
                    e_max: self.state.filter.e_max(),
                    too_uncertain: 0,
                    too_certain: 0,
                    redundant: 0,
                }
            }
        };
        if quota.is_some() {
            self.state.byte_credit -= self.upload_cost(sel.kept.len(), per_image);
        }
        Ok(self.count(pixels, n, predictions, sel, init))
    }

    /// Under a byte budget, how many samples of a batch of `n` the credit pays for once the
    /// batch has earned its share: `None` without a budget.
    fn byte_quota(&mut self, n: usize, per_image: usize) -> Option<usize> {
        let budget = self.byte_budget?;
        self.state.byte_credit += budget.max(0.0) * n as f64;
        let spare = self.state.byte_credit - self.stats_bytes as f64;
        // An image costs at least a byte: a zero-sized input never divides by zero.
        let k = (spare / per_image.max(1) as f64 + 1e-9).floor().max(0.0);
        Some((k as usize).min(n))
    }

    /// What an upload of `k` samples of `per_image` bytes puts on the wire, as the counters
    /// count it: their pixels and, when shared, the statistics (none when `k` is 0).
    fn upload_cost(&self, k: usize, per_image: usize) -> f64 {
        match k {
            0 => 0.0,
            k => (k * per_image + self.stats_bytes) as f64,
        }
    }

    fn count(
        &mut self,
        pixels: &[u8],
        n: usize,
        predictions: Vec<u32>,
        sel: Selection,
        stats_initialised: bool,
    ) -> EdgeBatch {
        let c = &mut self.state.counters;
        c.samples_seen += n as u64;
        c.uploaded += sel.kept.len() as u64;
        c.dropped_too_uncertain += sel.too_uncertain as u64;
        c.dropped_too_certain += sel.too_certain as u64;
        c.dropped_redundant += sel.redundant as u64;
        let per_image = pixels.len().checked_div(n).unwrap_or(0);
        c.bytes_up += (sel.kept.len() * per_image) as u64;
        let stats = (self.share_stats && !sel.kept.is_empty()).then(|| {
            let stats = self
                .model
                .norm_stats(&self.state.model_id, self.state.version);
            self.state.counters.bytes_up += stats.to_stats_bytes().len() as u64;
            stats
        });
        EdgeBatch {
            predictions,
            upload: sel.kept,
            entropies: sel.entropies,
            e_max: sel.e_max,
            stats_initialised,
            stats,
        }
    }

    /// Installs a norm state from the cloud: the model id must match, the version must be newer,
    /// and [`Model::apply_norm_state`] validates names, shapes and finiteness all-or-nothing. On
    /// any error the edge keeps predicting with its current state (SPEC §2: never block on, or be
    /// broken by, the cloud).
    pub fn apply_update(&mut self, update: &NormState) -> Result<(), AdaptError> {
        self.state.counters.bytes_down += update.to_bytes().len() as u64;
        let result = self.check_and_apply(update);
        match result {
            Ok(()) => {
                self.state.version = update.version;
                self.state.counters.updates_applied += 1;
            }
            Err(_) => self.state.counters.updates_rejected += 1,
        }
        result
    }

    fn check_and_apply(&mut self, update: &NormState) -> Result<(), AdaptError> {
        if update.model_id != self.state.model_id {
            return Err(AdaptError::WrongModel {
                expected: self.state.model_id.clone(),
                found: update.model_id.clone(),
            });
        }
        if update.version <= self.state.version {
            return Err(AdaptError::StaleVersion {
                current: self.state.version,
                offered: update.version,
            });
        }
        if self.track_stats.is_some() {
            self.model.apply_norm_affine(update)?;
        } else {
            self.model.apply_norm_state(update)?;
        }
        Ok(())
    }
}

/// Gathers the images at `indices` from an NHWC batch.
pub fn gather(pixels: &[u8], n: usize, indices: &[usize]) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let per = pixels.len() / n;
    let mut out = Vec::with_capacity(indices.len() * per);
    for &i in indices {
        out.extend_from_slice(&pixels[i * per..(i + 1) * per]);
    }
    out
}

/// Which samples of a batch a rate-matched selection takes once its quota is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    /// A uniformly random subset: the random-upload baseline of SPEC §3.
    #[default]
    Uniform,
    /// The highest-entropy samples (ties: the earlier sample): an ablation that inverts CEMA's
    /// `E < E_max` criterion at the same rate, to test which end of the entropy range carries
    /// what the teacher can correct.
    HighestEntropy,
    /// One sample drawn uniformly from each of `k` equal strata of the batch's entropy ranks:
    /// a uniform draw whose uploads cover the batch's range of confidence evenly (systematic
    /// sampling), so the student's statistics and targets come from the whole stream with less
    /// variance than an unstratified draw.
    EntropyStrata,
}

/// Upload selection at a fixed rate (ChaCha8, deterministic given its seed).
///
/// Each batch of `n` adds `rate · n` to a running quota; the batch uploads the quota's whole part
/// (at most `n`), chosen by its [`Pick`], so over a stream the uploaded fraction tracks `rate` to
/// within one sample, not merely in expectation.
#[derive(Debug, Clone)]
pub struct RandomSelector {
    rate: f64,
    owed: f64,
    rng: ChaCha8Rng,
    pick: Pick,
}

impl RandomSelector {
    /// `rate` is clamped to [0, 1] (NaN counts as 0).
    pub fn new(rate: f64, seed: u64) -> Self {
        RandomSelector {
            rate: clamp_rate(rate),
            owed: 0.0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            pick: Pick::Uniform,
        }
    }

    /// The same quota, filled by `pick` instead of uniformly.
    pub fn with_pick(mut self, pick: Pick) -> Self {
        self.pick = pick;
        self
    }

    pub fn pick(&self) -> Pick {
        self.pick
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the rate from the next batch on (the quota carried so far is kept).
    pub fn set_rate(&mut self, rate: f64) {
        self.rate = clamp_rate(rate);
    }

    /// This batch's share of the quota.
    fn quota(&mut self, n: usize) -> usize {
        self.owed += self.rate * n as f64;
        // The epsilon keeps e.g. 0.25 · 64 = 16.000000000000004 or 15.999999999999998 exact.
        let k = ((self.owed + 1e-9).floor().max(0.0) as usize).min(n);
        self.owed = (self.owed - k as f64).max(0.0);
        k
    }

    /// Indices (ascending) of the samples of a batch of `n` to upload, uniformly at random
    /// (whatever the [`Pick`]: without entropies there is nothing else to rank by).
    pub fn select(&mut self, n: usize) -> Vec<usize> {
        let k = self.quota(n);
        self.draw(n, k)
    }

    fn draw(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut kept = rand::seq::index::sample(&mut self.rng, n, k).into_vec();
        kept.sort_unstable();
        kept
    }

    /// Indices (ascending) of the samples of a batch with these entropies to upload, by the
    /// selector's [`Pick`].
    pub fn select_among(&mut self, entropies: &[f32]) -> Vec<usize> {
        let k = self.quota(entropies.len());
        self.pick_count(entropies, k)
    }

    /// [`select_among`](Self::select_among) with the quota `k` set by the caller (the edge's
    /// byte budget) instead of the rate; the rate's running quota does not move.
    pub fn pick_count(&mut self, entropies: &[f32], k: usize) -> Vec<usize> {
        let n = entropies.len();
        let k = k.min(n);
        match self.pick {
            Pick::Uniform => self.draw(n, k),
            Pick::HighestEntropy => {
                let mut kept = by_entropy_descending(entropies)[..k].to_vec();
                kept.sort_unstable();
                kept
            }
            Pick::EntropyStrata => {
                let order = by_entropy_descending(entropies);
                // Stratum j holds the ranks [⌊j·n/k⌋, ⌊(j+1)·n/k⌋): never empty when k ≤ n.
                let mut kept: Vec<usize> = (0..k)
                    .map(|j| {
                        let (lo, hi) = (j * n / k, (j + 1) * n / k);
                        order[self.rng.random_range(lo..hi)]
                    })
                    .collect();
                kept.sort_unstable();
                kept
            }
        }
    }
}

/// Indices of a batch from the highest entropy to the lowest (ties: the earlier sample; NaN,
/// never produced by finite logits, last).
fn by_entropy_descending(entropies: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entropies.len()).collect();
    order.sort_by(|&a, &b| {
        entropies[b]
            .partial_cmp(&entropies[a])
            .unwrap_or_else(|| entropies[a].is_nan().cmp(&entropies[b].is_nan()))
            .then(a.cmp(&b))
    });
    order
}

fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}
