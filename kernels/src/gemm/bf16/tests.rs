//! The bf16 product against its scalar reference (bf16-rounded operands, f64 sums) on the
//! awkward shapes, strides, alpha/beta and transposes `sgemm` is tested on; a packed B reused;
//! the same bits on any thread count.

use super::{PackedB, gemm, gemm_bf16_ref, gemm_packed};
use crate::gemm::{Transpose, sgemm_ref};
use crate::precision::{HAS_BF16, Precision};
use crate::testutil::{TestRng, assert_close};

const ALL: [(Transpose, Transpose); 4] = [
    (Transpose::No, Transpose::No),
    (Transpose::No, Transpose::Yes),
    (Transpose::Yes, Transpose::No),
    (Transpose::Yes, Transpose::Yes),
];

struct Case {
    a: Vec<f32>,
    lda: usize,
    b: Vec<f32>,
    ldb: usize,
    ldc: usize,
}

fn case(ta: Transpose, tb: Transpose, m: usize, n: usize, k: usize, seed: u64) -> Case {
    let mut rng = TestRng::new(seed);
    let (ar, ac) = if ta == Transpose::No { (m, k) } else { (k, m) };
    let (br, bc) = if tb == Transpose::No { (k, n) } else { (n, k) };
    let (lda, ldb, ldc) = (ac + 1, bc + 2, n + 3);
    Case {
        a: rng.vec(ar * lda, 1.0),
        lda,
        b: rng.vec(br * ldb, 1.0),
        ldb,
        ldc,
    }
}

/// fp32 accumulation of `k` products of magnitude ≤ 1 (plus the alpha/beta update): the
/// error bound the kernel must meet against the f64 reference of the rounded operands.
fn atol(k: usize) -> f32 {
    2e-6 * (k as f32 + 1.0)
}

fn agree(ta: Transpose, tb: Transpose, m: usize, n: usize, k: usize) {
    let x = case(ta, tb, m, n, k, (m * 1_000_003 + n * 1009 + k) as u64);
    let mut rng = TestRng::new(7);
    for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)] {
        let mut want = rng.vec(m * x.ldc, 1.0);
        let mut got = want.clone();
        let prior = want.clone();
        if beta == 0.0 {
            // beta = 0 must not read C: poison the m × n window (not the ldc padding, which
            // must come back untouched).
            for i in 0..m {
                got[i * x.ldc..][..n].fill(f32::NAN);
            }
        }
        let mut packed_got = got.clone();
        let what = format!("bf16 {ta:?}{tb:?} {m}×{n}×{k} alpha {alpha} beta {beta}");
        gemm_bf16_ref(
            ta, tb, m, n, k, alpha, &x.a, x.lda, &x.b, x.ldb, beta, &mut want, x.ldc,
        );
        gemm(
            Precision::Bf16,
            ta,
            tb,
            m,
            n,
            k,
            alpha,
            &x.a,
            x.lda,
            &x.b,
            x.ldb,
            beta,
            &mut got,
            x.ldc,
        );
        // Outside the m × n window (the ldc padding) nothing may be written: compare all.
        if HAS_BF16 {
            assert_close(&got, &want, 1e-5, atol(k), &what);
        } else {
            // The fallback is fp32: it agrees with the fp32 reference instead.
            let mut want32 = prior;
            sgemm_ref(
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                &x.a,
                x.lda,
                &x.b,
                x.ldb,
                beta,
                &mut want32,
                x.ldc,
            );
            assert_close(&got, &want32, 1e-5, atol(k), &what);
        }
        let pb = PackedB::of(tb, k, n, &x.b, x.ldb);
        gemm_packed(ta, m, alpha, &x.a, x.lda, &pb, beta, &mut packed_got, x.ldc);
        assert_eq!(
            packed_got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{what}: gemm_packed differs from gemm"
        );
    }
}

#[test]
fn matches_the_rounded_reference_on_awkward_shapes_and_every_transpose() {
    for (ta, tb) in ALL {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 70, 3),
            (2, 17, 2),
            (11, 31, 63),
            (12, 32, 64),
            (13, 33, 65),
            (25, 1030, 20),
            (100, 17, 390),
            (200, 45, 601),
            (37, 257, 257),
        ] {
            agree(ta, tb, m, n, k);
        }
    }
}

#[test]
fn empty_products_only_scale_c() {
    for (m, n, k) in [(0, 5, 3), (4, 0, 3), (4, 5, 0)] {
        let x = case(Transpose::No, Transpose::No, m, n, k, 1);
        let mut c = vec![2.0; m * x.ldc];
        gemm(
            Precision::Bf16,
            Transpose::No,
            Transpose::No,
            m,
            n,
            k,
            1.0,
            &x.a,
            x.lda,
            &x.b,
            x.ldb,
            0.5,
            &mut c,
            x.ldc,
        );
        for i in 0..m {
            assert!(c[i * x.ldc..][..n].iter().all(|&v| v == 1.0), "{m}×{n}×{k}");
        }
    }
}

/// The rounding really happens: on random operands the bf16 product is within fp32 error of
/// the rounded reference and much farther than that from the fp32 product. (A kernel that
/// silently ran fp32 would fail here.)
#[test]
fn operands_are_rounded_to_bf16() {
    if !HAS_BF16 {
        return;
    }
    let (m, n, k) = (64, 64, 256);
    let x = case(Transpose::No, Transpose::No, m, n, k, 3);
    let mut got = vec![0.0; m * x.ldc];
    let mut f32_ref = got.clone();
    gemm(
        Precision::Bf16,
        Transpose::No,
        Transpose::No,
        m,
        n,
        k,
        1.0,
        &x.a,
        x.lda,
        &x.b,
        x.ldb,
        0.0,
        &mut got,
        x.ldc,
    );
    sgemm_ref(
        Transpose::No,
        Transpose::No,
        m,
        n,
        k,
        1.0,
        &x.a,
        x.lda,
        &x.b,
        x.ldb,
        0.0,
        &mut f32_ref,
        x.ldc,
    );
    let max_diff = got
        .iter()
        .zip(&f32_ref)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max);
    assert!(
        max_diff > 10.0 * atol(k),
        "bf16 and fp32 agree to {max_diff:e}: the operands were not rounded"
    );
}

#[test]
fn same_bits_on_one_and_two_threads() {
    let (m, n, k) = (300, 200, 700);
    for (ta, tb) in ALL {
        let x = case(ta, tb, m, n, k, 11);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![0.5; m * x.ldc];
            pool.install(|| {
                gemm(
                    Precision::Bf16,
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    1.0,
                    &x.a,
                    x.lda,
                    &x.b,
                    x.ldb,
                    1.0,
                    &mut c,
                    x.ldc,
                )
            });
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(2), "{ta:?}{tb:?}");
    }
}

#[test]
fn a_packing_can_be_reused_and_repacked() {
    let (m, n, k) = (5, 40, 33);
    let x = case(Transpose::No, Transpose::Yes, m, n, k, 5);
    let y = case(Transpose::No, Transpose::Yes, m, 7, 3, 6);
    let mut pb = PackedB::new();
    pb.pack(Transpose::Yes, 3, 7, &y.b, y.ldb);
    pb.pack(Transpose::Yes, k, n, &x.b, x.ldb);
    assert_eq!((pb.k(), pb.n()), (k, n));
    let mut got = vec![0.0; m * x.ldc];
    let mut want = got.clone();
    gemm_packed(
        Transpose::No,
        m,
        1.0,
        &x.a,
        x.lda,
        &pb,
        0.0,
        &mut got,
        x.ldc,
    );
    gemm(
        Precision::Bf16,
        Transpose::No,
        Transpose::Yes,
        m,
        n,
        k,
        1.0,
        &x.a,
        x.lda,
        &x.b,
        x.ldb,
        0.0,
        &mut want,
        x.ldc,
    );
    assert_eq!(got, want);
}

#[test]
#[should_panic(expected = "sgemm: a has")]
fn a_short_operand_panics_with_its_name() {
    let pb = PackedB::of(Transpose::No, 4, 4, &[1.0; 16], 4);
    let mut c = [0.0; 8];
    gemm_packed(Transpose::No, 2, 1.0, &[1.0; 7], 4, &pb, 0.0, &mut c, 4);
}
