//! Noise family: gaussian (§3.1), shot (§3.2), impulse (§3.3) and speckle (§3.16, held-out).
//! Every draw is per element (pixel and channel) in C order, as in the original.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};

use crate::util::{quantise, to_unit};

pub fn gaussian(px: &[u8], sigma: f32, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut f = to_unit(px);
    for v in &mut f {
        let n: f32 = rng.sample(StandardNormal);
        *v += sigma * n;
    }
    quantise(&f)
}

pub fn speckle(px: &[u8], sigma: f32, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut f = to_unit(px);
    for v in &mut f {
        let n: f32 = rng.sample(StandardNormal);
        *v += *v * sigma * n;
    }
    quantise(&f)
}

/// One Poisson(λ·x/255) sampler per u8 level, built once per plan: a pixel's rate depends only on
/// its level, and building a sampler costs more than drawing from it. `None` is rate 0 (always 0).
pub fn shot_table(lambda: f64) -> Vec<Option<Poisson<f64>>> {
    (0..256)
        .map(|x| Poisson::new(lambda * (x as f64 / 255.0)).ok())
        .collect()
}

pub fn shot(
    px: &[u8],
    lambda: f64,
    table: &[Option<Poisson<f64>>],
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let f: Vec<f32> = px
        .iter()
        .map(|&x| match &table[usize::from(x)] {
            Some(p) => (p.sample(rng) / lambda) as f32,
            None => 0.0,
        })
        .collect();
    quantise(&f)
}

/// Salt and pepper: the whole flip mask is drawn before the whole salt mask (§3.3, §6).
pub fn impulse(px: &[u8], p: f64, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let flip: Vec<bool> = (0..px.len()).map(|_| rng.random::<f64>() < p).collect();
    let mut out = px.to_vec();
    for (o, &fl) in out.iter_mut().zip(&flip) {
        let salt = rng.random::<f64>() < 0.5;
        if fl {
            *o = if salt { 255 } else { 0 };
        }
    }
    out
}
