//! Unit tests of the three internal paths one by one, on shapes the dispatcher in `sgemm`
//! would not send them (so each path is correct on its own, whatever the thresholds), and of
//! the tiling helpers. The public contract is tested in `kernels/tests/gemm.rs`.

use super::kernel::{MR, MatMut, row_panels};
use super::{Product, Transpose, blocked, check_args, sgemm_ref, small};
use crate::simd::LANES;
use crate::testutil::{TestRng, assert_close};

#[derive(Clone, Copy, Debug)]
enum Path {
    Blocked,
    BInPlace,
    Dot,
    Gemv,
}

/// Runs `path` and the reference on random operands with padded rows; compares.
fn agree(path: Path, ta: Transpose, tb: Transpose, m: usize, n: usize, k: usize) {
    let mut rng = TestRng::new((m * 1_000_003 + n * 1009 + k) as u64);
    let (ar, ac) = if ta == Transpose::No { (m, k) } else { (k, m) };
    let (br, bc) = if tb == Transpose::No { (k, n) } else { (n, k) };
    let (lda, ldb, ldc) = (ac + 1, bc + 2, n + 3);
    let a = rng.vec(ar * lda, 1.0);
    let b = rng.vec(br * ldb, 1.0);
    for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)] {
        let mut want = rng.vec(m * ldc, 1.0);
        let mut got = want.clone();
        check_args(ta, tb, m, n, k, &a, lda, &b, ldb, &got, ldc);
        sgemm_ref(
            ta, tb, m, n, k, alpha, &a, lda, &b, ldb, beta, &mut want, ldc,
        );
        let cv = MatMut::new(&mut got, m, n, ldc);
        let p = Product {
            transa: ta,
            transb: tb,
            m,
            n,
            k,
            alpha,
            a: &a,
            lda,
            b: &b,
            ldb,
            beta,
        };
        match path {
            Path::Blocked => blocked::gemm_blocked(&p, cv),
            Path::BInPlace => small::gemm_b_in_place(&p, cv),
            Path::Dot => small::gemm_dot(&p, cv),
            Path::Gemv => small::gemv_row(&p, cv),
        }
        let atol = 2e-6 * (k as f32 + 1.0);
        assert_close(
            &got,
            &want,
            1e-5,
            atol,
            &format!("{path:?} {ta:?}{tb:?} {m}×{n}×{k}"),
        );
    }
}

const ALL: [(Transpose, Transpose); 4] = [
    (Transpose::No, Transpose::No),
    (Transpose::No, Transpose::Yes),
    (Transpose::Yes, Transpose::No),
    (Transpose::Yes, Transpose::Yes),
];

#[test]
fn blocked_path_matches_reference_on_any_shape() {
    for (ta, tb) in ALL {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 70, 3),
            (13, 33, 600),
            (25, 1030, 20),
            (100, 17, 390),
        ] {
            agree(Path::Blocked, ta, tb, m, n, k);
        }
    }
}

#[test]
fn b_in_place_path_matches_reference_on_any_shape() {
    for ta in [Transpose::No, Transpose::Yes] {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 100, 700),
            (7, 31, 5),
            (30, 65, 40),
            (130, 97, 33),
        ] {
            agree(Path::BInPlace, ta, Transpose::No, m, n, k);
        }
    }
}

#[test]
fn dot_path_matches_reference_on_any_shape() {
    for ta in [Transpose::No, Transpose::Yes] {
        for (m, n, k) in [
            (1, 1, 1),
            (1, 50, LANES - 1),
            (5, 7, LANES + 3),
            (9, 90, 600),
            (70, 13, 47),
        ] {
            agree(Path::Dot, ta, Transpose::Yes, m, n, k);
        }
    }
}

#[test]
fn gemv_path_matches_reference_on_any_width() {
    for ta in [Transpose::No, Transpose::Yes] {
        for (n, k) in [
            (1, 1),
            (LANES - 1, 7),
            (LANES + 1, 9),
            (2047, 20),
            (2049, 33),
            (5000, 300),
        ] {
            agree(Path::Gemv, ta, Transpose::No, 1, n, k);
        }
    }
}

#[test]
fn row_panels_cover_every_row_once_without_short_tiles() {
    for rows in 0..100 {
        let panels: Vec<_> = row_panels(rows).collect();
        let mut next = 0;
        for &(i, h) in &panels {
            assert_eq!(i, next, "rows {rows}: panels {panels:?}");
            assert!((1..=MR).contains(&h), "rows {rows}: panels {panels:?}");
            if rows > MR {
                assert!(h >= MR / 2, "rows {rows}: short panel in {panels:?}");
            }
            next += h;
        }
        assert_eq!(next, rows, "rows {rows}: panels {panels:?}");
    }
}

#[test]
fn blocks_partition_the_window() {
    let mut c = vec![0.0f32; 10 * 13];
    let grid = MatMut::new(&mut c, 9, 11, 13).blocks(4, 5);
    assert_eq!(grid.len(), 3 * 3);
    let visits = std::sync::atomic::AtomicUsize::new(0);
    grid.for_each(true, |i0, j0, mut view| {
        visits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..view.rows() {
            for (j, x) in view.row(i).iter_mut().enumerate() {
                *x += (1 + (i0 + i) * 100 + j0 + j) as f32;
            }
        }
    });
    assert_eq!(visits.into_inner(), 9);
    for i in 0..10 {
        for j in 0..13 {
            let want = if i < 9 && j < 11 {
                (1 + i * 100 + j) as f32
            } else {
                0.0
            };
            assert_eq!(c[i * 13 + j], want, "({i}, {j})");
        }
    }
}

#[test]
fn the_task_grid_is_sized_for_the_planned_workers() {
    use super::kernel::NR;
    use super::task_grid;
    use crate::parallel::{Plan, plan};
    let tasks = |m: usize, n: usize| {
        let (r, c) = task_grid(m, n, (MR, NR, 192), 8);
        assert!(r % MR == 0 && c % NR == 0, "whole panels: {r} × {c}");
        m.div_ceil(r) * n.div_ceil(c)
    };
    // Forward products over B·T = 16384 rows: row blocks alone are enough.
    plan(Plan::workers(64), || assert!(tasks(16384, 768) >= 256));
    // The weight gradients (m = C_in): rows and columns both cut for 64 workers.
    plan(Plan::workers(64), || {
        assert!(tasks(256, 768) >= 256, "{}", tasks(256, 768));
        assert!(tasks(1024, 256) >= 256, "{}", tasks(1024, 256));
    });
    plan(Plan::workers(16), || assert!(tasks(256, 1024) >= 64));
    // Two workers keep today's grid: MIN_TASKS = 8; a shape with fewer tiles gives what it has.
    plan(Plan::workers(2), || assert_eq!(tasks(256, 768), 8));
    plan(Plan::workers(64), || assert_eq!(tasks(MR, NR), 1));
    // A cap gives exactly that many equal row blocks.
    let cap = |max_tasks| Plan {
        workers: 2,
        max_tasks,
    };
    plan(cap(3), || {
        assert_eq!(task_grid(576, 512, (MR, NR, 192), 8), (192, 512))
    });
    plan(cap(5), || {
        assert_eq!(task_grid(960, 512, (MR, NR, 192), 8), (192, 512))
    });
}

#[test]
fn products_are_bitwise_the_same_for_any_planned_split() {
    use crate::parallel::{Plan, plan};
    let mut rng = TestRng::new(77);
    // A weight-gradient shape (TN over a long depth) and a forward one (NN).
    for (ta, tb, m, n, k) in [
        (Transpose::Yes, Transpose::No, 200, 300, 1500),
        (Transpose::No, Transpose::No, 700, 200, 300),
    ] {
        let (ar, ac) = if ta == Transpose::No { (m, k) } else { (k, m) };
        let (a, b) = (rng.vec(ar * ac, 1.0), rng.vec(k * n, 1.0));
        let run = |workers| {
            let mut c = vec![0.5; m * n];
            plan(Plan::workers(workers), || {
                crate::sgemm(ta, tb, m, n, k, 1.0, &a, ac, &b, n, 1.0, &mut c, n)
            });
            c
        };
        let one = run(1);
        for workers in [2, 3, 16, 64] {
            assert!(
                run(workers) == one,
                "{m}×{n}×{k} split for {workers} workers"
            );
        }
    }
}
