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
//! Every output element is computed by the same sequence of operations whatever the thread
//! count and blocking (the sum over k runs in order; backward keeps one partial sum per gate
//! and adds them as (i + f) + (g + o)), so results are bitwise identical on any pool size.
//!
//! Leaves out: peephole connections, projections (LSTMP), dropout, and the gradient with
//! respect to W_hh and the input, which the model computes after the walk with a GEMM each
//! over the saved states.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::lanes::{Block, check_len};
use crate::math::{sigmoid, tanh};
use crate::simd::{F32s, LANES, load};

/// Gates per hidden unit (i, f, g, o).
const G: usize = 4;

/// Spins before a waiting thread starts yielding its core (a partner thread that was
/// descheduled on a busy machine should not be starved by our spinning). A spin is a `pause`,
/// about 24 ns on Zen 5, so this waits ~25 µs: far longer than the partner's lag on a quiet
/// machine (about a microsecond), far shorter than a scheduler time slice.
const SPIN_LIMIT: u32 = 1 << 10;

/// Number of floats [`lstm_pack_forward`] and [`lstm_pack_backward`] write for hidden size `h`:
/// `ceil(h / LANES)` panels of `h × 4 × LANES`.
pub fn lstm_packed_len(h: usize) -> usize {
    h.div_ceil(LANES) * h * G * LANES
}

/// Checks a packing's arguments and returns its panels (one per LANES hidden units), in
/// parallel, with their index.
fn panels_of<'a>(
    kernel: &str,
    packed: &'a mut [f32],
    w_hh: &[f32],
    h: usize,
) -> rayon::iter::Enumerate<rayon::slice::ChunksMut<'a, f32>> {
    check_len(
        kernel,
        "w_hh",
        w_hh.len(),
        G * h * h,
        format_args!("(4H, H)"),
    );
    check_len(
        kernel,
        "packed",
        packed.len(),
        lstm_packed_len(h),
        format_args!("(lstm_packed_len(H))"),
    );
    crate::launch::ways(h.div_ceil(LANES));
    // h = 0 has no panels; chunks of 0 elements would panic.
    packed.par_chunks_mut((h * G * LANES).max(1)).enumerate()
}

/// Packs W_hh (4H, H), PyTorch layout (row `g·H + j` holds gate g of unit j), for
/// [`lstm_forward`]: `packed[u][k][g][l] = W_hh[g·H + u·LANES + l][k]`, zero for units ≥ H.
pub fn lstm_pack_forward(packed: &mut [f32], w_hh: &[f32], h: usize) {
    let _launch = crate::launch::start(1);
    panels_of("lstm_pack_forward", packed, w_hh, h).for_each(|(u, panel)| {
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

/// Packs W_hh (4H, H) for [`lstm_backward`]: `packed[q][j][g][l] = W_hh[g·H + j][q·LANES + l]`,
/// zero for columns ≥ H.
pub fn lstm_pack_backward(packed: &mut [f32], w_hh: &[f32], h: usize) {
    let _launch = crate::launch::start(1);
    panels_of("lstm_pack_backward", packed, w_hh, h).for_each(|(q, panel)| {
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
/// - `w_hh_packed`: W_hh packed by [`lstm_pack_forward`].
///
/// Runs on the current rayon pool, one thread per panel range (see the module docs); results
/// do not depend on the pool size. Every one of those threads must join the walk, so a pool
/// thread blocked elsewhere (on a lock or a channel the caller holds) stalls it. Walks started
/// concurrently on one pool, or from inside its parallel iterators, take turns (tested).
#[allow(clippy::too_many_arguments)]
pub fn lstm_forward(
    hs: &mut [f32],
    cs: &mut [f32],
    gates: &mut [f32],
    w_hh_packed: &[f32],
    b: usize,
    t: usize,
    h: usize,
) {
    const K: &str = "lstm_forward";
    // T dependent steps: the critical path this walk puts on a training step.
    let _launch = crate::launch::start(t as u64);
    check_forward(K, hs, cs, gates, b, t, h);
    check_len(
        K,
        "w_hh_packed",
        w_hh_packed.len(),
        lstm_packed_len(h),
        format_args!("(lstm_packed_len(H))"),
    );
    if b * t * h == 0 {
        return;
    }
    let (hs, cs, gates) = (Shared::new(hs), Shared::new(cs), Shared::new(gates));
    let dims = Dims { b, h };
    on_team(h.div_ceil(LANES), |units, barrier| {
        for step in 0..t {
            forward_step(&hs, &cs, &gates, w_hh_packed, dims, step, units.clone());
            // h_t is complete before anyone reads it as h_{t-1}.
            barrier.wait();
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
/// - `w_hh_packed`: W_hh packed by [`lstm_pack_backward`].
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
    w_hh_packed: &[f32],
    b: usize,
    t: usize,
    h: usize,
) {
    const K: &str = "lstm_backward";
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
        b,
        t,
        h,
    );
    check_len(
        K,
        "w_hh_packed",
        w_hh_packed.len(),
        lstm_packed_len(h),
        format_args!("(lstm_packed_len(H))"),
    );
    // dh0 and dc0 carry dh_rec and dc_rec through the walk, starting from zero at t = T.
    dh0.fill(0.0);
    dc0.fill(0.0);
    if b * t * h == 0 {
        return;
    }
    let (dgates, dh, dc) = (Shared::new(dgates), Shared::new(dh0), Shared::new(dc0));
    let dims = Dims { b, h };
    on_team(h.div_ceil(LANES), |units, barrier| {
        for step in (0..t).rev() {
            let saved = Saved { dhs, gates, cs };
            cell_backward_step(&dgates, &dh, &dc, saved, dims, step, units.clone());
            // dgates_t is complete before anyone multiplies it by W_hh.
            barrier.wait();
            recurrent_backward_step(&dh, &dgates, w_hh_packed, dims, step, units.clone());
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

/// Runs `walk(own panel range, barrier)` on `min(pool size, panels)` threads of the current
/// rayon pool: thread p owns panels `p·n/P .. (p+1)·n/P` for the whole walk.
fn on_team(panels: usize, walk: impl Fn(std::ops::Range<usize>, &SpinBarrier) + Sync) {
    crate::launch::ways(panels);
    let parties = rayon::current_num_threads().min(panels).max(1);
    let barrier = SpinBarrier::new(parties);
    let own = |p: usize| p * panels / parties..(p + 1) * panels / parties;
    if parties == 1 {
        walk(own(0), &barrier);
    } else {
        rayon::broadcast(|ctx| {
            if ctx.index() < parties {
                walk(own(ctx.index()), &barrier);
            }
        });
    }
}

/// A sense-counting spin barrier for the threads of one walk. Arrival is a release and
/// departure an acquire, so everything written before `wait` is visible after it.
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    parties: usize,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        SpinBarrier {
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            parties,
        }
    }

    fn wait(&self) {
        if self.parties == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            // Last to arrive: reset for the next round, then release the others.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation
                .store(generation.wrapping_add(1), Ordering::Release);
        } else {
            let mut spins = 0;
            while self.generation.load(Ordering::Acquire) == generation {
                if spins < SPIN_LIMIT {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A buffer the threads of a walk write in disjoint parts (their own hidden units) and read
/// in full only after a barrier. It hands out slices by range; the caller promises, per
/// call, that no other thread writes (for [`Shared::get`]) or touches (for
/// [`Shared::get_mut`]) that range while the slice lives.
struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Shared` is a `&mut [f32]` split between threads; every access goes through the
// `unsafe` getters below, whose callers guarantee the ranges they use are race-free.
unsafe impl Send for Shared<'_> {}
// SAFETY: as above.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// # Safety
    /// No thread may write `start..start + len` while the returned slice is alive.
    unsafe fn get(&self, start: usize, len: usize) -> &'a [f32] {
        assert!(start + len <= self.len, "Shared::get out of bounds");
        // SAFETY: in bounds (checked above) of a live `&'a mut [f32]`; the caller rules out
        // concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr.add(start), len) }
    }

    /// # Safety
    /// No other thread may read or write `start..start + len` while the returned slice is
    /// alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get_mut(&self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(start + len <= self.len, "Shared::get_mut out of bounds");
        // SAFETY: in bounds (checked above); the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
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
    ($kernel:ident, $row:ident, $b:expr, $nu:expr, $packed:expr, $own:expr, $h:expr, $reverse:expr) => {{
        let (b, nu, own, h, packed, reverse) = ($b, $nu, $own, $h, $packed, $reverse);
        let panel = h * G * LANES;
        let order = |i: usize, n: usize| if reverse { n - 1 - i } else { i };
        if b <= 2 {
            let mut r0 = $row(0);
            let mut r1 = (b == 2).then(|| $row(1));
            let pairs = nu.div_ceil(2);
            for i in 0..pairs {
                let u = 2 * order(i, pairs);
                let p = &packed[u * panel..];
                match (&mut r1, nu - u >= 2) {
                    (None, true) => $kernel::<1, 2>(&mut [&mut r0], p, u, own, h),
                    (None, false) => $kernel::<1, 1>(&mut [&mut r0], p, u, own, h),
                    (Some(r1), true) => $kernel::<2, 2>(&mut [&mut r0, r1], p, u, own, h),
                    (Some(r1), false) => $kernel::<2, 1>(&mut [&mut r0, r1], p, u, own, h),
                }
            }
        } else {
            for i in 0..nu {
                let u = order(i, nu);
                let p = &packed[u * panel..];
                let mut b0 = 0;
                while b0 + 4 <= b {
                    let mut r: [_; 4] = std::array::from_fn(|i| $row(b0 + i));
                    $kernel::<4, 1>(&mut r.each_mut(), p, u, own, h);
                    b0 += 4;
                }
                match b - b0 {
                    0 => {}
                    1 => $kernel::<1, 1>(&mut [&mut $row(b0)], p, u, own, h),
                    2 => $kernel::<2, 1>(&mut [&mut $row(b0), &mut $row(b0 + 1)], p, u, own, h),
                    _ => {
                        let mut r: [_; 3] = std::array::from_fn(|i| $row(b0 + i));
                        $kernel::<3, 1>(&mut r.each_mut(), p, u, own, h)
                    }
                }
            }
        }
    }};
}

/// One row of the batch at one forward step, restricted to the calling thread's units
/// (`gates`, `c`, `h`, `cprev`: units `j0..j1`) except `hprev`, which is all H.
struct FwdRow<'a> {
    gates: [&'a mut [f32]; G],
    c: &'a mut [f32],
    h: &'a mut [f32],
    cprev: &'a [f32],
    hprev: &'a [f32],
}

/// Forward step `step` for the units of panels `units`, all rows of the batch.
fn forward_step(
    hs: &Shared,
    cs: &Shared,
    gates: &Shared,
    packed: &[f32],
    Dims { b, h }: Dims,
    step: usize,
    units: std::ops::Range<usize>,
) {
    let (j0, j1) = (units.start * LANES, (units.end * LANES).min(h));
    let row = |bi: usize| {
        let (prev, next) = (step * b * h + bi * h, (step + 1) * b * h + bi * h);
        let g0 = (step * b + bi) * G * h;
        // SAFETY: during a step, rows `step` of hs and cs are only read (they were completed
        // before the last barrier); row `step + 1` and `gates[step]` are written by each
        // thread in its own units `j0..j1` only, and no thread reads them before the barrier.
        unsafe {
            FwdRow {
                gates: std::array::from_fn(|g| gates.get_mut(g0 + g * h + j0, j1 - j0)),
                c: cs.get_mut(next + j0, j1 - j0),
                h: hs.get_mut(next + j0, j1 - j0),
                cprev: cs.get(prev + j0, j1 - j0),
                hprev: hs.get(prev, h),
            }
        }
    };
    let packed = &packed[units.start * h * G * LANES..units.end * h * G * LANES];
    drive_blocks!(
        forward_block,
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
fn forward_block<const R: usize, const U: usize>(
    rows: &mut [&mut FwdRow; R],
    panels: &[f32],
    u: usize,
    own: usize,
    h: usize,
) {
    let panel = h * G * LANES;
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
    let hprev: [&[f32]; R] = std::array::from_fn(|r| &rows[r].hprev[..h]);
    let mut ws: [_; U] =
        std::array::from_fn(|v| panels[v * panel..][..panel].chunks_exact(G * LANES));
    for k in 0..h {
        let w: [[F32s; G]; U] = std::array::from_fn(|v| {
            let p = ws[v].next().unwrap();
            std::array::from_fn(|g| load(&p[g * LANES..]))
        });
        for r in 0..R {
            let x = F32s::splat(hprev[r][k]);
            for v in 0..U {
                for g in 0..G {
                    acc[r][v][g] = w[v][g].mul_add(x, acc[r][v][g]);
                }
            }
        }
    }
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
    units: std::ops::Range<usize>,
) {
    let (j0, j1) = (units.start * LANES, (units.end * LANES).min(h));
    let own = j1 - j0;
    for bi in 0..b {
        let g0 = (step * b + bi) * G * h;
        let (prev, next) = (step * b * h + bi * h, (step + 1) * b * h + bi * h);
        // SAFETY: each thread touches only its own units `j0..j1` of dh, dc and dgates[step];
        // dgates[step] is read by the others only after the barrier that follows this phase.
        let (dgi, dgf, dgg, dgo, dh, dc) = unsafe {
            (
                dgates.get_mut(g0 + j0, own),
                dgates.get_mut(g0 + h + j0, own),
                dgates.get_mut(g0 + 2 * h + j0, own),
                dgates.get_mut(g0 + 3 * h + j0, own),
                dh.get_mut(bi * h + j0, own),
                dc.get_mut(bi * h + j0, own),
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

/// Phase B of backward step `step`: `dh_rec = dgates[step]·W_hh` for the thread's own units.
fn recurrent_backward_step(
    dh: &Shared,
    dgates: &Shared,
    packed: &[f32],
    Dims { b, h }: Dims,
    step: usize,
    units: std::ops::Range<usize>,
) {
    let (j0, j1) = (units.start * LANES, (units.end * LANES).min(h));
    let own = j1 - j0;
    // SAFETY: dgates[step] is complete (barrier) and nobody writes it any more; dh is
    // written only in the thread's own units.
    let row = |bi: usize| unsafe {
        BwdRow {
            dgates: dgates.get((step * b + bi) * G * h, G * h),
            dh: dh.get_mut(bi * h + j0, own),
        }
    };
    let packed = &packed[units.start * h * G * LANES..units.end * h * G * LANES];
    drive_blocks!(
        backward_block,
        row,
        b,
        units.len(),
        packed,
        own,
        h,
        step % 2 == 1
    );
}

/// One row at one backward step: all of its dgates (4H), and dh for the thread's own units.
struct BwdRow<'a> {
    dgates: &'a [f32],
    dh: &'a mut [f32],
}

/// The backward micro-kernel: R rows × U panels, `dh = Σ_j Σ_g dgates[g·H + j]·W_hh[g·H + j]`
/// with one partial sum per gate, added as (i + f) + (g + o).
// Register tiles read best as index loops over rows, panels and gates.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn backward_block<const R: usize, const U: usize>(
    rows: &mut [&mut BwdRow; R],
    panels: &[f32],
    u: usize,
    own: usize,
    h: usize,
) {
    let panel = h * G * LANES;
    let mut acc = [[[F32s::ZERO; G]; U]; R];
    let dg: [[&[f32]; G]; R] =
        std::array::from_fn(|r| std::array::from_fn(|g| &rows[r].dgates[g * h..][..h]));
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
fn check_forward(
    kernel: &str,
    hs: &[f32],
    cs: &[f32],
    gates: &[f32],
    b: usize,
    t: usize,
    h: usize,
) {
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
fn check_backward(kernel: &str, lens: [usize; 6], b: usize, t: usize, h: usize) {
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

/// Scalar reference for [`lstm_forward`], on the unpacked W_hh (4H, H): the textbook loops.
#[allow(clippy::too_many_arguments)]
pub fn lstm_forward_ref(
    hs: &mut [f32],
    cs: &mut [f32],
    gates: &mut [f32],
    w_hh: &[f32],
    b: usize,
    t: usize,
    h: usize,
) {
    const K: &str = "lstm_forward_ref";
    check_forward(K, hs, cs, gates, b, t, h);
    check_len(K, "w_hh", w_hh.len(), G * h * h, format_args!("(4H, H)"));
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    for step in 0..t {
        for bi in 0..b {
            let hprev = &hs[(step * b + bi) * h..][..h];
            let a = &mut gates[(step * b + bi) * G * h..][..G * h];
            for (r, a) in a.iter_mut().enumerate() {
                *a += w_hh[r * h..][..h]
                    .iter()
                    .zip(hprev)
                    .map(|(w, x)| w * x)
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

/// Scalar reference for [`lstm_backward`], on the unpacked W_hh (4H, H).
#[allow(clippy::too_many_arguments)]
pub fn lstm_backward_ref(
    dgates: &mut [f32],
    dh0: &mut [f32],
    dc0: &mut [f32],
    dhs: &[f32],
    gates: &[f32],
    cs: &[f32],
    w_hh: &[f32],
    b: usize,
    t: usize,
    h: usize,
) {
    const K: &str = "lstm_backward_ref";
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
        b,
        t,
        h,
    );
    check_len(K, "w_hh", w_hh.len(), G * h * h, format_args!("(4H, H)"));
    dh0.fill(0.0);
    dc0.fill(0.0);
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
            for k in 0..h {
                dh0[bi * h + k] = (0..G * h).map(|r| da[r] * w_hh[r * h + k]).sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TestRng, assert_close};

    /// Random inputs for a walk: initial state, input projections, W_hh, output gradients.
    struct Case {
        b: usize,
        t: usize,
        h: usize,
        hs: Vec<f32>,
        cs: Vec<f32>,
        gates: Vec<f32>,
        w_hh: Vec<f32>,
        dhs: Vec<f32>,
    }

    fn case(b: usize, t: usize, h: usize, seed: u64) -> Case {
        let mut rng = TestRng::new(seed);
        let mut hs = vec![f32::NAN; (t + 1) * b * h];
        let mut cs = hs.clone();
        hs[..b * h].copy_from_slice(&rng.vec(b * h, 0.5));
        cs[..b * h].copy_from_slice(&rng.vec(b * h, 1.0));
        let scale = 1.0 / (h.max(1) as f32).sqrt();
        Case {
            b,
            t,
            h,
            hs,
            cs,
            gates: rng.vec(t * b * G * h, 2.0),
            w_hh: rng.vec(G * h * h, 2.0 * scale),
            dhs: rng.vec(t * b * h, 1.0),
        }
    }

    fn packed(w_hh: &[f32], h: usize, backward: bool) -> Vec<f32> {
        let mut p = vec![f32::NAN; lstm_packed_len(h)];
        if backward {
            lstm_pack_backward(&mut p, w_hh, h);
        } else {
            lstm_pack_forward(&mut p, w_hh, h);
        }
        p
    }

    fn forward(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut hs, mut cs, mut gates) = (c.hs.clone(), c.cs.clone(), c.gates.clone());
        let p = packed(&c.w_hh, c.h, false);
        lstm_forward(&mut hs, &mut cs, &mut gates, &p, c.b, c.t, c.h);
        (hs, cs, gates)
    }

    fn forward_ref(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut hs, mut cs, mut gates) = (c.hs.clone(), c.cs.clone(), c.gates.clone());
        lstm_forward_ref(&mut hs, &mut cs, &mut gates, &c.w_hh, c.b, c.t, c.h);
        (hs, cs, gates)
    }

    fn backward(c: &Case, gates: &[f32], cs: &[f32]) -> [Vec<f32>; 3] {
        let (b, h) = (c.b, c.h);
        let mut out = [
            vec![f32::NAN; gates.len()],
            vec![f32::NAN; b * h],
            vec![f32::NAN; b * h],
        ];
        let p = packed(&c.w_hh, h, true);
        let [dg, dh0, dc0] = &mut out;
        lstm_backward(dg, dh0, dc0, &c.dhs, gates, cs, &p, b, c.t, h);
        out
    }

    fn backward_ref(c: &Case, gates: &[f32], cs: &[f32]) -> [Vec<f32>; 3] {
        let (b, h) = (c.b, c.h);
        let mut out = [
            vec![f32::NAN; gates.len()],
            vec![f32::NAN; b * h],
            vec![f32::NAN; b * h],
        ];
        let [dg, dh0, dc0] = &mut out;
        lstm_backward_ref(dg, dh0, dc0, &c.dhs, gates, cs, &c.w_hh, b, c.t, h);
        out
    }

    fn shapes() -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for h in [1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + 1, 37] {
            for b in [1, 2, 3, 4, 5, 9] {
                for t in [0, 1, 4] {
                    v.push((b, t, h));
                }
            }
        }
        v.extend([(0, 3, 8), (2, 3, 0)]);
        v
    }

    #[test]
    fn packing_places_every_weight() {
        for h in [1, LANES - 1, LANES + 1, 2 * LANES + 3] {
            let w: Vec<f32> = (0..G * h * h).map(|i| i as f32).collect();
            let (pf, pb) = (packed(&w, h, false), packed(&w, h, true));
            for g in 0..G {
                for j in 0..h {
                    for k in 0..h {
                        let want = w[(g * h + j) * h + k];
                        let (u, l) = (j / LANES, j % LANES);
                        assert_eq!(pf[((u * h + k) * G + g) * LANES + l], want);
                        let (q, l) = (k / LANES, k % LANES);
                        assert_eq!(pb[((q * h + j) * G + g) * LANES + l], want);
                    }
                }
            }
            let padding = lstm_packed_len(h) - G * h * h;
            assert_eq!(pf.iter().filter(|&&x| x == 0.0).count(), padding + 1);
            assert_eq!(pb.iter().filter(|&&x| x == 0.0).count(), padding + 1);
        }
    }

    #[test]
    fn forward_matches_reference() {
        for (b, t, h) in shapes() {
            let c = case(b, t, h, (b * 1000 + t * 100 + h) as u64);
            let (hs, cs, gates) = forward(&c);
            let (hr, cr, gr) = forward_ref(&c);
            let what = format!("B={b} T={t} H={h}");
            assert_close(&hs, &hr, 1e-5, 1e-5, &format!("hs {what}"));
            assert_close(&cs, &cr, 1e-5, 1e-5, &format!("cs {what}"));
            assert_close(&gates, &gr, 1e-5, 1e-5, &format!("gates {what}"));
        }
    }

    #[test]
    fn backward_matches_reference() {
        for (b, t, h) in shapes() {
            let c = case(b, t, h, (b * 1000 + t * 100 + h + 7) as u64);
            let (_, cs, gates) = forward_ref(&c);
            let got = backward(&c, &gates, &cs);
            let want = backward_ref(&c, &gates, &cs);
            for (name, g, w) in [("dgates", 0, 0), ("dh0", 1, 1), ("dc0", 2, 2)] {
                let what = format!("{name} B={b} T={t} H={h}");
                assert_close(&got[g], &want[w], 1e-4, 1e-5, &what);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        for (b, t, h) in [(1, 7, 3 * LANES + 5), (5, 4, 2 * LANES + 1), (16, 3, 45)] {
            let c = case(b, t, h, 99);
            let run = |threads| {
                pool(threads).install(|| {
                    let (hs, cs, gates) = forward(&c);
                    let grads = backward(&c, &gates, &cs);
                    (hs, cs, gates, grads)
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                let many = run(threads);
                assert!(
                    one == many,
                    "B={b} T={t} H={h}: 1 vs {threads} threads differ"
                );
            }
        }
    }

    /// Walks started concurrently on one pool (parallel tests, a par_iter over models) must
    /// not deadlock: rayon queues each broadcast's jobs on every worker under one lock, in
    /// FIFO order, so all workers run the walks in the same order and never wait on each
    /// other across two of them. (A deadlock hangs this test.)
    #[test]
    fn concurrent_walks_on_one_pool_finish_with_the_same_results() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let c = case(3, 5, 2 * LANES + 7, 17);
        let want = forward(&c);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        assert!(pool.install(|| forward(&c)) == want);
                    }
                });
            }
        });
        // Nested: walks launched from inside the pool's own parallel loop.
        let all: Vec<_> = pool.install(|| {
            use rayon::prelude::*;
            (0..8).into_par_iter().map(|_| forward(&c)).collect()
        });
        assert!(all.iter().all(|got| *got == want));
    }

    /// The reference backward is the gradient of the reference forward: finite differences in
    /// f32 on L = Σ dhs ⊙ h_{1..T} (central, ε = 1e-2 on inputs of order 1, tolerances to
    /// match). With the reference checked here and the fast kernels checked against the
    /// references, the fast backward is the fast forward's gradient.
    #[test]
    fn reference_backward_is_the_gradient_of_reference_forward() {
        let (b, t, h) = (2, 3, 5);
        let c = case(b, t, h, 5);
        let loss = |hs0: &[f32], cs0: &[f32], pre: &[f32]| -> f64 {
            let (mut hs, mut cs, mut gates) = (c.hs.clone(), c.cs.clone(), pre.to_vec());
            hs[..b * h].copy_from_slice(hs0);
            cs[..b * h].copy_from_slice(cs0);
            lstm_forward_ref(&mut hs, &mut cs, &mut gates, &c.w_hh, b, t, h);
            hs[b * h..]
                .iter()
                .zip(&c.dhs)
                .map(|(&x, &d)| x as f64 * d as f64)
                .sum()
        };
        let (h0, c0) = (c.hs[..b * h].to_vec(), c.cs[..b * h].to_vec());
        let (_, cs, gates) = forward_ref(&c);
        let [dg, dh0, dc0] = backward_ref(&c, &gates, &cs);
        let eps = 1e-2;
        let numeric = |which: usize, i: usize| {
            let mut args = [h0.clone(), c0.clone(), c.gates.clone()];
            args[which][i] += eps;
            let up = loss(&args[0], &args[1], &args[2]);
            args[which][i] -= 2.0 * eps;
            let down = loss(&args[0], &args[1], &args[2]);
            ((up - down) / (2.0 * eps as f64)) as f32
        };
        for (which, analytic) in [(0, &dh0), (1, &dc0), (2, &dg)] {
            let fd: Vec<f32> = (0..analytic.len()).map(|i| numeric(which, i)).collect();
            assert_close(analytic, &fd, 2e-2, 2e-3, &format!("argument {which}"));
        }
    }

    #[test]
    #[should_panic(expected = "lstm_forward: gates has 3 elements")]
    fn wrong_lengths_panic_with_the_argument_name() {
        let (mut hs, mut cs) = (vec![0.0; 2], vec![0.0; 2]);
        lstm_forward(&mut hs, &mut cs, &mut [0.0; 3], &[0.0; LANES * 4], 1, 1, 1);
    }
}
