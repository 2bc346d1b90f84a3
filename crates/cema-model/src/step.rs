//! One differentiable forward/backward over chosen parameters.

use burn::tensor::{Tensor, TensorData};

use crate::norm::NormMode;
use crate::resnet::ResNet;
use crate::store::Trainable;

/// Result of [`ResNet::backward`]: the loss value, the (detached) logits and the gradients.
pub struct Backward {
    pub loss: f32,
    pub logits: Tensor<2>,
    pub grads: Vec<(usize, Tensor<1>)>,
}

impl ResNet {
    /// Forward with `which` parameters tracked, `loss_fn(logits)` → scalar, backward.
    /// Every other weight is a constant to autodiff (no gradient work for frozen convolutions).
    pub fn backward<F>(
        &mut self,
        x: Tensor<4>,
        mode: NormMode,
        update_stats: bool,
        which: Trainable,
        loss_fn: F,
    ) -> Backward
    where
        F: FnOnce(Tensor<2>) -> Tensor<1>,
    {
        let ids = self.store.track(which);
        let logits = self.forward(x, mode, update_stats);
        let loss = loss_fn(logits.clone());
        let grads_all = loss.backward();
        let grads = ids
            .iter()
            .filter_map(|&i| self.store.get1(i).grad(&grads_all).map(|g| (i, g)))
            .collect();
        let loss_value = crate::store::tensor_to_vec(loss.clone().without_autodiff())[0];
        self.store.untrack();
        Backward {
            loss: loss_value,
            logits: logits.detach().without_autodiff(),
            grads,
        }
    }
}

/// Softmax cross-entropy against integer labels, mean over the batch.
pub fn cross_entropy(logits: Tensor<2>, labels: &[u32]) -> Tensor<1> {
    let [n, c] = logits.dims();
    let mut onehot = vec![0f32; n * c];
    for (i, &y) in labels.iter().enumerate() {
        onehot[i * c + y as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, c]), &logits.device());
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    (logp * onehot).sum().neg() / n as f32
}

/// Row-wise argmax of host logits.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}
