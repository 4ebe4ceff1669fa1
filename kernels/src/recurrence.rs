//! The LSTM recurrence: one layer walked over T time steps, forward and backward through time,
//! with the recurrent product and the cell's pointwise step fused.
//!
//! A layer's input projection `x_t·W_ihᵀ + b_ih + b_hh` does not depend on the recurrence, so
//! the model computes it for all T steps as one GEMM before calling [`lstm_forward`]; what is
//! left here is the part that must walk the sequence: per step the (B, H)·(H, 4H) product
//! `h_{t-1}·W_hhᵀ` and the cell
//!
//! ```text
//! i = σ(a_i)  f = σ(a_f)  g = tanh(a_g)  o = σ(a_o)      (PyTorch gate order i, f, g, o)
//! c_t = f ⊙ c_{t-1} + i ⊙ g        h_t = o ⊙ tanh(c_t)
//! ```
//!
//! ## Layout and threads
//!
//! - W_hh (4H, H) is packed by the caller, once per forward (or per decoder), into panels of
//!   [`LANES`] hidden units ([`lstm_pack_forward`]): panel u holds, for every input index k,
//!   the four gate rows of its units side by side, `[k][gate][lane]`. A step streams each
//!   panel once, front to back, keeping four accumulators (i, f, g, o) per row of the batch in
//!   registers, and applies the cell to them before they leave the registers: the gates never
//!   make a round trip through memory between the product and the activation.
//! - The hidden units are split between the threads for the whole walk (contiguous panel
//!   ranges): each thread owns its units' panels, which stay in its core's L2 from one step to
//!   the next (W_hh of the 360-unit model is 2 MiB; half of it per core fits a 1 MiB L2 much
//!   better than all of it re-read from L3 every step). A step needs all of h_{t-1}, so the
//!   threads meet at a spin barrier once per step — one cache line handed between cores —
//!   instead of a rayon fork/join per step, which costs microseconds and would move panels
//!   between cores. Panels are swept in alternating order from step to step (boustrophedon),
//!   so when a thread's panels do not all fit in L2, those it touched last are touched first.
//! - Backward through time, per step: (A) the cell backward for the thread's own units gives
//!   dgates_t; barrier; (B) `dh_{t-1} = dgates_t·W_hh` for the thread's own units, from panels
//!   packed by [`lstm_pack_backward`] (`[j][gate][lane]` over the output index). B writes
//!   exactly the units the same thread reads in the next A, so one barrier per step suffices.
//! - A barrier per step needs the threads to own their cores: on a machine with more runnable
//!   threads than cores, a descheduled partner stalls every step, and 2 threads can be slower
//!   than 1.
//!
//! ## Precision
//!
//! The packed W_hh records the [`Precision`] of the recurrent product ([`PackedWhh::precision`]),
//! and the walk runs in it. In bf16 (on builds with AVX512_BF16, see [`crate::precision`]) W_hh
//! is packed as bfloat16 pairs (two consecutive depth elements in a `u32`, see `crate::bf16`):
//! `[k/2][gate][lane]` forward, `[j/2][gate][lane]` backward. Each step every thread rounds
//! the whole product operand — h_{t-1} forward, dgates_t backward (B × H or B × 4H, small next
//! to the H × 4H weights it meets) — to pairs in a buffer of its own, and `vdpbf16ps` sums
//! the products in fp32 registers. Only the two operands of the recurrent product are
//! rounded: the input projection arriving in `gates`, the gates, the cell state, the stored
//! h and every pointwise step stay fp32.
//!
//! Every output element is computed by the same sequence of operations whatever the thread
//! count and blocking (the sum over k runs in order; backward keeps one partial sum per gate
//! and adds them as (i + f) + (g + o)), so results are bitwise identical on any pool size.
//!
//! Leaves out: peephole connections, projections (LSTMP), dropout, and the gradient with
//! respect to W_hh and the input, which the model computes after the walk with a GEMM each
//! over the saved states.

// The step code reads and writes the walk's shared buffers through `raw::team::Shared`'s
// `unsafe` getters: which ranges are race-free in a phase is this file's algorithm (see lib.rs).
#![allow(unsafe_code)]

use std::marker::PhantomData;

use rayon::prelude::*;

use crate::lanes::{Block, check_len};
use crate::math::{sigmoid, tanh};
use crate::precision::{Precision, round_bf16};
use crate::raw::team::{Seat, Shared, on_team};
use crate::simd::{F32s, LANES, load};

#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
mod bf16;

/// Gates per hidden unit (i, f, g, o).
const G: usize = 4;

/// The shapes of an LSTM layer's walk: B sequences, T time steps, hidden size H (`h` is
/// always the hidden size in these kernels, never a head). [`lstm_forward`], [`lstm_backward`],
/// their references and the [`lstm_cell`](crate::lstm_cell) kernels take one, so the three
/// sizes cannot be passed in the wrong order:
///
/// ```
/// use kernels::LstmDims;
/// let dims = LstmDims { b: 8, t: 64, h: 512 };
/// assert_eq!(dims, LstmDims::new(8, 64, 512));
/// ```
///
/// Passing another kernel's dimensions does not compile:
///
/// ```compile_fail
/// use kernels::{AttnDims, Precision};
/// use kernels::recurrence::{PackedWhh, lstm_forward};
/// let packed = PackedWhh::new();
/// let dims = AttnDims { b: 1, t: 1, c: 4, nh: 1 };
/// lstm_forward(&mut [0.0; 2], &mut [0.0; 2], &mut [0.0; 4], &packed, dims);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LstmDims {
    /// Batch size B (sequences walked side by side).
    pub b: usize,
    /// Time steps T.
    pub t: usize,
    /// Hidden size H (the gates are 4H wide).
    pub h: usize,
}

impl LstmDims {
    /// The dimensions, checked as every entry point checks them ([`LstmDims::validate`]).
    #[track_caller]
    pub fn new(b: usize, t: usize, h: usize) -> Self {
        let dims = LstmDims { b, t, h };
        dims.validate();
        dims
    }

    /// Panics (a bug in the caller) unless the largest buffer of a walk, the (T+1, B, 4H)
    /// that bounds `gates` and the states, has a size that fits in `usize`: a product that
    /// wrapped around could pass the length checks with the wrong dimensions.
    #[track_caller]
    pub fn validate(&self) {
        let LstmDims { b, t, h } = *self;
        let fits = t
            .checked_add(1)
            .and_then(|t1| t1.checked_mul(b))
            .and_then(|n| n.checked_mul(G))
            .and_then(|n| n.checked_mul(h))
            .is_some();
        assert!(
            fits,
            "lstm: (T+1, B, 4H) = ({}+1, {b}, 4·{h}) overflows usize",
            t
        );
    }
}

/// The layout a [`PackedWhh`] holds: [`Forward`] for [`lstm_forward`], [`Backward`] for
/// [`lstm_backward`]. A type parameter, so that handing a walk the other walk's packing does
/// not compile.
pub trait Layout: sealed::Sealed {}

/// W_hh packed by [`lstm_pack_forward`], for [`lstm_forward`].
#[derive(Clone, Copy, Debug)]
pub enum Forward {}

/// W_hh packed by [`lstm_pack_backward`], for [`lstm_backward`].
#[derive(Clone, Copy, Debug)]
pub enum Backward {}

impl Layout for Forward {}
impl Layout for Backward {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Forward {}
    impl Sealed for super::Backward {}
}

/// W_hh (4H, H) packed for one direction of the walk, in the precision its product runs in:
/// fp32 panels, or bf16 pairs (see the module docs). Pack once per forward or backward (the
/// weights change every optimizer step) and reuse the allocation: [`lstm_pack_forward`] and
/// [`lstm_pack_backward`] overwrite it.
///
/// ```
/// use kernels::Precision;
/// use kernels::recurrence::{LstmDims, PackedWhh, lstm_forward, lstm_pack_forward};
/// let (b, t, h) = (1, 2, 3);
/// let w_hh = vec![0.1; 4 * h * h]; // (4H, H)
/// let mut packed = PackedWhh::new();
/// lstm_pack_forward(&mut packed, &w_hh, h, Precision::Bf16);
/// assert_eq!(packed.precision(), Precision::Bf16.effective()); // fp32 on builds without bf16
/// let (mut hs, mut cs) = (vec![0.0; (t + 1) * b * h], vec![0.0; (t + 1) * b * h]);
/// let mut gates = vec![0.5; t * b * 4 * h]; // (T, B, 4H) input projections
/// lstm_forward(&mut hs, &mut cs, &mut gates, &packed, LstmDims { b, t, h });
/// ```
///
/// The backward layout handed to the forward walk does not compile:
///
/// ```compile_fail
/// use kernels::Precision;
/// use kernels::recurrence::{Backward, LstmDims, PackedWhh, lstm_forward, lstm_pack_backward};
/// let mut packed: PackedWhh<Backward> = PackedWhh::new();
/// lstm_pack_backward(&mut packed, &[0.1; 4], 1, Precision::F32);
/// let dims = LstmDims { b: 1, t: 1, h: 1 };
/// lstm_forward(&mut [0.0; 2], &mut [0.0; 2], &mut [0.0; 4], &packed, dims);
/// ```
#[derive(Clone, Debug)]
pub struct PackedWhh<D: Layout> {
    /// fp32 bits (`F32`) or bf16 pairs (`Bf16`): `ceil(H / LANES)` panels of
    /// `depth(H) × 4 × LANES`, depth H (fp32) or ceil(H / 2) pairs (bf16).
    data: Vec<u32>,
    h: usize,
    precision: Precision,
    _layout: PhantomData<D>,
}

impl<D: Layout> Default for PackedWhh<D> {
    fn default() -> Self {
        PackedWhh {
            data: Vec::new(),
            h: 0,
            precision: Precision::F32,
            _layout: PhantomData,
        }
    }
}

impl<D: Layout> PackedWhh<D> {
    /// An empty packing (H = 0), to be filled by the packing function of its layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The precision the walk's recurrent product runs in: the one asked of the packing, or
    /// `F32` where the build lacks bf16 ([`Precision::effective`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The hidden size H it was packed for.
    pub fn hidden_size(&self) -> usize {
        self.h
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<u32>()
    }

    /// Checks the arguments of a packing and sizes the buffer for them.
    fn prepare(&mut self, kernel: &str, w_hh: &[f32], h: usize, precision: Precision) {
        check_len(
            kernel,
            "w_hh",
            w_hh.len(),
            G * h * h,
            format_args!("(4H, H)"),
        );
        crate::launch::ways(h.div_ceil(LANES));
        self.h = h;
        self.precision = precision.effective();
        let depth = match self.precision {
            Precision::F32 => h,
            Precision::Bf16 => h.div_ceil(2),
        };
        // Every element is written by the packing, so the old contents need not be cleared.
        self.data.resize(h.div_ceil(LANES) * depth * G * LANES, 0);
    }

    /// Panics unless this packing is for hidden size `h` (a walk's argument).
    #[track_caller]
    fn check(&self, kernel: &str, h: usize) {
        assert!(
            self.h == h,
            "{kernel}: w_hh_packed was packed for H = {}, the walk has H = {h}",
            self.h
        );
    }

    /// The fp32 panels (for a packing whose precision is `F32`).
    fn fp32(&self) -> &[f32] {
        debug_assert_eq!(self.precision, Precision::F32);
        bytemuck::cast_slice(&self.data)
    }
}

/// The packing's panels (one per LANES hidden units, `panel` elements each), in parallel,
/// with their index.
fn panels_of<T: Send>(
    data: &mut [T],
    panel: usize,
) -> rayon::iter::Enumerate<rayon::slice::ChunksMut<'_, T>> {
    // h = 0 has no panels; chunks of 0 elements would panic.
    data.par_chunks_mut(panel.max(1)).enumerate()
}

/// Packs W_hh (4H, H), PyTorch layout (row `g·H + j` holds gate g of unit j), for
/// [`lstm_forward`] in `precision`. fp32: `panel[u][k][g][l] = W_hh[g·H + u·LANES + l][k]`;
/// bf16: `panel[u][q][g][l] = pair(W_hh[g·H + u·LANES + l][2q], …[2q + 1])`; zero for units
/// ≥ H (and for the high half of the last pair of an odd H).
pub fn lstm_pack_forward(
    packed: &mut PackedWhh<Forward>,
    w_hh: &[f32],
    h: usize,
    precision: Precision,
) {
    let _launch = crate::launch::start(1);
    packed.prepare("lstm_pack_forward", w_hh, h, precision);
    match packed.precision {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => bf16::pack_forward(&mut packed.data, w_hh, h),
        _ => {
            let data = bytemuck::cast_slice_mut(&mut packed.data);
            panels_of(data, h * G * LANES).for_each(|(u, panel)| {
                for g in 0..G {
                    for l in 0..LANES {
                        let j = u * LANES + l;
                        let dst = panel[g * LANES + l..].iter_mut().step_by(G * LANES);
                        if j < h {
                            let row = &w_hh[(g * h + j) * h..][..h];
                            dst.zip(row).for_each(|(d, &w)| *d = w);
                        } else {
                            dst.for_each(|d| *d = 0.0);
                        }
                    }
                }
            });
        }
    }
}

/// Packs W_hh (4H, H) for [`lstm_backward`] in `precision`. fp32:
/// `panel[q][j][g][l] = W_hh[g·H + j][q·LANES + l]`; bf16:
/// `panel[q][p][g][l] = pair(W_hh[g·H + 2p][q·LANES + l], W_hh[g·H + 2p + 1][…])`; zero for
/// columns ≥ H (and for the missing row 2p + 1 = H of an odd H).
pub fn lstm_pack_backward(
    packed: &mut PackedWhh<Backward>,
    w_hh: &[f32],
    h: usize,
    precision: Precision,
) {
    let _launch = crate::launch::start(1);
    packed.prepare("lstm_pack_backward", w_hh, h, precision);
    match packed.precision {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => bf16::pack_backward(&mut packed.data, w_hh, h),
        _ => {
            let data = bytemuck::cast_slice_mut(&mut packed.data);
            panels_of(data, h * G * LANES).for_each(|(q, panel)| {
                let k0 = q * LANES;
                let n = LANES.min(h - k0);
                for (j, unit) in panel.chunks_exact_mut(G * LANES).enumerate() {
                    for (g, dst) in unit.chunks_exact_mut(LANES).enumerate() {
                        dst[..n].copy_from_slice(&w_hh[(g * h + j) * h + k0..][..n]);
                        dst[n..].fill(0.0);
                    }
                }
            });
        }
    }
}

/// Forward through time of one LSTM layer: B sequences, T steps, hidden size H.
///
/// For t = 0..T, with `hs[0]`, `cs[0]` the initial state:
/// `a = gates[t] + hs[t]·W_hhᵀ`, `(i, f, g, o) = (σ(a_i), σ(a_f), tanh(a_g), σ(a_o))`,
/// `cs[t+1] = f ⊙ cs[t] + i ⊙ g`, `hs[t+1] = o ⊙ tanh(cs[t+1])`.
///
/// - `hs`, `cs` (T+1, B, H): row 0 is read (initial state), rows 1..=T are written.
/// - `gates` (T, B, 4H), gate order (i, f, g, o): on entry the input projection
///   `x_t·W_ihᵀ + b_ih + b_hh`; on return the activated gates (i, f, g, o), which
///   [`lstm_backward`] needs.
/// - `w_hh_packed`: W_hh packed by [`lstm_pack_forward`]; the recurrent product
///   `hs[t]·W_hhᵀ` runs in its [`PackedWhh::precision`] (bf16: both operands rounded to
///   bfloat16, products summed in fp32; all the rest fp32).
///
/// Runs on the current rayon pool, one thread per panel range (see the module docs); results
/// do not depend on the pool size. Every one of those threads must join the walk, so a pool
/// thread blocked elsewhere (on a lock or a channel the caller holds) stalls it. Walks started
/// concurrently on one pool, or from inside its parallel iterators, take turns (tested).
pub fn lstm_forward(
    hs: &mut [f32],
    cs: &mut [f32],
    gates: &mut [f32],
    w_hh_packed: &PackedWhh<Forward>,
    dims: LstmDims,
) {
    const K: &str = "lstm_forward";
    let LstmDims { b, t, h } = dims;
    // T dependent steps: the critical path this walk puts on a training step.
    let _launch = crate::launch::start(t as u64);
    check_forward(K, hs, cs, gates, dims);
    w_hh_packed.check(K, h);
    if b * t * h == 0 {
        return;
    }
    let (hs, cs, gates) = (Shared::new(hs), Shared::new(cs), Shared::new(gates));
    let dims = Dims { b, h };
    match w_hh_packed.precision {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => {
            forward_walk::<bf16::Bf16>(&hs, &cs, &gates, &w_hh_packed.data, dims, t);
        }
        _ => forward_walk::<F32>(&hs, &cs, &gates, w_hh_packed.fp32(), dims, t),
    }
}

/// The forward walk with the recurrent product of `P`.
fn forward_walk<P: Product>(
    hs: &Shared,
    cs: &Shared,
    gates: &Shared,
    packed: &[P::Elem],
    dims: Dims,
    t: usize,
) {
    on_team(dims.h.div_ceil(LANES), |seat| {
        let mut operand = Vec::new();
        for step in 0..t {
            forward_step::<P>(hs, cs, gates, packed, dims, step, seat, &mut operand);
            // h_t is complete before anyone reads it as h_{t-1}.
            seat.wait();
        }
    });
}

/// Backward through time of one LSTM layer, the reverse of [`lstm_forward`].
///
/// Given `dhs` = ∂L/∂h_t for t = 1..=T from above (the layer's output gradient), walks
/// t = T..1 carrying ∂L/∂h and ∂L/∂c through the recurrence and writes the gradient with
/// respect to the gate pre-activations:
///
/// ```text
/// dh = dhs[t] + dh_rec     dc = dc_rec + dh ⊙ o ⊙ (1 − tanh²c_t)
/// da_i = dc ⊙ g ⊙ i(1−i)   da_f = dc ⊙ c_{t−1} ⊙ f(1−f)   da_g = dc ⊙ i ⊙ (1−g²)
/// da_o = dh ⊙ tanh c_t ⊙ o(1−o)
/// dc_rec ← dc ⊙ f          dh_rec ← da·W_hh
/// ```
///
/// - `dgates` (T, B, 4H): written, ∂L/∂a (also the gradient of the input projection and of
///   both biases; the model turns it into dW_ih, dW_hh and dx with GEMMs).
/// - `dh0`, `dc0` (B, H): written, ∂L/∂h_0 and ∂L/∂c_0 (the initial state's gradients).
/// - `dhs` (T, B, H): ∂L/∂h_t for t = 1..=T.
/// - `gates` (T, B, 4H) activated and `cs` (T+1, B, H): saved by [`lstm_forward`].
/// - `w_hh_packed`: W_hh packed by [`lstm_pack_backward`]; the recurrent product
///   `dgates_t·W_hh` runs in its [`PackedWhh::precision`], as in [`lstm_forward`].
///
/// Threads and determinism as in [`lstm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward(
    dgates: &mut [f32],
    dh0: &mut [f32],
    dc0: &mut [f32],
    dhs: &[f32],
    gates: &[f32],
    cs: &[f32],
    w_hh_packed: &PackedWhh<Backward>,
    dims: LstmDims,
) {
    const K: &str = "lstm_backward";
    let LstmDims { b, t, h } = dims;
    // T dependent steps: the critical path this walk puts on a training step.
    let _launch = crate::launch::start(t as u64);
    check_backward(
        K,
        [
            dgates.len(),
            dh0.len(),
            dc0.len(),
            dhs.len(),
            gates.len(),
            cs.len(),
        ],
        dims,
    );
    w_hh_packed.check(K, h);
    // dh0 and dc0 carry dh_rec and dc_rec through the walk, starting from zero at t = T.
    dh0.fill(0.0);
    dc0.fill(0.0);
    if b * t * h == 0 {
        return;
    }
    let (dgates, dh, dc) = (Shared::new(dgates), Shared::new(dh0), Shared::new(dc0));
    let bufs = BwdBufs {
        dgates: &dgates,
        dh: &dh,
        dc: &dc,
    };
    let saved = Saved { dhs, gates, cs };
    let dims = Dims { b, h };
    match w_hh_packed.precision {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
        Precision::Bf16 => backward_walk::<bf16::Bf16>(bufs, saved, &w_hh_packed.data, dims, t),
        _ => backward_walk::<F32>(bufs, saved, w_hh_packed.fp32(), dims, t),
    }
}

/// What the backward walk writes: dgates, and the carried dh and dc.
#[derive(Clone, Copy)]
struct BwdBufs<'s, 'a> {
    dgates: &'s Shared<'a>,
    dh: &'s Shared<'a>,
    dc: &'s Shared<'a>,
}

/// The backward walk with the recurrent product of `P`.
fn backward_walk<P: Product>(
    BwdBufs { dgates, dh, dc }: BwdBufs,
    saved: Saved,
    packed: &[P::Elem],
    dims: Dims,
    t: usize,
) {
    on_team(dims.h.div_ceil(LANES), |seat| {
        let mut operand = Vec::new();
        for step in (0..t).rev() {
            cell_backward_step(dgates, dh, dc, saved, dims, step, seat);
            // dgates_t is complete before anyone multiplies it by W_hh.
            seat.wait();
            recurrent_backward_step::<P>(dh, dgates, packed, dims, step, seat, &mut operand);
        }
    });
}

/// Batch size and hidden size of a walk.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
}

/// What the backward walk reads from the forward pass and from above.
#[derive(Clone, Copy)]
struct Saved<'a> {
    dhs: &'a [f32],
    gates: &'a [f32],
    cs: &'a [f32],
}

/// A block's accumulators: R rows × U panels × the four gates, LANES units each.
type Acc<const R: usize, const U: usize> = [[[F32s; G]; U]; R];

/// The arithmetic of the recurrent product: what the packed panels and the product's other
/// operand hold, and the sum over the depth. [`F32`] here; `bf16::Bf16` in the bf16 leaf.
trait Product {
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
struct F32;

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
fn forward_step<P: Product>(
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
            let [ai, af, ag, ao] = acc[r][v];
            let (i, f, g, og) = (sigmoid(ai), sigmoid(af), tanh(ag), sigmoid(ao));
            let c = f.mul_add(k.load(rows[r].cprev), i * g);
            let row = &mut *rows[r];
            k.store(row.gates[0], i);
            k.store(row.gates[1], f);
            k.store(row.gates[2], g);
            k.store(row.gates[3], og);
            k.store(row.c, c);
            k.store(row.h, og * tanh(c));
        }
    }
}

/// Phase A of backward step `step`: the cell backward for the thread's own units, all rows.
fn cell_backward_step(
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
        let one = F32s::ONE;
        for o in (0..own).step_by(LANES) {
            let k = Block {
                i: o,
                n: LANES.min(own - o),
            };
            let (i, f, g, og) = (k.load(si), k.load(sf), k.load(sgg), k.load(so));
            let dhv = k.load(dh_above) + k.load(dh);
            let tc = tanh(k.load(c));
            let dcv = (dhv * og).mul_add(one - tc * tc, k.load(dc));
            k.store(dgi, dcv * g * i * (one - i));
            k.store(dgf, dcv * k.load(cprev) * f * (one - f));
            k.store(dgg, dcv * i * (one - g * g));
            k.store(dgo, dhv * tc * og * (one - og));
            k.store(dc, dcv * f);
        }
    }
}

/// Phase B of backward step `step`: `dh_rec = dgates[step]·W_hh` for the thread's own units;
/// `operand` is the thread's buffer for dgates[step] converted to `P`'s operand.
fn recurrent_backward_step<P: Product>(
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

/// The state and gate buffers of a forward walk (shared by the kernel and its reference).
#[track_caller]
fn check_forward(kernel: &str, hs: &[f32], cs: &[f32], gates: &[f32], dims: LstmDims) {
    dims.validate();
    let LstmDims { b, t, h } = dims;
    check_len(
        kernel,
        "hs",
        hs.len(),
        (t + 1) * b * h,
        format_args!("(T+1, B, H)"),
    );
    check_len(
        kernel,
        "cs",
        cs.len(),
        (t + 1) * b * h,
        format_args!("(T+1, B, H)"),
    );
    check_len(
        kernel,
        "gates",
        gates.len(),
        t * b * G * h,
        format_args!("(T, B, 4H)"),
    );
}

/// The buffers of a backward walk, lengths in argument order (dgates, dh0, dc0, dhs, gates, cs).
#[track_caller]
fn check_backward(kernel: &str, lens: [usize; 6], dims: LstmDims) {
    dims.validate();
    let LstmDims { b, t, h } = dims;
    let (gates, state, step) = (t * b * G * h, (t + 1) * b * h, b * h);
    let want = [
        ("dgates", gates, "(T, B, 4H)"),
        ("dh0", step, "(B, H)"),
        ("dc0", step, "(B, H)"),
        ("dhs", t * b * h, "(T, B, H)"),
        ("gates", gates, "(T, B, 4H)"),
        ("cs", state, "(T+1, B, H)"),
    ];
    for (len, (arg, n, shape)) in lens.into_iter().zip(want) {
        check_len(kernel, arg, len, n, format_args!("{shape}"));
    }
}

/// The operands of the recurrent product as `precision` sees them: as they are in fp32,
/// rounded to bfloat16 in bf16 (the references' rounding).
fn operand_rounding(precision: Precision) -> fn(f32) -> f32 {
    match precision {
        Precision::F32 => |x| x,
        Precision::Bf16 => round_bf16,
    }
}

/// Scalar reference for [`lstm_forward`], on the unpacked W_hh (4H, H): the textbook loops.
/// In `Bf16` the recurrent product's operands, W_hh and h_{t-1}, are rounded to bfloat16
/// ([`round_bf16`]) and their products summed in fp32; everything else is fp32 either way.
/// (Exactly `precision`: pass [`PackedWhh::precision`] to compare with a walk.)
pub fn lstm_forward_ref(
    hs: &mut [f32],
    cs: &mut [f32],
    gates: &mut [f32],
    w_hh: &[f32],
    dims: LstmDims,
    precision: Precision,
) {
    const K: &str = "lstm_forward_ref";
    check_forward(K, hs, cs, gates, dims);
    let LstmDims { b, t, h } = dims;
    check_len(K, "w_hh", w_hh.len(), G * h * h, format_args!("(4H, H)"));
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let round = operand_rounding(precision);
    for step in 0..t {
        for bi in 0..b {
            let hprev = &hs[(step * b + bi) * h..][..h];
            let a = &mut gates[(step * b + bi) * G * h..][..G * h];
            for (r, a) in a.iter_mut().enumerate() {
                *a += w_hh[r * h..][..h]
                    .iter()
                    .zip(hprev)
                    .map(|(&w, &x)| round(w) * round(x))
                    .sum::<f32>();
            }
            for j in 0..h {
                let (i, f) = (sig(a[j]), sig(a[h + j]));
                let (g, o) = (a[2 * h + j].tanh(), sig(a[3 * h + j]));
                let c = f * cs[(step * b + bi) * h + j] + i * g;
                cs[((step + 1) * b + bi) * h + j] = c;
                hs[((step + 1) * b + bi) * h + j] = o * c.tanh();
                (a[j], a[h + j], a[2 * h + j], a[3 * h + j]) = (i, f, g, o);
            }
        }
    }
}

/// Scalar reference for [`lstm_backward`], on the unpacked W_hh (4H, H). In `Bf16` the
/// recurrent product's operands, dgates_t and W_hh, are rounded to bfloat16 and their
/// products summed in fp32, as in [`lstm_forward_ref`].
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward_ref(
    dgates: &mut [f32],
    dh0: &mut [f32],
    dc0: &mut [f32],
    dhs: &[f32],
    gates: &[f32],
    cs: &[f32],
    w_hh: &[f32],
    dims: LstmDims,
    precision: Precision,
) {
    dh0.fill(0.0);
    dc0.fill(0.0);
    let saved = Saved { dhs, gates, cs };
    backward_ref_carried([dgates, dh0, dc0], saved, w_hh, dims, precision);
}

/// [`lstm_backward_ref`] entered with ∂L/∂h and ∂L/∂c carried in from a step T + 1 (`dh0`,
/// `dc0` on entry; zero for a whole walk).
fn backward_ref_carried(
    [dgates, dh0, dc0]: [&mut [f32]; 3],
    Saved { dhs, gates, cs }: Saved,
    w_hh: &[f32],
    dims: LstmDims,
    precision: Precision,
) {
    const K: &str = "lstm_backward_ref";
    let LstmDims { b, t, h } = dims;
    check_backward(
        K,
        [
            dgates.len(),
            dh0.len(),
            dc0.len(),
            dhs.len(),
            gates.len(),
            cs.len(),
        ],
        dims,
    );
    check_len(K, "w_hh", w_hh.len(), G * h * h, format_args!("(4H, H)"));
    for step in (0..t).rev() {
        for bi in 0..b {
            let a = &gates[(step * b + bi) * G * h..][..G * h];
            let da = &mut dgates[(step * b + bi) * G * h..][..G * h];
            for j in 0..h {
                let (i, f, g, o) = (a[j], a[h + j], a[2 * h + j], a[3 * h + j]);
                let c = cs[((step + 1) * b + bi) * h + j];
                let cprev = cs[(step * b + bi) * h + j];
                let dh = dhs[(step * b + bi) * h + j] + dh0[bi * h + j];
                let tc = c.tanh();
                let dc = dc0[bi * h + j] + dh * o * (1.0 - tc * tc);
                da[j] = dc * g * i * (1.0 - i);
                da[h + j] = dc * cprev * f * (1.0 - f);
                da[2 * h + j] = dc * i * (1.0 - g * g);
                da[3 * h + j] = dh * tc * o * (1.0 - o);
                dc0[bi * h + j] = dc * f;
            }
            dh_rec_ref(&mut dh0[bi * h..][..h], da, w_hh, h, precision);
        }
    }
}

/// The backward recurrent product of one row, `dh[k] = Σ_r da[r]·W_hh[r][k]` over the 4H
/// rows of W_hh, with the operands rounded as `precision` does.
fn dh_rec_ref(dh: &mut [f32], da: &[f32], w_hh: &[f32], h: usize, precision: Precision) {
    let round = operand_rounding(precision);
    for (k, dh) in dh.iter_mut().enumerate() {
        *dh = (0..G * h)
            .map(|r| round(da[r]) * round(w_hh[r * h + k]))
            .sum();
    }
}

#[cfg(test)]
mod tests;
