//! The lossy half of a baseline JPEG round trip (§2 P7), done in memory.
//!
//! Why not `image`'s encoder: it always writes 4:4:4, while Pillow (and so the benchmark) uses
//! 4:2:0 chroma subsampling, whose colour bleeding is a visible part of the corruption. Entropy
//! coding is lossless, so skipping it changes no pixel. What is modelled: JFIF YCbCr, libjpeg's
//! h2v2 box downsampling, IJG tables scaled by quality, 8×8 DCT with round-to-nearest
//! quantisation, IDCT, libjpeg's "fancy" triangular upsampling, YCbCr → RGB. The DCT is in
//! floating point rather than ISLOW integer arithmetic, so pixels can differ by ±1 from
//! libjpeg-turbo; the spec asks for statistical, not bit, parity. Gray images are coded as a
//! single-component (gray) JPEG, as Pillow does for mode "L".

/// IJG standard tables (ITU T.81 Annex K), natural (row-major) order.
const LUMA: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

/// Quantisation tables for `quality` (§2 P7: scale 5000/q below 50, else 200 − 2q).
#[derive(Debug, Clone)]
pub struct Jpeg {
    luma: [f32; 64],
    chroma: [f32; 64],
    /// cos((2x+1)uπ/16)·C(u)/2, indexed [u][x].
    basis: [[f32; 8]; 8],
}

impl Jpeg {
    pub fn new(quality: u8) -> Self {
        let q = u32::from(quality.clamp(1, 100));
        let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
        let mk = |base: &[u16; 64]| {
            let mut t = [0f32; 64];
            for (o, &b) in t.iter_mut().zip(base) {
                *o = ((u32::from(b) * scale + 50) / 100).clamp(1, 255) as f32;
            }
            t
        };
        let mut basis = [[0f32; 8]; 8];
        for (u, row) in basis.iter_mut().enumerate() {
            let cu = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            for (x, v) in row.iter_mut().enumerate() {
                *v = (cu / 2.0 * (((2 * x + 1) * u) as f64 * std::f64::consts::PI / 16.0).cos())
                    as f32;
            }
        }
        Jpeg {
            luma: mk(&LUMA),
            chroma: mk(&CHROMA),
            basis,
        }
    }

    /// Quantise and reconstruct one 8×8 block of level-shifted samples in place.
    // Index loops mirror the DCT's subscripts; iterator forms would hide them.
    #[allow(clippy::needless_range_loop)]
    fn block(&self, b: &mut [f32; 64], q: &[f32; 64]) {
        let m = &self.basis;
        let mut t = [0f32; 64];
        // Forward DCT: rows then columns.
        for y in 0..8 {
            for u in 0..8 {
                t[y * 8 + u] = (0..8).map(|x| m[u][x] * b[y * 8 + x]).sum();
            }
        }
        let mut coef = [0f32; 64];
        for v in 0..8 {
            for u in 0..8 {
                let c: f32 = (0..8).map(|y| m[v][y] * t[y * 8 + u]).sum();
                let k = v * 8 + u;
                coef[k] = (c / q[k]).round() * q[k];
            }
        }
        // Inverse DCT.
        for v in 0..8 {
            for x in 0..8 {
                t[v * 8 + x] = (0..8).map(|u| m[u][x] * coef[v * 8 + u]).sum();
            }
        }
        for y in 0..8 {
            for x in 0..8 {
                b[y * 8 + x] = (0..8).map(|v| m[v][y] * t[v * 8 + x]).sum();
            }
        }
    }

    /// Codes one plane (`w`×`h`, values 0–255) and returns the decoded samples, rounded and
    /// clamped as libjpeg's output stage does. Partial blocks are padded by edge replication.
    fn plane(&self, p: &[u8], h: usize, w: usize, q: &[f32; 64]) -> Vec<u8> {
        let mut out = vec![0u8; h * w];
        let mut b = [0f32; 64];
        for by in (0..h).step_by(8) {
            for bx in (0..w).step_by(8) {
                for y in 0..8 {
                    let sy = (by + y).min(h - 1);
                    for x in 0..8 {
                        let sx = (bx + x).min(w - 1);
                        b[y * 8 + x] = f32::from(p[sy * w + sx]) - 128.0;
                    }
                }
                self.block(&mut b, q);
                for y in 0..8.min(h - by) {
                    for x in 0..8.min(w - bx) {
                        out[(by + y) * w + bx + x] =
                            (b[y * 8 + x] + 128.0).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
        out
    }

    /// Round trip of an interleaved u8 image with 1 or 3 channels.
    pub fn roundtrip(&self, px: &[u8], h: usize, w: usize, c: usize) -> Vec<u8> {
        if c == 1 {
            return self.plane(px, h, w, &self.luma);
        }
        let n = h * w;
        let (mut yp, mut cb, mut cr) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
        for i in 0..n {
            let (r, g, b) = (
                f32::from(px[3 * i]),
                f32::from(px[3 * i + 1]),
                f32::from(px[3 * i + 2]),
            );
            yp[i] = (0.299 * r + 0.587 * g + 0.114 * b)
                .round()
                .clamp(0.0, 255.0) as u8;
            cb[i] = (-0.168_736 * r - 0.331_264 * g + 0.5 * b + 128.0)
                .round()
                .clamp(0.0, 255.0) as u8;
            cr[i] = (0.5 * r - 0.418_688 * g - 0.081_312 * b + 128.0)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
        let y2 = self.plane(&yp, h, w, &self.luma);
        let (ch, cw) = (h.div_ceil(2), w.div_ceil(2));
        let cb2 = upsample(
            &self.plane(&downsample(&cb, h, w), ch, cw, &self.chroma),
            ch,
            cw,
            h,
            w,
        );
        let cr2 = upsample(
            &self.plane(&downsample(&cr, h, w), ch, cw, &self.chroma),
            ch,
            cw,
            h,
            w,
        );
        let mut out = vec![0u8; n * 3];
        for i in 0..n {
            let yv = f32::from(y2[i]);
            let cbv = cb2[i] - 128.0;
            let crv = cr2[i] - 128.0;
            out[3 * i] = (yv + 1.402 * crv).round().clamp(0.0, 255.0) as u8;
            out[3 * i + 1] = (yv - 0.344_136 * cbv - 0.714_136 * crv)
                .round()
                .clamp(0.0, 255.0) as u8;
            out[3 * i + 2] = (yv + 1.772 * cbv).round().clamp(0.0, 255.0) as u8;
        }
        out
    }
}

/// libjpeg h2v2_downsample: 2×2 sum plus alternating bias 1, 2, divided by 4; edges replicated.
fn downsample(p: &[u8], h: usize, w: usize) -> Vec<u8> {
    let (ch, cw) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = vec![0u8; ch * cw];
    for y in 0..ch {
        let (y0, y1) = ((2 * y).min(h - 1), (2 * y + 1).min(h - 1));
        for x in 0..cw {
            let (x0, x1) = ((2 * x).min(w - 1), (2 * x + 1).min(w - 1));
            let s = u32::from(p[y0 * w + x0])
                + u32::from(p[y0 * w + x1])
                + u32::from(p[y1 * w + x0])
                + u32::from(p[y1 * w + x1]);
            let bias = if x % 2 == 0 { 1 } else { 2 };
            out[y * cw + x] = ((s + bias) >> 2) as u8;
        }
    }
    out
}

/// libjpeg h2v2 "fancy" upsampling: triangular 3/4–1/4 weights on both axes, edge rows and
/// columns replicated; returned as floats (still integer-valued) for the colour transform.
fn upsample(p: &[u8], ch: usize, cw: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    let at = |y: isize, x: isize| -> i32 {
        let y = y.clamp(0, ch as isize - 1) as usize;
        let x = x.clamp(0, cw as isize - 1) as usize;
        i32::from(p[y * cw + x])
    };
    for oy in 0..h {
        let y = (oy / 2) as isize;
        let ny = if oy % 2 == 0 { y - 1 } else { y + 1 };
        for ox in 0..w {
            let x = (ox / 2) as isize;
            let nx = if ox % 2 == 0 { x - 1 } else { x + 1 };
            let this = 3 * at(y, x) + at(ny, x);
            let other = 3 * at(y, nx) + at(ny, nx);
            let bias = if ox % 2 == 0 { 8 } else { 7 };
            out[oy * w + ox] = ((3 * this + other + bias) >> 4) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_tables_follow_ijg() {
        let j = Jpeg::new(50);
        assert_eq!(j.luma[0], 16.0);
        let j = Jpeg::new(10);
        assert_eq!(j.luma[0], 80.0); // 16·500/100
        assert_eq!(
            Jpeg::new(100).luma.iter().copied().fold(0f32, f32::max),
            1.0
        );
    }

    #[test]
    fn flat_image_stays_flat() {
        // Only the DC term survives; at q = 10 its step is 80/8 = 10 levels, so 100 → 98
        // (−28·8 = −224 quantises to −3·80), the same as libjpeg.
        let px = vec![100u8; 20 * 13 * 3];
        let out = Jpeg::new(10).roundtrip(&px, 13, 20, 3);
        assert!(out.iter().all(|&v| v == 98), "{:?}", &out[..6]);
        assert_eq!(Jpeg::new(90).roundtrip(&px, 13, 20, 3), px);
    }
}
