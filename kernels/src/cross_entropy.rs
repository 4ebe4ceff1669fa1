//! The classifier's loss: softmax over the vocabulary fused with the negative log-likelihood of
//! the target token, forward and backward in one sweep over each row, beside an f64 reference.
//!
//! For logits (N, V) and targets (N,), row r's loss is `−ln p_r(target_r) = lse_r − x[r, t_r]`
//! with `lse_r = ln Σ_j e^(x[r, j])`, and its gradient is `(softmax(x_r) − onehot(t_r)) / N_valid`.
//! Probabilities are never materialized twice, and there is one `exp` per element. A long row
//! (V = 50257) is read from memory once: the online softmax (`softmax::online_exp`) finds the
//! maximum and Σ e^(x − max) while storing each e^(x − running max), so the second pass over
//! the row — from cache, a 200 KB row fits in L2 — only multiplies by one factor per block and
//! subtracts 1/N_valid at the target. A short row (V = 257, in L1) takes the three passes of
//! `softmax_forward` instead, which are cheaper there.
//!
//! - [`cross_entropy_fused_inplace`] writes the gradient over the logits, the model's largest
//!   activation: no second (N, V) buffer, and memory traffic like a copy's — each line is
//!   read once and written back once (1.26× a copy's time on 2048×50257, one thread).
//! - [`cross_entropy_fused`] writes to a separate buffer, which the CPU reads before writing
//!   (write-allocate): three passes over memory to a copy's two, so about 1.6× a copy. (Writing
//!   through an L2 scratch with streaming stores, which skip that read, measured slower: the
//!   reads and the writes then take turns instead of overlapping.) Prefer the in-place form.
//! - [`cross_entropy_forward`] gives the losses alone (evaluation, `score`) in one read.
//!
//! Targets are token ids. A target equal to `ignore_index` (PyTorch's `ignore_index`, e.g.
//! padding) contributes neither loss nor gradient and is not counted in N_valid. Any other
//! target ≥ V is a broken precondition and panics before anything is written: `kernels`
//! treats a bad index as a caller's bug (STYLE rule 9), and the model validates tokens once
//! when it reads a batch, where it can say which shard they came from. When every row is
//! ignored the mean loss is 0 and the gradient zero (PyTorch returns 0/0 = NaN).
//!
//! Leaves out: label smoothing and class weights.

use crate::lanes::{self, rows_per_task};
use crate::simd::F32s;
use crate::softmax::{
    SHORT_ROW, max_and_sum_exp, online_exp, online_exp_inplace, rescale_blocks, softmax_row,
    softmax_row_inplace,
};
use rayon::prelude::*;

/// Checks shapes and every target; returns the number of rows that are not ignored.
#[track_caller]
fn check_args(
    kernel: &str,
    losses: usize,
    logits: usize,
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> usize {
    lanes::check_len(kernel, "losses", losses, n, format_args!("(N,) = ({n},)"));
    lanes::check_len(
        kernel,
        "targets",
        targets.len(),
        n,
        format_args!("(N,) = ({n},)"),
    );
    lanes::check_len(
        kernel,
        "logits",
        logits,
        n * v,
        format_args!("(N, V) = ({n}, {v})"),
    );
    let mut valid = 0;
    for (r, &t) in targets.iter().enumerate() {
        if Some(t) == ignore_index {
            continue;
        }
        assert!(
            (t as usize) < v,
            "{kernel}: targets[{r}] = {t} is out of range for V = {v} (ignore_index = {ignore_index:?})"
        );
        valid += 1;
    }
    valid
}

/// Mean over the valid rows of the per-row losses (0 when there are none), summed in f64 in
/// row order so the result does not depend on the thread count.
fn mean_loss(losses: &[f32], valid: usize) -> f32 {
    if valid == 0 {
        return 0.0;
    }
    (losses.iter().map(|&l| l as f64).sum::<f64>() / valid as f64) as f32
}

/// `−ln p(t)` from the row's maximum `m`, `s = Σ e^(x − m)` and the target's logit.
fn row_loss(m: f32, s: f32, x_t: f32) -> f32 {
    ((m as f64 - x_t as f64) + (s as f64).ln()) as f32
}

/// Per-row losses `losses[r] = ln Σ_j e^(logits[r, j]) − logits[r, targets[r]]` (0 for ignored
/// rows), without the gradient: one read of the logits. Returns the mean over valid rows.
/// `exp(−losses[r])` is the model's probability of the target token (what `score` prints).
pub fn cross_entropy_forward(
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> f32 {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (n * v + 2 * n));
    let k = "cross_entropy_forward";
    let valid = check_args(k, losses.len(), logits.len(), targets, n, v, ignore_index);
    let rpt = rows_per_task(v);
    crate::launch::ways(losses.len().div_ceil(rpt));
    losses.par_chunks_mut(rpt).enumerate().for_each(|(c, ls)| {
        let _task = crate::launch::task(0);
        for (j, l) in ls.iter_mut().enumerate() {
            let r = c * rpt + j;
            let t = targets[r];
            *l = if Some(t) == ignore_index {
                0.0
            } else {
                let x = &logits[r * v..][..v];
                let (m, s) = max_and_sum_exp(x);
                row_loss(m, s, x[t as usize])
            };
        }
    });
    mean_loss(losses, valid)
}

/// Fused softmax + cross-entropy, forward and backward: writes the per-row `losses` (as
/// [`cross_entropy_forward`]) and overwrites
/// `dlogits[r, j] = (softmax(logits[r])_j − [j = targets[r]]) / N_valid` (zero rows for ignored
/// targets). Returns the mean loss over the N_valid rows that are not ignored.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fused(
    dlogits: &mut [f32],
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> f32 {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (2 * n * v + 2 * n));
    let k = "cross_entropy_fused";
    let valid = check_args(k, losses.len(), logits.len(), targets, n, v, ignore_index);
    lanes::check_len(
        k,
        "dlogits",
        dlogits.len(),
        n * v,
        format_args!("(N, V) = ({n}, {v})"),
    );
    let inv_n = 1.0 / valid.max(1) as f32;
    fused_rows(dlogits, losses, v, |r, dl, loss, shifts| {
        let t = targets[r];
        if Some(t) == ignore_index {
            dl.fill(0.0);
            *loss = 0.0;
            return;
        }
        let x = &logits[r * v..][..v];
        if v <= SHORT_ROW {
            let (m, s) = softmax_row(dl, x, inv_n);
            *loss = row_loss(m, s, x[t as usize]);
            dl[t as usize] -= inv_n;
            return;
        }
        let (m, s) = online_exp(dl, x, shifts);
        *loss = row_loss(m, s, x[t as usize]);
        rescale_blocks(dl, shifts, m, inv_n / s);
        dl[t as usize] -= inv_n;
    });
    mean_loss(losses, valid)
}

/// [`cross_entropy_fused`] with the gradient written over the logits: `logits` holds (N, V)
/// logits on entry and dlogits on return.
pub fn cross_entropy_fused_inplace(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> f32 {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (2 * n * v + 2 * n));
    let k = "cross_entropy_fused_inplace";
    let valid = check_args(k, losses.len(), logits.len(), targets, n, v, ignore_index);
    let inv_n = 1.0 / valid.max(1) as f32;
    fused_rows(logits, losses, v, |r, row, loss, shifts| {
        let t = targets[r];
        if Some(t) == ignore_index {
            row.fill(0.0);
            *loss = 0.0;
            return;
        }
        let x_t = row[t as usize];
        if v <= SHORT_ROW {
            let (m, s) = softmax_row_inplace(row, inv_n);
            *loss = row_loss(m, s, x_t);
            row[t as usize] -= inv_n;
            return;
        }
        let (m, s) = online_exp_inplace(row, shifts);
        *loss = row_loss(m, s, x_t);
        rescale_blocks(row, shifts, m, inv_n / s);
        row[t as usize] -= inv_n;
    });
    mean_loss(losses, valid)
}

/// Calls `f(r, row_of_dlogits, &mut losses[r], shifts)` for each row, in parallel groups of
/// whole rows; `shifts` is scratch for the online softmax, reused from row to row.
fn fused_rows(
    dlogits: &mut [f32],
    losses: &mut [f32],
    v: usize,
    f: impl Fn(usize, &mut [f32], &mut f32, &mut Vec<F32s>) + Sync,
) {
    if v == 0 {
        // Every target was checked against V = 0, so every row is ignored.
        losses.fill(0.0);
        return;
    }
    let rpt = rows_per_task(v);
    crate::launch::ways(losses.len().div_ceil(rpt));
    dlogits
        .par_chunks_mut(rpt * v)
        .zip(losses.par_chunks_mut(rpt))
        .enumerate()
        .for_each_init(Vec::new, |shifts, (c, (dl, ls))| {
            let _task = crate::launch::task(c);
            for (j, (row, loss)) in dl.chunks_exact_mut(v).zip(ls).enumerate() {
                f(c * rpt + j, row, loss, shifts);
            }
        });
}

/// Scalar reference for the cross-entropy kernels (f64 inside): writes `losses`, and
/// `dlogits` when given; returns the mean loss.
pub fn cross_entropy_ref(
    dlogits: Option<&mut [f32]>,
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> f32 {
    let k = "cross_entropy_ref";
    let valid = check_args(k, losses.len(), logits.len(), targets, n, v, ignore_index);
    let mut dl_buf = dlogits;
    let inv_n = 1.0 / valid.max(1) as f64;
    for r in 0..n {
        let x = &logits[r * v..][..v];
        let t = targets[r];
        let ignored = Some(t) == ignore_index;
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let s: f64 = x.iter().map(|&x| (x as f64 - m).exp()).sum();
        losses[r] = if ignored {
            0.0
        } else {
            (m + s.ln() - x[t as usize] as f64) as f32
        };
        if let Some(dl) = dl_buf.as_deref_mut() {
            for (j, (d, &x)) in dl[r * v..][..v].iter_mut().zip(x).enumerate() {
                let onehot = if j == t as usize { 1.0 } else { 0.0 };
                *d = if ignored {
                    0.0
                } else {
                    (((x as f64 - m).exp() / s - onehot) * inv_n) as f32
                };
            }
        }
    }
    mean_loss(losses, valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::log_softmax_ref;
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    fn case(rng: &mut TestRng, n: usize, v: usize, scale: f32) -> (Vec<f32>, Vec<u32>) {
        let x = rng.vec(n * v, scale);
        let t = (0..n).map(|_| rng.below(v.max(1)) as u32).collect();
        (x, t)
    }

    #[test]
    fn fused_and_inplace_match_reference_on_awkward_vocabularies() {
        let mut rng = TestRng::new(21);
        for v in awkward_lengths()
            .into_iter()
            .filter(|&v| v > 0)
            .chain([50257])
        {
            for scale in [1.0, 88.0, 1e4] {
                let n = if v > 1000 { 3 } else { 7 };
                let (x, t) = case(&mut rng, n, v, scale);
                let (mut l_ref, mut d_ref) = (vec![0.0; n], vec![0.0; n * v]);
                let want = cross_entropy_ref(Some(&mut d_ref), &mut l_ref, &x, &t, n, v, None);

                let (mut l, mut d) = (vec![f32::NAN; n], vec![f32::NAN; n * v]);
                let got = cross_entropy_fused(&mut d, &mut l, &x, &t, n, v, None);
                let what = format!("fused v={v} scale={scale}");
                // Losses are differences of logits of size `scale`: compare absolutely.
                let atol = 1e-6 * scale.max(8.0);
                assert_close(&l, &l_ref, 1e-6, atol, &format!("{what} losses"));
                assert_close(&[got], &[want], 1e-6, atol, &format!("{what} mean"));
                // At the target, p − 1 cancels: its error is p's rounding (~1e-7), scaled by 1/N.
                let datol = 2e-7 / n as f32;
                assert_close(&d, &d_ref, 1e-5, datol, &format!("{what} dlogits"));

                let mut inplace = x.clone();
                let mut l2 = vec![f32::NAN; n];
                let got2 = cross_entropy_fused_inplace(&mut inplace, &mut l2, &t, n, v, None);
                assert_eq!(inplace, d, "{what}: in-place gradient differs");
                assert_eq!(
                    (l2, got2),
                    (l.clone(), got),
                    "{what}: in-place loss differs"
                );

                let mut l3 = vec![f32::NAN; n];
                let got3 = cross_entropy_forward(&mut l3, &x, &t, n, v, None);
                assert_eq!((l3, got3), (l, got), "{what}: forward-only loss differs");
            }
        }
    }

    /// Masked tails and block boundaries are counted from each row's start, never from an
    /// address: the result must not depend on where the destination starts.
    #[test]
    fn fused_result_does_not_depend_on_the_output_alignment() {
        let (n, v) = (3, 1000);
        let (x, t) = case(&mut TestRng::new(26), n, v, 4.0);
        let mut base = vec![0.0; n * v + 16];
        let mut first: Option<Vec<f32>> = None;
        for offset in 0..16 {
            let dl = &mut base[offset..offset + n * v];
            let mut l = vec![0.0; n];
            cross_entropy_fused(dl, &mut l, &x, &t, n, v, None);
            match &first {
                None => first = Some(dl.to_vec()),
                Some(f) => assert_eq!(&dl[..], &f[..], "offset {offset}"),
            }
        }
    }

    #[test]
    fn loss_equals_log_softmax_then_nll() {
        let mut rng = TestRng::new(22);
        let (n, v) = (9, 257);
        let (x, t) = case(&mut rng, n, v, 10.0);
        let mut logp = vec![0.0; n * v];
        log_softmax_ref(&mut logp, &x, n, v);
        let nll: Vec<f32> = (0..n).map(|r| -logp[r * v + t[r] as usize]).collect();
        let mut l = vec![0.0; n];
        let mean = cross_entropy_forward(&mut l, &x, &t, n, v, None);
        assert_close(&l, &nll, 1e-5, 1e-5, "losses vs −log_softmax[target]");
        let want = nll.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert_close(&[mean], &[want as f32], 1e-5, 0.0, "mean loss");
    }

    #[test]
    fn ignored_rows_give_no_loss_and_no_gradient() {
        let mut rng = TestRng::new(23);
        let (n, v) = (6, 40);
        let (x, mut t) = case(&mut rng, n, v, 3.0);
        t[1] = u32::MAX;
        t[4] = u32::MAX;
        let (mut l, mut d) = (vec![f32::NAN; n], vec![f32::NAN; n * v]);
        let mean = cross_entropy_fused(&mut d, &mut l, &x, &t, n, v, Some(u32::MAX));
        assert_eq!((l[1], l[4]), (0.0, 0.0));
        assert!(
            d[v..2 * v]
                .iter()
                .chain(&d[4 * v..5 * v])
                .all(|&g| g == 0.0)
        );
        // The mean and the gradient scale count only the 4 valid rows.
        let valid: Vec<usize> = vec![0, 2, 3, 5];
        let want = valid.iter().map(|&r| l[r] as f64).sum::<f64>() / 4.0;
        assert_close(&[mean], &[want as f32], 1e-6, 0.0, "mean over valid rows");
        let row_sum: f32 = d[..v].iter().sum();
        assert!(row_sum.abs() < 1e-6, "a valid row's gradient sums to 0");
        assert_close(
            &[d[t[0] as usize]],
            &[(x_prob(&x[..v], t[0]) - 1.0) / 4.0],
            1e-5,
            1e-7,
            "dlogits[target]",
        );
        // All ignored: zero loss and zero gradient.
        let all = vec![7u32; n];
        let mut d = vec![f32::NAN; n * v];
        assert_eq!(
            cross_entropy_fused(&mut d, &mut l, &x, &all, n, v, Some(7)),
            0.0
        );
        assert!(d.iter().all(|&g| g == 0.0));
        // An ignore index below V still ignores that class's rows.
        let mut l = vec![f32::NAN; n];
        cross_entropy_forward(
            &mut l,
            &x,
            &t.iter().map(|_| 3).collect::<Vec<_>>(),
            n,
            v,
            Some(3),
        );
        assert!(l.iter().all(|&x| x == 0.0));
    }

    fn x_prob(x: &[f32], t: u32) -> f32 {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = x.iter().map(|&x| (x as f64 - m).exp()).sum();
        ((x[t as usize] as f64 - m).exp() / s) as f32
    }

    #[test]
    #[should_panic(expected = "targets[2] = 10 is out of range for V = 10")]
    fn target_out_of_range_panics_before_writing() {
        let mut l = [0.0; 3];
        let mut d = [0.0; 30];
        cross_entropy_fused(&mut d, &mut l, &[0.0; 30], &[0, 9, 10], 3, 10, None);
    }

    #[test]
    fn gradient_matches_finite_differences_of_the_mean_loss() {
        let mut rng = TestRng::new(24);
        let (n, v) = (3, LANES_PLUS);
        let (x, t) = case(&mut rng, n, v, 2.0);
        let mut d = vec![0.0; n * v];
        let mut l = vec![0.0; n];
        cross_entropy_fused(&mut d, &mut l, &x, &t, n, v, None);
        let loss = |x: &[f32]| -> f64 {
            // The mean loss in f64 (an f32 mean is too coarse for a difference quotient).
            (0..n)
                .map(|r| {
                    let row = &x[r * v..][..v];
                    let mx = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                    let s: f64 = row.iter().map(|&y| (y as f64 - mx).exp()).sum();
                    mx + s.ln() - row[t[r] as usize] as f64
                })
                .sum::<f64>()
                / n as f64
        };
        let h = 1e-2f32;
        let numeric: Vec<f32> = (0..n * v)
            .map(|i| {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += h;
                xm[i] -= h;
                ((loss(&xp) - loss(&xm)) / (xp[i] as f64 - xm[i] as f64)) as f32
            })
            .collect();
        assert_close(&d, &numeric, 1e-3, 1e-6, "dlogits vs finite differences");
    }

    const LANES_PLUS: usize = crate::simd::LANES + 3;

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (n, v) = (64, 1000);
        let (x, t) = case(&mut TestRng::new(25), n, v, 5.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut d, mut l) = (vec![0.0; n * v], vec![0.0; n]);
            let mean = pool.install(|| cross_entropy_fused(&mut d, &mut l, &x, &t, n, v, None));
            (d, l, mean)
        };
        assert_eq!(run(1), run(3));
    }
}
