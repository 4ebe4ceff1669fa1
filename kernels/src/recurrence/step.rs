//! One step of the walk for one thread's parts (rows × hidden units, see `split.rs`): the
//! recurrent product's register blocks ([`Product`]: fp32 here, bf16 in `bf16.rs`) fused with
//! the cell, forward and backward, each part one task of the trace. Leaves out: the team of
//! threads and its barrier (`crate::raw::team`), packing (`pack.rs`).

// The step code reads and writes the walk's shared buffers through `raw::team::Shared`'s
// `unsafe` getters: which ranges are race-free in a phase is this file's algorithm (see lib.rs).
#![allow(unsafe_code)]

use super::{BwdBufs, Dims, G, Saved};
use crate::lanes::Block;
use crate::lstm_cell::{cell_backward, cell_forward};
use crate::math::tanh;
use crate::raw::team::{Seat, Shared};
use crate::simd::{F32s, LANES, load};
use std::ops::Range;

/// A block's accumulators: R rows × U panels × the four gates, LANES units each.
pub(super) type Acc<const R: usize, const U: usize> = [[[F32s; G]; U]; R];

/// The arithmetic of the recurrent product: what the packed panels and the product's other
/// operand hold, and the sum over the depth. [`F32`] here; `super::bf16::Bf16` in the bf16 leaf.
pub(super) trait Product {
    /// An element of a panel or of an operand row: an f32, or a pair of bf16.
    type Elem: Copy + Default + Send + Sync;

    /// Elements along a depth of `n` values: `n`, or `ceil(n / 2)` pairs.
    fn depth(n: usize) -> usize;

    /// Rows of `n` fp32 values (`x`, length a multiple of `n`) as operand rows of `depth(n)`
    /// elements, all of them, of which at least `rows` are valid: converted into `buf` (those
    /// not converted since its last [`Operand::clear`]) if they need converting.
    fn operand<'s>(
        buf: &'s mut Operand<Self::Elem>,
        x: &'s [f32],
        n: usize,
        rows: Range<usize>,
    ) -> &'s [Self::Elem];

    /// Forward: `acc[r][v][g] += Σ_k x[r][k]·panel_v[k][g]`, k ascending over the depth;
    /// `panels` holds U panels of `depth(h)·G·LANES`, `x[r]` `depth(h)` elements.
    fn forward<const R: usize, const U: usize>(
        acc: &mut Acc<R, U>,
        x: [&[Self::Elem]; R],
        panels: &[Self::Elem],
        h: usize,
    );

    /// Backward: `acc[r][v][g] += Σ_j dg[r][g][j]·panel_v[j][g]`, j ascending, one partial
    /// sum per gate; `dg[r]` holds the G gates' rows of `depth(h)` elements, one after the
    /// other.
    fn backward<const R: usize, const U: usize>(
        acc: &mut Acc<R, U>,
        dg: [&[Self::Elem]; R],
        panels: &[Self::Elem],
        h: usize,
    );
}

/// A thread's buffer for one step's product operand (h_{t-1}, or dgates_t) in a
/// [`Product`]'s elements: rows are converted when a part of the thread first needs them,
/// inside that part's task. Unused by the fp32 product, which reads its operand in place.
pub(super) struct Operand<E> {
    /// The converted rows, `depth(n)` elements each.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_feature = "avx512bf16")),
        allow(dead_code)
    )]
    pub(super) elems: Vec<E>,
    /// Which rows hold this step's values.
    pub(super) ready: Vec<bool>,
}

impl<E> Operand<E> {
    pub(super) fn new() -> Self {
        Operand {
            elems: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// A new step: no row converted.
    fn clear(&mut self) {
        self.ready.fill(false);
    }
}

/// The fp32 product: one FMA per weight, operands read in place.
pub(super) struct F32;

impl Product for F32 {
    type Elem = f32;

    fn depth(n: usize) -> usize {
        n
    }

    fn operand<'s>(_: &'s mut Operand<f32>, x: &'s [f32], _: usize, _: Range<usize>) -> &'s [f32] {
        x
    }

    // Register tiles read best as index loops over rows, panels and gates.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn forward<const R: usize, const U: usize>(
        acc: &mut Acc<R, U>,
        x: [&[f32]; R],
        panels: &[f32],
        h: usize,
    ) {
        let panel = h * G * LANES;
        let x: [&[f32]; R] = std::array::from_fn(|r| &x[r][..h]);
        let mut ws: [_; U] =
            std::array::from_fn(|v| panels[v * panel..][..panel].chunks_exact(G * LANES));
        for k in 0..h {
            let w: [[F32s; G]; U] = std::array::from_fn(|v| {
                let p = ws[v].next().unwrap();
                std::array::from_fn(|g| load(&p[g * LANES..]))
            });
            for r in 0..R {
                let xk = F32s::splat(x[r][k]);
                for v in 0..U {
                    for g in 0..G {
                        acc[r][v][g] = w[v][g].mul_add(xk, acc[r][v][g]);
                    }
                }
            }
        }
    }

    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    fn backward<const R: usize, const U: usize>(
        acc: &mut Acc<R, U>,
        dg: [&[f32]; R],
        panels: &[f32],
        h: usize,
    ) {
        let panel = h * G * LANES;
        let dg: [[&[f32]; G]; R] =
            std::array::from_fn(|r| std::array::from_fn(|g| &dg[r][g * h..][..h]));
        let mut ws: [_; U] =
            std::array::from_fn(|v| panels[v * panel..][..panel].chunks_exact(G * LANES));
        for j in 0..h {
            let w: [[F32s; G]; U] = std::array::from_fn(|v| {
                let p = ws[v].next().unwrap();
                std::array::from_fn(|g| load(&p[g * LANES..]))
            });
            for r in 0..R {
                for g in 0..G {
                    let x = F32s::splat(dg[r][g][j]);
                    for v in 0..U {
                        acc[r][v][g] = w[v][g].mul_add(x, acc[r][v][g]);
                    }
                }
            }
        }
    }
}

/// Runs a micro-kernel (`forward_block` or `backward_block`) over the rows `rows` of one
/// part and its `nu` panels, choosing the block shape at run time. Blocks of at most two rows
/// (B ≤ 2, or a part's short last row block): two panels at a time, so that 8 independent
/// accumulator chains hide the FMA latency. More rows: one panel against blocks of 4 rows (16
/// accumulators), panels outermost so that each panel is fetched into L1/L2 once per step.
///
/// `reverse` sweeps the panels last to first (see [`sweep`]). (A macro because the kernels
/// are const-generic in R and U and take different row types.)
macro_rules! drive_blocks {
    ($kernel:ident::<$p:ty>, $row:ident, $rows:expr, $nu:expr, $packed:expr, $own:expr, $h:expr, $reverse:expr) => {{
        let (rows, nu, own, h, packed, reverse): (Range<usize>, usize, usize, usize, &[_], bool) =
            ($rows, $nu, $own, $h, $packed, $reverse);
        let (r0, b) = (rows.start, rows.len());
        let panel = <$p>::depth(h) * G * LANES;
        let order = |i: usize, n: usize| if reverse { n - 1 - i } else { i };
        if b <= 2 {
            let mut x0 = $row(r0);
            let mut x1 = (b == 2).then(|| $row(r0 + 1));
            let pairs = nu.div_ceil(2);
            for i in 0..pairs {
                let u = 2 * order(i, pairs);
                let p = &packed[u * panel..];
                match (&mut x1, nu - u >= 2) {
                    (None, true) => $kernel::<1, 2, $p>(&mut [&mut x0], p, u, own, h),
                    (None, false) => $kernel::<1, 1, $p>(&mut [&mut x0], p, u, own, h),
                    (Some(x1), true) => $kernel::<2, 2, $p>(&mut [&mut x0, x1], p, u, own, h),
                    (Some(x1), false) => $kernel::<2, 1, $p>(&mut [&mut x0, x1], p, u, own, h),
                }
            }
        } else {
            for i in 0..nu {
                let u = order(i, nu);
                let p = &packed[u * panel..];
                let mut b0 = r0;
                while b0 + 4 <= rows.end {
                    let mut r: [_; 4] = std::array::from_fn(|i| $row(b0 + i));
                    $kernel::<4, 1, $p>(&mut r.each_mut(), p, u, own, h);
                    b0 += 4;
                }
                match rows.end - b0 {
                    0 => {}
                    1 => $kernel::<1, 1, $p>(&mut [&mut $row(b0)], p, u, own, h),
                    2 => $kernel::<2, 1, $p>(&mut [&mut $row(b0), &mut $row(b0 + 1)], p, u, own, h),
                    _ => {
                        let mut r: [_; 3] = std::array::from_fn(|i| $row(b0 + i));
                        $kernel::<3, 1, $p>(&mut r.each_mut(), p, u, own, h)
                    }
                }
            }
        }
    }};
}

/// Whether step `step` sweeps the panels last to first: on odd steps (boustrophedon), so when
/// a thread's panels do not all fit in L2, those a step touched last are the ones the next
/// step touches first. The order of parts and panels changes no element's arithmetic.
fn reversed(step: usize) -> bool {
    step % 2 == 1
}

/// The parts a thread owns, in the order step `step` visits them: ascending, or, where
/// `alternate` and [`reversed`], descending (each part's panels then descending too).
fn sweep(seat: &Seat, step: usize, alternate: bool) -> impl Iterator<Item = usize> + use<> {
    let own = seat.own();
    let reverse = alternate && reversed(step);
    (0..own.len()).map(move |i| {
        if reverse {
            own.end - 1 - i
        } else {
            own.start + i
        }
    })
}

/// The hidden units `j0..j1` of the panels `panels` (the last may be a partial vector).
fn units_of(panels: &Range<usize>, h: usize) -> (usize, usize) {
    (panels.start * LANES, (panels.end * LANES).min(h))
}

/// One row of the batch at one forward step, restricted to one part's units (`gates`, `c`,
/// `h`, `cprev`: units `j0..j1`) except `hprev`, which is all H (as operand elements of the
/// product: f32, or bf16 pairs).
struct FwdRow<'a, X> {
    gates: [&'a mut [f32]; G],
    c: &'a mut [f32],
    h: &'a mut [f32],
    cprev: &'a [f32],
    hprev: &'a [X],
}

/// Forward step `step` for the thread's parts, one task each; `operand` is the thread's
/// buffer for h_{t-1} converted to `P`'s operand.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_step<P: Product>(
    hs: &Shared,
    cs: &Shared,
    gates: &Shared,
    packed: &[P::Elem],
    dims: Dims,
    step: usize,
    seat: &Seat,
    operand: &mut Operand<P::Elem>,
) {
    let Dims { b, h, grid } = dims;
    // SAFETY: row `step` of hs (all B rows) was completed before the last barrier and is only
    // read during this step.
    let x = unsafe { hs.get(seat, step * b * h, b * h) };
    operand.clear();
    for part in sweep(seat, step, true) {
        let _task = crate::launch::task(part);
        let hprev = P::operand(operand, x, h, grid.rows(part));
        forward_part::<P>([hs, cs, gates], hprev, packed, dims, step, seat, part);
    }
}

/// Forward step `step` for part `part` (its rows × units), `hprev` being h_{t-1} as `P`'s
/// operand (at least the part's rows). Not inlined: the micro-kernels' registers are
/// allocated best in a function of their own.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn forward_part<P: Product>(
    [hs, cs, gates]: [&Shared; 3],
    hprev: &[P::Elem],
    packed: &[P::Elem],
    Dims { b, h, grid }: Dims,
    step: usize,
    seat: &Seat,
    part: usize,
) {
    let (rows, panels) = (grid.rows(part), grid.panels(part));
    let (j0, j1) = units_of(&panels, h);
    let depth = P::depth(h);
    let row = |bi: usize| {
        let (prev, next) = (step * b * h + bi * h, (step + 1) * b * h + bi * h);
        let g0 = (step * b + bi) * G * h;
        // SAFETY: during a step, rows `step` of hs and cs are only read (they were completed
        // before the last barrier); row `step + 1` and `gates[step]` are written part by part,
        // each (rows × units `j0..j1`) by the one thread that owns the part and in one part
        // only, and no thread reads them before the barrier.
        unsafe {
            FwdRow {
                gates: std::array::from_fn(|g| gates.get_mut(seat, g0 + g * h + j0, j1 - j0)),
                c: cs.get_mut(seat, next + j0, j1 - j0),
                h: hs.get_mut(seat, next + j0, j1 - j0),
                cprev: cs.get(seat, prev + j0, j1 - j0),
                hprev: &hprev[bi * depth..][..depth],
            }
        }
    };
    let panel = depth * G * LANES;
    let packed = &packed[panels.start * panel..panels.end * panel];
    let (nu, own, reverse) = (panels.len(), j1 - j0, reversed(step));
    drive_blocks!(forward_block::<P>, row, rows, nu, packed, own, h, reverse);
}

/// The micro-kernel: R rows × U panels (starting at panel `u` of the part, whose units span
/// `own` floats), all four gates: accumulate `hprev·W_hhᵀ` onto the input
/// projection in registers, then apply the cell and store gates, c and h.
// Register tiles read best as index loops over rows, panels and gates.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn forward_block<const R: usize, const U: usize, P: Product>(
    rows: &mut [&mut FwdRow<P::Elem>; R],
    panels: &[P::Elem],
    u: usize,
    own: usize,
    h: usize,
) {
    // The U panels' units within the part (the last may be a partial vector).
    let blocks: [Block; U] = std::array::from_fn(|v| {
        let i = (u + v) * LANES;
        Block {
            i,
            n: LANES.min(own - i),
        }
    });
    let mut acc = [[[F32s::ZERO; G]; U]; R];
    for r in 0..R {
        for v in 0..U {
            for g in 0..G {
                acc[r][v][g] = blocks[v].load(rows[r].gates[g]);
            }
        }
    }
    P::forward(&mut acc, std::array::from_fn(|r| rows[r].hprev), panels, h);
    for r in 0..R {
        for v in 0..U {
            let k = blocks[v];
            let ([i, f, g, og], c, tc) = cell_forward(acc[r][v], k.load(rows[r].cprev));
            let row = &mut *rows[r];
            k.store(row.gates[0], i);
            k.store(row.gates[1], f);
            k.store(row.gates[2], g);
            k.store(row.gates[3], og);
            k.store(row.c, c);
            k.store(row.h, og * tc);
        }
    }
}

/// The first phase of the backward walk: the cell backward of step `step` (the last), the
/// thread's parts one task each.
pub(super) fn backward_first_step(
    bufs: BwdBufs,
    saved: Saved,
    dims: Dims,
    step: usize,
    seat: &Seat,
) {
    for part in sweep(seat, step, false) {
        let _task = crate::launch::task(part);
        cell_backward_part(bufs, saved, dims, step, seat, part);
    }
}

/// A phase of the backward walk, part by part (one task each): (B) `dh_rec =
/// dgates[step]·W_hh` for the part, then, unless `step` is the first, (A) the cell backward
/// of step `step - 1` for the same part, which reads the dh that B just wrote and nothing
/// another part writes. `operand` is the thread's buffer for dgates[step] converted to `P`'s
/// operand.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_step<P: Product>(
    bufs: BwdBufs,
    saved: Saved,
    packed: &[P::Elem],
    dims: Dims,
    step: usize,
    seat: &Seat,
    operand: &mut Operand<P::Elem>,
) {
    let Dims { b, h, .. } = dims;
    // SAFETY: dgates[step] is complete (barrier) and nobody writes it any more: the cell
    // backward of this phase writes dgates[step - 1].
    let dg = unsafe { bufs.dgates.get(seat, step * b * G * h, b * G * h) };
    operand.clear();
    for part in sweep(seat, step, true) {
        let _task = crate::launch::task(part);
        recurrent_backward_part::<P>(bufs.dh, dg, packed, dims, step, seat, part, operand);
        if step > 0 {
            cell_backward_part(bufs, saved, dims, step - 1, seat, part);
        }
    }
}

/// The cell backward of step `step` for part `part` (its rows × units).
fn cell_backward_part(
    BwdBufs { dgates, dh, dc }: BwdBufs,
    Saved { dhs, gates, cs }: Saved,
    Dims { b, h, grid }: Dims,
    step: usize,
    seat: &Seat,
    part: usize,
) {
    let (j0, j1) = units_of(&grid.panels(part), h);
    let own = j1 - j0;
    for bi in grid.rows(part) {
        let g0 = (step * b + bi) * G * h;
        let (prev, next) = (step * b * h + bi * h, (step + 1) * b * h + bi * h);
        // SAFETY: each part's cells (its rows × units `j0..j1`) of dh, dc and dgates[step] are
        // touched only by the thread that owns the part, in this part only; dgates[step] is
        // read by the others only after the barrier that follows this phase.
        let (dgi, dgf, dgg, dgo, dh, dc) = unsafe {
            (
                dgates.get_mut(seat, g0 + j0, own),
                dgates.get_mut(seat, g0 + h + j0, own),
                dgates.get_mut(seat, g0 + 2 * h + j0, own),
                dgates.get_mut(seat, g0 + 3 * h + j0, own),
                dh.get_mut(seat, bi * h + j0, own),
                dc.get_mut(seat, bi * h + j0, own),
            )
        };
        let sg = &gates[g0..][..G * h];
        let (si, sf, sgg, so) = (
            &sg[j0..],
            &sg[h + j0..],
            &sg[2 * h + j0..],
            &sg[3 * h + j0..],
        );
        let dh_above = &dhs[prev + j0..][..own];
        let (c, cprev) = (&cs[next + j0..][..own], &cs[prev + j0..][..own]);
        for o in (0..own).step_by(LANES) {
            let k = Block {
                i: o,
                n: LANES.min(own - o),
            };
            let gates = [k.load(si), k.load(sf), k.load(sgg), k.load(so)];
            let dhv = k.load(dh_above) + k.load(dh);
            let tc = tanh(k.load(c));
            let (d, dc_prev) = cell_backward(gates, dhv, k.load(dc), k.load(cprev), tc);
            k.store(dgi, d[0]);
            k.store(dgf, d[1]);
            k.store(dgg, d[2]);
            k.store(dgo, d[3]);
            k.store(dc, dc_prev);
        }
    }
}

/// `dh_rec = dgates[step]·W_hh` for part `part` (its rows × units), `dg` being dgates[step]
/// (B, 4H) and `operand` the thread's buffer for it converted to `P`'s operand.
#[allow(clippy::too_many_arguments)]
fn recurrent_backward_part<P: Product>(
    dh: &Shared,
    dg: &[f32],
    packed: &[P::Elem],
    Dims { h, grid, .. }: Dims,
    step: usize,
    seat: &Seat,
    part: usize,
    operand: &mut Operand<P::Elem>,
) {
    let (rows, panels) = (grid.rows(part), grid.panels(part));
    let (j0, j1) = units_of(&panels, h);
    let own = j1 - j0;
    let depth = P::depth(h);
    // Each batch row of dgates is G operand rows of H.
    let dg = P::operand(operand, dg, h, rows.start * G..rows.end * G);
    let row = |bi: usize| BwdRow {
        dgates: &dg[bi * G * depth..][..G * depth],
        // SAFETY: dh is written, in each part's rows × units, only by the part.
        dh: unsafe { dh.get_mut(seat, bi * h + j0, own) },
    };
    let panel = depth * G * LANES;
    let packed = &packed[panels.start * panel..panels.end * panel];
    let (nu, reverse) = (panels.len(), reversed(step));
    drive_blocks!(backward_block::<P>, row, rows, nu, packed, own, h, reverse);
}

/// One row at one backward step: all of its dgates (4H, as operand elements: the G gates'
/// rows of `depth(H)` one after the other), and dh for the part's units.
struct BwdRow<'a, X> {
    dgates: &'a [X],
    dh: &'a mut [f32],
}

/// The backward micro-kernel: R rows × U panels, `dh = Σ_j Σ_g dgates[g·H + j]·W_hh[g·H + j]`
/// with one partial sum per gate, added as (i + f) + (g + o).
// Register tiles read best as index loops over rows, panels and gates.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn backward_block<const R: usize, const U: usize, P: Product>(
    rows: &mut [&mut BwdRow<P::Elem>; R],
    panels: &[P::Elem],
    u: usize,
    own: usize,
    h: usize,
) {
    let mut acc = [[[F32s::ZERO; G]; U]; R];
    P::backward(&mut acc, std::array::from_fn(|r| rows[r].dgates), panels, h);
    for r in 0..R {
        for v in 0..U {
            let i = (u + v) * LANES;
            let [ai, af, ag, ao] = acc[r][v];
            Block {
                i,
                n: LANES.min(own - i),
            }
            .store(rows[r].dh, (ai + af) + (ag + ao));
        }
    }
}
