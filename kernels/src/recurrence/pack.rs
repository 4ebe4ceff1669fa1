//! Packing W_hh for the walk: [`PackedWhh`] and its panels of `LANES` hidden units, in the
//! forward (`[k][gate][lane]`) and backward (`[j][gate][lane]`) layouts, fp32 or bf16 pairs.
//! Leaves out: the walk itself (`mod.rs`, `step.rs`).

use super::{Backward, Forward, G, Layout};
use crate::lanes::check_len;
use crate::precision::Precision;
use crate::simd::LANES;
use rayon::prelude::*;
use std::marker::PhantomData;

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
    pub(super) data: Vec<u32>,
    h: usize,
    pub(super) precision: Precision,
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
        self.h = h;
        self.precision = precision.effective();
        let depth = match self.precision {
            Precision::F32 => h,
            Precision::Bf16 => h.div_ceil(2),
        };
        // The tasks of `for_each_panel`.
        let panels = h.div_ceil(LANES);
        crate::launch::ways(panels * depth.div_ceil(rows_per_task(panels, depth)));
        // Every element is written by the packing, so the old contents need not be cleared.
        self.data.resize(h.div_ceil(LANES) * depth * G * LANES, 0);
        // W_hh read once, the packing written once.
        crate::launch::bytes(4 * w_hh.len() + self.bytes());
    }

    /// Panics unless this packing is for hidden size `h` (a walk's argument).
    #[track_caller]
    pub(super) fn check(&self, kernel: &str, h: usize) {
        assert!(
            self.h == h,
            "{kernel}: w_hh_packed was packed for H = {}, the walk has H = {h}",
            self.h
        );
    }

    /// The fp32 panels (for a packing whose precision is `F32`).
    pub(super) fn fp32(&self) -> &[f32] {
        debug_assert_eq!(self.precision, Precision::F32);
        bytemuck::cast_slice(&self.data)
    }
}

/// Depth rows (of `G·LANES` elements) per task when `panels` panels of `depth` rows each are
/// packed: whole panels where they are enough tasks for the planned pool
/// ([`crate::parallel::target_tasks`]), else each panel cut into equal runs of rows.
pub(super) fn rows_per_task(panels: usize, depth: usize) -> usize {
    let pieces = crate::parallel::target_tasks()
        .div_ceil(panels.max(1))
        .clamp(1, depth.max(1));
    depth.div_ceil(pieces).max(1)
}

/// Runs `f(u, d0, rows)` on runs of depth rows of the packing's panels (one panel per LANES
/// hidden units, `depth` rows of `G·LANES` elements each): `rows` holds rows `d0..` of panel
/// `u`, [`rows_per_task`] of them (fewer at a panel's end). In parallel, one task per run, in
/// the fork the packing stated (`prepare`). Every element is written by exactly one task, so
/// the cut changes nothing in the packing.
pub(super) fn for_each_panel<T: Send>(
    data: &mut [T],
    depth: usize,
    f: impl Fn(usize, usize, &mut [T]) + Sync + Send,
) {
    let row = G * LANES;
    let panel = depth * row;
    if panel == 0 {
        // h = 0 has no panels.
        return;
    }
    let per = rows_per_task(data.len() / panel, depth);
    let mut runs: Vec<(usize, usize, &mut [T])> = Vec::new();
    for (u, p) in data.chunks_mut(panel).enumerate() {
        for (i, rows) in p.chunks_mut(per * row).enumerate() {
            runs.push((u, i * per, rows));
        }
    }
    runs.into_par_iter()
        .enumerate()
        .for_each(|(i, (u, d0, rows))| {
            let _task = crate::launch::task(i);
            f(u, d0, rows)
        });
}

/// Packs W_hh (4H, H), PyTorch layout (row `g·H + j` holds gate g of unit j), for
/// [`lstm_forward`](super::lstm_forward) in `precision`. fp32: `panel[u][k][g][l] = W_hh[g·H + u·LANES + l][k]`;
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
        Precision::Bf16 => super::bf16::pack_forward(&mut packed.data, w_hh, h),
        _ => {
            let data = bytemuck::cast_slice_mut(&mut packed.data);
            for_each_panel(data, h, |u, k0, rows| {
                for g in 0..G {
                    for l in 0..LANES {
                        let j = u * LANES + l;
                        let dst = rows[g * LANES + l..].iter_mut().step_by(G * LANES);
                        if j < h {
                            let row = &w_hh[(g * h + j) * h + k0..(g * h + j + 1) * h];
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

/// Packs W_hh (4H, H) for [`lstm_backward`](super::lstm_backward) in `precision`. fp32:
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
        Precision::Bf16 => super::bf16::pack_backward(&mut packed.data, w_hh, h),
        _ => {
            let data = bytemuck::cast_slice_mut(&mut packed.data);
            for_each_panel(data, h, |q, j0, rows| {
                let k0 = q * LANES;
                let n = LANES.min(h - k0);
                for (j, unit) in (j0..).zip(rows.chunks_exact_mut(G * LANES)) {
                    for (g, dst) in unit.chunks_exact_mut(LANES).enumerate() {
                        dst[..n].copy_from_slice(&w_hh[(g * h + j) * h + k0..][..n]);
                        dst[n..].fill(0.0);
                    }
                }
            });
        }
    }
}
