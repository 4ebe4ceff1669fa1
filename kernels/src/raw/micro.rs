//! The one fp32-accumulating micro-kernel: an `MR × NV`-vector register block of
//! `acc += A·B` over a depth `k`, generic over its shape (const generics) and over the element
//! type of its operands ([`Operand`]: fp32, or bf16 pairs where the build has AVX512_BF16).
//!
//! ```text
//! acc[r][v] += Σ_{p < k} A[r, p] · B[p, v·LANES .. (v+1)·LANES]     (p ascending, one FMA each)
//! A[r, p] = a[r·rsa + p·csa]   ((lda, 1): A stored row-major; (1, lda): A stored transposed)
//! B[p, ..] = b[p·ldb ..]       (rows of NV·LANES contiguous elements)
//! ```
//!
//! It is always inlined: the GEMM tile passes A's strides as constants of its monomorphized
//! layout, so one of them is a literal 1 there; attention's tile passes them at run time.
//!
//! Each step `p` loads the `NV` vectors of B's row once and, for each of the `MR` rows,
//! broadcasts `A[r, p]` and does `NV` fused multiply-adds (fp32) or pair dot products (bf16)
//! into accumulators that stay in registers for the whole loop. Every accumulator is one
//! chain in ascending `p`, so the result does not depend on how the callers block the
//! product. Its two callers add their own prologue and epilogue: the GEMM tile
//! (`gemm_tile.rs`: zero start, `alpha`/`beta` update, ragged right edge) and attention's tile
//! products (`tile.rs`: start from `C` or zero, plain store). Leaves out: bounds checks (the
//! callers' entry points) and the bf16 GEMM's own kernel (`gemm/bf16/kernel.rs`).

use crate::simd::{F32s, LANES};

/// An element type of A and B: how the micro-kernel broadcasts it, loads a vector of it and
/// multiplies and adds into the fp32 accumulators.
pub(crate) trait Operand: Copy + bytemuck::Pod + Send + Sync {
    /// An element broadcast to every lane.
    type Splat: Copy;
    /// `LANES` consecutive elements.
    type Vector: Copy;
    /// Elements of the depth one operand element holds: 1 (fp32) or 2 (a bf16 pair).
    const DEPTH: usize;
    fn splat(x: Self) -> Self::Splat;
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load(p: *const Self) -> Self::Vector;
    /// `acc + a·b` lane by lane, summed over the `DEPTH` elements each lane holds.
    fn madd(acc: F32s, a: Self::Splat, b: Self::Vector) -> F32s;
}

impl Operand for f32 {
    type Splat = F32s;
    type Vector = F32s;
    const DEPTH: usize = 1;
    #[inline(always)]
    fn splat(x: f32) -> F32s {
        F32s::splat(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> F32s {
        // SAFETY: the caller's contract.
        unsafe { super::vector::load(p) }
    }
    #[inline(always)]
    fn madd(acc: F32s, a: F32s, b: F32s) -> F32s {
        a.mul_add(b, acc)
    }
}

/// A bf16 pair: low half depth element 2p, high half 2p + 1 (`crate::bf16`).
#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
impl Operand for u32 {
    type Splat = std::arch::x86_64::__m512bh;
    type Vector = std::arch::x86_64::__m512bh;
    const DEPTH: usize = 2;
    #[inline(always)]
    fn splat(x: u32) -> Self::Splat {
        crate::bf16::broadcast_pair(x)
    }
    #[inline(always)]
    unsafe fn load(p: *const u32) -> Self::Vector {
        // SAFETY: the caller's contract (16 = LANES pairs readable).
        unsafe { crate::bf16::load_pairs(p) }
    }
    #[inline(always)]
    fn madd(acc: F32s, a: Self::Splat, b: Self::Vector) -> F32s {
        crate::bf16::dot_pairs(acc, a, b)
    }
}

/// `acc[r][v] += Σ_{p < k} A[r, p]·B[p, v]` per the module contract.
///
/// # Safety
/// For `r < MR`, `p < k`, `v < NV`: `a + r·rsa + p·csa` and `b + p·ldb + v·LANES .. + LANES`
/// must be readable.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn micro_kernel<T: Operand, const MR: usize, const NV: usize>(
    acc: &mut [[F32s; NV]; MR],
    k: usize,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    ldb: usize,
) {
    let (mut a, mut b) = (a, b);
    for _ in 0..k {
        // SAFETY: p < k, so row p of B (NV vectors) and column p of A (r < MR) are inside the
        // ranges the caller vouches for.
        unsafe {
            let bv: [T::Vector; NV] = std::array::from_fn(|v| T::load(b.add(v * LANES)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let ar = T::splat(*a.add(r * rsa));
                for (x, &bvv) in acc_r.iter_mut().zip(&bv) {
                    *x = T::madd(*x, ar, bvv);
                }
            }
            a = a.add(csa);
            b = b.add(ldb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tile::{Strided, gemm_tile};
    use crate::gemm::Transpose;
    use crate::gemm::kernel::{ASrc, MR, MatMut, NV, Tile, Update};
    use crate::simd::LANES;
    use crate::testutil::TestRng;

    /// The GEMM tile (`alpha = 1`, `beta = 0`) and attention's tile product are the same
    /// micro-kernel, so on every block shape both serve and both layouts of A, they give the
    /// same bits.
    #[test]
    fn gemm_and_attention_tiles_agree_bit_for_bit() {
        let mut rng = TestRng::new(21);
        for rows in 1..=MR.min(super::super::tile::MR) {
            for nv in 1..=NV {
                let n = nv * LANES;
                for k in [0, 1, 7, 64] {
                    for trans in [Transpose::No, Transpose::Yes] {
                        let lda = if trans == Transpose::No {
                            k + 3
                        } else {
                            rows + 2
                        };
                        let a = rng.vec(lda * k.max(rows) + 8, 1.0);
                        let b = rng.vec(k.max(1) * n, 1.0);
                        let mut via_gemm = vec![f32::NAN; rows * n];
                        let mut c = MatMut::new(&mut via_gemm, rows, n, n);
                        let asrc = ASrc::at(&a, lda, trans, 0, 0);
                        let up = Update {
                            alpha: 1.0,
                            beta: 0.0,
                        };
                        Tile::run(rows, nv, k, asrc, &b, n, &mut c, 0, 0, n, up);
                        let strided = match trans {
                            Transpose::No => Strided::rows(&a, lda),
                            Transpose::Yes => Strided::transposed(&a, lda),
                        };
                        let mut via_attn = vec![f32::NAN; rows * n];
                        gemm_tile(false, rows, n, k, strided, &b, n, &mut via_attn, n);
                        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(
                            bits(&via_gemm),
                            bits(&via_attn),
                            "rows {rows} × {nv} vectors, k {k}, A {trans:?}"
                        );
                    }
                }
            }
        }
    }
}
