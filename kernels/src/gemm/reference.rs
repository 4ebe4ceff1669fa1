//! The scalar reference GEMM: the definition the fast kernel is tested against. Accumulates
//! each dot product in f64 so it is the most accurate party in any comparison.

use super::{Transpose, check_args};

/// Plain triple loop computing `C = alpha·op(A)·op(B) + beta·C` (same contract as
/// [`crate::sgemm`], including: `beta = 0` never reads `C`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_ref(
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
    check_args(transa, transb, m, n, k, a, lda, b, ldb, c, ldc);
    let at = |i: usize, p: usize| {
        if transa == Transpose::No {
            a[i * lda + p]
        } else {
            a[p * lda + i]
        }
    };
    let bt = |p: usize, j: usize| {
        if transb == Transpose::No {
            b[p * ldb + j]
        } else {
            b[j * ldb + p]
        }
    };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += at(i, p) as f64 * bt(p, j) as f64;
            }
            let ab = alpha * acc as f32;
            let cij = &mut c[i * ldc + j];
            *cij = if beta == 0.0 { ab } else { ab + beta * *cij };
        }
    }
}
