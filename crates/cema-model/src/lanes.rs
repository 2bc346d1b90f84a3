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

    /// `row ← softmax(row)` for each row of `t` in `rows`.
    pub(crate) fn softmax(rows: &mut [f32], t: usize) {
        for row in rows.chunks_exact_mut(t) {
            let max = lane_fold(row, row, f32::NEG_INFINITY, |m, v, _| m.max(v), f32::max);
            // The exponentials in their own loop, so it vectorises.
            row.iter_mut().for_each(|v| *v = exp(*v - max));
            let inv = 1.0 / lane_sum(row, row, |v, _| v);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }

    /// The softmax's backward for each row of `t`: `ds ← p·(ds − Σ ds·p)·scale`.
    pub(crate) fn softmax_back(ds: &mut [f32], p: &[f32], t: usize, scale: f32) {
        for (ds, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
            let dot = lane_sum(ds, p, |d, p| d * p);
            ds.iter_mut().zip(p).for_each(|(s, p)| *s = p * (*s - dot) * scale);
        }
    }

    /// LayerNorm of each row of `c = γ.len()` in `x`: `out ← x̂·γ + β` with `x̂ = (x − μ)·r`,
    /// `r = 1/√(σ² + ε)` into `rstd` per row, and `x̂` into `xhat` unless it is empty.
    pub(crate) fn layer_norm(
        out: &mut [f32],
        xhat: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let c = gamma.len();
        let inv_c = 1.0 / c as f32;
        for (i, ((o, x), r)) in out
            .chunks_exact_mut(c)
            .zip(x.chunks_exact(c))
            .zip(rstd.iter_mut())
            .enumerate()
        {
            let mean = lane_sum(x, x, |v, _| v) * inv_c;
            let var = lane_sum(x, x, |v, _| (v - mean) * (v - mean)) * inv_c;
            *r = 1.0 / (var + eps).sqrt();
            let rv = *r;
            for (((o, x), g), b) in o.iter_mut().zip(x).zip(gamma).zip(beta) {
                *o = (x - mean) * rv * g + b;
            }
            if !xhat.is_empty() {
                let h = &mut xhat[i * c..(i + 1) * c];
                h.iter_mut().zip(x).for_each(|(h, x)| *h = (x - mean) * rv);
            }
        }
    }

    /// The input gradient of [`layer_norm`] for each row:
    /// `dx ← r·(g·γ − mean(g·γ) − x̂·mean(g·γ·x̂))`.
    pub(crate) fn layer_norm_back(
        dx: &mut [f32],
        g: &[f32],
        xhat: &[f32],
        rstd: &[f32],
        gamma: &[f32],
    ) {
        let c = gamma.len();
        let inv_c = 1.0 / c as f32;
        for (((d, g), x), r) in dx
            .chunks_exact_mut(c)
            .zip(g.chunks_exact(c))
            .zip(xhat.chunks_exact(c))
            .zip(rstd)
        {
            // g·γ once, into dx, so both sums read it.
            d.iter_mut().zip(g).zip(gamma).for_each(|((d, g), w)| *d = g * w);
            let m1 = lane_sum(d, d, |v, _| v) * inv_c;
            let m2 = lane_sum(d, x, |v, x| v * x) * inv_c;
            d.iter_mut().zip(x).for_each(|(d, x)| *d = r * (*d - m1 - x * m2));
        }
    }

    /// Per channel, `dγ += Σ g·x̂` and `dβ += Σ g` over the rows.
    pub(crate) fn affine_grads(dgamma: &mut [f32], dbeta: &mut [f32], g: &[f32], xhat: &[f32]) {
        let c = dgamma.len();
        for (g, x) in g.chunks_exact(c).zip(xhat.chunks_exact(c)) {
            for (((dg, db), g), x) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(g).zip(x) {
                *dg += g * x;
                *db += g;
            }
        }
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

/// Independent partial sums per reduction: one AVX-512 register, two AVX2 ones, four SSE ones.
const LANES: usize = 16;

/// `Σ f(a, b)` element by element in [`LANES`] interleaved partial sums added in a fixed order,
/// so it vectorises at every level (a plain running sum is one serial chain) and gives the same
/// number at each.
#[inline(always)]
fn lane_sum<F: Fn(f32, f32) -> f32>(a: &[f32], b: &[f32], f: F) -> f32 {
    lane_fold(a, b, 0.0, |acc, a, b| acc + f(a, b), |x, y| x + y)
}

/// The fold behind [`lane_sum`]: `step` into each of the [`LANES`] accumulators, which `join`
/// then combines pairwise in a fixed order.
#[inline(always)]
fn lane_fold<S, J>(a: &[f32], b: &[f32], init: f32, step: S, join: J) -> f32
where
    S: Fn(f32, f32, f32) -> f32,
    J: Fn(f32, f32) -> f32,
{
    let mut acc = [init; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (a, b) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] = step(acc[i], a[i], b[i]);
        }
    }
    for (i, (a, b)) in ar.iter().zip(br).enumerate() {
        acc[i] = step(acc[i], *a, *b);
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] = join(acc[i], acc[i + w]);
        }
    }
    acc[0]
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

    /// The lane-wise reductions against the same arithmetic in f64, on rows whose length is not
    /// a multiple of the lanes.
    #[test]
    fn row_passes_match_their_definitions() {
        let (c, rows) = (37, 5);
        let x: Vec<f32> = (0..c * rows)
            .map(|i| ((i * 7919) % 113) as f32 * 0.03 - 1.5)
            .collect();
        let gamma: Vec<f32> = (0..c).map(|j| 0.5 + j as f32 * 0.01).collect();
        let beta: Vec<f32> = (0..c).map(|j| j as f32 * -0.02).collect();
        let (mut out, mut xhat, mut rstd) =
            (vec![0f32; x.len()], vec![0f32; x.len()], vec![0f32; rows]);
        layer_norm(&mut out, &mut xhat, &mut rstd, &x, &gamma, &beta, 1e-6);
        let g: Vec<f32> = x.iter().map(|v| (v * 3.0).sin()).collect();
        let mut dx = vec![0f32; x.len()];
        layer_norm_back(&mut dx, &g, &xhat, &rstd, &gamma);
        for r in 0..rows {
            let row: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|v| *v as f64).collect();
            let mean = row.iter().sum::<f64>() / c as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
            let rs = 1.0 / (var + 1e-6).sqrt();
            assert!((rstd[r] as f64 - rs).abs() < 1e-5 * rs);
            let h: Vec<f64> = row.iter().map(|v| (v - mean) * rs).collect();
            let gg: Vec<f64> = (0..c)
                .map(|j| g[r * c + j] as f64 * gamma[j] as f64)
                .collect();
            let m1 = gg.iter().sum::<f64>() / c as f64;
            let m2 = gg.iter().zip(&h).map(|(a, b)| a * b).sum::<f64>() / c as f64;
            for j in 0..c {
                let i = r * c + j;
                assert!((xhat[i] as f64 - h[j]).abs() < 1e-5);
                assert!((out[i] as f64 - (h[j] * gamma[j] as f64 + beta[j] as f64)).abs() < 1e-5);
                let want = rs * (gg[j] - m1 - h[j] * m2);
                assert!(
                    (dx[i] as f64 - want).abs() < 1e-4,
                    "dx[{i}] = {}, want {want}",
                    dx[i]
                );
            }
        }
        // Without x̂ the output and 1/σ are the same numbers.
        let (mut out2, mut rstd2) = (vec![0f32; x.len()], vec![0f32; rows]);
        layer_norm(&mut out2, &mut [], &mut rstd2, &x, &gamma, &beta, 1e-6);
        assert_eq!((out2, rstd2), (out, rstd));
        let (mut dg, mut db) = (vec![0f32; c], vec![0f32; c]);
        affine_grads(&mut dg, &mut db, &g, &xhat);
        for j in 0..c {
            let want_g: f32 = (0..rows).map(|r| g[r * c + j] * xhat[r * c + j]).sum();
            let want_b: f32 = (0..rows).map(|r| g[r * c + j]).sum();
            assert_eq!((dg[j], db[j]), (want_g, want_b));
        }
        // softmax_back: p·(ds − Σ ds·p)·scale per row.
        let mut p = x.clone();
        softmax(&mut p, c);
        let mut ds = g.clone();
        softmax_back(&mut ds, &p, c, 0.5);
        for r in 0..rows {
            let row = r * c..(r + 1) * c;
            let dot: f64 = row.clone().map(|i| g[i] as f64 * p[i] as f64).sum();
            let total: f32 = p[row.clone()].iter().sum();
            assert!((total - 1.0).abs() < 1e-6);
            for i in row {
                let want = p[i] as f64 * (g[i] as f64 - dot) * 0.5;
                assert!((ds[i] as f64 - want).abs() < 1e-6);
            }
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
        softmax(&mut row, 4);
        let z: f64 = [1.0f64, 2.0, 3.0, -50.0].iter().map(|v| v.exp()).sum();
        for (p, v) in row.iter().zip([1.0f64, 2.0, 3.0, -50.0]) {
            assert!((*p as f64 - v.exp() / z).abs() < 1e-7);
        }
    }
}
