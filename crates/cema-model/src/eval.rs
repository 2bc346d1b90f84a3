//! Accuracy of a model on a labelled set, with running or batch statistics.

use cema_data::ImageSet;

use crate::checkpoint::Model;
use crate::error::{ModelError, Result};
use crate::input::{check_pixels, to_input};
use crate::norm::NormMode;
use crate::step::argmax_rows;
use crate::store::tensor_to_vec;

impl Model {
    /// Logits (row-major `n × classes`) for `n` u8 images, no gradient, no state change.
    ///
    /// Eval mode (`Running`) goes through the BatchNorm-folded net unless
    /// [`Model::set_fold_inference`] turned it off.
    pub fn logits(&mut self, pixels: &[u8], n: usize, mode: NormMode) -> Result<Vec<f32>> {
        if mode == NormMode::Running && self.fold_inference_enabled() {
            check_pixels(&self.card.input, pixels, n)?;
            if let Some(f) = self.folded() {
                return Ok(f.logits(pixels, n));
            }
        }
        check_pixels(&self.card.input, pixels, n)?;
        if let Some(logits) = self.native_forward(pixels, n, mode, None) {
            return Ok(logits);
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        Ok(tensor_to_vec(self.net.forward(x, mode, false)))
    }

    /// Replaces the running statistics with those of these `n` images (see
    /// [`crate::ResNet::init_running_stats`]) and returns their batch-statistics logits.
    pub fn init_running_stats(&mut self, pixels: &[u8], n: usize) -> Result<Vec<f32>> {
        check_pixels(&self.card.input, pixels, n)?;
        if let Some(logits) = self.native_forward(pixels, n, NormMode::Batch, Some(1.0)) {
            return Ok(logits);
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        Ok(tensor_to_vec(self.net.init_running_stats(x)))
    }

    /// Logits from the running statistics, after which they track these `n` images with
    /// `momentum` (see [`crate::ResNet::forward_tracking`]).
    pub fn logits_tracking(&mut self, pixels: &[u8], n: usize, momentum: f32) -> Result<Vec<f32>> {
        check_pixels(&self.card.input, pixels, n)?;
        if let Some(logits) = self.native_forward(pixels, n, NormMode::Tbr, Some(momentum)) {
            return Ok(logits);
        }
        let x = to_input(&self.card.input, pixels, n, self.net.device())?;
        Ok(tensor_to_vec(self.net.forward_tracking(x, momentum)))
    }

    /// Predicted classes for `n` u8 images.
    pub fn predict(&mut self, pixels: &[u8], n: usize, mode: NormMode) -> Result<Vec<u32>> {
        let logits = self.logits(pixels, n, mode)?;
        Ok(argmax_rows(&logits, self.card.architecture.num_classes()))
    }

    /// Checks that a dataset's geometry matches this model's input.
    pub fn check_geometry(&self, set: &ImageSet) -> Result<()> {
        let i = &self.card.input;
        if (set.height, set.width, set.channels) != (i.height, i.width, i.channels) {
            return Err(ModelError::Input(format!(
                "images are {}×{}×{}, model {} expects {}×{}×{}",
                set.height, set.width, set.channels, self.card.name, i.height, i.width, i.channels
            )));
        }
        Ok(())
    }

    /// Top-1 accuracy over `set` in batches of `batch` (batch statistics are per batch in `Batch`
    /// mode — the BN-adapt view; running statistics are never modified).
    pub fn accuracy(&mut self, set: &ImageSet, mode: NormMode, batch: usize) -> Result<f64> {
        self.check_geometry(set)?;
        let mut correct = 0usize;
        let size = set.image_size();
        for start in (0..set.len()).step_by(batch.max(1)) {
            let n = batch.min(set.len() - start);
            let preds = self.predict(&set.images[start * size..(start + n) * size], n, mode)?;
            correct += preds
                .iter()
                .zip(&set.labels[start..start + n])
                .filter(|(p, y)| p == y)
                .count();
        }
        Ok(if set.is_empty() {
            0.0
        } else {
            correct as f64 / set.len() as f64
        })
    }
}
