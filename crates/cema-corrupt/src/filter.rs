//! Linear filters on interleaved H×W×C f32 planes, with the border rules of §1 ("nearest",
//! "reflect", reflect-101).

/// How an out-of-range index is mapped back into `0..n` (§1 conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Edge replication (scikit-image / SciPy "nearest", ImageMagick's default virtual pixels).
    Nearest,
    /// Half-sample symmetric: … c b a | a b c d | d c b … (SciPy "reflect").
    Reflect,
    /// Whole-sample symmetric: … c b | a b c d | c b … (OpenCV BORDER_REFLECT_101).
    Reflect101,
}

impl Border {
    /// Maps any integer index into `0..n`; repeats the reflection when `i` is far outside, which
    /// happens for elastic's large kernels (§3.13).
    pub fn index(self, i: isize, n: usize) -> usize {
        let n = n as isize;
        if (0..n).contains(&i) {
            return i as usize;
        }
        match self {
            Border::Nearest => i.clamp(0, n - 1) as usize,
            Border::Reflect => {
                let p = 2 * n;
                let m = i.rem_euclid(p);
                (if m >= n { p - 1 - m } else { m }) as usize
            }
            Border::Reflect101 => {
                if n == 1 {
                    return 0;
                }
                let p = 2 * n - 2;
                let m = i.rem_euclid(p);
                (if m >= n { p - m } else { m }) as usize
            }
        }
    }
}

/// SciPy / scikit-image Gaussian taps: radius int(truncate·σ + 0.5), weights exp(−k²/2σ²)
/// normalised (§1). An empty result means "identity" (σ = 0 or radius 0).
pub fn gaussian_taps(sigma: f64, truncate: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return Vec::new();
    }
    let r = (truncate * sigma + 0.5) as isize;
    if r == 0 {
        return Vec::new();
    }
    let w: Vec<f64> = (-r..=r)
        .map(|k| (-((k * k) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

/// A separable filter with the same 1-D taps on both axes, precomputed for one image size so
/// that applying it allocates nothing per pixel.
#[derive(Debug, Clone)]
pub struct SepFilter {
    taps: Vec<f32>,
    /// Source column for padded position `x + k`, `k` in `0..taps.len()`.
    xmap: Vec<u32>,
    ymap: Vec<u32>,
}

impl SepFilter {
    pub fn new(taps: Vec<f32>, h: usize, w: usize, border: Border) -> Self {
        let r = taps.len() as isize / 2;
        let map = |n: usize| -> Vec<u32> {
            (0..n as isize + 2 * r)
                .map(|i| border.index(i - r, n) as u32)
                .collect()
        };
        SepFilter {
            xmap: if taps.is_empty() { Vec::new() } else { map(w) },
            ymap: if taps.is_empty() { Vec::new() } else { map(h) },
            taps,
        }
    }

    pub fn gaussian(sigma: f64, truncate: f64, h: usize, w: usize, border: Border) -> Self {
        Self::new(gaussian_taps(sigma, truncate), h, w, border)
    }

    /// Filters `data` (H×W×C) in place, rows then columns, never across channels.
    pub fn apply(&self, data: &mut [f32], h: usize, w: usize, c: usize) {
        if self.taps.is_empty() {
            return;
        }
        let mut tmp = vec![0f32; data.len()];
        let row = w * c;
        for y in 0..h {
            let src = &data[y * row..(y + 1) * row];
            let dst = &mut tmp[y * row..(y + 1) * row];
            for x in 0..w {
                let xm = &self.xmap[x..x + self.taps.len()];
                for ch in 0..c {
                    let mut s = 0f32;
                    for (t, &xi) in self.taps.iter().zip(xm) {
                        s += t * src[xi as usize * c + ch];
                    }
                    dst[x * c + ch] = s;
                }
            }
        }
        for y in 0..h {
            let ym = &self.ymap[y..y + self.taps.len()];
            let dst = &mut data[y * row..(y + 1) * row];
            dst.fill(0.0);
            for (t, &yi) in self.taps.iter().zip(ym) {
                let src = &tmp[yi as usize * row..(yi as usize + 1) * row];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += t * s;
                }
            }
        }
    }
}

/// A dense 2-D correlation kernel (OpenCV filter2D semantics: anchor at the centre), stored
/// trimmed to its non-zero support so the tiny CIFAR disks (§2 P1) cost 3×3 or 5×5 taps.
#[derive(Debug, Clone)]
pub struct Kernel2d {
    /// (dy, dx, weight) for every non-zero tap.
    taps: Vec<(isize, isize, f32)>,
}

impl Kernel2d {
    /// `k` is row-major `side`×`side` with the anchor at the centre.
    pub fn from_dense(k: &[f64], side: usize) -> Self {
        let c = (side / 2) as isize;
        let mut taps = Vec::new();
        for y in 0..side {
            for x in 0..side {
                let v = k[y * side + x];
                if v != 0.0 {
                    taps.push((y as isize - c, x as isize - c, v as f32));
                }
            }
        }
        Kernel2d { taps }
    }

    #[cfg(test)]
    pub fn sum(&self) -> f32 {
        self.taps.iter().map(|t| t.2).sum()
    }

    /// out(y, x) = Σ k(dy, dx) · in(y + dy, x + dx) with `border` outside the image.
    pub fn apply(
        &self,
        src: &[f32],
        dst: &mut [f32],
        h: usize,
        w: usize,
        c: usize,
        border: Border,
    ) {
        dst.fill(0.0);
        for &(dy, dx, k) in &self.taps {
            for y in 0..h {
                let sy = border.index(y as isize + dy, h);
                let srow = &src[sy * w * c..(sy + 1) * w * c];
                let drow = &mut dst[y * w * c..(y + 1) * w * c];
                for x in 0..w {
                    let sx = border.index(x as isize + dx, w);
                    for ch in 0..c {
                        drow[x * c + ch] += k * srow[sx * c + ch];
                    }
                }
            }
        }
    }
}

/// OpenCV `cv2.blur(src, (3, 3))`: a 3×3 box mean with reflect-101 borders on one plane.
pub fn box3(src: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0f32;
            for dy in -1..=1 {
                let sy = Border::Reflect101.index(y as isize + dy, h);
                for dx in -1..=1 {
                    let sx = Border::Reflect101.index(x as isize + dx, w);
                    s += src[sy * w + sx];
                }
            }
            out[y * w + x] = s / 9.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn border_rules() {
        let n = 4;
        let r: Vec<usize> = (-3..7).map(|i| Border::Reflect.index(i, n)).collect();
        assert_eq!(r, [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        let r: Vec<usize> = (-3..7).map(|i| Border::Reflect101.index(i, n)).collect();
        assert_eq!(r, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        let r: Vec<usize> = (-2..6).map(|i| Border::Nearest.index(i, n)).collect();
        assert_eq!(r, [0, 0, 0, 1, 2, 3, 3, 3]);
        assert_eq!(Border::Reflect101.index(-5, 1), 0);
    }

    #[test]
    fn gaussian_taps_follow_scipy() {
        // §1: σ = 0.05 has radius 0 and is the identity.
        assert!(gaussian_taps(0.05, 4.0).is_empty());
        let t = gaussian_taps(1.0, 4.0);
        assert_eq!(t.len(), 9);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((t[4] - 0.398_943).abs() < 1e-4);
    }

    #[test]
    fn sep_filter_preserves_constants() {
        let (h, w, c) = (5, 7, 3);
        let mut d = vec![0.25f32; h * w * c];
        SepFilter::gaussian(2.0, 4.0, h, w, Border::Reflect).apply(&mut d, h, w, c);
        assert!(d.iter().all(|v| (v - 0.25).abs() < 1e-6));
    }
}
