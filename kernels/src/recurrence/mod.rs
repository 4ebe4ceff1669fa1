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
//!   [`LANES`](crate::simd::LANES) hidden units ([`lstm_pack_forward`]): panel u holds, for every input index k,
//!   the four gate rows of its units side by side, `[k][gate][lane]`. A step streams each
//!   panel once, front to back, keeping four accumulators (i, f, g, o) per row of the batch in
//!   registers, and applies the cell to them before they leave the registers: the gates never
//!   make a round trip through memory between the product and the activation.
//! - A step is cut into parts, blocks of batch rows × blocks of panels (`split.rs`), sized
//!   for the pool the walk plans for ([`crate::parallel::workers`]): one part on one worker,
//!   halves of the panels on two, rows cut only where the panels are too few (B = 16, H = 360
//!   on 64 workers: 4 rows × one panel, 180 parts on 8 lanes). Each part is one task of a
//!   trace (`crate::launch::task`). The parts are split between the threads for the whole
//!   walk (contiguous ranges, numbered panel-major, so a thread's parts cover few panels):
//!   each thread owns its parts' panels, which stay in its core's L2 from one step to the
//!   next (W_hh of the 360-unit model is 2 MiB; half of it per core fits a 1 MiB L2 much
//!   better than all of it re-read from L3 every step). A step needs all of h_{t-1}, so the
//!   threads meet at a spin barrier once per step — one cache line handed between cores —
//!   instead of a rayon fork/join per step, which costs microseconds and would move panels
//!   between cores. Panels are swept in alternating order from step to step (boustrophedon),
//!   so when a thread's panels do not all fit in L2, those it touched last are touched first.
//! - Backward through time, per step: (A) the cell backward for the thread's own parts gives
//!   dgates_t; barrier; (B) `dh_{t-1} = dgates_t·W_hh` for the thread's own parts, from panels
//!   packed by [`lstm_pack_backward`] (`[j][gate][lane]` over the output index). B writes
//!   exactly the rows × units the same part reads in the next A, so one barrier per step
//!   suffices, and each part runs B of step t and then A of step t − 1 as one task.
//! - A barrier per step needs the threads to own their cores: on a machine with more runnable
//!   threads than cores, a descheduled partner stalls every step, and 2 threads can be slower
//!   than 1.
//!
//! ## Precision
//!
//! The packed W_hh records the [`Precision`](crate::Precision) of the recurrent product ([`PackedWhh::precision`]),
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
//! Files: this one holds the entry points, the shapes and the two walks; `pack.rs` packs W_hh,
//! `split.rs` cuts a step into parts, `step.rs` is one step of one thread's parts (the fused
//! product and cell), `reference.rs` the scalar
//! references; the team of threads and its barrier are `crate::raw::team`.
//!
//! Leaves out: peephole connections, projections (LSTMP), dropout, and the gradient with
//! respect to W_hh and the input, which the model computes after the walk with a GEMM each
//! over the saved states.

use crate::lanes::check_len;
#[cfg(any(test, all(target_arch = "x86_64", target_feature = "avx512bf16")))]
use crate::precision::Precision;
use crate::raw::team::{Shared, on_team};

mod pack;
mod reference;
mod split;
mod step;
#[cfg(test)]
mod tests;

#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
use pack::for_each_panel;
pub use pack::{PackedWhh, lstm_pack_backward, lstm_pack_forward};
#[cfg(test)]
use reference::{backward_ref_carried, dh_rec_ref};
pub use reference::{lstm_backward_ref, lstm_forward_ref};
use split::Grid;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512bf16"))]
use step::Acc;
use step::{F32, Operand, Product, backward_first_step, backward_step, forward_step};

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
/// Runs on the current rayon pool, one thread per range of parts (see the module docs);
/// results do not depend on the pool size or the split. Every one of those threads must join the walk, so a pool
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
    // The states (row 0 read, rows 1..=T written), the gates read and written, W_hh once.
    crate::launch::bytes(4 * (2 * (t + 1) * b * h + 2 * t * b * G * h) + w_hh_packed.bytes());
    if b * t * h == 0 {
        return;
    }
    let (hs, cs, gates) = (Shared::new(hs), Shared::new(cs), Shared::new(gates));
    let dims = Dims::new(b, h);
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
    on_team(dims.grid.parts(), |seat| {
        let mut operand = Operand::new();
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
    // dgates, dh0 and dc0 written; dhs, gates and cs read; W_hh once.
    let f32s = t * b * G * h + 2 * b * h + t * b * h + t * b * G * h + (t + 1) * b * h;
    crate::launch::bytes(4 * f32s + w_hh_packed.bytes());
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
    let dims = Dims::new(b, h);
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
    bufs: BwdBufs,
    saved: Saved,
    packed: &[P::Elem],
    dims: Dims,
    t: usize,
) {
    on_team(dims.grid.parts(), |seat| {
        let mut operand = Operand::new();
        backward_first_step(bufs, saved, dims, t - 1, seat);
        for step in (0..t).rev() {
            // dgates_t is complete before anyone multiplies it by W_hh.
            seat.wait();
            // dh_rec from dgates_t, and the cell backward of step t - 1, part by part.
            backward_step::<P>(bufs, saved, packed, dims, step, seat, &mut operand);
        }
    });
}

/// Batch size and hidden size of a walk, and how its steps are cut into parts.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    grid: Grid,
}

impl Dims {
    /// The walk's dimensions, its steps split for the pool it plans for.
    fn new(b: usize, h: usize) -> Self {
        let grid = Grid::new(b, h, crate::parallel::workers());
        Dims { b, h, grid }
    }
}

/// What the backward walk reads from the forward pass and from above.
#[derive(Clone, Copy)]
struct Saved<'a> {
    dhs: &'a [f32],
    gates: &'a [f32],
    cs: &'a [f32],
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
