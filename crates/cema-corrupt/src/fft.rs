//! A small radix-2 complex FFT, enough for the Fourier-domain noise shaping of the synthetic
//! frost bank (§4.2). Only power-of-two sizes; callers generate on a power-of-two torus and crop,
//! which is statistically the same as filtering at the native size.

#[derive(Debug, Clone, Copy, Default)]
pub struct C64 {
    pub re: f64,
    pub im: f64,
}

/// In-place iterative FFT of `a` (length a power of two); `inverse` uses e^{+i…} and divides by n.
pub fn fft(a: &mut [C64], inverse: bool) {
    let n = a.len();
    assert!(n.is_power_of_two());
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            a.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let ang = sign * 2.0 * std::f64::consts::PI / len as f64;
        let half = len / 2;
        // Twiddles computed directly (not by repeated multiplication) to keep round-off flat.
        let tw: Vec<C64> = (0..half)
            .map(|k| {
                let (s, c) = (ang * k as f64).sin_cos();
                C64 { re: c, im: s }
            })
            .collect();
        for start in (0..n).step_by(len) {
            for k in 0..half {
                let u = a[start + k];
                let v = a[start + k + half];
                let t = tw[k];
                let vr = v.re * t.re - v.im * t.im;
                let vi = v.re * t.im + v.im * t.re;
                a[start + k] = C64 {
                    re: u.re + vr,
                    im: u.im + vi,
                };
                a[start + k + half] = C64 {
                    re: u.re - vr,
                    im: u.im - vi,
                };
            }
        }
        len <<= 1;
    }
    if inverse {
        let s = 1.0 / n as f64;
        for v in a.iter_mut() {
            v.re *= s;
            v.im *= s;
        }
    }
}

/// 2-D FFT of a row-major `h`×`w` array (both powers of two).
pub fn fft2(a: &mut [C64], h: usize, w: usize, inverse: bool) {
    for row in a.chunks_mut(w) {
        fft(row, inverse);
    }
    let mut col = vec![C64::default(); h];
    for x in 0..w {
        for y in 0..h {
            col[y] = a[y * w + x];
        }
        fft(&mut col, inverse);
        for y in 0..h {
            a[y * w + x] = col[y];
        }
    }
}

/// Signed frequency in cycles per pixel of FFT bin `k` out of `n`.
pub fn freq(k: usize, n: usize) -> f64 {
    let k = if k > n / 2 {
        k as f64 - n as f64
    } else {
        k as f64
    };
    k / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_dc() {
        let mut a: Vec<C64> = (0..16)
            .map(|i| C64 {
                re: (i * 7 % 5) as f64,
                im: 0.0,
            })
            .collect();
        let orig = a.clone();
        fft2(&mut a, 4, 4, false);
        let sum: f64 = orig.iter().map(|v| v.re).sum();
        assert!((a[0].re - sum).abs() < 1e-9);
        fft2(&mut a, 4, 4, true);
        for (x, y) in a.iter().zip(&orig) {
            assert!((x.re - y.re).abs() < 1e-9 && x.im.abs() < 1e-9);
        }
    }
}
