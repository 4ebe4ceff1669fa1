//! The bf16 API on a build without AVX512_BF16: fp32 throughout. [`super::PackedB`] keeps
//! `op(B)` as fp32 bits, row-major k × n, and the products are `sgemm`'s.

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
    data.clear();
    data.extend((0..k * n).map(|e| {
        let (p, j) = (e / n, e % n);
        let x = match transb {
            Transpose::No => b[p * ldb + j],
            Transpose::Yes => b[j * ldb + p],
        };
        x.to_bits()
    }));
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
    sgemm(
        transa,
        Transpose::No,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        b,
        n.max(1),
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
