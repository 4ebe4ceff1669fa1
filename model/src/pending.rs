//! TEMPORARY scalar stand-ins for pointwise kernels that are being written on the `pointwise`
//! branch (issue 3) and are not on main yet. Same argument order and contracts as there
//! (outputs first; parameter gradients accumulate, activation gradients overwrite), so that
//! switching is a change of `use` lines. Delete this file when those kernels land; nothing
//! here is meant to be fast.

/// `out[r] = table[ids[r]]` for r in 0..n rows of width c.
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: &[f32], n: usize, c: usize) {
    assert_eq!(out.len(), n * c);
    for (row, &id) in out.chunks_exact_mut(c.max(1)).zip(&ids[..n]) {
        row.copy_from_slice(&table[id as usize * c..][..c]);
    }
}

/// `dtable[ids[r]] += dout[r]`, rows in order.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], n: usize, c: usize) {
    assert_eq!(dout.len(), n * c);
    for (row, &id) in dout.chunks_exact(c.max(1)).zip(&ids[..n]) {
        for (d, &g) in dtable[id as usize * c..][..c].iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// `dbias[j] += Σ_r dout[r, j]`.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], n: usize, c: usize) {
    assert_eq!(dout.len(), n * c);
    for j in 0..c {
        let s: f64 = (0..n).map(|r| dout[r * c + j] as f64).sum();
        dbias[j] += s as f32;
    }
}

/// Fused softmax cross-entropy, gradient over the logits, mean over rows.
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

/// AdamW step with bias correction and decoupled weight decay; `grad_scale` multiplies every
/// gradient first (gradient clipping).
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    step: u64,
    grad_scale: f32,
) {
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    for i in 0..params.len() {
        let g = grads[i] * grad_scale;
        m[i] = beta1 * m[i] + (1.0 - beta1) * g;
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
        let update = (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
        params[i] -= lr * (update + weight_decay * params[i]);
    }
}

/// SGD with momentum (PyTorch's form: buf = μ·buf + g, p -= lr·buf) and decoupled weight
/// decay.
pub fn sgd(
    params: &mut [f32],
    grads: &[f32],
    buf: &mut [f32],
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    grad_scale: f32,
) {
    for i in 0..params.len() {
        buf[i] = momentum * buf[i] + grads[i] * grad_scale;
        params[i] -= lr * (buf[i] + weight_decay * params[i]);
    }
}

/// Euclidean norm, summed in f64.
pub fn norm(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32
}
