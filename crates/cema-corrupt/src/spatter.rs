//! spatter (§3.18, held-out) and the OpenCV pieces it needs: Canny, the 5×5 chamfer distance
//! transform, equalizeHist, the emboss filter and 3×3 box means.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::filter::{box3, Border, SepFilter};
use crate::params::Spatter;
use crate::util::{luma, quantise, to_unit};

/// Water is PaleTurquoise (175, 238, 238); mud is (63, 42, 20). Gray images use their luminance.
const WATER: [f32; 3] = [175.0 / 255.0, 238.0 / 255.0, 238.0 / 255.0];
const MUD: [f32; 3] = [63.0 / 255.0, 42.0 / 255.0, 20.0 / 255.0];

#[allow(clippy::too_many_arguments)]
pub fn spatter(
    px: &[u8],
    h: usize,
    w: usize,
    c: usize,
    p: &Spatter,
    liquid_filter: &SepFilter,
    mud_filter: &SepFilter,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let f = to_unit(px);
    let mut q: Vec<f32> = (0..h * w)
        .map(|_| (p.mean + p.sd * rng.sample::<f64, _>(StandardNormal)) as f32)
        .collect();
    liquid_filter.apply(&mut q, h, w, 1);
    q.iter_mut().for_each(|v| {
        if *v < p.threshold {
            *v = 0.0
        }
    });
    let colour = |rgb: [f32; 3]| -> [f32; 3] {
        if c == 3 {
            rgb
        } else {
            [luma(rgb[0], rgb[1], rgb[2]); 3]
        }
    };
    let mut out = vec![0f32; f.len()];
    if !p.mud {
        // Clamped rather than wrapped: §3.18 step 3.1.
        let qu: Vec<u8> = quantise(&q);
        let edges = canny(&qu, h, w, 50.0, 150.0);
        let mut d = distance_l2_5(&edges, h, w);
        d.iter_mut().for_each(|v| *v = v.min(20.0));
        let d: Vec<u8> = box3(&d, h, w).iter().map(|&v| v as u8).collect();
        let d = equalize_hist(&d);
        let d = emboss(&d, h, w);
        let d: Vec<f32> = box3(&d.iter().map(|&v| f32::from(v)).collect::<Vec<_>>(), h, w)
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0))
            .collect();
        let m: Vec<f32> = qu.iter().zip(&d).map(|(&a, &b)| f32::from(a) * b).collect();
        let mx = m.iter().copied().fold(0.0, f32::max);
        let col = colour(WATER);
        for i in 0..h * w {
            let mi = if mx > 0.0 { m[i] / mx * p.k } else { 0.0 };
            for ch in 0..c {
                out[i * c + ch] = f[i * c + ch] + mi * col[ch];
            }
        }
    } else {
        let mut b: Vec<f32> = q
            .iter()
            .map(|&v| if v > p.threshold { 1.0 } else { 0.0 })
            .collect();
        mud_filter.apply(&mut b, h, w, 1);
        b.iter_mut().for_each(|v| {
            if *v < 0.8 {
                *v = 0.0
            }
        });
        let col = colour(MUD);
        for i in 0..h * w {
            for ch in 0..c {
                out[i * c + ch] = f[i * c + ch] * (1.0 - b[i]) + b[i] * col[ch];
            }
        }
    }
    quantise(&out)
}

/// OpenCV Canny on u8: 3×3 Sobel (replicated border), L1 magnitude, no pre-smoothing,
/// tangent-sector non-maximum suppression, hysteresis with 8-connectivity. Returns 1 on edges.
pub fn canny(img: &[u8], h: usize, w: usize, low: f32, high: f32) -> Vec<bool> {
    let at = |y: isize, x: isize| -> f32 {
        let y = Border::Nearest.index(y, h);
        let x = Border::Nearest.index(x, w);
        f32::from(img[y * w + x])
    };
    let mut gx = vec![0f32; h * w];
    let mut gy = vec![0f32; h * w];
    let mut mag = vec![0f32; h * w];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let dx = (at(y - 1, x + 1) + 2.0 * at(y, x + 1) + at(y + 1, x + 1))
                - (at(y - 1, x - 1) + 2.0 * at(y, x - 1) + at(y + 1, x - 1));
            let dy = (at(y + 1, x - 1) + 2.0 * at(y + 1, x) + at(y + 1, x + 1))
                - (at(y - 1, x - 1) + 2.0 * at(y - 1, x) + at(y - 1, x + 1));
            let i = y as usize * w + x as usize;
            gx[i] = dx;
            gy[i] = dy;
            mag[i] = dx.abs() + dy.abs();
        }
    }
    let m = |y: isize, x: isize| -> f32 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            0.0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    // 0: not an edge, 1: weak candidate, 2: strong edge.
    let mut state = vec![0u8; h * w];
    let mut stack = Vec::new();
    let tg22 = (22.5f32).to_radians().tan();
    let tg67 = (67.5f32).to_radians().tan();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let v = mag[i];
            if v <= low {
                continue;
            }
            let (ax, ay) = (gx[i].abs(), gy[i].abs());
            let is_max = if ay < ax * tg22 {
                v > m(y, x - 1) && v >= m(y, x + 1)
            } else if ay > ax * tg67 {
                v > m(y - 1, x) && v >= m(y + 1, x)
            } else {
                let s = if (gx[i] < 0.0) != (gy[i] < 0.0) {
                    -1
                } else {
                    1
                };
                v > m(y - 1, x - s) && v > m(y + 1, x + s)
            };
            if is_max {
                if v > high {
                    state[i] = 2;
                    stack.push(i);
                } else {
                    state[i] = 1;
                }
            }
        }
    }
    while let Some(i) = stack.pop() {
        let (y, x) = ((i / w) as isize, (i % w) as isize);
        for dy in -1..=1 {
            for dx in -1..=1 {
                let (ny, nx) = (y + dy, x + dx);
                if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                    continue;
                }
                let j = ny as usize * w + nx as usize;
                if state[j] == 1 {
                    state[j] = 2;
                    stack.push(j);
                }
            }
        }
    }
    state.iter().map(|&s| s == 2).collect()
}

/// OpenCV distanceTransform(DIST_L2, 5) of "255 − edges": the 5×5 chamfer distance to the
/// nearest edge pixel (weights 1, 1.4, 2.1969). Without edges OpenCV returns a large value; the
/// caller truncates at 20 anyway.
pub fn distance_l2_5(edges: &[bool], h: usize, w: usize) -> Vec<f32> {
    const A: f32 = 1.0;
    const B: f32 = 1.4;
    const C: f32 = 2.1969;
    let big = 1e6f32;
    let mut d: Vec<f32> = edges.iter().map(|&e| if e { 0.0 } else { big }).collect();
    let fwd: [(isize, isize, f32); 8] = [
        (-1, -1, B),
        (-1, 0, A),
        (-1, 1, B),
        (0, -1, A),
        (-2, -1, C),
        (-2, 1, C),
        (-1, -2, C),
        (-1, 2, C),
    ];
    let get = |d: &[f32], y: isize, x: isize| -> f32 {
        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
            big
        } else {
            d[y as usize * w + x as usize]
        }
    };
    for y in 0..h as isize {
        for x in 0..w as isize {
            let mut v = d[y as usize * w + x as usize];
            for &(dy, dx, k) in &fwd {
                v = v.min(get(&d, y + dy, x + dx) + k);
            }
            d[y as usize * w + x as usize] = v;
        }
    }
    for y in (0..h as isize).rev() {
        for x in (0..w as isize).rev() {
            let mut v = d[y as usize * w + x as usize];
            for &(dy, dx, k) in &fwd {
                v = v.min(get(&d, y - dy, x - dx) + k);
            }
            d[y as usize * w + x as usize] = v;
        }
    }
    d
}

/// OpenCV equalizeHist: LUT 0 at the lowest occupied bin, bin i →
/// round(255·(cumulative count above the lowest bin up to i) / (N − count of the lowest bin)).
pub fn equalize_hist(img: &[u8]) -> Vec<u8> {
    let mut hist = [0usize; 256];
    for &v in img {
        hist[usize::from(v)] += 1;
    }
    let lo = hist.iter().position(|&n| n > 0).unwrap_or(0);
    let total = img.len();
    if hist[lo] == total {
        // A flat image: OpenCV fills it with the (single) level's index.
        return vec![lo as u8; total];
    }
    let scale = 255.0 / (total - hist[lo]) as f64;
    let mut lut = [0u8; 256];
    let mut sum = 0usize;
    for i in lo + 1..256 {
        sum += hist[i];
        lut[i] = (sum as f64 * scale).round().clamp(0.0, 255.0) as u8;
    }
    img.iter().map(|&v| lut[usize::from(v)]).collect()
}

/// filter2D(CV_8U) with [[−2,−1,0],[−1,1,1],[0,1,2]], reflect-101, rounded and saturated.
pub fn emboss(img: &[u8], h: usize, w: usize) -> Vec<u8> {
    const K: [[f32; 3]; 3] = [[-2., -1., 0.], [-1., 1., 1.], [0., 1., 2.]];
    let mut out = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0f32;
            for (ky, row) in K.iter().enumerate() {
                let sy = Border::Reflect101.index(y as isize + ky as isize - 1, h);
                for (kx, &k) in row.iter().enumerate() {
                    let sx = Border::Reflect101.index(x as isize + kx as isize - 1, w);
                    s += k * f32::from(img[sy * w + sx]);
                }
            }
            out[y * w + x] = s.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chamfer_distances() {
        let (h, w) = (5, 5);
        let mut e = vec![false; 25];
        e[12] = true;
        let d = distance_l2_5(&e, h, w);
        assert_eq!(d[12], 0.0);
        assert_eq!(d[13], 1.0);
        assert!((d[18] - 1.4).abs() < 1e-6);
        assert!((d[12 + 5 + 2] - 2.1969).abs() < 1e-5);
    }

    #[test]
    fn canny_finds_a_step() {
        let (h, w) = (8, 8);
        let img: Vec<u8> = (0..64).map(|i| if i % 8 < 4 { 0 } else { 200 }).collect();
        let e = canny(&img, h, w, 50.0, 150.0);
        assert!(e.iter().filter(|&&v| v).count() >= 8);
        assert!(!e[0] && !e[7]);
    }

    #[test]
    fn equalize_spreads_levels() {
        let out = equalize_hist(&[3, 3, 5, 9]);
        assert_eq!(out, [0, 0, 128, 255]);
    }
}
