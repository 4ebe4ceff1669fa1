//! bf16 GEMM: `C = alpha·op(A)·op(B) + beta·C` with the operands rounded to bfloat16 as they
//! are packed and the products summed in fp32 (`vdpbf16ps`), the same row-major BLAS-style
//! contract as [`crate::sgemm`]. Entry points: [`crate::gemm()`] with [`Precision::Bf16`], and
//! [`gemm_packed`] with a [`PackedB`] packed once and reused (a weight matrix, converted once
//! per optimizer step instead of once per call). Leaves out: bf16 in memory (A, B and C are
//! fp32 slices), bf16 outputs.
//!
//! ```text
//! pack op(B) whole → PackedB: ⌈n/32⌉ panels of ⌈k/2⌉ rows × 32 pairs       (once per call, or cached)
//! in parallel over C blocks (≤ MC rows × cols):
//!   for pc in 0..k step kc (≈ KC, even)       depth block: beta on the first, then 1
//!     pack op(A)[rows, pc..pc+kc] → pairs      rows of pairs (A row-major) or columns (A transposed)
//!     for jr step 32:                          B micro-panel (kc × 32 bf16 = 16 KiB) hot in L1
//!       for ir step 12: micro-kernel           A block (≤ 96 KiB) from L2
//! ```
//!
//! Unlike the fp32 path, A is packed: the pairs `vdpbf16ps` consumes are two consecutive depth
//! elements, which in a transposed A lie a row apart, and rounding once while packing costs
//! less than converting every broadcast. Thread-count independence holds as in fp32: the depth
//! split depends only on `k`, tasks only partition `C`, and every element is reduced by the same
//! sequence of `vdpbf16ps` in ascending depth.
//!
//! Where the build lacks AVX512_BF16 (`crate::precision::HAS_BF16` false) the same API runs the
//! fp32 kernels: [`PackedB`] keeps B in fp32, as stored (transposed or not), and
//! [`gemm_packed`] calls `sgemm` with that layout, so it gives `gemm`'s bits.

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512bf16")))]
mod fallback;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
mod kernel;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
mod native;

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx512bf16")))]
use fallback as imp;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
use native as imp;

use super::{Transpose, check_args, check_operand};
use crate::precision::{Precision, round_bf16};

/// `op(B)` (k × n) prepared for [`gemm_packed`]: rounded to bf16 and laid out in the
/// micro-kernel's panels (fp32 B as stored, made contiguous, on builds without bf16). Packing costs one
/// pass over B; reuse the value (and its allocation, with [`PackedB::pack`]) while B does
/// not change.
#[derive(Clone, Debug)]
pub struct PackedB {
    pub(crate) data: Vec<u32>,
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// How B was stored when packed: the fp32 fallback keeps that layout, so that
    /// [`gemm_packed`] runs the very `sgemm` path (and bits) [`crate::gemm()`] runs.
    #[cfg_attr(
        all(target_arch = "x86_64", target_feature = "avx512bf16"),
        allow(dead_code)
    )]
    pub(crate) transb: Transpose,
}

impl Default for PackedB {
    fn default() -> PackedB {
        PackedB {
            data: Vec::new(),
            k: 0,
            n: 0,
            transb: Transpose::No,
        }
    }
}

impl PackedB {
    /// An empty packing (k = n = 0), to be filled by [`PackedB::pack`].
    pub fn new() -> PackedB {
        PackedB::default()
    }

    /// Packs `op(B)`: `B` stored k × n (`transb = No`) or n × k (`Yes`) with leading
    /// dimension `ldb`. Panics if `b` is too short for the shape.
    pub fn of(transb: Transpose, k: usize, n: usize, b: &[f32], ldb: usize) -> PackedB {
        let mut p = PackedB::new();
        p.pack(transb, k, n, b, ldb);
        p
    }

    /// Re-packs `op(B)` into this value, reusing its allocation.
    pub fn pack(&mut self, transb: Transpose, k: usize, n: usize, b: &[f32], ldb: usize) {
        let (br, bc) = if transb == Transpose::No {
            (k, n)
        } else {
            (n, k)
        };
        check_operand("b", b.len(), br, bc, ldb);
        let _launch = crate::launch::start(1);
        crate::launch::bytes(4 * k * n + 2 * k * n.next_multiple_of(32));
        self.k = k;
        self.n = n;
        self.transb = transb;
        imp::pack_b(&mut self.data, transb, k, n, b, ldb);
    }

    /// Depth of `op(B)` (its rows).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Width of `op(B)` (its columns).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<u32>()
    }
}

/// `C = alpha·op(A)·op(B) + beta·C` with `op(B)` already packed (k × n, taken from `b`): the
/// bf16 product of [`crate::gemm()`] without the per-call packing of B. Same arguments and
/// panics as [`crate::sgemm`] for the rest; `C` is m × n.
///
/// ```
/// use kernels::{gemm_packed, PackedB, Transpose};
/// let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // (3 × 2)
/// let packed = PackedB::of(Transpose::No, 3, 2, &w, 2);
/// let x = [1.0, 1.0, 1.0]; // (1 × 3)
/// let mut y = [0.0; 2];
/// gemm_packed(Transpose::No, 1, 1.0, &x, 3, &packed, 0.0, &mut y, 2);
/// assert_eq!(y, [9.0, 12.0]); // small integers are exact in bf16
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    transa: Transpose,
    m: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let _launch = crate::launch::start(1);
    let (k, n) = (b.k, b.n);
    let (ar, ac) = if transa == Transpose::No {
        (m, k)
    } else {
        (k, m)
    };
    check_operand("a", a.len(), ar, ac, lda);
    check_operand("c", c.len(), m, n, ldc);
    // The packed B is read once as bf16 pairs: 2 bytes an element.
    crate::launch::bytes(super::product_bytes(m, n, k, beta) - 2 * k * n);
    imp::gemm_packed(transa, m, alpha, a, lda, b, beta, c, ldc);
}

/// `C = alpha·op(A)·op(B) + beta·C` in the given precision: [`crate::sgemm`] for `F32`;
/// for `Bf16`, the operands rounded to bfloat16 (nearest even) and the products summed in
/// fp32 with `vdpbf16ps`, where the build has it (else fp32, see [`Precision::effective`]).
/// Arguments, panics and the thread-count independence are those of [`crate::sgemm`].
///
/// ```
/// use kernels::{gemm, Precision, Transpose};
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // (2 × 3)
/// let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // (3 × 2)
/// let mut c = [0.0; 4];
/// gemm(Precision::Bf16, Transpose::No, Transpose::No, 2, 2, 3, 1.0, &a, 3, &b, 2, 0.0, &mut c, 2);
/// assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    precision: Precision,
    transa: Transpose,
    transb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if precision.effective() == Precision::F32 {
        return super::sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }
    let _launch = crate::launch::start(1);
    check_args(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    crate::launch::bytes(super::product_bytes(m, n, k, beta));
    imp::gemm_unpacked(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// The scalar reference of the bf16 product: [`crate::sgemm_ref`] (f64 sums) on operands
/// rounded with [`round_bf16`]. A correct kernel differs from it by fp32 accumulation error only.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_ref(
    transa: Transpose,
    transb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let rounded = |x: &[f32]| x.iter().map(|&v| round_bf16(v)).collect::<Vec<f32>>();
    let (a, b) = (rounded(a), rounded(b));
    super::sgemm_ref(
        transa, transb, m, n, k, alpha, &a, lda, &b, ldb, beta, c, ldc,
    );
}

#[cfg(test)]
mod tests;
