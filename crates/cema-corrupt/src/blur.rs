//! Blur family: defocus (§3.4), glass (§3.5), motion (§3.6), zoom (§3.7) and gaussian_blur
//! (§3.17, held-out).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::filter::{Border, Kernel2d, SepFilter};
use crate::geom::{motion_blur, resample_add, AxisMap};
use crate::util::{quantise, to_unit};

/// §2 P1 disk kernel, including the un-renormalised anti-alias blur (sums 1.013 / 1.011 for
/// ImageNet s4 / s5, which brightens those severities slightly, as in the original).
pub fn disk_kernel(radius: f64, alias: f64) -> Kernel2d {
    let (l, ksize) = if radius <= 8.0 {
        (8isize, 3usize)
    } else {
        (radius.ceil() as isize, 5usize)
    };
    let side = (2 * l + 1) as usize;
    let mut k = vec![0f64; side * side];
    let mut count = 0usize;
    for y in -l..=l {
        for x in -l..=l {
            if ((x * x + y * y) as f64) <= radius * radius {
                k[((y + l) as usize) * side + (x + l) as usize] = 1.0;
                count += 1;
            }
        }
    }
    k.iter_mut().for_each(|v| *v /= count as f64);
    // OpenCV GaussianBlur of the mask itself: separable taps exp(−(i−c)²/2a²), reflect-101.
    let c = (ksize / 2) as isize;
    let mut g: Vec<f64> = (0..ksize as isize)
        .map(|i| (-(((i - c) * (i - c)) as f64) / (2.0 * alias * alias)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= gs);
    let n = side;
    let mut tmp = vec![0f64; n * n];
    for y in 0..n {
        for x in 0..n {
            tmp[y * n + x] = (0..ksize)
                .map(|i| g[i] * k[y * n + Border::Reflect101.index(x as isize + i as isize - c, n)])
                .sum();
        }
    }
    for y in 0..n {
        for x in 0..n {
            k[y * n + x] = (0..ksize)
                .map(|i| {
                    g[i] * tmp[Border::Reflect101.index(y as isize + i as isize - c, n) * n + x]
                })
                .sum();
        }
    }
    Kernel2d::from_dense(&k, side)
}

pub fn defocus(px: &[u8], h: usize, w: usize, c: usize, k: &Kernel2d) -> Vec<u8> {
    let f = to_unit(px);
    let mut out = vec![0f32; f.len()];
    k.apply(&f, &mut out, h, w, c, Border::Reflect101);
    quantise(&out)
}

/// §3.5: blur, truncate to u8, in-place sequential local copy ("swap" that is really a copy,
/// descending h then w, offsets in [−d, d−1]), blur again.
#[allow(clippy::too_many_arguments)]
pub fn glass(
    px: &[u8],
    h: usize,
    w: usize,
    c: usize,
    filter: &SepFilter,
    d: usize,
    iterations: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let mut f = to_unit(px);
    filter.apply(&mut f, h, w, c);
    let mut q = quantise(&f);
    let d = d as isize;
    for _ in 0..iterations {
        // range(S − d, d, −1) in the original: S − d down to d + 1.
        let mut hh = h as isize - d;
        while hh > d {
            let mut ww = w as isize - d;
            while ww > d {
                let dx = rng.random_range(-(d as i64)..d as i64) as isize;
                let dy = rng.random_range(-(d as i64)..d as i64) as isize;
                let (sy, sx) = ((hh + dy) as usize, (ww + dx) as usize);
                let (dst, src) = ((hh as usize * w + ww as usize) * c, (sy * w + sx) * c);
                q.copy_within(src..src + c, dst);
                ww -= 1;
            }
            hh -= 1;
        }
    }
    let mut f = to_unit(&q);
    filter.apply(&mut f, h, w, c);
    quantise(&f)
}

/// §3.6: θ ~ U[−45°, 45°), ImageMagick blur of the u8 image, rounded 8-bit result.
#[allow(clippy::too_many_arguments)]
pub fn motion(
    px: &[u8],
    h: usize,
    w: usize,
    c: usize,
    radius: f64,
    sigma: f64,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let angle = -45.0 + 90.0 * rng.random::<f64>();
    let src: Vec<f32> = px.iter().map(|&v| f32::from(v)).collect();
    motion_blur(&src, h, w, c, radius, sigma, angle)
        .into_iter()
        .map(|v| v as u8)
        .collect()
}

/// §3.7: mean of the image and all its clipped zooms (z = 1 is in the list, so the unzoomed
/// image has weight 2/(|Z|+1)).
pub fn zoom(px: &[u8], w: usize, c: usize, maps: &[(AxisMap, AxisMap)]) -> Vec<u8> {
    let f = to_unit(px);
    let mut acc = f.clone();
    for (ym, xm) in maps {
        resample_add(&f, &mut acc, w, c, ym, xm);
    }
    let norm = 1.0 / (maps.len() + 1) as f32;
    acc.iter_mut().for_each(|v| *v *= norm);
    quantise(&acc)
}

pub fn gaussian_blur(px: &[u8], h: usize, w: usize, c: usize, filter: &SepFilter) -> Vec<u8> {
    let mut f = to_unit(px);
    filter.apply(&mut f, h, w, c);
    quantise(&f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_kernel_sums_match_spec() {
        // §2 P1 table: only ImageNet s4 (8, 0.5) and s5 (10, 0.5) exceed 1.
        for (r, a, want) in [
            (0.3, 0.4, 1.000),
            (1.0, 0.2, 1.000),
            (1.5, 0.1, 1.000),
            (3.0, 0.1, 1.000),
            (6.0, 0.5, 1.000),
            (8.0, 0.5, 1.013),
            (10.0, 0.5, 1.011),
        ] {
            let s = disk_kernel(r, a).sum();
            assert!(
                (s - want).abs() < 1.5e-3,
                "({r}, {a}) sums to {s}, want {want}"
            );
        }
    }
}
