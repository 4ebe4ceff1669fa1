//! Attention's tile products: the shared micro-kernel (`micro.rs`) over every block of a
//! small dense product inside an attention tile.
//!
//! Flash attention does six small dense products per pair of tiles (S = Q·Kᵀ and O += P·V
//! forward; S, dP = dO·Vᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K backward). All of them have the
//! same shape class: m, k ≤ a few tiles, n a multiple of the lane width, operands in L1/L2.
//! So they share one kernel, [`gemm_tile`], in the form
//!
//! ```text
//! C (m × n)  =  [C +]  A (m × k) · B (k × n)
//! A[r, p] = a[r·lda + p]  or  a[p·lda + r]   (A or Aᵀ stored row-major, see [`Strided`])
//! B[p, :] = b[p·ldb ..][..n]     (rows of n contiguous elements, n a multiple of LANES)
//! C[r, :] = c[r·ldc ..][..n]     (fp32)
//! ```
//!
//! The operands are elements of an [`Operand`] type: fp32 values (`f32`), or, where the build
//! has AVX512_BF16, bf16 pairs (`u32`, see `crate::bf16`), each holding two consecutive
//! elements of the depth, multiplied and summed into fp32 by `vdpbf16ps`. Then `k`, `lda`
//! (for A stored transposed) and the rows of B count pairs, and a step p covers depth 2p, 2p + 1.
//!
//! Register blocks (the micro-kernel's contract, BLIS style): a block is `R ≤ MR` rows of C by
//! `V ≤ NV` vectors of `LANES` columns, held in `R·V` accumulators for the whole k loop. Each step p
//! loads the V vectors of B's row p once and, for each of the R rows, broadcasts A[r, p] and
//! does V fused multiply-adds (fp32) or dot products of pairs (bf16). With MR = 6 and NV = 4
//! that is 24 accumulators, 4 B vectors and 1 broadcast of AVX-512's 32 registers, and 10
//! loads per 24 FMAs, so the FMA pipes bound it.
//! Edges: m is covered by blocks of 6 and one block of `m mod 6` rows; n by blocks of 4 vectors
//! and one of `n/LANES mod 4`. There is no k edge (k is any length, including 0).
//!
//! Leaves out: packing (the callers keep their operands packed: tiles of Kᵀ, V, … in the
//! `flash` module) and cache blocking over k (k ≤ a tile, all operands are L1/L2 resident).

pub(crate) use super::micro::Operand;
use super::micro::micro_kernel;
use super::vector::{load, store};
use crate::simd::{F32s, LANES};

/// Rows of C per register block.
pub(crate) const MR: usize = 6;
/// Vectors (of `LANES` columns) of C per register block.
pub(crate) const NV: usize = 4;

/// An operand `A` stored row-major (`A[r, p] = data[r·ld + p]`) or transposed
/// (`A[r, p] = data[p·ld + r]`, A = Xᵀ for an X stored row-major).
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, T = f32> {
    pub data: &'a [T],
    pub ld: usize,
    pub transposed: bool,
}

impl<'a, T> Strided<'a, T> {
    /// A stored row-major with leading dimension `ld`.
    pub fn rows(data: &'a [T], ld: usize) -> Self {
        Strided {
            data,
            ld,
            transposed: false,
        }
    }

    /// A whose transpose is stored row-major with leading dimension `ld` (A = Xᵀ).
    pub fn transposed(data: &'a [T], ld: usize) -> Self {
        Strided {
            data,
            ld,
            transposed: true,
        }
    }

    /// The distances in `data` between consecutive rows and consecutive columns of A.
    pub fn strides(&self) -> (usize, usize) {
        if self.transposed {
            (1, self.ld)
        } else {
            (self.ld, 1)
        }
    }

    /// The same operand from element `(r, p)` on.
    pub fn at(self, r: usize, p: usize) -> Self {
        let (rs, cs) = self.strides();
        Strided {
            data: &self.data[r * rs + p * cs..],
            ..self
        }
    }
}

/// `C = A·B` (`accumulate = false`, C is never read) or `C += A·B` (`accumulate = true`), with
/// the layouts of the module doc. Panics if `n` is not a multiple of `LANES` or a slice is too
/// short for the shapes and strides it is given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_tile<T: Operand>(
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    a: Strided<T>,
    b: &[T],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        n.is_multiple_of(LANES),
        "gemm_tile: n = {n} is not a multiple of {LANES}"
    );
    if m == 0 || n == 0 {
        return;
    }
    // Every index the blocks touch is below these bounds; checked once here so the inner loops
    // can use unchecked pointer arithmetic.
    assert!(
        ldc >= n && c.len() >= (m - 1) * ldc + n,
        "gemm_tile: C too short"
    );
    if k > 0 {
        assert!(
            ldb >= n && b.len() >= (k - 1) * ldb + n,
            "gemm_tile: B too short"
        );
        let (rs, cs) = a.strides();
        assert!(
            a.data.len() > (m - 1) * rs + (k - 1) * cs,
            "gemm_tile: A too short"
        );
    }
    let nv_total = n / LANES;
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(MR);
        let mut v0 = 0;
        while v0 < nv_total {
            let vecs = (nv_total - v0).min(NV);
            // SAFETY: rows r0..r0+rows < m and columns v0·LANES..(v0+vecs)·LANES ≤ n, so every
            // access of the block lies within the bounds asserted above.
            unsafe {
                let (rs, cs) = a.strides();
                let a_ptr = a.data.as_ptr().add(r0 * rs);
                let b_ptr = b.as_ptr().add(v0 * LANES);
                let c_ptr = c.as_mut_ptr().add(r0 * ldc + v0 * LANES);
                dispatch(
                    accumulate, rows, vecs, k, a_ptr, rs, cs, b_ptr, ldb, c_ptr, ldc,
                );
            }
            v0 += vecs;
        }
        r0 += rows;
    }
}

/// Picks the monomorphized block for `rows × vecs`.
///
/// # Safety
/// The caller guarantees the block's accesses are in bounds (see [`block`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn dispatch<T: Operand>(
    accumulate: bool,
    rows: usize,
    vecs: usize,
    k: usize,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    macro_rules! go {
        ($r:literal, $v:literal) => {
            // SAFETY: forwarded from this function's contract.
            unsafe {
                if accumulate {
                    block::<T, $r, $v, true>(k, a, rsa, csa, b, ldb, c, ldc)
                } else {
                    block::<T, $r, $v, false>(k, a, rsa, csa, b, ldb, c, ldc)
                }
            }
        };
    }
    macro_rules! rows {
        ($v:literal) => {
            match rows {
                6 => go!(6, $v),
                5 => go!(5, $v),
                4 => go!(4, $v),
                3 => go!(3, $v),
                2 => go!(2, $v),
                _ => go!(1, $v),
            }
        };
    }
    match vecs {
        4 => rows!(4),
        3 => rows!(3),
        2 => rows!(2),
        _ => rows!(1),
    }
}

/// One `R × V`-vector register block: `C[r, v] (+)= Σ_p A[r, p]·B[p, v]`, the micro-kernel
/// started from `C` (`ACC`) or zero.
///
/// # Safety
/// For r < R, p < k, v < V: `a + r·rsa + p·csa`, `b + p·ldb + v·LANES .. + LANES` and
/// `c + r·ldc + v·LANES .. + LANES` must be valid (C for writes; read too when `ACC`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<T: Operand, const R: usize, const V: usize, const ACC: bool>(
    k: usize,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) {
    // SAFETY: (whole body) every pointer below stays within the ranges of the contract.
    unsafe {
        let mut acc = [[F32s::ZERO; V]; R];
        if ACC {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = load(c.add(r * ldc + v * LANES));
                }
            }
        }
        micro_kernel::<T, R, V>(&mut acc, k, a, rsa, csa, b, ldb);
        for (r, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                store(c.add(r * ldc + v * LANES), x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestRng, assert_close};

    fn naive(m: usize, n: usize, k: usize, a: Strided, b: &[f32], ldb: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for r in 0..m {
            for col in 0..n {
                let s: f64 = (0..k)
                    .map(|p| {
                        a.data[r * a.strides().0 + p * a.strides().1] as f64
                            * b[p * ldb + col] as f64
                    })
                    .sum();
                c[r * n + col] = s as f32;
            }
        }
        c
    }

    /// Every block shape (rows 1..=MR+1 edges, 1..=NV+1 vectors), both A layouts, k including
    /// 0, padded leading dimensions, C poisoned with NaN when it must not be read.
    #[test]
    fn matches_naive_for_every_edge() {
        let mut rng = TestRng::new(11);
        for m in [1, 2, 5, 6, 7, 13, 64] {
            for nv in [1, 2, 3, 4, 5, 8] {
                let n = nv * LANES;
                for k in [0, 1, 3, 16, 64, 65] {
                    for transposed in [false, true] {
                        let (lda, ldb, ldc) = if transposed {
                            (m + 3, n + LANES, n)
                        } else {
                            (k + 2, n, n + LANES)
                        };
                        let a_len = if transposed { k.max(1) * lda } else { m * lda };
                        let a_data = rng.vec(a_len, 1.0);
                        let a = if transposed {
                            Strided::transposed(&a_data, lda)
                        } else {
                            Strided::rows(&a_data, lda)
                        };
                        let b = rng.vec(k.max(1) * ldb, 1.0);
                        let want = naive(m, n, k, a, &b, ldb);
                        let mut c = vec![f32::NAN; m * ldc];
                        gemm_tile(false, m, n, k, a, &b, ldb, &mut c, ldc);
                        let got: Vec<f32> =
                            (0..m).flat_map(|r| c[r * ldc..][..n].to_vec()).collect();
                        let what = format!("C = A·B m={m} n={n} k={k} transposed={transposed}");
                        assert_close(&got, &want, 1e-5, 1e-5, &what);
                        // Accumulate on top: C += A·B doubles the product.
                        gemm_tile(true, m, n, k, a, &b, ldb, &mut c, ldc);
                        let got: Vec<f32> =
                            (0..m).flat_map(|r| c[r * ldc..][..n].to_vec()).collect();
                        let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
                        assert_close(&got, &twice, 1e-5, 1e-5, &format!("{what} accumulate"));
                    }
                }
            }
        }
    }

    /// bf16 pairs: every block shape and both A layouts against the f64 product of the
    /// bf16-rounded values, which the kernel must meet to fp32 accumulation error.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
    #[test]
    fn pairs_match_the_rounded_product_for_every_edge() {
        use crate::bf16::{pairs_of_row, pairs_of_two_rows};
        use crate::precision::round_bf16;
        // Rows 2q, 2q + 1 of x (k × n) as row q of pairs (a zero row pads an odd k).
        let two_row_pairs = |x: &[f32], k: usize, n: usize| {
            let mut p = vec![0u32; k.div_ceil(2).max(1) * n];
            for (q, dst) in p.chunks_exact_mut(n).take(k.div_ceil(2)).enumerate() {
                let r1 = if 2 * q + 1 < k {
                    &x[(2 * q + 1) * n..][..n]
                } else {
                    &[]
                };
                pairs_of_two_rows(dst, &x[2 * q * n..][..n], r1);
            }
            p
        };
        let mut rng = TestRng::new(12);
        for m in [1, 5, 6, 7, 13, 64] {
            for nv in [1, 3, 4, 5] {
                let n = nv * LANES;
                for k in [0usize, 1, 2, 33, 64] {
                    let k2 = k.div_ceil(2);
                    let a = rng.vec(m * k, 1.0); // (m, k)
                    let b = rng.vec(k * n, 1.0); // (k, n)
                    let ar: Vec<f32> = a.iter().map(|&x| round_bf16(x)).collect();
                    let br: Vec<f32> = b.iter().map(|&x| round_bf16(x)).collect();
                    let want = naive(m, n, k, Strided::rows(&ar, k), &br, n);
                    let bp = two_row_pairs(&b, k, n); // (k2, n)
                    // A as rows of pairs (m, k2), and as columns (k2, m) read transposed.
                    let mut rows = vec![0u32; m * k2.max(1)];
                    for r in 0..m {
                        pairs_of_row(&mut rows[r * k2..][..k2], &a[r * k..][..k]);
                    }
                    let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
                    let cols = two_row_pairs(&at, k, m);
                    for (name, ap) in [
                        ("rows", Strided::rows(&rows, k2)),
                        ("cols", Strided::transposed(&cols, m)),
                    ] {
                        let mut c = vec![f32::NAN; m * n];
                        gemm_tile(false, m, n, k2, ap, &bp, n, &mut c, n);
                        let what = format!("bf16 {name} m={m} n={n} k={k}");
                        assert_close(&c, &want, 1e-5, 1e-5, &what);
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "B too short")]
    fn short_operand_panics() {
        let a = vec![0.0; 4];
        let b = vec![0.0; LANES];
        let mut c = vec![0.0; 2 * LANES];
        gemm_tile(
            false,
            2,
            LANES,
            2,
            Strided::rows(&a, 2),
            &b,
            LANES,
            &mut c,
            LANES,
        );
    }
}
