//! TEMPORARY scalar stand-ins for pointwise kernels that are being written on the `pointwise`
//! branch (issue 3) and are not on main yet: the same names, signatures and contracts as there
//! (`kernels::{embedding, elementwise, cross_entropy, optim}`), so that switching is a change
//! of `use` lines. Delete this file when those kernels land; nothing here is meant to be fast.

/// As `kernels::embedding::embedding_forward`: `out[r] = table[ids[r]]`, rows of width c.
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], c: usize) {
    assert_eq!(out.len(), ids.len() * c);
    for (row, &id) in out.chunks_exact_mut(c.max(1)).zip(ids) {
        row.copy_from_slice(&table[id as usize * c..][..c]);
    }
}

/// As `kernels::embedding::embedding_backward`: `dtable[ids[r]] += dout[r]`, rows in order.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    assert_eq!(dout.len(), ids.len() * c);
    for (row, &id) in dout.chunks_exact(c.max(1)).zip(ids) {
        for (d, &g) in dtable[id as usize * c..][..c].iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// As `kernels::elementwise::bias_forward`: `out[r, j] += bias[j]`.
pub fn bias_forward(out: &mut [f32], bias: &[f32], n: usize, oc: usize) {
    assert_eq!(out.len(), n * oc);
    for row in out.chunks_exact_mut(oc.max(1)) {
        row.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
    }
}

/// As `kernels::elementwise::bias_backward`: `dbias[j] += Σ_r dout[r, j]`.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], n: usize, oc: usize) {
    assert_eq!(dout.len(), n * oc);
    let mut sum = vec![0.0f32; oc];
    for row in dout.chunks_exact(oc.max(1)) {
        sum.iter_mut().zip(row).for_each(|(s, &d)| *s += d);
    }
    dbias.iter_mut().zip(&sum).for_each(|(d, &s)| *d += s);
}

/// As `kernels::cross_entropy::cross_entropy_fused_inplace`: per-row losses, the gradient of
/// the mean loss written over the logits, the mean returned.
pub fn cross_entropy_fused_inplace(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    n: usize,
    v: usize,
    _ignore_index: Option<u32>,
) -> f32 {
    let inv_n = 1.0 / n.max(1) as f64;
    let mut total = 0.0f64;
    for r in 0..n {
        let row = &mut logits[r * v..][..v];
        let t = targets[r] as usize;
        assert!(t < v, "cross_entropy: target {t} >= V = {v}");
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)) as f64;
        let s: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        let loss = m + s.ln() - row[t] as f64;
        losses[r] = loss as f32;
        total += loss;
        for x in row.iter_mut() {
            *x = (((*x as f64 - m).exp() / s) * inv_n) as f32;
        }
        row[t] -= inv_n as f32;
    }
    (total * inv_n) as f32
}

/// As `kernels::optim::AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// As `kernels::optim::Sgd`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// As `kernels::optim::adamw_step` (PyTorch's AdamW at step `t` ≥ 1).
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamW,
    t: u64,
) {
    let bc1 = 1.0 - (cfg.beta1 as f64).powf(t as f64);
    let bc2 = 1.0 - (cfg.beta2 as f64).powf(t as f64);
    let decay = (1.0 - cfg.lr as f64 * cfg.weight_decay as f64) as f32;
    let step_size = (cfg.lr as f64 / bc1) as f32;
    let inv_bc2_sqrt = (1.0 / bc2.sqrt()) as f32;
    for i in 0..params.len() {
        let g = grads[i];
        m[i] += (1.0 - cfg.beta1) * (g - m[i]);
        v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
        let denom = v[i].sqrt() * inv_bc2_sqrt + cfg.eps;
        params[i] = params[i] * decay - step_size * (m[i] / denom);
    }
}

/// As `kernels::optim::sgd_step` (PyTorch's SGD at step `t` ≥ 1: coupled weight decay,
/// the buffer starts as a copy of the first gradient).
pub fn sgd_step(params: &mut [f32], grads: &[f32], buf: &mut [f32], cfg: &Sgd, t: u64) {
    for i in 0..params.len() {
        let mut d = grads[i] + cfg.weight_decay * params[i];
        if cfg.momentum != 0.0 {
            buf[i] = if t == 1 {
                d
            } else {
                cfg.momentum * buf[i] + (1.0 - cfg.dampening) * d
            };
            d = if cfg.nesterov {
                d + cfg.momentum * buf[i]
            } else {
                buf[i]
            };
        }
        params[i] -= cfg.lr * d;
    }
}

/// As `kernels::optim::global_norm`: √(Σ x²) over all slices, summed in f64.
pub fn global_norm(slices: &[&[f32]]) -> f32 {
    let sum: f64 = slices
        .iter()
        .flat_map(|s| s.iter())
        .map(|&x| x as f64 * x as f64)
        .sum();
    sum.sqrt() as f32
}
