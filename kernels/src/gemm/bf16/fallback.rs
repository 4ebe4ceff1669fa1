//! The bf16 API on a build without AVX512_BF16: fp32 throughout. [`super::PackedB`] keeps B
//! as fp32 bits in the layout it was stored in (k × n, or n × k when transposed), contiguous,
//! and the products are `sgemm`'s. Keeping the layout matters: `sgemm` picks its path from
//! the shape and whether B is transposed, and the paths sum in different orders, so a packed
//! B turned row-major would not give the bits `gemm` gives on the same operands.

use super::PackedB;
use crate::gemm::{Transpose, sgemm};

pub(super) fn pack_b(
    data: &mut Vec<u32>,
    transb: Transpose,
    k: usize,
    n: usize,
    b: &[f32],
    ldb: usize,
) {
    let (rows, cols) = if transb == Transpose::No {
        (k, n)
    } else {
        (n, k)
    };
    data.clear();
    if cols == 0 {
        return;
    }
    data.reserve(rows * cols);
    for r in 0..rows {
        data.extend(b[r * ldb..][..cols].iter().map(|x| x.to_bits()));
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_packed(
    transa: Transpose,
    m: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    pb: &PackedB,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let b: &[f32] = bytemuck::cast_slice(&pb.data);
    let (k, n) = (pb.k, pb.n);
    let ldb = match pb.transb {
        Transpose::No => n,
        Transpose::Yes => k,
    };
    sgemm(
        transa,
        pb.transb,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        ldb.max(1),
        beta,
        c,
        ldc,
    );
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_unpacked(
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
    sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
