//! Test fixtures: a synthetic "natural-looking" image generator and a tiny Fashion-MNIST reader.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use cema_data::ImageSet;

pub const FASHION_TEST: &str = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

/// Reads the first `n` images of a gzip IDX3 file (16-byte header), or None if it is absent.
pub fn fashion_mnist(n: usize) -> Option<ImageSet> {
    let path = Path::new(FASHION_TEST);
    if !path.exists() {
        println!("note: {FASHION_TEST} not found; using synthetic images instead");
        return None;
    }
    let f = std::fs::File::open(path).ok()?;
    let mut gz = flate2::read::GzDecoder::new(f);
    let mut head = [0u8; 16];
    gz.read_exact(&mut head).ok()?;
    let be =
        |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]) as usize;
    assert_eq!(be(0), 0x0803, "not an IDX3 u8 file");
    let (count, h, w) = (be(4), be(8), be(12));
    let n = n.min(count);
    let mut images = vec![0u8; n * h * w];
    gz.read_exact(&mut images).ok()?;
    Some(ImageSet {
        images,
        labels: vec![0; n],
        height: h,
        width: w,
        channels: 1,
    })
}

/// Deterministic hash noise in [0, 1).
fn hash01(a: u64) -> f64 {
    let mut z = a.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

/// A smooth pattern with an object-like blob, edges and a little texture, kept inside
/// [20, 235] so that neither clipping end hides a change. `k` varies the pattern.
pub fn synthetic(h: usize, w: usize, c: usize, k: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(h * w * c);
    let ph = hash01(k) * std::f64::consts::TAU;
    for y in 0..h {
        for x in 0..w {
            let (fy, fx) = (y as f64 / h as f64, x as f64 / w as f64);
            let blob = (-((fx - 0.5).powi(2) + (fy - 0.45).powi(2)) / 0.05).exp();
            let stripes = (fx * 9.0 + ph).sin() * (fy * 7.0 - ph).cos();
            let edge = if fx + 0.3 * fy > 0.6 { 0.15 } else { -0.1 };
            for ch in 0..c {
                let tex = hash01(k * 1_000_003 + ((y * w + x) * c + ch) as u64) - 0.5;
                let v = 0.45 + 0.3 * blob + 0.12 * stripes + edge + 0.06 * tex + 0.05 * ch as f64;
                out.push((v.clamp(0.0, 1.0) * 215.0 + 20.0) as u8);
            }
        }
    }
    out
}

pub fn synthetic_set(n: usize, h: usize, w: usize, c: usize) -> ImageSet {
    let mut images = Vec::with_capacity(n * h * w * c);
    for i in 0..n {
        images.extend(synthetic(h, w, c, i as u64));
    }
    ImageSet {
        images,
        labels: (0..n as u32).map(|i| i % 10).collect(),
        height: h,
        width: w,
        channels: c,
    }
}

/// Fashion-MNIST if present, else synthetic 28×28 gray.
pub fn gray_set(n: usize) -> ImageSet {
    fashion_mnist(n).unwrap_or_else(|| synthetic_set(n, 28, 28, 1))
}

pub fn mse(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

/// FNV-1a, for golden hashes.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
