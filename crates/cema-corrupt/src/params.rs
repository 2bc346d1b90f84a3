//! Severity tables, copied from `docs/corruptions.md` §3 (CIFAR-10-C rows from HR-C, ImageNet-C
//! rows from HR-I). Index 0 is severity 1.

use crate::Table;

/// Picks the row for `table`.
fn pick<T: Copy>(table: Table, cifar: [T; 5], imagenet: [T; 5], severity: u8) -> T {
    let i = usize::from(severity - 1);
    match table {
        Table::Cifar => cifar[i],
        Table::ImageNet => imagenet[i],
    }
}

/// §3.1 σ.
pub fn gaussian_noise(t: Table, s: u8) -> f32 {
    pick(
        t,
        [0.04, 0.06, 0.08, 0.09, 0.10],
        [0.08, 0.12, 0.18, 0.26, 0.38],
        s,
    )
}

/// §3.2 λ.
pub fn shot_noise(t: Table, s: u8) -> f64 {
    pick(t, [500., 250., 100., 75., 50.], [60., 25., 12., 5., 3.], s)
}

/// §3.3 p.
pub fn impulse_noise(t: Table, s: u8) -> f64 {
    pick(
        t,
        [0.01, 0.02, 0.03, 0.05, 0.07],
        [0.03, 0.06, 0.09, 0.17, 0.27],
        s,
    )
}

/// §3.4 (r, a).
pub fn defocus(t: Table, s: u8) -> (f64, f64) {
    pick(
        t,
        [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1., 0.2), (1.5, 0.1)],
        [(3., 0.1), (4., 0.5), (6., 0.5), (8., 0.5), (10., 0.5)],
        s,
    )
}

/// §3.5 (σ, d, iterations).
pub fn glass(t: Table, s: u8) -> (f64, usize, usize) {
    pick(
        t,
        [
            (0.05, 1, 1),
            (0.25, 1, 1),
            (0.4, 1, 1),
            (0.25, 1, 2),
            (0.4, 1, 2),
        ],
        [
            (0.7, 1, 2),
            (0.9, 2, 1),
            (1., 2, 3),
            (1.1, 3, 2),
            (1.5, 4, 2),
        ],
        s,
    )
}

/// §3.6 (radius, σ).
pub fn motion(t: Table, s: u8) -> (f64, f64) {
    pick(
        t,
        [(6., 1.), (6., 1.5), (6., 2.), (8., 2.), (9., 2.5)],
        [(10., 3.), (15., 5.), (15., 8.), (15., 12.), (20., 15.)],
        s,
    )
}

/// §3.7 zoom factors. NumPy's float `arange` includes the nominal stop in several cases; the
/// counts here are the measured ones from the spec, element i = 1 + i·((1 + step) − 1).
pub fn zoom_factors(t: Table, s: u8) -> Vec<f64> {
    let (step, count): (f64, usize) = pick(
        t,
        [(0.01, 7), (0.01, 12), (0.01, 16), (0.01, 21), (0.01, 26)],
        [(0.01, 12), (0.01, 16), (0.02, 11), (0.02, 13), (0.03, 11)],
        s,
    );
    let delta = (1.0 + step) - 1.0;
    (0..count).map(|i| 1.0 + i as f64 * delta).collect()
}

/// §3.8 snow parameters.
#[derive(Debug, Clone, Copy)]
pub struct Snow {
    pub mean: f64,
    pub sd: f64,
    pub zoom: f64,
    pub threshold: f32,
    pub radius: f64,
    pub sigma: f64,
    pub blend: f32,
}

pub fn snow(t: Table, s: u8) -> Snow {
    let mk = |(mean, sd, zoom, threshold, radius, sigma, blend)| Snow {
        mean,
        sd,
        zoom,
        threshold,
        radius,
        sigma,
        blend,
    };
    mk(pick(
        t,
        [
            (0.1, 0.2, 1., 0.6, 8., 3., 0.95),
            (0.1, 0.2, 1., 0.5, 10., 4., 0.9),
            (0.15, 0.3, 1.75, 0.55, 10., 4., 0.9),
            (0.25, 0.3, 2.25, 0.6, 12., 6., 0.85),
            (0.3, 0.3, 1.25, 0.65, 14., 12., 0.8),
        ],
        [
            (0.1, 0.3, 3., 0.5, 10., 4., 0.8),
            (0.2, 0.3, 2., 0.5, 12., 4., 0.7),
            (0.55, 0.3, 4., 0.9, 12., 8., 0.7),
            (0.55, 0.3, 4.5, 0.85, 12., 8., 0.65),
            (0.55, 0.3, 2.5, 0.85, 12., 12., 0.55),
        ],
        s,
    ))
}

/// §3.9 (c_img, c_frost).
pub fn frost(t: Table, s: u8) -> (f32, f32) {
    pick(
        t,
        [(1., 0.2), (1., 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        [(1., 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        s,
    )
}

/// §3.10 (c, decay).
pub fn fog(t: Table, s: u8) -> (f32, f64) {
    pick(
        t,
        [(0.2, 3.), (0.5, 3.), (0.75, 2.5), (1., 2.), (1.5, 1.75)],
        [(1.5, 2.), (2., 2.), (2.5, 1.7), (2.5, 1.5), (3., 1.4)],
        s,
    )
}

/// §3.11 c.
pub fn brightness(t: Table, s: u8) -> f32 {
    pick(t, [0.05, 0.1, 0.15, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5], s)
}

/// §3.12 c.
pub fn contrast(t: Table, s: u8) -> f32 {
    pick(
        t,
        [0.75, 0.5, 0.4, 0.3, 0.15],
        [0.4, 0.3, 0.2, 0.1, 0.05],
        s,
    )
}

/// §3.13 (α, σ, A) as fractions of the image side. HR-C multiplies by IMSIZE = 32 and HR-I by 244
/// (sic, see §3.13); the caller scales (see `elastic_scale`).
pub fn elastic_fractions(t: Table, s: u8) -> (f64, f64, f64) {
    pick(
        t,
        [
            (0., 0., 0.08),
            (0.05, 0.2, 0.07),
            (0.08, 0.06, 0.06),
            (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03),
        ],
        [
            (2., 0.7, 0.1),
            (2., 0.08, 0.2),
            (0.05, 0.01, 0.02),
            (0.07, 0.01, 0.02),
            (0.12, 0.01, 0.02),
        ],
        s,
    )
}

/// The multiplier for `elastic_fractions` on an image whose side is `side`: the side itself for
/// the CIFAR table (32 on CIFAR, as HR-C's IMSIZE; §5.1 does the same at 64 px) and 244/224 of it
/// for the ImageNet table, which is exactly HR-I's 244 at 224 px.
pub fn elastic_scale(t: Table, side: usize) -> f64 {
    match t {
        Table::Cifar => side as f64,
        Table::ImageNet => side as f64 * 244.0 / 224.0,
    }
}

/// §3.14 c (n = int(S·c)).
pub fn pixelate(t: Table, s: u8) -> f64 {
    pick(
        t,
        [0.95, 0.9, 0.85, 0.75, 0.65],
        [0.6, 0.5, 0.4, 0.3, 0.25],
        s,
    )
}

/// §3.15 quality.
pub fn jpeg_quality(t: Table, s: u8) -> u8 {
    pick(t, [80, 65, 58, 50, 40], [25, 18, 15, 10, 7], s)
}

/// §3.16 σ.
pub fn speckle(t: Table, s: u8) -> f32 {
    pick(
        t,
        [0.06, 0.10, 0.12, 0.16, 0.20],
        [0.15, 0.2, 0.35, 0.45, 0.6],
        s,
    )
}

/// §3.17 σ.
pub fn gaussian_blur(t: Table, s: u8) -> f64 {
    pick(t, [0.4, 0.6, 0.7, 0.8, 1.], [1., 2., 3., 4., 6.], s)
}

/// §3.18 spatter parameters.
#[derive(Debug, Clone, Copy)]
pub struct Spatter {
    pub mean: f64,
    pub sd: f64,
    pub sigma: f64,
    pub threshold: f32,
    pub k: f32,
    pub mud: bool,
}

pub fn spatter(t: Table, s: u8) -> Spatter {
    let mk = |(mean, sd, sigma, threshold, k, mode): (f64, f64, f64, f32, f32, u8)| Spatter {
        mean,
        sd,
        sigma,
        threshold,
        k,
        mud: mode == 1,
    };
    mk(pick(
        t,
        [
            (0.62, 0.1, 0.7, 0.7, 0.5, 0),
            (0.65, 0.1, 0.8, 0.7, 0.5, 0),
            (0.65, 0.3, 1., 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1),
            (0.65, 0.1, 0.5, 0.68, 0.6, 1),
        ],
        [
            (0.65, 0.3, 4., 0.69, 0.6, 0),
            (0.65, 0.3, 3., 0.68, 0.6, 0),
            (0.65, 0.3, 2., 0.68, 0.5, 0),
            (0.65, 0.3, 1., 0.65, 1.5, 1),
            (0.67, 0.4, 1., 0.65, 1.5, 1),
        ],
        s,
    ))
}

/// §3.19 (a, b).
pub fn saturate(t: Table, s: u8) -> (f32, f32) {
    pick(
        t,
        [(0.3, 0.), (0.1, 0.), (1.5, 0.), (2., 0.1), (2.5, 0.2)],
        [(0.3, 0.), (0.1, 0.), (2., 0.), (5., 0.1), (20., 0.2)],
        s,
    )
}
