//! Embedding lookup and its backward scatter-add, and GPT's encoder (token + position
//! embedding) built from them, each beside a scalar reference.
//!
//! The backward adds each row of `dout` into the table row of its token. Done naively in
//! parallel, two threads would race on a repeated token; with atomics the summation order
//! would vary. Instead a counting sort lists, for every token id, the rows that use it in row
//! order; then each table row is owned by one task and summed in that order — bitwise the same
//! result as the sequential loop, on any number of threads, with no locks.
//!
//! Token ids are `u32`; an id ≥ V is a broken precondition and panics before anything is
//! written (the model validates tokens when it reads a batch). Leaves out: padding ids and
//! sparse gradients (the table gradient is dense, as the optimizer wants it).

use crate::lanes::{self, map2, par_rows};
use rayon::prelude::*;

/// Tasks the table of [`embedding_backward`] is split into (by id range): enough to balance
/// a few dozen threads, few enough that empty ranges cost nothing.
const EMBEDDING_TASKS: usize = 64;

/// Panics unless `table` is (V, C) for some V and every id is below V; returns V.
#[track_caller]
fn check_table(kernel: &str, table_name: &str, table: usize, ids: &[u32], c: usize) -> usize {
    assert!(c > 0, "{kernel}: C must be positive");
    assert!(
        table.is_multiple_of(c),
        "{kernel}: {table_name} has {table} elements, not a whole number of rows of C = {c}"
    );
    let v = table / c;
    if let Some((r, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= v) {
        panic!("{kernel}: ids[{r}] = {id} is out of range for a table of V = {v} rows");
    }
    v
}

/// `out[r, :] = table[ids[r], :]`: out (N, C), table (V, C), ids (N,).
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], c: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (2 * ids.len() * c + ids.len()));
    check_table("embedding_forward", "table", table.len(), ids, c);
    let n = ids.len();
    lanes::check_len(
        "embedding_forward",
        "out",
        out.len(),
        n * c,
        format_args!("(N, C) = ({n}, {c})"),
    );
    par_rows(out, c, |r, row| {
        let id = ids[r] as usize;
        row.copy_from_slice(&table[id * c..][..c]);
    });
}

/// `dtable[ids[r], :] += dout[r, :]` for every row r (accumulated), summed per table row in row
/// order.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (2 * ids.len() * c + ids.len()));
    let v = check_table("embedding_backward", "dtable", dtable.len(), ids, c);
    let n = ids.len();
    lanes::check_len(
        "embedding_backward",
        "dout",
        dout.len(),
        n * c,
        format_args!("(N, C) = ({n}, {c})"),
    );
    // Stable counting sort of the rows by id: after it, the rows with id k are
    // order[start[k]..start[k + 1]], in row order. (`start` is filled from the back.)
    let mut start = vec![0u32; v + 1];
    for &id in ids {
        start[id as usize] += 1;
    }
    let mut end = 0;
    for s in start.iter_mut() {
        end += *s;
        *s = end;
    }
    let mut order = vec![0u32; n];
    for (r, &id) in ids.iter().enumerate().rev() {
        start[id as usize] -= 1;
        order[start[id as usize] as usize] = r as u32;
    }
    // At least EMBEDDING_TASKS tasks, or the planned pool's target where that is more (as
    // many as the table has rows at most), each owning a contiguous range of table rows, so
    // every row is summed by one task in row order whatever the split. Tasks visit only the
    // rows that occur.
    let ids_per_task = (v / EMBEDDING_TASKS.max(crate::parallel::target_tasks())).max(1);
    crate::launch::ways(v.div_ceil(ids_per_task));
    dtable
        .par_chunks_mut(ids_per_task * c)
        .enumerate()
        .for_each(|(k, rows)| {
            let _task = crate::launch::task(0);
            let (lo, hi) = (k * ids_per_task, ((k + 1) * ids_per_task).min(v));
            for &r in &order[start[lo] as usize..start[hi] as usize] {
                let r = r as usize;
                let local = ids[r] as usize - lo;
                lanes::add_inplace(&mut rows[local * c..][..c], &dout[r * c..][..c]);
            }
        });
}

/// GPT's encoder: `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`. out (B, T, C), tokens
/// (B, T), wte (V, C), wpe (maxT, C) with maxT ≥ T (only the first T rows are read).
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (3 * b * t * c + b * t));
    let k = "encoder_forward";
    check_encoder(k, out.len(), tokens, wte.len(), wpe.len(), b, t, c);
    par_rows(out, c, |r, row| {
        let (id, pos) = (tokens[r] as usize, r % t);
        map2(row, &wte[id * c..][..c], &wpe[pos * c..][..c], |e, p| e + p);
    });
}

/// Gradient of [`encoder_forward`] (accumulated): `dwte[tokens[b, t], :] += dout[b, t, :]`
/// (see [`embedding_backward`]) and `dwpe[t, :] += Σ_b dout[b, t, :]`.
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    let _launch = crate::launch::start(1);
    crate::launch::bytes(4 * (3 * b * t * c + b * t));
    let k = "encoder_backward";
    check_encoder(k, dout.len(), tokens, dwte.len(), dwpe.len(), b, t, c);
    embedding_backward(dwte, dout, tokens, c);
    // Each position's row is owned by one task and summed over the batch in order.
    par_rows(&mut dwpe[..t * c], c, |pos, drow| {
        for bi in 0..b {
            lanes::add_inplace(drow, &dout[(bi * t + pos) * c..][..c]);
        }
    });
}

#[track_caller]
#[allow(clippy::too_many_arguments)]
fn check_encoder(
    kernel: &str,
    out: usize,
    tokens: &[u32],
    wte: usize,
    wpe: usize,
    b: usize,
    t: usize,
    c: usize,
) {
    check_table(kernel, "wte", wte, tokens, c);
    lanes::check_len(
        kernel,
        "tokens",
        tokens.len(),
        b * t,
        format_args!("(B, T) = ({b}, {t})"),
    );
    let btc = format_args!("(B, T, C) = ({b}, {t}, {c})");
    lanes::check_len(kernel, "out/dout", out, b * t * c, btc);
    assert!(
        wpe.is_multiple_of(c) && wpe >= t * c,
        "{kernel}: wpe has {wpe} elements, needs whole rows of C = {c} and at least T = {t} of them"
    );
}

/// Scalar reference for [`embedding_forward`].
pub fn embedding_forward_ref(out: &mut [f32], ids: &[u32], table: &[f32], c: usize) {
    for (r, &id) in ids.iter().enumerate() {
        out[r * c..][..c].copy_from_slice(&table[id as usize * c..][..c]);
    }
}

/// Scalar reference for [`embedding_backward`]: the plain sequential scatter-add.
pub fn embedding_backward_ref(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    for (r, &id) in ids.iter().enumerate() {
        for i in 0..c {
            dtable[id as usize * c + i] += dout[r * c + i];
        }
    }
}

/// Scalar reference for [`encoder_forward`].
pub fn encoder_forward_ref(
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) {
    for r in 0..b * t {
        let id = tokens[r] as usize;
        for i in 0..c {
            out[r * c + i] = wte[id * c + i] + wpe[(r % t) * c + i];
        }
    }
}

/// Scalar reference for [`encoder_backward`].
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward_ref(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    embedding_backward_ref(dwte, dout, tokens, c);
    for bi in 0..b {
        for pos in 0..t {
            for i in 0..c {
                dwpe[pos * c + i] += dout[(bi * t + pos) * c + i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::numeric_grad;
    use crate::testutil::{TestRng, assert_close, awkward_lengths};

    /// Token ids with heavy repeats, as real text has (a few ids carry most rows).
    fn ids(rng: &mut TestRng, n: usize, v: usize) -> Vec<u32> {
        (0..n)
            .map(|_| if rng.below(2) == 0 { rng.below(4.min(v)) } else { rng.below(v) } as u32)
            .collect()
    }

    #[test]
    fn embedding_matches_reference_bitwise() {
        let mut rng = TestRng::new(61);
        for c in awkward_lengths()
            .into_iter()
            .filter(|&c| c > 0)
            .chain([768])
        {
            let (v, n) = (257, 500);
            let table = rng.vec(v * c, 1.0);
            let id = ids(&mut rng, n, v);
            let (mut y, mut y2) = (vec![f32::NAN; n * c], vec![0.0; n * c]);
            embedding_forward(&mut y, &id, &table, c);
            embedding_forward_ref(&mut y2, &id, &table, c);
            assert_eq!(y, y2, "embedding_forward c={c}");
            let dy = rng.vec(n * c, 1.0);
            let init = rng.vec(v * c, 1.0);
            let (mut d, mut d2) = (init.clone(), init);
            embedding_backward(&mut d, &dy, &id, c);
            embedding_backward_ref(&mut d2, &dy, &id, c);
            assert_eq!(
                d, d2,
                "embedding_backward c={c}: same additions in the same order"
            );
        }
    }

    #[test]
    fn encoder_matches_reference_and_gradient_is_exact() {
        let mut rng = TestRng::new(62);
        let (b, t, c, v, max_t) = (3, 17, 65, 50257, 32);
        let (wte, wpe) = (rng.vec(v * c, 1.0), rng.vec(max_t * c, 1.0));
        let tok = ids(&mut rng, b * t, v);
        let (mut y, mut y2) = (vec![f32::NAN; b * t * c], vec![0.0; b * t * c]);
        encoder_forward(&mut y, &tok, &wte, &wpe, b, t, c);
        encoder_forward_ref(&mut y2, &tok, &wte, &wpe, b, t, c);
        assert_eq!(y, y2);
        let dy = rng.vec(b * t * c, 1.0);
        let (mut dwte, mut dwpe) = (vec![0.25; v * c], vec![0.5; max_t * c]);
        let (mut dwte2, mut dwpe2) = (dwte.clone(), dwpe.clone());
        encoder_backward(&mut dwte, &mut dwpe, &dy, &tok, b, t, c);
        encoder_backward_ref(&mut dwte2, &mut dwpe2, &dy, &tok, b, t, c);
        assert_eq!(dwte, dwte2);
        assert_eq!(
            dwpe, dwpe2,
            "positions past T untouched, the rest summed over B in order"
        );
    }

    #[test]
    fn encoder_backward_matches_finite_differences() {
        let mut rng = TestRng::new(64);
        let (b, t, c, v) = (2, 5, 3, 4);
        let (wte, wpe) = (rng.vec(v * c, 1.0), rng.vec(t * c, 1.0));
        let tok = ids(&mut rng, b * t, v);
        let dy = rng.vec(b * t * c, 1.0);
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        encoder_backward(&mut dwte, &mut dwpe, &dy, &tok, b, t, c);
        // L = Σ dy · encoder(wte, wpe), in f64.
        let loss = |wte: &[f64], wpe: &[f64]| -> f64 {
            (0..b * t * c)
                .map(|i| {
                    let (r, j) = (i / c, i % c);
                    (wte[tok[r] as usize * c + j] + wpe[(r % t) * c + j]) * dy[i] as f64
                })
                .sum()
        };
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (wte64, wpe64) = (f64s(&wte), f64s(&wpe));
        let nte = numeric_grad(&wte, |w| loss(w, &wpe64));
        let npe = numeric_grad(&wpe, |p| loss(&wte64, p));
        assert_close(&dwte, &nte, 1e-6, 1e-6, "dwte vs finite differences");
        assert_close(&dwpe, &npe, 1e-6, 1e-6, "dwpe vs finite differences");
    }

    #[test]
    fn backward_does_not_depend_on_the_thread_count() {
        let mut rng = TestRng::new(63);
        let (v, n, c) = (300, 4000, 64);
        let id = ids(&mut rng, n, v);
        let dy = rng.vec(n * c, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut d = vec![0.0; v * c];
            pool.install(|| embedding_backward(&mut d, &dy, &id, c));
            d
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    #[should_panic(expected = "ids[1] = 10 is out of range for a table of V = 10 rows")]
    fn id_out_of_range_panics() {
        embedding_forward(&mut [0.0; 4], &[0, 10], &[0.0; 20], 2);
    }
}
