//! The scalar references of the walk, forward and backward, in any [`Precision`] of the
//! recurrent product: what the tests hold the fused kernels to. Leaves out: speed.

use super::{G, LstmDims, Saved, check_backward, check_forward};
use crate::lanes::check_len;
use crate::precision::{Precision, round_bf16};

/// The operands of the recurrent product as `precision` sees them: as they are in fp32,
/// rounded to bfloat16 in bf16 (the references' rounding).
fn operand_rounding(precision: Precision) -> fn(f32) -> f32 {
    match precision {
        Precision::F32 => |x| x,
        Precision::Bf16 => round_bf16,
    }
}

/// Scalar reference for [`lstm_forward`](super::lstm_forward), on the unpacked W_hh (4H, H): the textbook loops.
/// In `Bf16` the recurrent product's operands, W_hh and h_{t-1}, are rounded to bfloat16
/// ([`round_bf16`]) and their products summed in fp32; everything else is fp32 either way.
/// (Exactly `precision`: pass [`PackedWhh::precision`](super::PackedWhh::precision) to compare with a walk.)
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

/// Scalar reference for [`lstm_backward`](super::lstm_backward), on the unpacked W_hh (4H, H). In `Bf16` the
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
pub(super) fn backward_ref_carried(
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
pub(super) fn dh_rec_ref(dh: &mut [f32], da: &[f32], w_hh: &[f32], h: usize, precision: Precision) {
    let round = operand_rounding(precision);
    for (k, dh) in dh.iter_mut().enumerate() {
        *dh = (0..G * h)
            .map(|r| round(da[r]) * round(w_hh[r * h + k]))
            .sum();
    }
}
