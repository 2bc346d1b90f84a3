//! The fully synthetic frost bank of §4.2, used instead of the frost photos (no image files ship
//! or are downloaded).
//!
//! Four procedural textures mimic frost1, frost2 (= frost3), frost4 and frost5 at their native
//! sizes; the original pipeline then runs unchanged (§3.9): pick index 0…4 (so the frost2 profile
//! is drawn 40 % of the time), ×0.2 subsample for the CIFAR table (pixel (5i+2, 5j+2)), random
//! crop, blend on the 0–255 scale.
//!
//! Deviation from §4.2: the textures are generated in process at first use from a fixed seed
//! instead of being stored as PNG assets. Generation is deterministic, so the bank (and the
//! benchmark) is reproducible; [`write_frost_bank_png`] writes the same bank to disk for viewing.
//! The Fourier-domain layers are generated on a power-of-two torus and cropped to the native size.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::fft::{fft2, freq, C64};
use crate::filter::{Border, SepFilter};
use crate::Table;

/// Fixed generation seed (the spec's prototype check used seed 3).
const FROST_SEED: u64 = 3;

/// A frost texture on the 0–255 scale, interleaved H×W×C (C = 3, or 1 for the luminance copy
/// used on gray images).
#[derive(Debug, Clone)]
pub struct Texture {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
struct Profile {
    h: usize,
    w: usize,
    w_shade: f64,
    beta: f64,
    w_needle: f64,
    density: f64,
    len: (f64, f64),
    sigma_w: f64,
    w_crinkle: f64,
    /// None: uniform heading; Some(sd): up (−90°) ± normal(0, sd) degrees.
    fern_sd: Option<f64>,
    l_pct: [f64; 9],
    /// (a, b, residual sd) per RGB channel.
    colour: [(f64, f64, f64); 3],
}

/// §4.2 profile table with §4.1 luminance percentiles and channel maps.
const PROFILES: [Profile; 4] = [
    Profile {
        h: 600,
        w: 900,
        w_shade: 1.0,
        beta: 2.0,
        w_needle: 0.0,
        density: 0.0,
        len: (0.0, 0.0),
        sigma_w: 0.0,
        w_crinkle: 1.0,
        fern_sd: None,
        l_pct: [81., 95., 102., 116., 128., 141., 163., 177., 220.],
        colour: [(1.358, -98.4, 10.1), (0.876, 35.6, 3.6), (0.700, 75.0, 8.4)],
    },
    Profile {
        h: 315,
        w: 560,
        w_shade: 0.5,
        beta: 2.0,
        w_needle: 1.0,
        density: 40.0,
        len: (10.0, 50.0),
        sigma_w: 0.6,
        w_crinkle: 0.0,
        fern_sd: None,
        l_pct: [56., 140., 165., 193., 208., 220., 235., 244., 254.],
        colour: [(0.974, 1.2, 1.5), (1.008, -1.4, 0.6), (1.026, 4.0, 2.1)],
    },
    Profile {
        h: 350,
        w: 527,
        w_shade: 0.6,
        beta: 2.0,
        w_needle: 1.0,
        density: 60.0,
        len: (6.0, 30.0),
        sigma_w: 0.5,
        w_crinkle: 0.0,
        fern_sd: Some(20.0),
        l_pct: [22., 81., 102., 132., 150., 167., 196., 231., 254.],
        colour: [(0.994, -11.2, 1.4), (0.996, 3.8, 0.8), (1.038, 9.9, 3.1)],
    },
    Profile {
        h: 495,
        w: 660,
        w_shade: 0.9,
        beta: 2.0,
        w_needle: 1.0,
        density: 35.0,
        len: (10.0, 60.0),
        sigma_w: 0.6,
        w_crinkle: 0.0,
        fern_sd: None,
        l_pct: [23., 43., 58., 89., 117., 149., 202., 237., 255.],
        colour: [(1.023, -11.8, 1.2), (0.996, 2.4, 0.4), (0.959, 18.4, 1.8)],
    },
];

/// §3.9 step 1: randint(0, 5) picks frost1…frost5; frost2 and frost3 are the same texture.
pub const INDEX_TO_PROFILE: [usize; 5] = [0, 1, 1, 2, 3];

fn standardise(v: &mut [f64]) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let sd = var.sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x - mean) / sd);
}

/// White noise on a `ph`×`pw` torus, filtered by `gain(f)` (f in cycles/pixel, radial), cropped
/// to `h`×`w`.
fn shaped_noise(
    rng: &mut ChaCha8Rng,
    (h, w): (usize, usize),
    gains: &[&dyn Fn(f64) -> f64],
) -> Vec<Vec<f64>> {
    let (ph, pw) = (h.next_power_of_two(), w.next_power_of_two());
    let mut spec: Vec<C64> = (0..ph * pw)
        .map(|_| C64 {
            re: rng.sample(StandardNormal),
            im: 0.0,
        })
        .collect();
    fft2(&mut spec, ph, pw, false);
    gains
        .iter()
        .map(|gain| {
            let mut s = spec.clone();
            for y in 0..ph {
                let fy = freq(y, ph);
                for x in 0..pw {
                    let fx = freq(x, pw);
                    let g = gain((fx * fx + fy * fy).sqrt());
                    let v = &mut s[y * pw + x];
                    v.re *= g;
                    v.im *= g;
                }
            }
            fft2(&mut s, ph, pw, true);
            let mut out = Vec::with_capacity(h * w);
            for y in 0..h {
                out.extend(s[y * pw..y * pw + w].iter().map(|c| c.re));
            }
            out
        })
        .collect()
}

fn splat(canvas: &mut [f64], h: usize, w: usize, x: f64, y: f64, v: f64) {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
        for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
            let (xi, yi) = (x0 as isize + dx, y0 as isize + dy);
            if xi >= 0 && yi >= 0 && (xi as usize) < w && (yi as usize) < h {
                let p = &mut canvas[yi as usize * w + xi as usize];
                *p = p.max(v * (2.0 * wx * wy).min(1.0));
            }
        }
    }
}

/// §4.2 layer 2: needle crystals with recursive side branches, occluding (max) splats.
fn needles(rng: &mut ChaCha8Rng, p: &Profile) -> Vec<f64> {
    let (h, w) = (p.h, p.w);
    let mut canvas = vec![0f64; h * w];
    let seeds = (p.density * (h * w) as f64 / 1e4).round() as usize;
    // (x, y, heading rad, length, intensity, depth)
    let mut stack: Vec<(f64, f64, f64, f64, f64, u32)> = Vec::new();
    for _ in 0..seeds {
        let x = rng.random::<f64>() * w as f64;
        let y = rng.random::<f64>() * h as f64;
        let heading = match p.fern_sd {
            None => rng.random::<f64>() * 360.0,
            Some(sd) => -90.0 + sd * rng.sample::<f64, _>(StandardNormal),
        }
        .to_radians();
        let len = p.len.0 + rng.random::<f64>() * (p.len.1 - p.len.0);
        let v = 0.3 + 0.7 * rng.random::<f64>();
        stack.push((x, y, heading, len, v, 2));
        while let Some((mut x, mut y, hd, len, v, depth)) = stack.pop() {
            let (s, c) = hd.sin_cos();
            splat(&mut canvas, h, w, x, y, v);
            let steps = len.round() as usize;
            for step in 0..steps {
                x += c;
                y += s;
                if x < 0.0 || y < 0.0 || x >= w as f64 || y >= h as f64 {
                    break;
                }
                splat(&mut canvas, h, w, x, y, v);
                if depth > 0 && rng.random::<f64>() < 0.3 {
                    let turn = 40.0 + 30.0 * rng.random::<f64>();
                    let turn = if rng.random::<bool>() { turn } else { -turn };
                    let blen = (len - step as f64) * (0.2 + 0.3 * rng.random::<f64>());
                    let bv = v * (0.7 + 0.3 * rng.random::<f64>());
                    stack.push((x, y, hd + turn.to_radians(), blen, bv, depth - 1));
                }
            }
        }
    }
    let mut f: Vec<f32> = canvas.iter().map(|&v| v as f32).collect();
    SepFilter::gaussian(p.sigma_w, 4.0, h, w, Border::Nearest).apply(&mut f, h, w, 1);
    f.into_iter().map(f64::from).collect()
}

/// Percentile of sorted data by linear interpolation (NumPy's default).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p / 100.0 * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] + (pos - i as f64) * (sorted[j] - sorted[i])
}

fn generate(idx: usize) -> Texture {
    let p = &PROFILES[idx];
    let (h, w) = (p.h, p.w);
    let mut rng = ChaCha8Rng::seed_from_u64(
        FROST_SEED
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(idx as u64),
    );
    let f0 = 1.0 / 128.0;
    let beta = p.beta;
    let shade_gain = move |f: f64| (f * f + f0 * f0).powf(-beta / 4.0);
    let mut z = vec![0f64; h * w];

    let mut shade = shaped_noise(&mut rng, (h, w), &[&shade_gain]).remove(0);
    standardise(&mut shade);
    z.iter_mut()
        .zip(&shade)
        .for_each(|(z, s)| *z += p.w_shade * s);

    if p.w_crinkle > 0.0 {
        // §4.2 layer 3: ridged noise over three octaves; bands of one white noise are
        // independent because their frequency supports are disjoint.
        let band = |lo: f64, hi: f64| move |f: f64| if f >= lo && f < hi { 1.0 } else { 0.0 };
        let (b1, b2, b3) = (
            band(1. / 64., 1. / 32.),
            band(1. / 32., 1. / 16.),
            band(1. / 16., 1. / 8.),
        );
        let bands = shaped_noise(&mut rng, (h, w), &[&b1, &b2, &b3]);
        let mut crinkle = vec![0f64; h * w];
        for (mut b, wt) in bands.into_iter().zip([1.0, 0.7, 0.5]) {
            standardise(&mut b);
            crinkle
                .iter_mut()
                .zip(&b)
                .for_each(|(c, v)| *c += wt * (1.0 - v.abs()));
        }
        standardise(&mut crinkle);
        z.iter_mut()
            .zip(&crinkle)
            .for_each(|(z, s)| *z += p.w_crinkle * s);
    }
    if p.w_needle > 0.0 {
        let mut n = needles(&mut rng, p);
        standardise(&mut n);
        z.iter_mut().zip(&n).for_each(|(z, s)| *z += p.w_needle * s);
    }

    // Luminance: piecewise-linear map between the quantiles of Z and the profile's percentiles.
    let mut sorted = z.clone();
    sorted.sort_by(f64::total_cmp);
    let pcts = [0., 1., 5., 25., 50., 75., 95., 99., 100.];
    let zq: Vec<f64> = pcts.iter().map(|&q| percentile(&sorted, q)).collect();
    let lum: Vec<f64> = z
        .iter()
        .map(|&v| {
            let k = zq[1..8].partition_point(|&q| q <= v);
            let (a, b) = (zq[k], zq[k + 1]);
            let t = if b > a {
                ((v - a) / (b - a)).clamp(0.0, 1.0)
            } else {
                0.0
            };
            p.l_pct[k] + t * (p.l_pct[k + 1] - p.l_pct[k])
        })
        .collect();

    // Colour: channel = a·L + b + e, e = white noise blurred with σ = 6 px at the residual sd.
    let blur6 = move |f: f64| (-2.0 * std::f64::consts::PI.powi(2) * 36.0 * f * f).exp();
    let mut data = vec![0f32; h * w * 3];
    for (ch, &(a, b, sd)) in p.colour.iter().enumerate() {
        let mut e = shaped_noise(&mut rng, (h, w), &[&blur6]).remove(0);
        standardise(&mut e);
        for (i, (&l, &ev)) in lum.iter().zip(&e).enumerate() {
            data[i * 3 + ch] = (a * l + b + sd * ev).round().clamp(0.0, 255.0) as f32;
        }
    }
    Texture {
        height: h,
        width: w,
        channels: 3,
        data,
    }
}

fn full_bank() -> &'static [Texture; 4] {
    static BANK: OnceLock<[Texture; 4]> = OnceLock::new();
    // Sequential on purpose: this may be first touched inside a rayon task, and a nested
    // parallel build there could steal a task that blocks on this same OnceLock.
    BANK.get_or_init(|| [generate(0), generate(1), generate(2), generate(3)])
}

/// OpenCV `resize(fx = fy = 0.2, INTER_LINEAR)` is an exact (5i+2, 5j+2) subsample (§3.9 step 3).
fn subsample5(t: &Texture) -> Texture {
    let (h, w) = (
        (t.height as f64 * 0.2).round() as usize,
        (t.width as f64 * 0.2).round() as usize,
    );
    let mut data = Vec::with_capacity(h * w * 3);
    for i in 0..h {
        for j in 0..w {
            let s = ((5 * i + 2) * t.width + 5 * j + 2) * 3;
            data.extend_from_slice(&t.data[s..s + 3]);
        }
    }
    Texture {
        height: h,
        width: w,
        channels: 3,
        data,
    }
}

/// Gray images blend with the texture's luminance 0.299R + 0.587G + 0.114B (§1 RGB→gray).
fn to_gray(t: &Texture) -> Texture {
    Texture {
        height: t.height,
        width: t.width,
        channels: 1,
        data: t
            .data
            .chunks_exact(3)
            .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
            .collect(),
    }
}

/// The bank as the corruption sees it for `table` and `channels` (1 or 3).
pub fn bank(table: Table, channels: usize) -> &'static [Texture; 4] {
    static BANKS: [OnceLock<[Texture; 4]>; 4] = [const { OnceLock::new() }; 4];
    let slot = match (table, channels) {
        (Table::Cifar, 3) => 0,
        (Table::Cifar, _) => 1,
        (Table::ImageNet, 3) => 2,
        (Table::ImageNet, _) => 3,
    };
    BANKS[slot].get_or_init(|| {
        let full = full_bank();
        let f = |t: &Texture| {
            let t = match table {
                Table::Cifar => subsample5(t),
                Table::ImageNet => t.clone(),
            };
            if channels == 3 {
                t
            } else {
                to_gray(&t)
            }
        };
        [f(&full[0]), f(&full[1]), f(&full[2]), f(&full[3])]
    })
}

/// Writes the four full-resolution synthetic textures as `frost_p1.png`, `frost_p2.png`,
/// `frost_p4.png`, `frost_p5.png` into `dir`.
pub fn write_frost_bank_png(dir: &Path) -> image::ImageResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (t, name) in full_bank().iter().zip(["p1", "p2", "p4", "p5"]) {
        let bytes: Vec<u8> = t.data.iter().map(|&v| v as u8).collect();
        let img = image::RgbImage::from_raw(t.width as u32, t.height as u32, bytes)
            .expect("texture buffer matches its size");
        let path = dir.join(format!("frost_{name}.png"));
        img.save(&path)?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_matches_profile_statistics() {
        // The quantile map fixes the luminance histogram by construction, and the channel maps
        // fix the channel means: compare with the photo means of §4.1 (within a few levels).
        let photo_means = [
            [77.7, 149.1, 165.7],
            [200.8, 205.4, 214.5],
            [137.6, 152.8, 165.2],
            [112.4, 123.4, 134.8],
        ];
        for (t, want) in full_bank().iter().zip(photo_means) {
            for (ch, want) in want.iter().enumerate() {
                let n = (t.height * t.width) as f64;
                let m: f64 = t
                    .data
                    .iter()
                    .skip(ch)
                    .step_by(3)
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / n;
                assert!((m - want).abs() < 4.0, "mean {m} vs photo {want}");
            }
        }
        let cifar = bank(Table::Cifar, 3);
        let sizes: Vec<(usize, usize)> = cifar.iter().map(|t| (t.height, t.width)).collect();
        assert_eq!(sizes, [(120, 180), (63, 112), (70, 105), (99, 132)]);
    }
}
