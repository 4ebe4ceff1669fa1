//! The simplest layers: the residual add and its gradient's accumulation, and a broadcast bias
//! and its gradient (the column sums), each beside a scalar reference; and the copies and fills
//! a training step makes ([`copy`], [`fill`]), parallel and traced like any launch, so that no
//! part of a step stays on one core for want of a kernel.
//!
//! All are memory-bound streams; they run in parallel over fixed chunks (elementwise) or fixed
//! groups of rows with partial sums added in group order (the bias gradient), so results do
//! not depend on the thread count. Leaves out: fusing the bias into the GEMM (`sgemm` with
//! beta = 1 over a bias-filled C does that when a caller wants it).

use crate::lanes::{self, accumulate_chunks, par_map2, par_map2_inplace, par_rows, rows_per_task};

/// `out[i] = inp1[i] + inp2[i]` (the residual connection).
pub fn residual_forward(out: &mut [f32], inp1: &[f32], inp2: &[f32]) {
    let _launch = crate::launch::start(1);
    lanes::check_len(
        "residual_forward",
        "inp1",
        inp1.len(),
        out.len(),
        format_args!("(same as out)"),
    );
    lanes::check_len(
        "residual_forward",
        "inp2",
        inp2.len(),
        out.len(),
        format_args!("(same as out)"),
    );
    par_map2(out, inp1, inp2, |a, b| a + b);
}

/// `out[i] = inp[i]`: `copy_from_slice`, in parallel over fixed chunks ([`lanes::par_map1`]).
pub fn copy(out: &mut [f32], inp: &[f32]) {
    let _launch = crate::launch::start(1);
    lanes::check_len(
        "copy",
        "inp",
        inp.len(),
        out.len(),
        format_args!("(same as out)"),
    );
    lanes::par_map1(out, inp, |x| x);
}

/// `out[i] = value`: `slice::fill`, in parallel over fixed chunks (zeroing gradients).
pub fn fill(out: &mut [f32], value: f32) {
    use rayon::prelude::*;
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * out.len());
    let chunk = lanes::map_chunk(out.len());
    crate::launch::ways(out.len().div_ceil(chunk));
    out.par_chunks_mut(chunk).for_each(|o| {
        let _task = crate::launch::task(0);
        o.fill(value);
    });
}

/// `acc[i] += x[i]`: where the gradient of a residual branch joins the skip path's gradient
/// (activation gradients are otherwise overwritten), or micro-batch gradients are summed.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    let _launch = crate::launch::start(1);
    lanes::check_len(
        "add_assign",
        "x",
        x.len(),
        acc.len(),
        format_args!("(same as acc)"),
    );
    par_map2_inplace(acc, x, |a, b| a + b);
}

/// `out[r, j] += bias[j]` for each of the `n` rows of width `oc`.
pub fn bias_forward(out: &mut [f32], bias: &[f32], n: usize, oc: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (2 * n * oc + oc));
    lanes::check_len(
        "bias_forward",
        "out",
        out.len(),
        n * oc,
        format_args!("(N, OC) = ({n}, {oc})"),
    );
    lanes::check_len(
        "bias_forward",
        "bias",
        bias.len(),
        oc,
        format_args!("(OC,) = ({oc},)"),
    );
    par_rows(out, oc, |_, row| lanes::add_inplace(row, bias));
}

/// `dbias[j] += Σ_r dout[r, j]` (accumulated): the gradient of [`bias_forward`].
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], n: usize, oc: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (n * oc + oc));
    lanes::check_len(
        "bias_backward",
        "dout",
        dout.len(),
        n * oc,
        format_args!("(N, OC) = ({n}, {oc})"),
    );
    lanes::check_len(
        "bias_backward",
        "dbias",
        dbias.len(),
        oc,
        format_args!("(OC,) = ({oc},)"),
    );
    if oc == 0 {
        return;
    }
    let rpt = rows_per_task(oc);
    accumulate_chunks(dbias, n.div_ceil(rpt), |task, part| {
        let rows = &dout[task * rpt * oc..((task + 1) * rpt).min(n) * oc];
        for row in rows.chunks_exact(oc) {
            lanes::add_inplace(part, row);
        }
    });
}

/// Scalar reference for [`residual_forward`].
pub fn residual_forward_ref(out: &mut [f32], inp1: &[f32], inp2: &[f32]) {
    assert!(
        inp1.len() == out.len() && inp2.len() == out.len(),
        "residual_forward_ref: lengths"
    );
    for ((o, &a), &b) in out.iter_mut().zip(inp1).zip(inp2) {
        *o = a + b;
    }
}

/// Scalar reference for [`bias_backward`] (f64 column sums).
pub fn bias_backward_ref(dbias: &mut [f32], dout: &[f32], n: usize, oc: usize) {
    assert!(
        dout.len() == n * oc && dbias.len() == oc,
        "bias_backward_ref: lengths"
    );
    for (j, db) in dbias.iter_mut().enumerate() {
        let s: f64 = (0..n).map(|r| dout[r * oc + j] as f64).sum();
        *db += s as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    #[test]
    fn copy_and_fill_write_every_element() {
        let mut rng = TestRng::new(52);
        for n in awkward_lengths()
            .into_iter()
            .chain([3 * lanes::ELEMS_PER_TASK + 7])
        {
            let a = rng.vec(n, 1.0);
            let mut got = vec![f32::NAN; n];
            copy(&mut got, &a);
            assert_eq!(got, a, "copy n={n}");
            fill(&mut got, -2.5);
            assert!(got.iter().all(|&x| x == -2.5), "fill n={n}");
        }
    }

    #[test]
    fn residual_and_add_assign_match_reference() {
        let mut rng = TestRng::new(51);
        for n in awkward_lengths().into_iter().chain([50257, 100_003]) {
            let (a, b) = (rng.vec(n, 1e4), rng.vec(n, 1.0));
            let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
            residual_forward(&mut got, &a, &b);
            residual_forward_ref(&mut want, &a, &b);
            assert_eq!(got, want, "residual n={n}: one rounding, so exact");
            let mut acc = a.clone();
            add_assign(&mut acc, &b);
            assert_eq!(acc, want, "add_assign n={n}");
        }
    }

    #[test]
    fn bias_forward_broadcasts_and_backward_sums_columns() {
        let mut rng = TestRng::new(52);
        for oc in awkward_lengths().into_iter().chain([768]) {
            let n = 300;
            let (y0, bias) = (rng.vec(n * oc, 1.0), rng.vec(oc, 1.0));
            let mut y = y0.clone();
            bias_forward(&mut y, &bias, n, oc);
            for r in 0..n {
                for j in 0..oc {
                    assert_eq!(
                        y[r * oc + j],
                        y0[r * oc + j] + bias[j],
                        "bias_forward oc={oc}"
                    );
                }
            }
            let (mut db, mut db2) = (vec![1.0; oc], vec![1.0; oc]);
            bias_backward(&mut db, &y0, n, oc);
            bias_backward_ref(&mut db2, &y0, n, oc);
            assert_close(&db, &db2, 1e-5, 1e-5, &format!("bias_backward oc={oc}"));
        }
    }

    #[test]
    fn bias_backward_does_not_depend_on_the_thread_count() {
        let (n, oc) = (1000, 257);
        let dy = TestRng::new(53).vec(n * oc, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut db = vec![0.0; oc];
            pool.install(|| bias_backward(&mut db, &dy, n, oc));
            db
        };
        assert_eq!(run(1), run(3));
    }
}
