//! The element-wise passes of the hand-written paths over NHWC rows (`c` channels per pixel,
//! contiguous), each compiled once per CPU level and chosen at run time (`multiversion`), so a
//! portable build still fills AVX-512 or AVX2 lanes (multiversion's `"simd"` preset leaves
//! AVX-512 out, hence `per_level!` with an explicit list). Every pass is a plain per-element
//! loop: no contraction into FMA and no reassociation, so every level computes bit-identical
//! results.

use multiversion::multiversion;

/// Each function compiled for AVX-512 (F/BW/CD/DQ/VL), AVX2+FMA, SSE4.2, NEON and the baseline.
macro_rules! per_level {
    ($($item:item)*) => {
        $(
            #[multiversion(targets(
                "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl",
                "x86_64+avx2+fma",
                "x86_64+sse4.2",
                "aarch64+neon"
            ))]
            $item
        )*
    };
}

per_level! {
    /// `d ← f((z − μ)·a + β [+ r])` per pixel (`μ`, `a`, `β` one value per channel; `r` the
    /// residual, same layout as `z`): the BatchNorm, the residual add and the activation in one
    /// pass over the activations.
    pub(crate) fn affine_act<F: Fn(f32) -> f32>(
        d: &mut [f32],
        z: &[f32],
        mu: &[f32],
        a: &[f32],
        beta: &[f32],
        residual: Option<&[f32]>,
        f: F,
    ) {
        let c = mu.len();
        match residual {
            None => {
                for (d, z) in d.chunks_exact_mut(c).zip(z.chunks_exact(c)) {
                    for ((((d, z), mu), a), beta) in d.iter_mut().zip(z).zip(mu).zip(a).zip(beta) {
                        *d = f((z - mu) * a + beta);
                    }
                }
            }
            Some(r) => {
                for ((d, z), r) in d
                    .chunks_exact_mut(c)
                    .zip(z.chunks_exact(c))
                    .zip(r.chunks_exact(c))
                {
                    for (((((d, z), r), mu), a), beta) in
                        d.iter_mut().zip(z).zip(r).zip(mu).zip(a).zip(beta)
                    {
                        *d = f((z - mu) * a + beta + r);
                    }
                }
            }
        }
    }

    /// `d ← gelu(x)` (erf form, [`erf`]'s accuracy).
    pub(crate) fn gelu(d: &mut [f32], x: &[f32]) {
        d.iter_mut().zip(x).for_each(|(d, x)| {
            *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        });
    }

    /// `g ← g · gelu'(x)`.
    pub(crate) fn gelu_back(g: &mut [f32], x: &[f32]) {
        g.iter_mut().zip(x).for_each(|(g, x)| {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * x * x) * 0.398_942_3;
            *g *= cdf + x * pdf;
        });
    }

    /// `row ← softmax(row)`.
    pub(crate) fn softmax(row: &mut [f32]) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        // The exponentials in their own loop, so it vectorises; the sum stays in order.
        row.iter_mut().for_each(|v| *v = exp(*v - max));
        let inv = 1.0 / row.iter().sum::<f32>();
        row.iter_mut().for_each(|v| *v *= inv);
    }

    /// `d += s`.
    pub(crate) fn add(d: &mut [f32], s: &[f32]) {
        d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
    }

    /// `d ← max(d, 0)`.
    pub(crate) fn relu(d: &mut [f32]) {
        d.iter_mut().for_each(|v| *v = v.max(0.0));
    }

    /// `d ← f(d)`, `f` inlined into each level's loop.
    pub(crate) fn map<F: Fn(f32) -> f32>(d: &mut [f32], f: F) {
        d.iter_mut().for_each(|v| *v = f(*v));
    }

    /// `g ← 0` where `keep(y)` is false.
    pub(crate) fn mask<K: Fn(f32) -> bool>(g: &mut [f32], y: &[f32], keep: K) {
        g.iter_mut().zip(y).for_each(|(g, y)| {
            if !keep(*y) {
                *g = 0.0;
            }
        });
    }

    /// Per channel, `s1 += Σ (v − k)` and `s2 += Σ (v − k)²` over the pixels of `x` (`k` = `shift`).
    pub(crate) fn shifted_sums(s1: &mut [f32], s2: &mut [f32], x: &[f32], shift: &[f32]) {
        let c = shift.len();
        for px in x.chunks_exact(c) {
            for (((s1, s2), v), k) in s1.iter_mut().zip(s2.iter_mut()).zip(px).zip(shift) {
                let d = v - k;
                *s1 += d;
                *s2 += d * d;
            }
        }
    }

    /// Per channel, `s1 += Σ g` and `s2 += Σ g·(z − μ)·inv` over the pixels, with `g` taken as 0
    /// where `keep(y)` is false.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn masked_sums<K: Fn(f32) -> bool>(
        s1: &mut [f32],
        s2: &mut [f32],
        g: &[f32],
        z: &[f32],
        y: &[f32],
        mu: &[f32],
        inv: &[f32],
        keep: K,
    ) {
        let c = mu.len();
        for ((gr, zr), yr) in g
            .chunks_exact(c)
            .zip(z.chunks_exact(c))
            .zip(y.chunks_exact(c))
        {
            for (((((s1, s2), gv), z), yv), (mu, inv)) in s1
                .iter_mut()
                .zip(s2.iter_mut())
                .zip(gr)
                .zip(zr)
                .zip(yr)
                .zip(mu.iter().zip(inv))
            {
                let gv = if keep(*yv) { *gv } else { 0.0 };
                *s1 += gv;
                *s2 += gv * ((z - mu) * inv);
            }
        }
    }

    /// `d ← a·g + b·z + cc` per channel, with `g` taken as 0 where `keep(y)` is false.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn masked_dz<K: Fn(f32) -> bool>(
        d: &mut [f32],
        g: &[f32],
        z: &[f32],
        y: &[f32],
        a: &[f32],
        b: &[f32],
        cc: &[f32],
        keep: K,
    ) {
        let c = a.len();
        for (((d, gr), zr), yr) in d
            .chunks_exact_mut(c)
            .zip(g.chunks_exact(c))
            .zip(z.chunks_exact(c))
            .zip(y.chunks_exact(c))
        {
            for (((((d, gv), z), yv), a), (b, cc)) in d
                .iter_mut()
                .zip(gr)
                .zip(zr)
                .zip(yr)
                .zip(a)
                .zip(b.iter().zip(cc))
            {
                let gv = if keep(*yv) { *gv } else { 0.0 };
                *d = a * gv + b * z + cc;
            }
        }
    }
}

/// `eˣ` in plain arithmetic, so each CPU level's loop vectorises it (libm's `expf` is a call per
/// element): `2ᵏ·p(r)` with `x = k·ln 2 + r`, `|r| ≤ ln 2 / 2`, `p` Taylor to degree 6 (relative
/// error under 2e-7); below −87 it is 0, above 88 it saturates at `2¹²⁷·p`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ᵏ from the bits of k + 127 + 2²³, whose mantissa holds k + 127 (in [1, 254] here): a
    // shift, where `k as i32` would saturate lane by lane in scalar code.
    p * f32::from_bits((k + (127.0 + 8_388_608.0)).to_bits() << 23)
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1.5e-7) on [`exp`].
#[inline(always)]
pub(crate) fn erf(z: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = 1.0 - poly * exp(-a * a);
    if z < 0.0 {
        -e
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each pass against the same arithmetic written out element by element.
    #[test]
    fn passes_compute_what_they_say() {
        let c = 3;
        let z: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let y: Vec<f32> = z.iter().map(|v| v.max(0.0)).collect();
        let (mu, a, beta) = (
            [0.1f32, -0.2, 0.3],
            [2.0f32, 0.5, -1.0],
            [0.0f32, 1.0, -1.0],
        );
        let mut d = vec![0.0; 12];
        affine_act(&mut d, &z, &mu, &a, &beta, None, |v| v);
        for i in 0..12 {
            let ch = i % c;
            assert_eq!(d[i], (z[i] - mu[ch]) * a[ch] + beta[ch]);
        }
        affine_act(&mut d, &z, &mu, &a, &beta, Some(&y), |v| v.max(0.0));
        for i in 0..12 {
            let ch = i % c;
            assert_eq!(d[i], ((z[i] - mu[ch]) * a[ch] + beta[ch] + y[i]).max(0.0));
        }
        let (mut s1, mut s2) = (vec![0f32; c], vec![0f32; c]);
        masked_sums(&mut s1, &mut s2, &z, &z, &y, &mu, &a, |y| y > 0.0);
        for ch in 0..c {
            let kept: Vec<usize> = (ch..12).step_by(c).filter(|&i| y[i] > 0.0).collect();
            let e1: f32 = kept.iter().map(|&i| z[i]).sum();
            let e2: f32 = kept.iter().map(|&i| z[i] * ((z[i] - mu[ch]) * a[ch])).sum();
            assert_eq!((s1[ch], s2[ch]), (e1, e2));
        }
        let mut dz = vec![0.0; 12];
        masked_dz(&mut dz, &z, &z, &y, &a, &mu, &beta, |y| y > 0.0);
        for i in 0..12 {
            let ch = i % c;
            let g = if y[i] > 0.0 { z[i] } else { 0.0 };
            assert_eq!(dz[i], a[ch] * g + mu[ch] * z[i] + beta[ch]);
        }
        let mut g = z.clone();
        mask(&mut g, &y, |y| y > 0.0);
        assert!(g.iter().zip(&y).all(|(g, y)| (*y > 0.0) == (*g != 0.0)));
        let mut r = z.clone();
        relu(&mut r);
        assert_eq!(r, y);
        map(&mut r, |v| v * 2.0);
        add(&mut r, &y);
        assert!(r.iter().zip(&y).all(|(r, y)| *r == 3.0 * y));
        let (mut t1, mut t2) = (vec![0f32; c], vec![0f32; c]);
        shifted_sums(&mut t1, &mut t2, &z, &mu);
        for ch in 0..c {
            let e1: f32 = (ch..12).step_by(c).map(|i| z[i] - mu[ch]).sum();
            let e2: f32 = (ch..12).step_by(c).map(|i| (z[i] - mu[ch]).powi(2)).sum();
            assert_eq!((t1[ch], t2[ch]), (e1, e2));
        }
    }

    #[test]
    fn exp_and_erf_are_accurate_and_gelu_matches_its_definition() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let (e, want) = (exp(x), (x as f64).exp());
            assert!(
                ((e as f64 - want) / want).abs() < 3e-7,
                "exp({x}) = {e}, want {want}"
            );
            let erf_want = libm::erf(x as f64);
            let d = (erf(x) as f64 - erf_want).abs();
            assert!(d < 5e-7, "erf({x}): off by {d:e}");
        }
        assert_eq!(exp(-200.0), exp(-87.0));
        let x: Vec<f32> = (-60..=60).map(|i| i as f32 * 0.1).collect();
        let mut y = vec![0f32; x.len()];
        gelu(&mut y, &x);
        let mut g = vec![1f32; x.len()];
        gelu_back(&mut g, &x);
        for ((x, y), g) in x.iter().zip(&y).zip(&g) {
            let exact = crate::graph::Act::Gelu.apply(*x);
            assert!((y - exact).abs() < 1e-6, "gelu({x})");
            let d = crate::graph::Act::Gelu.derivative(*x);
            assert!((g - d).abs() < 1e-6, "gelu'({x})");
        }
        let mut row = vec![1.0f32, 2.0, 3.0, -50.0];
        softmax(&mut row);
        let z: f64 = [1.0f64, 2.0, 3.0, -50.0].iter().map(|v| v.exp()).sum();
        for (p, v) in row.iter().zip([1.0f64, 2.0, 3.0, -50.0]) {
            assert!((*p as f64 - v.exp() / z).abs() < 1e-7);
        }
    }
}
