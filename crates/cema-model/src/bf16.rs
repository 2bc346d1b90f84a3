//! bf16 matrix products (issue #26): operands rounded to bfloat16, products summed in f32, on the
//! AVX512_BF16 dot-product instruction (`vdpbf16ps`: 32 multiply-adds per 512-bit instruction,
//! twice an f32 FMA's 16), chosen per process with [`set_precision`].
//!
//! Why by hand: the `gemm` crate (cema's f32 GEMM) has no bf16 kernel that uses the instruction
//! (its f16 path converts to f32 and multiplies in f32), and no crate on crates.io offers one
//! with runtime dispatch. The kernel is small because the left operand needs no packing: it is
//! converted once to bf16 pairs, and a row of the product may be several *segments* of that
//! buffer. A stride-1 3×3 convolution is then one product whose row `r` is the three
//! overlapping kernel-row windows of the padded NHWC input (an implicit im2col: nothing copied,
//! the output written once instead of three times, as the f32 path's three GEMMs do).
//!
//! Layout: a *pair* is two bf16 values in one `u32`, the lower half first (what `vdpbf16ps`
//! multiplies lane by lane). The left operand is rows of pairs along k; the right operand is
//! packed as `[k pairs][n columns, padded]`, so one 512-bit load is 16 columns' pair. The
//! microkernel broadcasts a left pair and multiplies it into `NV` such vectors for `MR` rows:
//! `MR·NV = 24` accumulators in registers.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{ModelError, Result};
use crate::gemm::View;

/// The number type of the matrix products (convolutions, linear layers, attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout (the default, and the reference every test holds the paths to).
    #[default]
    F32,
    /// Products of bf16-rounded operands, summed in f32; everything else (norms, activations,
    /// losses, the optimiser) stays f32. Needs a CPU with AVX512_BF16.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision '{s}' (expected f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Whether this CPU runs the bf16 kernel (AVX-512F and AVX512_BF16, detected at run time).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sets the process's matrix-product precision (like the thread count, one choice per
/// process). Asking for bf16 on a CPU without AVX512_BF16 is an error, never a silent f32.
pub fn set_precision(p: Precision) -> Result<()> {
    if p == Precision::Bf16 && !bf16_supported() {
        return Err(ModelError::Precision(
            "bf16 needs a CPU with AVX512_BF16 (e.g. AMD Zen 4, Intel Cooper Lake or Sapphire \
             Rapids); this CPU has none — use --precision f32"
                .into(),
        ));
    }
    PRECISION.store(p as u8, Ordering::Relaxed);
    Ok(())
}

/// The precision [`set_precision`] chose (f32 unless told).
pub fn precision() -> Precision {
    if PRECISION.load(Ordering::Relaxed) == Precision::Bf16 as u8 {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// `x` rounded to bf16 (nearest, ties to even), as its 16 bits.
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
#[cfg(test)]
pub(crate) fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A right operand packed for the kernel: its rows paired (an odd count gets a zero row),
/// columns padded to the kernel's block.
#[derive(Debug, Clone)]
pub(crate) struct PackedB {
    data: Vec<u32>,
    pairs: usize,
    n: usize,
    /// Columns per block: 16·`nv`.
    nv: usize,
    n_pad: usize,
}

/// 512-bit vectors of columns per block for `n` columns: the fewest padded columns, ties to
/// the wider block (fewer passes over the left operand).
fn block_vectors(n: usize) -> usize {
    (1..=4)
        .rev()
        .min_by_key(|&nv| n.div_ceil(16 * nv) * 16 * nv)
        .unwrap_or(4)
}

impl PackedB {
    /// Packs `b` (`k × n`, any strides).
    pub(crate) fn new(b: View) -> PackedB {
        let (k, n) = (b.rows, b.cols);
        let pairs = k.div_ceil(2);
        let nv = block_vectors(n);
        let n_pad = n.div_ceil(16 * nv) * 16 * nv;
        let mut data = vec![0u32; pairs * n_pad];
        let at = |r: usize, j: usize| to_bf16(b.data[r * b.rs + j * b.cs]) as u32;
        for p in 0..pairs {
            let dst = &mut data[p * n_pad..][..n];
            let full = 2 * p + 1 < k;
            #[cfg(target_arch = "x86_64")]
            if b.cs == 1 && bf16_supported() {
                let row = |r: usize| &b.data[r * b.rs..][..n];
                // SAFETY: the CPU has the features the function is compiled for (checked).
                unsafe { x86::interleave(row(2 * p), full.then(|| row(2 * p + 1)), dst) };
                continue;
            }
            for (j, d) in dst.iter_mut().enumerate() {
                let hi = if full { at(2 * p + 1, j) } else { 0 };
                *d = at(2 * p, j) | (hi << 16);
            }
        }
        PackedB {
            data,
            pairs,
            n,
            nv,
            n_pad,
        }
    }
}

/// A left operand in pairs: row `i`, segment `s`, pair `p < seg` at `data[i·rs + offs[s] + p]`
/// (the row's pair `s·seg + p`).
#[derive(Clone, Copy)]
pub(crate) struct PairRows<'a> {
    pub data: &'a [u32],
    pub rows: usize,
    pub rs: usize,
    pub offs: &'a [usize],
    pub seg: usize,
}

/// `src` (f32) as bf16 pairs, appended to `dst`; an odd length gets a zero last half.
pub(crate) fn push_pairs(src: &[f32], dst: &mut Vec<u32>) {
    let start = dst.len();
    dst.resize(start + src.len().div_ceil(2), 0);
    let out = &mut dst[start..];
    #[cfg(target_arch = "x86_64")]
    if bf16_supported() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { x86::pairs_avx512(src, out) };
        return;
    }
    for (d, c) in out.iter_mut().zip(src.chunks(2)) {
        let hi = c.get(1).map_or(0, |&v| to_bf16(v) as u32);
        *d = to_bf16(c[0]) as u32 | (hi << 16);
    }
}

/// The rows of `a` (`rows × cols`, any strides) as pairs, `cols.div_ceil(2)` per row.
pub(crate) fn pairs_of(a: View, dst: &mut Vec<u32>) {
    dst.clear();
    let kp = a.cols.div_ceil(2);
    dst.reserve(a.rows * kp);
    let mut row = Vec::new();
    for i in 0..a.rows {
        if a.cs == 1 {
            push_pairs(&a.data[i * a.rs..][..a.cols], dst);
        } else {
            row.clear();
            row.extend((0..a.cols).map(|j| a.data[i * a.rs + j * a.cs]));
            push_pairs(&row, dst);
        }
    }
}

/// `dst ← beta·dst + alpha·A·B` where row `i` of A is the concatenation of its segments
/// (`a.offs.len()` of them, `a.seg` pairs each, `b`'s pairs in all) and `dst` row `i` is at `dst[i·dst_rs..]`.
/// Splits the rows over `threads` rayon tasks when `threads > 1`.
pub(crate) fn gemm_pairs(
    dst: &mut [f32],
    dst_rs: usize,
    a: PairRows,
    b: &PackedB,
    (beta, alpha): (f32, f32),
    threads: usize,
) {
    let (m, n) = (a.rows, b.n);
    assert_eq!(
        a.offs.len() * a.seg,
        b.pairs,
        "bf16: lhs pairs per row ≠ rhs pairs"
    );
    assert!(n <= 1 || dst_rs >= n, "bf16: dst rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "bf16: dst is not {m}×{n} with row stride {dst_rs}"
    );
    let last = a.offs.iter().max().copied().unwrap_or(0) + a.seg;
    assert!(
        (m - 1) * a.rs + last <= a.data.len(),
        "bf16: lhs is not {m} rows of stride {} reaching pair {last}",
        a.rs
    );
    assert!(bf16_supported(), "bf16: this CPU has no AVX512_BF16");
    let mr = 24 / b.nv;
    let run = |dst: &mut [f32], first: usize, rows: usize| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: features checked above; bounds of every row, pair and column asserted above
        // for the whole product (this call covers rows `first..first + rows` of it, `dst`
        // starting at row `first`).
        unsafe {
            x86::rows(dst, dst_rs, a, first, rows, b, (beta, alpha))
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (dst, first, rows);
    };
    if threads <= 1 {
        run(dst, 0, m);
        return;
    }
    use rayon::prelude::*;
    let chunk = m.div_ceil(threads * 4).div_ceil(mr).max(4) * mr;
    dst.par_chunks_mut(chunk * dst_rs)
        .enumerate()
        .for_each(|(c, d)| {
            let first = c * chunk;
            if first < m {
                run(d, first, chunk.min(m - first));
            }
        });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{PackedB, PairRows};

    /// `src` rounded to bf16 pairs in `dst` (`src.len().div_ceil(2)` of them).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pairs_avx512(src: &[f32], dst: &mut [u32]) {
        assert_eq!(dst.len(), src.len().div_ceil(2));
        let mut i = 0;
        while i < src.len() {
            let left = src.len() - i;
            let (ml, mh) = if left >= 32 {
                (0xffff, 0xffff)
            } else {
                (
                    ((1u32 << left.min(16)) - 1) as u16,
                    ((1u32 << left.saturating_sub(16)) - 1) as u16,
                )
            };
            let lo = _mm512_maskz_loadu_ps(ml, src.as_ptr().add(i));
            let hi = _mm512_maskz_loadu_ps(mh, src.as_ptr().add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let pairs = left.min(32).div_ceil(2);
            let mask = ((1u32 << pairs) - 1) as u16;
            _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(i / 2) as *mut i32, mask, v);
            i += 32;
        }
    }

    /// `dst[j]` ← the pair (`lo[j]`, `hi[j]` or 0) in bf16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn interleave(lo: &[f32], hi: Option<&[f32]>, dst: &mut [u32]) {
        let n = dst.len();
        assert!(lo.len() >= n && hi.is_none_or(|h| h.len() >= n));
        let half = |src: &[f32], j: usize, m: u16| {
            let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src.as_ptr().add(j)));
            _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(v))
        };
        let mut j = 0;
        while j < n {
            let m = if n - j >= 16 {
                0xffff
            } else {
                ((1u32 << (n - j)) - 1) as u16
            };
            let mut v = half(lo, j, m);
            if let Some(h) = hi {
                v = _mm512_or_si512(v, _mm512_slli_epi32::<16>(half(h, j, m)));
            }
            _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(j) as *mut i32, m, v);
            j += 16;
        }
    }

    /// Rows `first..first + rows` of the product into `dst` (which starts at row `first`).
    /// Keep this dispatch inside a `target_feature` function: moved into the caller, LLVM kept
    /// the 24 accumulators on the stack and the bf16 cloud round ran at half speed (measured).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn rows(
        dst: &mut [f32],
        dst_rs: usize,
        a: PairRows,
        first: usize,
        rows: usize,
        b: &PackedB,
        ba: (f32, f32),
    ) {
        match b.nv {
            1 => blocks::<24, 1>(dst, dst_rs, a, first, rows, b, ba),
            2 => blocks::<12, 2>(dst, dst_rs, a, first, rows, b, ba),
            3 => blocks::<8, 3>(dst, dst_rs, a, first, rows, b, ba),
            _ => blocks::<6, 4>(dst, dst_rs, a, first, rows, b, ba),
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn blocks<const MR: usize, const NV: usize>(
        dst: &mut [f32],
        dst_rs: usize,
        a: PairRows,
        first: usize,
        rows: usize,
        b: &PackedB,
        ba: (f32, f32),
    ) {
        let bw = 16 * NV;
        // Column blocks outside, row tiles inside: one block of the packed right operand
        // (pairs × 16·NV) stays in cache while the rows stream past it.
        for j0 in (0..b.n).step_by(bw) {
            let cols = (b.n - j0).min(bw);
            let mut i = 0;
            while i < rows {
                let r = (rows - i).min(MR);
                tile::<MR, NV>(
                    dst.as_mut_ptr().add(i * dst_rs + j0),
                    dst_rs,
                    a,
                    first + i,
                    r,
                    b,
                    j0,
                    cols,
                    ba,
                );
                i += MR;
            }
        }
    }

    /// One `MR × 16·NV` tile: rows `row..row + r` of A (`r ≤ MR`; missing rows repeat the
    /// last, computed and not stored), columns `j0..j0 + cols`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NV: usize>(
        dst: *mut f32,
        dst_rs: usize,
        a: PairRows,
        row: usize,
        r: usize,
        b: &PackedB,
        j0: usize,
        cols: usize,
        (beta, alpha): (f32, f32),
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut ap = [std::ptr::null::<u32>(); MR];
        for (i, p) in ap.iter_mut().enumerate() {
            *p = a.data.as_ptr().add((row + i.min(r - 1)) * a.rs);
        }
        let mut bp = b.data.as_ptr().add(j0);
        for &off in a.offs {
            for p in off..off + a.seg {
                let mut bv = [_mm512_setzero_si512(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_si512(bp.add(16 * v) as *const _);
                }
                for i in 0..MR {
                    let av = _mm512_set1_epi32(*ap[i].add(p) as i32);
                    for v in 0..NV {
                        acc[i][v] = _mm512_dpbf16_ps(
                            acc[i][v],
                            std::mem::transmute::<__m512i, __m512bh>(av),
                            std::mem::transmute::<__m512i, __m512bh>(bv[v]),
                        );
                    }
                }
                bp = bp.add(b.n_pad);
            }
        }
        let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (i, acc) in acc.iter().enumerate().take(r) {
            for (v, &x) in acc.iter().enumerate() {
                let c0 = 16 * v;
                if c0 >= cols {
                    break;
                }
                let mask = if cols - c0 >= 16 {
                    0xffff
                } else {
                    ((1u32 << (cols - c0)) - 1) as u16
                };
                let d = dst.add(i * dst_rs + c0);
                let out = if beta == 0.0 {
                    _mm512_mul_ps(va, x)
                } else {
                    _mm512_fmadd_ps(va, x, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mask, d)))
                };
                _mm512_mask_storeu_ps(d, mask, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.731).sin())
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 4.0 / 256.0,
            "ties to even, upwards"
        );
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        let mut v = Vec::new();
        push_pairs(&data(37, 1.0), &mut v);
        let x = data(37, 1.0);
        for (i, &p) in v.iter().enumerate() {
            assert_eq!(p as u16, to_bf16(x[2 * i]), "pair {i} low");
            let hi = x.get(2 * i + 1).map_or(0, |&y| to_bf16(y));
            assert_eq!((p >> 16) as u16, hi, "pair {i} high");
        }
    }

    /// The product of the bf16-rounded operands in f64, which the kernel must match to f32
    /// summation error (each bf16×bf16 product is exact in f32).
    fn reference(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| r(a[i * k + p]) * r(b[p * n + j])).sum();
            }
        }
        c
    }

    #[test]
    fn products_match_the_rounded_operands_for_every_block_shape() {
        if !bf16_supported() {
            eprintln!("skipped: no AVX512_BF16 on this CPU");
            return;
        }
        // n covers each block width (16…64) and tails; m covers partial tiles; k odd and even.
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 7, 3),
            (25, 48, 16),
            (13, 33, 32),
            (50, 64, 48),
            (7, 96, 64),
            (31, 10, 80),
            (100, 576, 130),
        ] {
            let (a, b) = (data(m * k, 0.0), data(k * n, 5.0));
            let want = reference(&a, &b, (m, k, n));
            for threads in [1, 3] {
                let mut pa = Vec::new();
                pairs_of(View::rows(&a, m, k, k), &mut pa);
                let pb = PackedB::new(View::rows(&b, k, n, n));
                let mut c = vec![2.0f32; m * n];
                let rows = PairRows {
                    data: &pa,
                    rows: m,
                    rs: k.div_ceil(2),
                    offs: &[0],
                    seg: k.div_ceil(2),
                };
                gemm_pairs(&mut c, n, rows, &pb, (0.5, 2.0), threads);
                for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    let w = 1.0 + 2.0 * w;
                    assert!(
                        (got as f64 - w).abs() <= 1e-5 * (1.0 + k as f64),
                        "{m}×{k}×{n}, {threads} threads, element {idx}: {got} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn transposed_operands_pack_as_their_transpose() {
        if !bf16_supported() {
            return;
        }
        // Aᵀ and Bᵀ stored: the strided (scalar) packing must give the contiguous product.
        let (m, k, n) = (9, 11, 20);
        let (a, b) = (data(m * k, 1.0), data(k * n, 2.0));
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        let mut pa = Vec::new();
        pairs_of(View::rows(&at, k, m, m).t(), &mut pa);
        let pb = PackedB::new(View::rows(&bt, n, k, k).t());
        let kp = k.div_ceil(2);
        let rows = PairRows {
            data: &pa,
            rows: m,
            rs: kp,
            offs: &[0],
            seg: kp,
        };
        let mut c = vec![0f32; m * n];
        gemm_pairs(&mut c, n, rows, &pb, (0.0, 1.0), 1);
        for (got, w) in c.iter().zip(reference(&a, &b, (m, k, n))) {
            assert!((*got as f64 - w).abs() < 1e-5, "{got} vs {w}");
        }
    }

    fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
        (0..r * c).map(|i| x[(i % r) * c + i / r]).collect()
    }

    #[test]
    fn segments_are_overlapping_windows() {
        if !bf16_supported() {
            return;
        }
        // A 1-D convolution of width 2·3 (three segments of one pair) over overlapping rows.
        let x = data(50, 2.0);
        let w = data(6 * 5, 3.0);
        let (m, rs) = (9, 2);
        let mut px = Vec::new();
        push_pairs(&x, &mut px);
        let pb = PackedB::new(View::rows(&w, 6, 5, 5));
        let mut c = vec![0f32; m * 5];
        let offs = [0, 4, 8];
        let a = PairRows {
            data: &px,
            rows: m,
            rs,
            offs: &offs,
            seg: 1,
        };
        gemm_pairs(&mut c, 5, a, &pb, (0.0, 1.0), 1);
        // Row i reads x[4i..4i+2], x[4i+8..4i+10], x[4i+16..4i+18].
        let mut im2col = Vec::new();
        for i in 0..m {
            for o in offs {
                im2col.extend_from_slice(&x[2 * (i * rs + o)..][..2]);
            }
        }
        let want = reference(&im2col, &w, (m, 6, 5));
        for (got, w) in c.iter().zip(&want) {
            assert!((*got as f64 - w).abs() < 1e-5, "{got} vs {w}");
        }
    }

    #[test]
    fn precisions_parse_and_bf16_is_refused_without_the_instruction() {
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("f32".parse::<Precision>(), Ok(Precision::F32));
        assert!("bf8".parse::<Precision>().unwrap_err().contains("bf8"));
        // Setting f32 is always possible (and leaves this test process as every test expects).
        assert!(set_precision(Precision::F32).is_ok());
        if bf16_supported() {
            return; // The refusal runs under QEMU's Haswell: tests/bf16_products.rs.
        }
        let e = set_precision(Precision::Bf16).unwrap_err().to_string();
        assert!(e.contains("AVX512_BF16"), "{e}");
        assert_eq!(precision(), Precision::F32);
    }
}
