//! The one place cema calls a raw-pointer API: the `gemm` crate (faer's GEMM, with runtime
//! dispatch to the vector width the CPU has: AVX-512, AVX2+FMA, NEON, …; burn's `flex` backend
//! uses the same crate). A safe, length-checked wrapper, so the rest of the workspace keeps
//! `unsafe_code` denied.
#![allow(unsafe_code)]

use gemm::Parallelism;

/// `dst[m×n] += lhs[m×k] · rhs[k×n]`, every matrix row-major and contiguous. `threads > 1`
/// lets the GEMM split its work over rayon's pool (for a single large product; callers that
/// already run in parallel pass 1).
pub(crate) fn gemm_acc(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    assert_eq!(lhs.len(), m * k, "gemm: lhs is not {m}×{k}");
    gemm_acc_lhs_stride(dst, lhs, k, rhs, (m, k, n), threads);
}

/// [`gemm_acc`] with lhs row `i` at `lhs[i·lhs_rs ..][..k]`. Rows may overlap (`lhs_rs < k`):
/// that is how a stride-1 convolution reads its shifted input windows without an im2col copy.
pub(crate) fn gemm_acc_lhs_stride(
    dst: &mut [f32],
    lhs: &[f32],
    lhs_rs: usize,
    rhs: &[f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    assert_eq!(dst.len(), m * n, "gemm: dst is not {m}×{n}");
    assert!(
        m == 0 || (m - 1) * lhs_rs + k <= lhs.len(),
        "gemm: lhs is not {m}×{k} with row stride {lhs_rs}"
    );
    assert_eq!(rhs.len(), k * n, "gemm: rhs is not {k}×{n}");
    gemm_view(
        dst,
        n,
        View::rows(lhs, m, k, lhs_rs),
        View::rows(rhs, k, n, n),
        (1.0, 1.0),
        threads,
    );
}

/// A matrix inside a slice: element `(i, j)` at `data[i·rs + j·cs]`. Transposing is swapping
/// the strides; a head of an attention layer is a column block with the row stride of the whole.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `rows × cols` starting at `data[0]`, rows `rs` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        View {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    pub fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Whether every element of a `rows × cols` matrix with these strides lies in `len`.
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

/// `dst ← beta·dst + alpha·lhs·rhs` on strided views (`beta` 0 overwrites, ignoring what `dst`
/// held); `dst` is `lhs.rows × rhs.cols` at `dst[i·dst_rs + j]`.
pub(crate) fn gemm_view(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    (beta, alpha): (f32, f32),
    threads: usize,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "gemm: {m}×{k} times {}×{n}", rhs.rows);
    assert!(fits(dst.len(), m, n, dst_rs, 1), "gemm: dst is not {m}×{n}");
    assert!(fits(lhs.data.len(), m, k, lhs.rs, lhs.cs), "gemm: lhs");
    assert!(fits(rhs.data.len(), k, n, rhs.rs, rhs.cs), "gemm: rhs");
    assert!(n <= 1 || dst_rs >= n, "gemm: dst rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.chunks_mut(dst_rs.max(1))
            .take(m)
            .for_each(|r| r[..n].iter_mut().for_each(|v| *v *= beta));
        return;
    }
    if crate::bf16::precision() == crate::bf16::Precision::Bf16 {
        let b = crate::bf16::PackedB::new(rhs);
        gemm_bf16(dst, dst_rs, lhs, &b, (beta, alpha), threads);
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every address the strides reach lies inside its slice (asserted above); lhs and
    // rhs are only read; `dst` is a unique borrow whose rows do not overlap (dst_rs ≥ n), so it
    // aliases neither input and no element is written twice. `gemm` computes
    // dst = beta·dst + alpha·lhs·rhs, reading dst only when `read_dst` (beta ≠ 0).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            beta != 0.0,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst ← beta·dst + alpha·lhs·B` in bf16 ([`crate::bf16`]), `B` already packed.
pub(crate) fn gemm_bf16(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: View,
    rhs: &crate::bf16::PackedB,
    ba: (f32, f32),
    threads: usize,
) {
    let mut pairs = take_pairs();
    crate::bf16::pairs_of(lhs, &mut pairs);
    let kp = lhs.cols.div_ceil(2);
    let a = crate::bf16::PairRows {
        data: &pairs,
        rows: lhs.rows,
        rs: kp,
        offs: &[0],
        seg: kp,
    };
    crate::bf16::gemm_pairs(dst, dst_rs, a, rhs, ba, threads);
    PAIRS.set(pairs);
}

/// A convolution as one bf16 product without an im2col copy: row `i` of the left operand is
/// the `offs.len()` windows `x[i·rs + o ..][..seg]` for `o` in `offs` (overlapping rows of a
/// padded NHWC buffer), in floats; `rs`, every offset and `seg` even (whole pairs).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bf16(
    dst: &mut [f32],
    dst_rs: usize,
    x: &[f32],
    (m, rs): (usize, usize),
    offs: &[usize],
    seg: usize,
    rhs: &crate::bf16::PackedB,
    ba: (f32, f32),
    threads: usize,
) {
    assert!(
        rs.is_multiple_of(2) && seg.is_multiple_of(2) && offs.iter().all(|o| o.is_multiple_of(2)),
        "conv_bf16: windows must be whole pairs"
    );
    let mut pairs = take_pairs();
    pairs.clear();
    crate::bf16::push_pairs(x, &mut pairs);
    let offs: Vec<usize> = offs.iter().map(|o| o / 2).collect();
    let a = crate::bf16::PairRows {
        data: &pairs,
        rows: m,
        rs: rs / 2,
        offs: &offs,
        seg: seg / 2,
    };
    crate::bf16::gemm_pairs(dst, dst_rs, a, rhs, ba, threads);
    PAIRS.set(pairs);
}

thread_local! {
    /// The left operand's pairs, reused between products on one thread.
    static PAIRS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The buffer taken out, not borrowed: a rayon worker waiting inside a product may run
/// another task that multiplies too (it then allocates its own).
fn take_pairs() -> Vec<u32> {
    PAIRS.take()
}

#[cfg(test)]
mod tests {
    use super::gemm_acc;

    #[test]
    fn strided_views_transpose_and_scale() {
        // dst (2×2, row stride 3) ← 2·dst + 0.5 · Aᵀ · B, A stored 3×2, B a column block.
        let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [
            1.0f32, 0.0, 9.0, 9.0, 2.0, 1.0, 9.0, 9.0, 0.0, 0.0, 9.0, 9.0,
        ];
        let mut d = [1.0f32, 1.0, 7.0, 1.0, 1.0, 7.0];
        let lhs = super::View::rows(&a, 3, 2, 2).t();
        let rhs = super::View::rows(&b, 3, 2, 4);
        super::gemm_view(&mut d, 3, lhs, rhs, (2.0, 0.5), 1);
        // Aᵀ·B = [[1+6+0, 0+3+0], [2+8+0, 0+4+0]] = [[7, 3], [10, 4]].
        assert_eq!(d, [5.5, 3.5, 7.0, 7.0, 4.0, 7.0]);
    }

    #[test]
    fn matches_the_textbook_product_and_accumulates() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut c = vec![1.0f32; m * n];
        gemm_acc(&mut c, &a, &b, (m, k, n), 1);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-5, "({i},{j})");
            }
        }
    }

    #[test]
    fn overlapping_lhs_rows() {
        // Rows of width 3 starting every element: the sliding windows of a 1-D convolution.
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        let w = [1.0f32, 10.0, 100.0];
        let mut y = [0.0f32; 3];
        super::gemm_acc_lhs_stride(&mut y, &x, 1, &w, (3, 3, 1), 1);
        assert_eq!(y, [321.0, 432.0, 543.0]);
    }

    #[test]
    #[should_panic(expected = "row stride")]
    fn rejects_a_window_past_the_end() {
        super::gemm_acc_lhs_stride(&mut [0.0; 3], &[0.0; 4], 1, &[0.0; 3], (3, 3, 1), 1);
    }

    #[test]
    #[should_panic(expected = "lhs is not")]
    fn rejects_a_short_operand() {
        gemm_acc(&mut [0.0; 4], &[0.0; 3], &[0.0; 4], (2, 2, 2), 1);
    }
}
