//! Lane loops and fixed-chunk parallel helpers shared by the pointwise kernels (crate-private).
//!
//! Every element of a slice goes through the same vector code: the last `len % LANES` elements
//! are loaded into a padded vector ([`load_tail`]) rather than handled by a scalar loop, so an
//! element's result never depends on where it sits in the slice, and hence not on how work is
//! split between threads. Parallel work is cut in chunks whose size depends only on the shape
//! ([`rows_per_task`], [`ELEMS_PER_TASK`]), and partial sums are combined in chunk order
//! ([`accumulate_chunks`]), so results are bitwise the same on any rayon pool size.
//!
//! Leaves out: run-time ISA dispatch (see `simd.rs`) and the intrinsics behind the masked
//! tails and the horizontal maximum (`raw::vector`, re-exported here).

pub(crate) use crate::raw::vector::{load_tail, reduce_max, store_tail};
use crate::simd::{F32s, LANES, load, store};
use rayon::prelude::*;

/// Elements one rayon task handles in a streaming kernel: large enough that handing a task
/// out (about a microsecond) is small beside its work (32 KiB of each operand), small enough
/// that a training step's activations (B·T = 16,384 rows of 256) split into 512 tasks, 4 per
/// worker for 128. rayon runs neighbouring chunks as one piece on a thread that steals
/// nothing, so a small pool pays little for the finer cut.
pub(crate) const ELEMS_PER_TASK: usize = 1 << 13;

/// Fewest elements a task of a parallel map gets (4 KiB of each operand).
const MIN_MAP_CHUNK: usize = 1 << 10;

/// Elements per task of a parallel map over `n` elements, where no element's result depends
/// on the cut (no reduction): [`ELEMS_PER_TASK`], or fewer where that would leave fewer tasks
/// than the planned pool's target ([`crate::parallel::target_tasks`]), down to
/// [`MIN_MAP_CHUNK`]; a whole number of vectors.
pub(crate) fn map_chunk(n: usize) -> usize {
    let want = n
        .div_ceil(crate::parallel::target_tasks())
        .next_multiple_of(LANES);
    want.clamp(MIN_MAP_CHUNK, ELEMS_PER_TASK)
}

/// Rows of length `row_len` per rayon task (at least one), from [`ELEMS_PER_TASK`].
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (ELEMS_PER_TASK / row_len.max(1)).max(1)
}

/// Panics unless `got == want`, naming the kernel and the argument.
#[track_caller]
///
/// `shape` is only formatted on failure (pass `format_args!`), so a passing check allocates
/// nothing.
pub(crate) fn check_len(
    kernel: &str,
    arg: &str,
    got: usize,
    want: usize,
    shape: std::fmt::Arguments,
) {
    assert!(
        got == want,
        "{kernel}: {arg} has {got} elements, expected {want} {shape}"
    );
}

/// One vector's worth of a slice walk: offset `i` and width `n` (`LANES`, or less for the
/// tail). [`for_blocks`] hands these out; kernels that touch several slices at the same
/// offsets (the LSTM cell, the optimizers) load and store through them.
#[derive(Clone, Copy)]
pub(crate) struct Block {
    pub i: usize,
    pub n: usize,
}

impl Block {
    /// Lanes `i..i+n` of `s`; missing tail lanes read 0.
    #[inline(always)]
    pub fn load(self, s: &[f32]) -> F32s {
        self.load_or(s, 0.0)
    }

    /// Lanes `i..i+n` of `s`; missing tail lanes read `fill`.
    #[inline(always)]
    pub fn load_or(self, s: &[f32], fill: f32) -> F32s {
        if self.n == LANES {
            load(&s[self.i..])
        } else {
            load_tail(&s[self.i..self.i + self.n], fill)
        }
    }

    /// Writes the block's `n` lanes of `v` into `s[i..i+n]`.
    #[inline(always)]
    pub fn store(self, s: &mut [f32], v: F32s) {
        if self.n == LANES {
            store(&mut s[self.i..], v)
        } else {
            store_tail(&mut s[self.i..self.i + self.n], v)
        }
    }
}

/// Calls `f` for each vector-wide block of `0..len` in order, then once for the tail.
#[inline(always)]
pub(crate) fn for_blocks(len: usize, mut f: impl FnMut(Block)) {
    let full = len - len % LANES;
    for i in (0..full).step_by(LANES) {
        f(Block { i, n: LANES });
    }
    if full < len {
        f(Block {
            i: full,
            n: len - full,
        });
    }
}

/// `out[i] = f(a[i])`; returns the lane-wise sum of what was stored. The tail's missing lanes
/// read `fill`, and `f(fill)` must be 0 (e.g. fill = -inf for e^(x−m)).
#[inline(always)]
pub(crate) fn map1_sum(out: &mut [f32], a: &[f32], fill: f32, f: impl Fn(F32s) -> F32s) -> F32s {
    debug_assert_eq!(out.len(), a.len());
    let mut acc = F32s::ZERO;
    let mut o = out.chunks_exact_mut(LANES);
    let mut x = a.chunks_exact(LANES);
    for (o, x) in (&mut o).zip(&mut x) {
        let y = f(load(x));
        store(o, y);
        acc += y;
    }
    let (o, x) = (o.into_remainder(), x.remainder());
    if !o.is_empty() {
        let y = f(load_tail(x, fill));
        store_tail(o, y);
        acc += y;
    }
    acc
}

/// `x[i] = f(x[i])`; returns the lane-wise sum of what was stored (as [`map1_sum`]).
#[inline(always)]
pub(crate) fn map1_sum_inplace(x: &mut [f32], fill: f32, f: impl Fn(F32s) -> F32s) -> F32s {
    let mut acc = F32s::ZERO;
    let mut c = x.chunks_exact_mut(LANES);
    for v in &mut c {
        let y = f(load(v));
        store(v, y);
        acc += y;
    }
    let t = c.into_remainder();
    if !t.is_empty() {
        let y = f(load_tail(t, fill));
        store_tail(t, y);
        acc += y;
    }
    acc
}

/// `out[i] = f(a[i])`.
#[inline(always)]
pub(crate) fn map1(out: &mut [f32], a: &[f32], f: impl Fn(F32s) -> F32s) {
    debug_assert_eq!(out.len(), a.len());
    let mut o = out.chunks_exact_mut(LANES);
    let mut x = a.chunks_exact(LANES);
    for (o, x) in (&mut o).zip(&mut x) {
        store(o, f(load(x)));
    }
    let (o, x) = (o.into_remainder(), x.remainder());
    if !o.is_empty() {
        store_tail(o, f(load_tail(x, 0.0)));
    }
}

/// `x[i] = f(x[i])`.
#[inline(always)]
pub(crate) fn map1_inplace(x: &mut [f32], f: impl Fn(F32s) -> F32s) {
    let mut c = x.chunks_exact_mut(LANES);
    for v in &mut c {
        store(v, f(load(v)));
    }
    let t = c.into_remainder();
    if !t.is_empty() {
        store_tail(t, f(load_tail(t, 0.0)));
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub(crate) fn map2(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(F32s, F32s) -> F32s) {
    debug_assert!(out.len() == a.len() && out.len() == b.len());
    let mut o = out.chunks_exact_mut(LANES);
    let mut x = a.chunks_exact(LANES);
    let mut y = b.chunks_exact(LANES);
    for ((o, x), y) in (&mut o).zip(&mut x).zip(&mut y) {
        store(o, f(load(x), load(y)));
    }
    let (o, x, y) = (o.into_remainder(), x.remainder(), y.remainder());
    if !o.is_empty() {
        store_tail(o, f(load_tail(x, 0.0), load_tail(y, 0.0)));
    }
}

/// `x[i] = f(x[i], b[i])`.
#[inline(always)]
pub(crate) fn map2_inplace(x: &mut [f32], b: &[f32], f: impl Fn(F32s, F32s) -> F32s) {
    debug_assert_eq!(x.len(), b.len());
    let mut c = x.chunks_exact_mut(LANES);
    let mut y = b.chunks_exact(LANES);
    for (v, y) in (&mut c).zip(&mut y) {
        store(v, f(load(v), load(y)));
    }
    let (t, y) = (c.into_remainder(), y.remainder());
    if !t.is_empty() {
        store_tail(t, f(load_tail(t, 0.0), load_tail(y, 0.0)));
    }
}

/// Lane-wise fold of `f(acc, a[i])` from `init`; the tail's missing lanes hold `fill`, which
/// must leave `acc` unchanged (0 for sums, -inf for maxima). Returns the per-lane accumulator.
#[inline(always)]
pub(crate) fn fold1(a: &[f32], fill: f32, init: F32s, f: impl Fn(F32s, F32s) -> F32s) -> F32s {
    let mut acc = init;
    let mut x = a.chunks_exact(LANES);
    for x in &mut x {
        acc = f(acc, load(x));
    }
    if !x.remainder().is_empty() {
        acc = f(acc, load_tail(x.remainder(), fill));
    }
    acc
}

/// Lane-wise fold of `f(acc, a[i], b[i])`; the tail's missing lanes hold 0 in both inputs,
/// which must leave `acc` unchanged (true for sums of products).
#[inline(always)]
pub(crate) fn fold2(
    a: &[f32],
    b: &[f32],
    init: F32s,
    f: impl Fn(F32s, F32s, F32s) -> F32s,
) -> F32s {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = init;
    let mut x = a.chunks_exact(LANES);
    let mut y = b.chunks_exact(LANES);
    for (x, y) in (&mut x).zip(&mut y) {
        acc = f(acc, load(x), load(y));
    }
    if !x.remainder().is_empty() {
        acc = f(
            acc,
            load_tail(x.remainder(), 0.0),
            load_tail(y.remainder(), 0.0),
        );
    }
    acc
}

/// Largest element of `a` (-inf when empty). A NaN element may be skipped: callers that must
/// propagate NaN do so through the values they compute from it (e.g. the sum of e^(x−m)).
#[inline(always)]
pub(crate) fn max(a: &[f32]) -> f32 {
    // Two accumulators halve the dependency chain.
    let ninf = F32s::splat(f32::NEG_INFINITY);
    let mut acc = [ninf, ninf];
    let mut x = a.chunks_exact(2 * LANES);
    for x in &mut x {
        acc[0] = acc[0].fast_max(load(x));
        acc[1] = acc[1].fast_max(load(&x[LANES..]));
    }
    let m = fold1(
        x.remainder(),
        f32::NEG_INFINITY,
        acc[0].fast_max(acc[1]),
        |m, v| m.fast_max(v),
    );
    reduce_max(m)
}

/// `Σ a[i]·b[i]` in lanes, then across lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    fold2(a, b, F32s::ZERO, |acc, x, y| x.mul_add(y, acc)).reduce_add()
}

/// `x[i] *= s`.
#[inline(always)]
pub(crate) fn scale_inplace(x: &mut [f32], s: f32) {
    let s = F32s::splat(s);
    map1_inplace(x, |v| v * s);
}

/// `acc[i] += x[i]`.
#[inline(always)]
pub(crate) fn add_inplace(acc: &mut [f32], x: &[f32]) {
    map2_inplace(acc, x, |a, b| a + b);
}

/// [`map1`] in parallel over chunks of [`map_chunk`] elements.
pub(crate) fn par_map1(out: &mut [f32], a: &[f32], f: impl Fn(F32s) -> F32s + Sync) {
    crate::launch::bytes(4 * (out.len() + a.len()));
    let chunk = map_chunk(out.len());
    crate::launch::ways(out.len().div_ceil(chunk));
    out.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk))
        .for_each(|(o, a)| {
            let _task = crate::launch::task(0);
            map1(o, a, &f)
        });
}

/// [`map2`] in parallel over chunks of [`map_chunk`] elements.
pub(crate) fn par_map2(
    out: &mut [f32],
    a: &[f32],
    b: &[f32],
    f: impl Fn(F32s, F32s) -> F32s + Sync,
) {
    crate::launch::bytes(4 * (out.len() + a.len() + b.len()));
    let chunk = map_chunk(out.len());
    crate::launch::ways(out.len().div_ceil(chunk));
    out.par_chunks_mut(chunk)
        .zip(a.par_chunks(chunk))
        .zip(b.par_chunks(chunk))
        .for_each(|((o, a), b)| {
            let _task = crate::launch::task(0);
            map2(o, a, b, &f)
        });
}

/// [`map2_inplace`] in parallel over chunks of [`map_chunk`] elements.
pub(crate) fn par_map2_inplace(x: &mut [f32], b: &[f32], f: impl Fn(F32s, F32s) -> F32s + Sync) {
    crate::launch::bytes(4 * (2 * x.len() + b.len()));
    let chunk = map_chunk(x.len());
    crate::launch::ways(x.len().div_ceil(chunk));
    x.par_chunks_mut(chunk)
        .zip(b.par_chunks(chunk))
        .for_each(|(x, b)| {
            let _task = crate::launch::task(0);
            map2_inplace(x, b, &f)
        });
}

/// Calls `f(r, row)` for every row `r` of `out` (rows of `row_len` floats), in parallel tasks of
/// [`rows_per_task`] rows. Each row is computed by one call, so results do not depend on the
/// pool size. Does nothing when `row_len` is 0.
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    par_row_groups(out, row_len, 1, f);
}

/// [`par_rows`] with `f(r, rows)` called on `group` rows at a time, starting at row `r`
/// (`rows` holds `group`·`row_len` floats, fewer at the end of a task). Groups never straddle
/// tasks, so the split does not depend on the pool.
pub(crate) fn par_row_groups(
    out: &mut [f32],
    row_len: usize,
    group: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if row_len == 0 {
        return;
    }
    let rpt = rows_per_task(row_len);
    crate::launch::ways(out.len().div_ceil(rpt * row_len));
    out.par_chunks_mut(rpt * row_len)
        .enumerate()
        .for_each(|(k, chunk)| {
            let _task = crate::launch::task(0);
            for (j, rows) in chunk.chunks_mut(group * row_len).enumerate() {
                f(k * rpt + group * j, rows);
            }
        });
}

/// Adds per-task partial sums into the accumulators, in task order: `partials` holds one
/// partial per task, each the concatenation of one segment per accumulator (`accs[0].len()`
/// floats, then `accs[1].len()`, …). The order depends only on how the caller cut the tasks,
/// never on the pool, so the sums are bitwise reproducible.
pub(crate) fn add_partials(accs: &mut [&mut [f32]], partials: &[f32]) {
    let width: usize = accs.iter().map(|a| a.len()).sum();
    if width == 0 {
        return;
    }
    for part in partials.chunks_exact(width) {
        let mut rest = part;
        for acc in accs.iter_mut() {
            let (seg, tail) = rest.split_at(acc.len());
            add_inplace(acc, seg);
            rest = tail;
        }
    }
}

/// Deterministic parallel accumulation: task `k` of `n_tasks` fills a zeroed partial of
/// `acc.len()` floats through `f(k, partial)`; the partials are then added into `acc` in task
/// order ([`add_partials`]).
pub(crate) fn accumulate_chunks(
    acc: &mut [f32],
    n_tasks: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let width = acc.len();
    if width == 0 || n_tasks == 0 {
        return;
    }
    crate::launch::ways(n_tasks);
    let mut partials = vec![0.0f32; n_tasks * width];
    partials
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(k, part)| {
            let _task = crate::launch::task(k);
            f(k, part)
        });
    add_partials(&mut [acc], &partials);
}

/// Central differences of `f` (evaluated in f64) at `x`: the reference every backward kernel's
/// gradient check compares against. Steps of 1e-5·max(1, |x_i|) leave truncation and
/// rounding errors near 1e-9, far below f32 resolution.
#[cfg(test)]
pub(crate) fn numeric_grad(x: &[f32], f: impl Fn(&[f64]) -> f64) -> Vec<f32> {
    let mut x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    (0..x.len())
        .map(|i| {
            let x0 = x64[i];
            let h = 1e-5 * x0.abs().max(1.0);
            x64[i] = x0 + h;
            let up = f(&x64);
            x64[i] = x0 - h;
            let down = f(&x64);
            x64[i] = x0;
            ((up - down) / (2.0 * h)) as f32
        })
        .collect()
}

/// `Σ_i a[i]·b[i]` in f64, for building scalar losses in gradient checks.
#[cfg(test)]
pub(crate) fn dot64(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&a, &b)| a * b as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestRng, awkward_lengths};

    #[test]
    fn tails_load_and_store_only_their_lanes() {
        for n in 0..LANES {
            let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let v = load_tail(&src, -7.0).to_array();
            for (i, &x) in v.iter().enumerate() {
                assert_eq!(x, if i < n { i as f32 + 1.0 } else { -7.0 });
            }
            let mut dst = vec![f32::NAN; n + 1];
            store_tail(&mut dst[..n], F32s::splat(3.0));
            assert!(dst[..n].iter().all(|&x| x == 3.0) && dst[n].is_nan());
        }
    }

    #[test]
    fn max_and_dot_match_scalar_on_awkward_lengths() {
        let mut rng = TestRng::new(1);
        for n in awkward_lengths().into_iter().chain([1000, 50257]) {
            let a = rng.vec(n, 100.0);
            let b = rng.vec(n, 1.0);
            let want = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), want, "max n={n}");
            let d: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) as f64 - d).abs() <= 1e-4 * (1.0 + d.abs()) * (n as f64).sqrt());
        }
    }

    #[test]
    fn accumulate_chunks_adds_in_task_order() {
        let mut acc = vec![1.0f32; 3];
        accumulate_chunks(&mut acc, 4, |k, p| p.iter_mut().for_each(|x| *x = k as f32));
        assert_eq!(acc, vec![7.0; 3]);
    }
}
