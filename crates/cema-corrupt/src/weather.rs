//! Weather family: snow (§3.8), frost (§3.9), fog (§3.10), brightness (§3.11).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::frost::{Texture, INDEX_TO_PROFILE};
use crate::geom::{motion_blur, resample_add, AxisMap};
use crate::params::Snow;
use crate::util::{luma, quantise, to_unit};

#[allow(clippy::too_many_arguments)]
pub fn snow(
    px: &[u8],
    h: usize,
    w: usize,
    c: usize,
    p: &Snow,
    zoom: Option<&(AxisMap, AxisMap)>,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let f = to_unit(px);
    let mut layer: Vec<f32> = (0..h * w)
        .map(|_| (p.mean + p.sd * rng.sample::<f64, _>(StandardNormal)) as f32)
        .collect();
    if let Some((ym, xm)) = zoom {
        let mut z = vec![0f32; h * w];
        resample_add(&layer, &mut z, w, 1, ym, xm);
        layer = z;
    }
    // Threshold, then the 8-bit gray image handed to ImageMagick (truncated).
    for v in &mut layer {
        *v = if *v < p.threshold {
            0.0
        } else {
            (v.clamp(0.0, 1.0) * 255.0).floor()
        };
    }
    let angle = -135.0 + 90.0 * rng.random::<f64>();
    let lb = motion_blur(&layer, h, w, 1, p.radius, p.sigma, angle);
    let beta = p.blend;
    let mut out = vec![0f32; f.len()];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let streak = (lb[i] + lb[(h - 1 - y) * w + (w - 1 - x)]) / 255.0;
            let pix = &f[i * c..(i + 1) * c];
            let g = if c == 3 {
                luma(pix[0], pix[1], pix[2])
            } else {
                pix[0]
            };
            let haze = 1.5 * g + 0.5;
            for ch in 0..c {
                let v = pix[ch];
                out[i * c + ch] = beta * v + (1.0 - beta) * v.max(haze) + streak;
            }
        }
    }
    quantise(&out)
}

/// §3.9 with the synthetic bank: index 0…4, crop offsets with exclusive upper bounds, blend on
/// the 0–255 scale. An image larger than the texture (only with a table override) wraps around
/// the texture instead of failing.
#[allow(clippy::too_many_arguments)]
pub fn frost(
    px: &[u8],
    h: usize,
    w: usize,
    c: usize,
    (c_img, c_frost): (f32, f32),
    bank: &[Texture; 4],
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let t = &bank[INDEX_TO_PROFILE[rng.random_range(0..5usize)]];
    let r0 = if t.height > h {
        rng.random_range(0..t.height - h)
    } else {
        rng.random_range(0..1)
    };
    let c0 = if t.width > w {
        rng.random_range(0..t.width - w)
    } else {
        rng.random_range(0..1)
    };
    let mut out = Vec::with_capacity(px.len());
    for y in 0..h {
        let ty = (r0 + y) % t.height;
        for x in 0..w {
            let tx = (c0 + x) % t.width;
            let tp = &t.data[(ty * t.width + tx) * c..];
            for ch in 0..c {
                let v = c_img * f32::from(px[(y * w + x) * c + ch]) + c_frost * tp[ch];
                out.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// §2 P4 plasma fractal on an N×N torus, normalised to [0, 1].
pub fn plasma(n: usize, decay: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut a = vec![0f64; n * n];
    let mut step = n;
    let mut wib = 100.0f64;
    let at = |y: usize, x: usize| (y % n) * n + (x % n);
    while step >= 2 {
        let h = step / 2;
        let cells = n / step;
        let draw = |rng: &mut ChaCha8Rng, wib: f64| wib * (-wib + 2.0 * wib * rng.random::<f64>());
        for i in 0..cells {
            for j in 0..cells {
                let (y, x) = (i * step, j * step);
                let s = a[at(y, x)]
                    + a[at(y + step, x)]
                    + a[at(y, x + step)]
                    + a[at(y + step, x + step)];
                a[at(y + h, x + h)] = s / 4.0 + draw(rng, wib);
            }
        }
        for i in 0..cells {
            for j in 0..cells {
                let (y, x) = (i * step, j * step + h);
                let s =
                    a[at(y + h, x)] + a[at(y + n - h, x)] + a[at(y, x + n - h)] + a[at(y, x + h)];
                a[at(y, x)] = s / 4.0 + draw(rng, wib);
            }
        }
        for i in 0..cells {
            for j in 0..cells {
                let (y, x) = (i * step + h, j * step);
                let s =
                    a[at(y, x + h)] + a[at(y, x + n - h)] + a[at(y + n - h, x)] + a[at(y + h, x)];
                a[at(y, x)] = s / 4.0 + draw(rng, wib);
            }
        }
        step /= 2;
        wib /= decay;
    }
    let min = a.iter().copied().fold(f64::INFINITY, f64::min);
    a.iter_mut().for_each(|v| *v -= min);
    let max = a.iter().copied().fold(0.0, f64::max);
    if max > 0.0 {
        a.iter_mut().for_each(|v| *v /= max);
    }
    a
}

/// §3.10. N is the next power of two ≥ max(H, W): 32 for CIFAR and 28-px images, 256 for 224 px,
/// as in the original (and BG).
#[allow(clippy::too_many_arguments)]
pub fn fog(
    px: &[u8],
    h: usize,
    w: usize,
    c: usize,
    (amount, decay): (f32, f64),
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let f = to_unit(px);
    let m = f.iter().copied().fold(0.0, f32::max);
    let n = h.max(w).next_power_of_two().max(2);
    let p = plasma(n, decay, rng);
    let k = m / (m + amount);
    let mut out = vec![0f32; f.len()];
    for y in 0..h {
        for x in 0..w {
            let fogv = amount * p[y * n + x] as f32;
            for ch in 0..c {
                let i = (y * w + x) * c + ch;
                out[i] = (f[i] + fogv) * k;
            }
        }
    }
    quantise(&out)
}

/// §3.11 via the P5 closed form: out = x·V'/V with V' = min(V + c, 1); black becomes (c, c, c).
/// On gray pixels (and 1-channel images) that is simply min(x + c, 1).
pub fn brightness(px: &[u8], c: usize, amount: f32) -> Vec<u8> {
    let f = to_unit(px);
    let mut out = vec![0f32; f.len()];
    for (o, p) in out.chunks_exact_mut(c).zip(f.chunks_exact(c)) {
        let v = p.iter().copied().fold(0.0, f32::max);
        let v2 = (v + amount).min(1.0);
        for (oc, &x) in o.iter_mut().zip(p) {
            *oc = if v > 0.0 { x * v2 / v } else { v2 };
        }
    }
    quantise(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn plasma_spans_unit_range_and_uses_n2_minus_1_draws() {
        let mut r1 = ChaCha8Rng::seed_from_u64(1);
        let p = plasma(32, 3.0, &mut r1);
        let (mn, mx) = p
            .iter()
            .fold((1.0f64, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
        assert_eq!((mn, mx), (0.0, 1.0));
        // §2 P4: N² − 1 uniforms per map.
        let mut r2 = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..(32 * 32 - 1) {
            let _: f64 = r2.random();
        }
        assert_eq!(r1.random::<u64>(), r2.random::<u64>());
    }
}
