//! `kernels::sgemm` against the scalar reference `sgemm_ref`, through the public API only:
//! every transpose combination × alpha/beta × awkward shapes, NaN-poisoned operands and
//! padding, random shapes and strides (proptest), and thread-count independence. Leaves out:
//! speed (`benches/benches/gemm.rs`) and the internal paths one by one (`gemm/tests.rs`).

use kernels::gemm::{MR, NR, sgemm_ref};
use kernels::simd::LANES;
use kernels::testutil::{TestRng, assert_close, awkward_lengths};
use kernels::{Transpose, sgemm};
use proptest::prelude::*;

const TRANSPOSES: [(Transpose, Transpose); 4] = [
    (Transpose::No, Transpose::No),
    (Transpose::No, Transpose::Yes),
    (Transpose::Yes, Transpose::No),
    (Transpose::Yes, Transpose::Yes),
];
/// alpha and beta ∈ {0, 1, other}: 0 and 1 are special-cased by BLAS-style code.
const SCALES: [f32; 3] = [0.0, 1.0, -0.75];
/// Written into the padding of C (columns n..ldc): must survive untouched.
const SENTINEL: f32 = 1234.5;

/// One product, set up so that any read outside the operands or write outside C shows:
/// the padding of A and B (leading dimension > row) holds NaN, C's padding a sentinel, and
/// with `beta = 0` C itself starts as NaN.
#[derive(Clone, Copy, Debug)]
struct Case {
    ta: Transpose,
    tb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    /// Extra elements per row of A, B and C.
    pad: usize,
}

impl Case {
    fn new(ta: Transpose, tb: Transpose, m: usize, n: usize, k: usize) -> Self {
        Case {
            ta,
            tb,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            pad: 0,
        }
    }
}

/// A `rows × cols` matrix with leading dimension `cols + pad`, padding filled with `fill`.
fn matrix(rng: &mut TestRng, rows: usize, cols: usize, pad: usize, fill: f32) -> (Vec<f32>, usize) {
    let ld = (cols + pad).max(1);
    let mut v = vec![fill; rows * ld];
    for r in 0..rows {
        for x in &mut v[r * ld..r * ld + cols] {
            *x = rng.uniform();
        }
    }
    (v, ld)
}

/// Runs `sgemm` on the case and returns C (with padding) and its leading dimension.
fn run(case: &Case, seed: u64) -> (Vec<f32>, Vec<f32>, usize) {
    let Case {
        ta,
        tb,
        m,
        n,
        k,
        alpha,
        beta,
        pad,
    } = *case;
    let mut rng = TestRng::new(seed);
    let (ar, ac) = if ta == Transpose::No { (m, k) } else { (k, m) };
    let (br, bc) = if tb == Transpose::No { (k, n) } else { (n, k) };
    let (a, lda) = matrix(&mut rng, ar, ac, pad, f32::NAN);
    let (b, ldb) = matrix(&mut rng, br, bc, pad, f32::NAN);
    let (mut c, ldc) = matrix(&mut rng, m, n, pad, SENTINEL);
    if beta == 0.0 {
        for r in 0..m {
            c[r * ldc..r * ldc + n].fill(f32::NAN);
        }
    }
    let mut want = c.clone();
    sgemm_ref(
        ta, tb, m, n, k, alpha, &a, lda, &b, ldb, beta, &mut want, ldc,
    );
    sgemm(ta, tb, m, n, k, alpha, &a, lda, &b, ldb, beta, &mut c, ldc);
    (c, want, ldc)
}

/// Checks one case against the reference: values within an fp32 summation tolerance,
/// C's padding bit-for-bit untouched.
#[track_caller]
fn check(case: Case, seed: u64) {
    let (got, want, ldc) = run(&case, seed);
    let what = format!("{case:?}");
    // fp32 FMA chains against an f64 reference: the error grows with the depth k.
    let atol = 1e-6 * (case.k as f32 + 1.0) * case.alpha.abs().max(1.0);
    for r in 0..case.m {
        let row = r * ldc..r * ldc + case.n;
        assert_close(
            &got[row.clone()],
            &want[row],
            1e-5,
            atol,
            &format!("{what} row {r}"),
        );
        for (j, &x) in got[r * ldc + case.n..(r + 1) * ldc].iter().enumerate() {
            assert_eq!(
                x.to_bits(),
                SENTINEL.to_bits(),
                "{what}: padding C[{r}][{}]",
                case.n + j
            );
        }
    }
}

/// Dimensions that break tiling: 0, 1, the register tile ±1 in both directions, primes.
fn tile_lengths() -> Vec<usize> {
    let mut v = vec![0, 1, 2, MR - 1, MR + 1, NR - 1, NR + 1, LANES + 1, 17, 63];
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn every_transpose_alpha_beta_on_awkward_shapes() {
    // Rows past 64 reach the packed, blocked path for every transpose combination.
    let mut rows = tile_lengths();
    rows.extend([65, 100]);
    let mut seed = 0;
    for &(ta, tb) in &TRANSPOSES {
        for &m in &rows {
            for &n in &tile_lengths() {
                for &k in &tile_lengths() {
                    for &alpha in &SCALES {
                        for &beta in &SCALES {
                            seed += 1;
                            let case = Case {
                                alpha,
                                beta,
                                pad: (seed % 3) as usize,
                                ..Case::new(ta, tb, m, n, k)
                            };
                            check(case, seed);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn shared_awkward_lengths_in_each_dimension() {
    // The crate-wide list (vocabulary-sized 257 included), one dimension at a time.
    for &(ta, tb) in &TRANSPOSES {
        for &l in &awkward_lengths() {
            for (m, n, k) in [(l, 40, 50), (40, l, 50), (40, 50, l)] {
                check(
                    Case {
                        alpha: 0.5,
                        beta: -1.5,
                        ..Case::new(ta, tb, m, n, k)
                    },
                    l as u64,
                );
            }
        }
    }
}

#[test]
fn issue_shapes_and_multiple_blocks() {
    // (m, n, k): the issue's tall-skinny / GEMV / depth-1 shapes, depths split into several
    // K blocks (600, 1000), more columns than one B block (1100), and a square prime.
    let shapes = [
        (2048, 255, 255),
        (1, 2048, 512),
        (257, 129, 1),
        (257, 257, 257),
        (130, 70, 600),
        (70, 1100, 300),
        (33, 90, 1000),
    ];
    for &(ta, tb) in &TRANSPOSES {
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            check(Case::new(ta, tb, m, n, k), i as u64);
            check(
                Case {
                    alpha: -0.5,
                    beta: 0.25,
                    pad: 3,
                    ..Case::new(ta, tb, m, n, k)
                },
                100 + i as u64,
            );
        }
    }
}

#[test]
fn beta_zero_never_reads_c() {
    // C starts as NaN (see `run`); any read of it would poison the product.
    for &(ta, tb) in &TRANSPOSES {
        for (m, n, k) in [(1, 300, 64), (20, 300, 64), (200, 300, 64), (5, 7, 0)] {
            let (got, _, ldc) = run(&Case::new(ta, tb, m, n, k), 9);
            for r in 0..m {
                let row = &got[r * ldc..r * ldc + n];
                assert!(
                    row.iter().all(|x| x.is_finite()),
                    "{ta:?}{tb:?} {m}×{n}×{k} row {r}"
                );
            }
        }
    }
}

#[test]
fn empty_depth_or_zero_alpha_scales_c() {
    let mut c = vec![2.0, f32::NAN, 4.0];
    sgemm(
        Transpose::No,
        Transpose::No,
        1,
        3,
        0,
        1.0,
        &[],
        1,
        &[],
        3,
        0.0,
        &mut c,
        3,
    );
    assert_eq!(c, [0.0, 0.0, 0.0]);
    let mut c = vec![2.0, -4.0];
    let ab = [f32::NAN; 2];
    sgemm(
        Transpose::No,
        Transpose::No,
        1,
        2,
        1,
        0.0,
        &ab,
        1,
        &ab,
        2,
        0.5,
        &mut c,
        2,
    );
    assert_eq!(c, [1.0, -2.0]);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Shapes big enough to run in parallel, one per path: blocked (several K and N blocks),
    // B read in place (few rows), dot products (few rows, Bᵀ), one-row GEMV.
    let shapes = [
        (Transpose::No, Transpose::No, 1, 20000, 300),
        (Transpose::No, Transpose::No, 300, 1100, 700),
        (Transpose::Yes, Transpose::Yes, 200, 300, 500),
        (Transpose::No, Transpose::No, 40, 3000, 300),
        (Transpose::Yes, Transpose::No, 9, 5000, 200),
        (Transpose::No, Transpose::Yes, 16, 4000, 300),
        (Transpose::Yes, Transpose::Yes, 3, 9000, 100),
    ];
    let pools: Vec<rayon::ThreadPool> = [1, 2, 3]
        .iter()
        .map(|&t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .collect();
    for &(ta, tb, m, n, k) in &shapes {
        let case = Case {
            alpha: 0.7,
            beta: 0.3,
            ..Case::new(ta, tb, m, n, k)
        };
        let results: Vec<Vec<u32>> = pools
            .iter()
            .map(|pool| {
                let (c, _, _) = pool.install(|| run(&case, 42));
                c.iter().map(|x| x.to_bits()).collect()
            })
            .collect();
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "{case:?}: results differ between 1, 2 and 3 threads"
        );
    }
}

#[test]
fn calls_from_inside_rayon_tasks_match_serial_calls() {
    // The model calls sgemm from parallel loops: nested fork-joins, and a worker that runs
    // another task's sgemm while its own waits, must neither deadlock nor share a buffer.
    use rayon::prelude::*;
    let cases: Vec<Case> = (0..12)
        .map(|i| Case {
            beta: 0.5,
            ..Case::new(
                Transpose::No,
                TRANSPOSES[i % 4].1,
                50 + 40 * i,
                300,
                200 + i,
            )
        })
        .collect();
    let serial: Vec<Vec<f32>> = cases.iter().map(|c| run(c, 7).0).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let nested: Vec<Vec<f32>> = pool.install(|| cases.par_iter().map(|c| run(c, 7).0).collect());
    for (i, (s, n)) in serial.iter().zip(&nested).enumerate() {
        let same = s.iter().zip(n).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "{:?}: nested call differs from the serial one",
            cases[i]
        );
    }
}

#[test]
#[should_panic(expected = "sgemm: b has 5 elements, needs 6")]
fn short_operand_panics_with_its_name() {
    let mut c = [0.0; 4];
    sgemm(
        Transpose::No,
        Transpose::No,
        2,
        2,
        3,
        1.0,
        &[0.0; 6],
        3,
        &[0.0; 5],
        2,
        0.0,
        &mut c,
        2,
    );
}

#[test]
#[should_panic(expected = "sgemm: lda = 2 < 3 columns of a")]
fn leading_dimension_below_row_length_panics() {
    let mut c = [0.0; 4];
    sgemm(
        Transpose::No,
        Transpose::No,
        2,
        2,
        3,
        1.0,
        &[0.0; 6],
        2,
        &[0.0; 6],
        2,
        0.0,
        &mut c,
        2,
    );
}

fn transpose() -> impl Strategy<Value = Transpose> {
    prop_oneof![Just(Transpose::No), Just(Transpose::Yes)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_shapes_and_strides_match_the_reference(
        ta in transpose(),
        tb in transpose(),
        m in 0usize..150,
        n in 0usize..150,
        k in 0usize..300,
        pad in 0usize..5,
        alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0],
        beta in prop_oneof![Just(0.0f32), Just(1.0), -2.0f32..2.0],
        seed in any::<u64>(),
    ) {
        check(Case { ta, tb, m, n, k, alpha, beta, pad }, seed);
    }
}
