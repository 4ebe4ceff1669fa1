//! One step of the walk for one thread's hidden units: the recurrent product's register
//! blocks ([`Product`]: fp32 here, bf16 in `bf16.rs`) fused with the cell, forward and
//! backward. Leaves out: the team of threads and its barrier (`crate::raw::team`), packing
//! (`pack.rs`).

// The step code reads and writes the walk's shared buffers through `raw::team::Shared`'s
// `unsafe` getters: which ranges are race-free in a phase is this file's algorithm (see lib.rs).
#![allow(unsafe_code)]

use super::{Dims, G, Saved};
use crate::lanes::Block;
use crate::lstm_cell::{cell_backward, cell_forward};
use crate::math::tanh;
use crate::raw::team::{Seat, Shared};
use crate::simd::{F32s, LANES, load};

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
    /// elements, using `scratch` if they need converting.
    fn operand<'s>(scratch: &'s mut Vec<Self::Elem>, x: &'s [f32], n: usize) -> &'s [Self::Elem];

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

/// The fp32 product: one FMA per weight, operands read in place.
pub(super) struct F32;

impl Product for F32 {
    type Elem = f32;

    fn depth(n: usize) -> usize {
        n
    }

    fn operand<'s>(_: &'s mut Vec<f32>, x: &'s [f32], _: usize) -> &'s [f32] {
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

/// Runs a micro-kernel (`forward_block` or `backward_block`) over all rows of the batch and
/// the thread's `nu` panels, choosing the block shape at run time. Small batches (B ≤ 2):
/// two panels at a time, so that 8 independent accumulator chains hide the FMA latency.
/// Larger ones: one panel against blocks of 4 rows (16 accumulators), panels outermost so
/// that each panel is fetched into L1/L2 once per step.
///
/// `reverse` sweeps the panels last to first. Callers alternate it from step to step
/// (boustrophedon order), so the panels a step touched last — still in L2 when the thread's
/// panels do not all fit — are the ones the next step touches first. The order of panels
/// changes no element's arithmetic. (A macro because the kernels are const-generic in R and
/// U and take different row types.)
macro_rules! drive_blocks {
    ($kernel:ident::<$p:ty>, $row:ident, $b:expr, $nu:expr, $packed:expr, $own:expr, $h:expr, $reverse:expr) => {{
        let (b, nu, own, h, packed, reverse) = ($b, $nu, $own, $h, $packed, $reverse);
        let panel = <$p>::depth(h) * G * LANES;
        let order = |i: usize, n: usize| if reverse { n - 1 - i } else { i };
        if b <= 2 {
            let mut r0 = $row(0);
            let mut r1 = (b == 2).then(|| $row(1));
            let pairs = nu.div_ceil(2);
            for i in 0..pairs {
                let u = 2 * order(i, pairs);
                let p = &packed[u * panel..];
                match (&mut r1, nu - u >= 2) {
                    (None, true) => $kernel::<1, 2, $p>(&mut [&mut r0], p, u, own, h),
                    (None, false) => $kernel::<1, 1, $p>(&mut [&mut r0], p, u, own, h),
                    (Some(r1), true) => $kernel::<2, 2, $p>(&mut [&mut r0, r1], p, u, own, h),
                    (Some(r1), false) => $kernel::<2, 1, $p>(&mut [&mut r0, r1], p, u, own, h),
                }
            }
        } else {
            for i in 0..nu {
                let u = order(i, nu);
                let p = &packed[u * panel..];
                let mut b0 = 0;
                while b0 + 4 <= b {
                    let mut r: [_; 4] = std::array::from_fn(|i| $row(b0 + i));
                    $kernel::<4, 1, $p>(&mut r.each_mut(), p, u, own, h);
                    b0 += 4;
                }
                match b - b0 {
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

/// One row of the batch at one forward step, restricted to the calling thread's units
/// (`gates`, `c`, `h`, `cprev`: units `j0..j1`) except `hprev`, which is all H (as operand
/// elements of the product: f32, or bf16 pairs).
struct FwdRow<'a, X> {
    gates: [&'a mut [f32]; G],
    c: &'a mut [f32],
    h: &'a mut [f32],
    cprev: &'a [f32],
    hprev: &'a [X],
}

/// Forward step `step` for the units of panels `units`, all rows of the batch; `operand` is
/// the thread's buffer for h_{t-1} converted to `P`'s operand.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_step<P: Product>(
    hs: &Shared,
    cs: &Shared,
    gates: &Shared,
    packed: &[P::Elem],
    Dims { b, h }: Dims,
    step: usize,
    seat: &Seat,
    operand: &mut Vec<P::Elem>,
) {
    let units = seat.own();
    let (j0, j1) = (units.start * LANES, (units.end * LANES).min(h));
    let depth = P::depth(h);
    // SAFETY: row `step` of hs (all B rows) was completed before the last barrier and is only
    // read during this step.
    let hprev = P::operand(operand, unsafe { hs.get(seat, step * b * h, b * h) }, h);
    let row = |bi: usize| {
        let (prev, next) = (step * b * h + bi * h, (step + 1) * b * h + bi * h);
        let g0 = (step * b + bi) * G * h;
        // SAFETY: during a step, rows `step` of hs and cs are only read (they were completed
        // before the last barrier); row `step + 1` and `gates[step]` are written by each
        // thread in its own units `j0..j1` only, and no thread reads them before the barrier.
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
    let packed = &packed[units.start * panel..units.end * panel];
    drive_blocks!(
        forward_block::<P>,
        row,
        b,
        units.len(),
        packed,
        j1 - j0,
        h,
        step % 2 == 1
    );
}

/// The micro-kernel: R rows × U panels (starting at panel `u` of the thread's range, whose
/// units span `own` floats), all four gates: accumulate `hprev·W_hhᵀ` onto the input
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
    // The U panels' units within the thread's range (the last may be a partial vector).
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

/// Phase A of backward step `step`: the cell backward for the thread's own units, all rows.
pub(super) fn cell_backward_step(
    dgates: &Shared,
    dh: &Shared,
    dc: &Shared,
    Saved { dhs, gates, cs }: Saved,
    Dims { b, h }: Dims,
    step: usize,
    seat: &Seat,
) {
    let units = seat.own();
    let (j0, j1) = (units.start * LANES, (units.end * LANES).min(h));
    let own = j1 - j0;
    for bi in 0..b {
        let g0 = (step * b + bi) * G * h;
        let (prev, next) = (step * b * h + bi * h, (step + 1) * b * h + bi * h);
        // SAFETY: each thread touches only its own units `j0..j1` of dh, dc and dgates[step];
        // dgates[step] is read by the others only after the barrier that follows this phase.
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

/// Phase B of backward step `step`: `dh_rec = dgates[step]·W_hh` for the thread's own units;
/// `operand` is the thread's buffer for dgates[step] converted to `P`'s operand.
pub(super) fn recurrent_backward_step<P: Product>(
    dh: &Shared,
    dgates: &Shared,
    packed: &[P::Elem],
    Dims { b, h }: Dims,
    step: usize,
    seat: &Seat,
    operand: &mut Vec<P::Elem>,
) {
    let units = seat.own();
    let (j0, j1) = (units.start * LANES, (units.end * LANES).min(h));
    let own = j1 - j0;
    let depth = P::depth(h);
    // SAFETY: dgates[step] is complete (barrier) and nobody writes it any more.
    let dg = P::operand(
        operand,
        unsafe { dgates.get(seat, step * b * G * h, b * G * h) },
        h,
    );
    let row = |bi: usize| BwdRow {
        dgates: &dg[bi * G * depth..][..G * depth],
        // SAFETY: dh is written only in the thread's own units.
        dh: unsafe { dh.get_mut(seat, bi * h + j0, own) },
    };
    let panel = depth * G * LANES;
    let packed = &packed[units.start * panel..units.end * panel];
    drive_blocks!(
        backward_block::<P>,
        row,
        b,
        units.len(),
        packed,
        own,
        h,
        step % 2 == 1
    );
}

/// One row at one backward step: all of its dgates (4H, as operand elements: the G gates'
/// rows of `depth(H)` one after the other), and dh for the thread's own units.
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
