//! Resampling primitives: clipped zoom (§2 P2), ImageMagick motion blur (P3), OpenCV warpAffine
//! and SciPy map_coordinates (P8).

use crate::filter::Border;

/// One axis of a separable bilinear resampling: output `o` reads `(1−f)·in[i0] + f·in[i1]`.
#[derive(Debug, Clone)]
pub struct AxisMap {
    pub i0: Vec<u32>,
    pub i1: Vec<u32>,
    pub f: Vec<f32>,
}

impl AxisMap {
    /// P2 clipped zoom along one axis of length `n` by factor `z` (≥ 1): centred crop of
    /// ceil(n/z), SciPy `zoom` order 1 (corner-aligned) to round-half-even(ch·z), centre trim.
    /// Non-square images zoom each axis with its own length, which reduces to P2 when square.
    pub fn clipped_zoom(n: usize, z: f64) -> Self {
        let ch = ((n as f64 / z).ceil() as usize).clamp(1, n);
        let top = (n - ch) / 2;
        let out = ((ch as f64 * z).round_ties_even() as usize).max(n);
        let trim = (out - n) / 2;
        let scale = if out > 1 {
            (ch - 1) as f64 / (out - 1) as f64
        } else {
            0.0
        };
        let mut m = AxisMap {
            i0: Vec::with_capacity(n),
            i1: Vec::with_capacity(n),
            f: Vec::with_capacity(n),
        };
        for o in trim..trim + n {
            let p = o as f64 * scale;
            let i0 = (p.floor() as usize).min(ch - 1);
            let i1 = (i0 + 1).min(ch - 1);
            m.i0.push((top + i0) as u32);
            m.i1.push((top + i1) as u32);
            m.f.push((p - i0 as f64) as f32);
        }
        m
    }
}

/// Separable bilinear resample of an H×W×C plane with per-axis maps; adds `weight ×` result into
/// `acc` (zoom blur accumulates many zooms, snow uses weight 1 on a zeroed buffer).
pub fn resample_add(src: &[f32], acc: &mut [f32], w: usize, c: usize, ym: &AxisMap, xm: &AxisMap) {
    let row = w * c;
    for (y, ((&y0, &y1), &fy)) in ym.i0.iter().zip(&ym.i1).zip(&ym.f).enumerate() {
        let r0 = &src[y0 as usize * row..(y0 as usize + 1) * row];
        let r1 = &src[y1 as usize * row..(y1 as usize + 1) * row];
        let out = &mut acc[y * row..(y + 1) * row];
        for (x, ((&x0, &x1), &fx)) in xm.i0.iter().zip(&xm.i1).zip(&xm.f).enumerate() {
            let (a, b) = (x0 as usize * c, x1 as usize * c);
            for ch in 0..c {
                let top = r0[a + ch] + fx * (r0[b + ch] - r0[a + ch]);
                let bot = r1[a + ch] + fx * (r1[b + ch] - r1[a + ch]);
                out[x * c + ch] += top + fy * (bot - top);
            }
        }
    }
}

/// P3: ImageMagick `MotionBlurImage(radius, sigma, angle)` on 0–255 values, edge-clamped, with
/// the 8-bit rounding of the PNG round trip (§2 P3 step 5).
pub fn motion_blur(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    radius: f64,
    sigma: f64,
    angle_deg: f64,
) -> Vec<f32> {
    let width = 2 * radius.ceil() as usize + 1;
    let mut k: Vec<f64> = (0..width)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    // Taps that land on the same offset are merged: fewer reads, same sum.
    let mut taps: Vec<(isize, isize, f32)> = Vec::with_capacity(width);
    for (i, &kv) in k.iter().enumerate() {
        let ox = (i as f64 * cos - 0.5).ceil() as isize;
        let oy = (i as f64 * sin - 0.5).ceil() as isize;
        match taps.iter_mut().find(|t| t.0 == ox && t.1 == oy) {
            Some(t) => t.2 += kv as f32,
            None => taps.push((ox, oy, kv as f32)),
        }
    }
    let mut out = vec![0f32; src.len()];
    for &(ox, oy, kv) in &taps {
        for y in 0..h {
            let sy = (y as isize + oy).clamp(0, h as isize - 1) as usize;
            let srow = &src[sy * w * c..(sy + 1) * w * c];
            let drow = &mut out[y * w * c..(y + 1) * w * c];
            for x in 0..w {
                let sx = (x as isize + ox).clamp(0, w as isize - 1) as usize;
                for ch in 0..c {
                    drow[x * c + ch] += kv * srow[sx * c + ch];
                }
            }
        }
    }
    for v in &mut out {
        *v = v.round().clamp(0.0, 255.0);
    }
    out
}

/// OpenCV `getAffineTransform`: the 2×3 matrix mapping the three `from` points onto `to`.
pub fn affine_from_points(from: [[f64; 2]; 3], to: [[f64; 2]; 3]) -> [[f64; 3]; 2] {
    // Solve [x y 1]·m = u for each output coordinate (Cramer's rule on a 3×3 system).
    let a = [
        [from[0][0], from[0][1], 1.0],
        [from[1][0], from[1][1], 1.0],
        [from[2][0], from[2][1], 1.0],
    ];
    let det3 = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det3(a);
    let mut out = [[0.0; 3]; 2];
    for (r, row) in out.iter_mut().enumerate() {
        let rhs = [to[0][r], to[1][r], to[2][r]];
        for (k, cell) in row.iter_mut().enumerate() {
            let mut m = a;
            for i in 0..3 {
                m[i][k] = rhs[i];
            }
            *cell = det3(m) / d;
        }
    }
    out
}

/// OpenCV `warpAffine(src, M, (w, h), INTER_LINEAR, BORDER_REFLECT_101)`: each destination pixel
/// samples the source at M⁻¹·p, positions quantised to 1/32 px (INTER_BITS = 5).
pub fn warp_affine(src: &[f32], h: usize, w: usize, c: usize, m: [[f64; 3]; 2]) -> Vec<f32> {
    let (a, b, tx) = (m[0][0], m[0][1], m[0][2]);
    let (cc, d, ty) = (m[1][0], m[1][1], m[1][2]);
    let det = a * d - b * cc;
    let det = if det == 0.0 { 0.0 } else { 1.0 / det };
    let (ia, ib, ic, id) = (d * det, -b * det, -cc * det, a * det);
    let itx = -(ia * tx + ib * ty);
    let ity = -(ic * tx + id * ty);
    let mut out = vec![0f32; src.len()];
    for y in 0..h {
        for x in 0..w {
            let sx = ((ia * x as f64 + ib * y as f64 + itx) * 32.0).round() / 32.0;
            let sy = ((ic * x as f64 + id * y as f64 + ity) * 32.0).round() / 32.0;
            bilinear_into(
                src,
                h,
                w,
                c,
                sy,
                sx,
                Border::Reflect101,
                &mut out[(y * w + x) * c..],
            );
        }
    }
    out
}

/// Bilinear sample at (sy, sx), neighbours mapped through `border`, written to `dst[..c]`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn bilinear_into(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    sy: f64,
    sx: f64,
    border: Border,
    dst: &mut [f32],
) {
    let (fy0, fx0) = (sy.floor(), sx.floor());
    let (fy, fx) = ((sy - fy0) as f32, (sx - fx0) as f32);
    let (y0, x0) = (fy0 as isize, fx0 as isize);
    let y0i = border.index(y0, h);
    let y1i = border.index(y0 + 1, h);
    let x0i = border.index(x0, w);
    let x1i = border.index(x0 + 1, w);
    for ch in 0..c {
        let p00 = src[(y0i * w + x0i) * c + ch];
        let p01 = src[(y0i * w + x1i) * c + ch];
        let p10 = src[(y1i * w + x0i) * c + ch];
        let p11 = src[(y1i * w + x1i) * c + ch];
        let top = p00 + fx * (p01 - p00);
        let bot = p10 + fx * (p11 - p10);
        dst[ch] = top + fy * (bot - top);
    }
}

/// SciPy ≥ 1.6 "reflect" for interpolation: fold the coordinate into [−0.5, n − 0.5] (period 2n).
#[inline]
pub fn reflect_coord(v: f64, n: usize) -> f64 {
    let n = n as f64;
    let mut t = (v + 0.5).rem_euclid(2.0 * n);
    if t > n {
        t = 2.0 * n - t;
    }
    t - 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_one_is_identity() {
        let m = AxisMap::clipped_zoom(28, 1.0);
        assert!(m.f.iter().all(|&f| f == 0.0));
        assert_eq!(m.i0, (0..28).collect::<Vec<u32>>());
    }

    #[test]
    fn cifar_snow_zoom_geometry() {
        // §2 P2: CIFAR snow at zoom 2.25 has ch = 15, out = 34, trim 1.
        let m = AxisMap::clipped_zoom(32, 2.25);
        assert_eq!(m.i0.len(), 32);
        // top = (32 − 15) / 2 = 8; output 1 samples 1·14/33 < 1.
        assert_eq!(*m.i0.first().unwrap(), 8);
        assert_eq!(*m.i1.last().unwrap(), 8 + 14);
    }

    #[test]
    fn affine_identity_roundtrip() {
        let p = [[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]];
        let m = affine_from_points(p, p);
        assert!((m[0][0] - 1.0).abs() < 1e-12 && m[0][1].abs() < 1e-12 && m[0][2].abs() < 1e-9);
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(warp_affine(&src, 4, 4, 1, m), src);
    }

    #[test]
    fn motion_blur_zero_sigma_like_identity() {
        // A very small σ puts all weight on tap 0, the pixel itself.
        let src: Vec<f32> = (0..12).map(|v| (v * 20) as f32).collect();
        assert_eq!(motion_blur(&src, 3, 4, 1, 6.0, 0.01, 10.0), src);
    }
}
