//! Digital family: contrast (§3.12), elastic_transform (§3.13), pixelate (§3.14); saturate
//! (§3.19, held-out) lives here too as the other HSV closed form. JPEG is in `jpeg.rs`.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::filter::{Border, SepFilter};
use crate::geom::{affine_from_points, bilinear_into, reflect_coord, warp_affine};
use crate::util::{quantise, to_unit};

pub fn contrast(px: &[u8], c: usize, amount: f32) -> Vec<u8> {
    let f = to_unit(px);
    let n = (f.len() / c) as f32;
    let mut means = [0f32; 3];
    for p in f.chunks_exact(c) {
        for ch in 0..c {
            means[ch] += p[ch];
        }
    }
    means.iter_mut().for_each(|m| *m /= n);
    let out: Vec<f32> = f
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let m = means[i % c];
            (v - m) * amount + m
        })
        .collect();
    quantise(&out)
}

/// Precomputed parts of §3.13 for one (table, severity, size).
#[derive(Debug, Clone)]
pub struct Elastic {
    pub alpha: f64,
    pub affine: f64,
    pub field: SepFilter,
}

impl Elastic {
    pub fn new((fa, fs, fj): (f64, f64, f64), scale: f64, h: usize, w: usize) -> Self {
        Elastic {
            alpha: fa * scale,
            affine: fj * scale,
            field: SepFilter::gaussian(fs * scale, 3.0, h, w, Border::Reflect),
        }
    }

    pub fn apply(&self, px: &[u8], h: usize, w: usize, c: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let f = to_unit(px);
        // Random affine on three anchors around the centre (x, y order, as cv2 points).
        let (cx, cy) = ((w / 2) as f64, (h / 2) as f64);
        let q = (h.min(w) / 3) as f64;
        let from = [[cx + q, cy + q], [cx + q, cy - q], [cx - q, cy - q]];
        let mut to = from;
        for p in &mut to {
            for v in p.iter_mut() {
                // The original casts the jitter to float32 before adding.
                *v += (-self.affine + 2.0 * self.affine * rng.random::<f64>()) as f32 as f64;
            }
        }
        let warped = warp_affine(&f, h, w, c, affine_from_points(from, to));
        let field = |rng: &mut ChaCha8Rng| {
            let mut u: Vec<f32> = (0..h * w)
                .map(|_| (-1.0 + 2.0 * rng.random::<f64>()) as f32)
                .collect();
            self.field.apply(&mut u, h, w, 1);
            u.iter_mut().for_each(|v| *v *= self.alpha as f32);
            u
        };
        let dx = field(rng);
        let dy = field(rng);
        let mut out = vec![0f32; f.len()];
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let sy = reflect_coord(y as f64 + f64::from(dy[i]), h);
                let sx = reflect_coord(x as f64 + f64::from(dx[i]), w);
                bilinear_into(&warped, h, w, c, sy, sx, Border::Reflect, &mut out[i * c..]);
            }
        }
        quantise(&out)
    }
}

/// One axis of Pillow's BOX resampling (§2 P6), in Pillow's 22-bit fixed point.
#[derive(Debug, Clone)]
pub struct BoxAxis {
    /// (first input index, count, fixed-point weight) per output.
    taps: Vec<(usize, usize, i64)>,
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

impl BoxAxis {
    /// Pillow `precompute_coeffs` with the box filter (support 0.5, `-0.5 < x <= 0.5`).
    pub fn down(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 0.5 * filterscale;
        let ss = 1.0 / filterscale;
        let taps = (0..out_size)
            .map(|i| {
                let center = (i as f64 + 0.5) * scale;
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let inside: Vec<usize> = (xmin..xmax)
                    .filter(|&x| {
                        let t = (x as f64 - center + 0.5) * ss;
                        t > -0.5 && t <= 0.5
                    })
                    .collect();
                let n = inside.len().max(1);
                let k = (0.5 + (1.0 / n as f64) * f64::from(1u32 << PRECISION_BITS)) as i64;
                (inside.first().copied().unwrap_or(xmin), inside.len(), k)
            })
            .collect();
        BoxAxis { taps }
    }

    /// Pillow's 8-bit output of one tap set: rounding bias, shift, clip.
    #[inline]
    fn sample(&self, o: usize, get: impl Fn(usize) -> u8) -> u8 {
        let (start, n, k) = self.taps[o];
        let mut ss: i64 = 1 << (PRECISION_BITS - 1);
        for j in start..start + n {
            ss += i64::from(get(j)) * k;
        }
        (ss >> PRECISION_BITS).clamp(0, 255) as u8
    }
}

/// Precomputed §3.14 for one size: BOX down to n (horizontal pass, then vertical), then
/// NEAREST-equivalent BOX up: output i copies floor((i + 0.5)·n/S).
#[derive(Debug, Clone)]
pub struct Pixelate {
    nh: usize,
    nw: usize,
    xdown: BoxAxis,
    ydown: BoxAxis,
    xup: Vec<usize>,
    yup: Vec<usize>,
}

impl Pixelate {
    pub fn new(amount: f64, h: usize, w: usize) -> Self {
        let nh = ((h as f64 * amount) as usize).max(1);
        let nw = ((w as f64 * amount) as usize).max(1);
        let up = |n: usize, s: usize| -> Vec<usize> {
            (0..s)
                .map(|i| (((i as f64 + 0.5) * n as f64 / s as f64) as usize).min(n - 1))
                .collect()
        };
        Pixelate {
            nh,
            nw,
            xdown: BoxAxis::down(w, nw),
            ydown: BoxAxis::down(h, nh),
            xup: up(nw, w),
            yup: up(nh, h),
        }
    }

    pub fn apply(&self, px: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
        let (nh, nw) = (self.nh, self.nw);
        let mut horiz = vec![0u8; h * nw * c];
        for y in 0..h {
            for x in 0..nw {
                for ch in 0..c {
                    horiz[(y * nw + x) * c + ch] =
                        self.xdown.sample(x, |j| px[(y * w + j) * c + ch]);
                }
            }
        }
        let mut small = vec![0u8; nh * nw * c];
        for y in 0..nh {
            for x in 0..nw {
                for ch in 0..c {
                    small[(y * nw + x) * c + ch] =
                        self.ydown.sample(y, |j| horiz[(j * nw + x) * c + ch]);
                }
            }
        }
        let mut out = Vec::with_capacity(px.len());
        for &sy in &self.yup {
            for &sx in &self.xup {
                out.extend_from_slice(&small[(sy * nw + sx) * c..(sy * nw + sx + 1) * c]);
            }
        }
        out
    }
}

/// §3.19 via the P5 closed form. RGB: non-gray pixels out = V − (V − x)·S'/S; gray pixels
/// (S = 0, H = 0) come out as (V, V(1−S'), V(1−S')), the red tint the benchmark keeps.
/// 1-channel images are all gray pixels, so they take the luminance of that tinted pixel,
/// V·(0.299 + 0.587·(1−S') + 0.114·(1−S')) = V·(1 − 0.701·S'): identity for b = 0 (s1–s3).
pub fn saturate(px: &[u8], c: usize, (a, b): (f32, f32)) -> Vec<u8> {
    let f = to_unit(px);
    let mut out = vec![0f32; f.len()];
    for (o, p) in out.chunks_exact_mut(c).zip(f.chunks_exact(c)) {
        if c == 1 {
            let s2 = b.clamp(0.0, 1.0);
            o[0] = p[0] * (1.0 - 0.701 * s2);
            continue;
        }
        let v = p[0].max(p[1]).max(p[2]);
        let mn = p[0].min(p[1]).min(p[2]);
        let s = if v > mn { (v - mn) / v } else { 0.0 };
        let s2 = (a * s + b).clamp(0.0, 1.0);
        if s > 0.0 {
            for (oc, &x) in o.iter_mut().zip(p) {
                *oc = v - (v - x) * s2 / s;
            }
        } else {
            o[0] = v;
            o[1] = v * (1.0 - s2);
            o[2] = v * (1.0 - s2);
        }
    }
    quantise(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_down_averages_equal_windows() {
        // 4 → 2 is an exact 2-pixel mean with Pillow's round-half-up.
        let b = BoxAxis::down(4, 2);
        let v = [10u8, 13, 200, 201];
        assert_eq!(b.sample(0, |j| v[j]), 12); // 11.5 rounds up
        assert_eq!(b.sample(1, |j| v[j]), 201); // 200.5 rounds up
    }

    #[test]
    fn pixelate_sizes_follow_int_of_product() {
        // §3.14: int(32·0.85) = 27 and int(224·0.3) = 67.
        assert_eq!(Pixelate::new(0.85, 32, 32).nw, 27);
        assert_eq!(Pixelate::new(0.3, 224, 224).nh, 67);
    }

    #[test]
    fn saturate_gray_pixels_get_red_tint() {
        let out = saturate(&[100, 100, 100], 3, (5.0, 0.1));
        assert_eq!(out[0], 100);
        assert!(out[1] < 100 && out[1] == out[2]);
    }
}
