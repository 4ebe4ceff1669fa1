//! TEMPORARY scalar stand-ins for kernels that are being written in `kernels` (issue 3's
//! pointwise kernels, on branch `pointwise`). Each has the llm.c-style signature the model
//! calls, outputs first; when the real kernel lands on main, the model switches to it and this
//! file is deleted. No SIMD here on purpose (STYLE rule: SIMD lives in `kernels` only); these
//! are plain loops, correct first.
//!
//! Conventions as in `kernels`: activation gradients are overwritten, parameter gradients
//! accumulated (`+=`); a wrong slice length is a bug and panics.

/// `out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]`.
pub fn encoder_forward(
    out: &mut [f32],
    inp: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(inp.len(), b * t, "encoder_forward: inp must be (B, T)");
    assert_eq!(
        out.len(),
        inp.len() * c,
        "encoder_forward: out must be (B, T, C)"
    );
    for (i, (o, &tok)) in out.chunks_exact_mut(c).zip(inp).enumerate() {
        let e = &wte[tok as usize * c..][..c];
        let p = &wpe[(i % t) * c..][..c];
        for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
            *o = e + p;
        }
    }
}

/// `dwte[inp[b,t],:] += dout[b,t,:]`, `dwpe[t,:] += dout[b,t,:]`.
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    inp: &[u32],
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(inp.len(), b * t, "encoder_backward: inp must be (B, T)");
    assert_eq!(
        dout.len(),
        inp.len() * c,
        "encoder_backward: dout must be (B, T, C)"
    );
    for (i, (d, &tok)) in dout.chunks_exact(c).zip(inp).enumerate() {
        for (w, &g) in dwte[tok as usize * c..][..c].iter_mut().zip(d) {
            *w += g;
        }
        for (w, &g) in dwpe[(i % t) * c..][..c].iter_mut().zip(d) {
            *w += g;
        }
    }
}

/// Per row of `inp` (N, C): `out = (x − mean)·rstd·weight + bias`, rstd = 1/√(var + eps);
/// saves mean and rstd (N).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) {
    assert_eq!(out.len(), n * c, "layernorm_forward: out must be (N, C)");
    assert_eq!(
        out.len(),
        inp.len(),
        "layernorm_forward: out must match inp"
    );
    for (((o, x), m), r) in out
        .chunks_exact_mut(c)
        .zip(inp.chunks_exact(c))
        .zip(mean.iter_mut())
        .zip(rstd.iter_mut())
    {
        let mu = x.iter().sum::<f32>() / c as f32;
        let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
        let s = 1.0 / (var + eps).sqrt();
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
            *o = (x - mu) * s * w + b;
        }
        (*m, *r) = (mu, s);
    }
}

/// Gradient of [`layernorm_forward`]: overwrites `dinp`, accumulates `dweight`, `dbias`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) {
    assert_eq!(dinp.len(), n * c, "layernorm_backward: dinp must be (N, C)");
    assert_eq!(
        dinp.len(),
        inp.len(),
        "layernorm_backward: dinp must match inp"
    );
    for ((((di, d), x), &mu), &s) in dinp
        .chunks_exact_mut(c)
        .zip(dout.chunks_exact(c))
        .zip(inp.chunks_exact(c))
        .zip(mean)
        .zip(rstd)
    {
        // dnorm = dout·w; dx = rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm))
        let (mut dn_mean, mut dn_norm_mean) = (0.0f32, 0.0f32);
        for ((&d, &x), &w) in d.iter().zip(x).zip(weight) {
            let norm = (x - mu) * s;
            dn_mean += d * w;
            dn_norm_mean += d * w * norm;
        }
        dn_mean /= c as f32;
        dn_norm_mean /= c as f32;
        for (j, di) in di.iter_mut().enumerate() {
            let norm = (x[j] - mu) * s;
            dbias[j] += d[j];
            dweight[j] += norm * d[j];
            *di = s * (d[j] * weight[j] - dn_mean - norm * dn_norm_mean);
        }
    }
}

const GELU_SCALE: f32 = 0.797_884_6; // √(2/π)

/// GELU, tanh approximation (GPT-2's `gelu_new`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    assert_eq!(out.len(), inp.len(), "gelu_forward: out must match inp");
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = 0.5 * x * (1.0 + (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh());
    }
}

/// Gradient of [`gelu_forward`]: `dinp = gelu'(inp)·dout` (overwrites).
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    assert_eq!(dinp.len(), inp.len(), "gelu_backward: dinp must match inp");
    for ((di, &x), &d) in dinp.iter_mut().zip(inp).zip(dout) {
        let th = (GELU_SCALE * (x + 0.044715 * x * x * x)).tanh();
        let dudx = GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x);
        *di = d * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dudx);
    }
}

/// Adds `bias` (OC) to every row of `out` (N, OC).
pub fn bias_forward(out: &mut [f32], bias: &[f32], n: usize, oc: usize) {
    assert!(
        out.len() == n * oc && bias.len() == oc,
        "bias_forward: shapes"
    );
    for row in out.chunks_exact_mut(bias.len()) {
        for (o, &b) in row.iter_mut().zip(bias) {
            *o += b;
        }
    }
}

/// `dbias += Σ_rows dout` for `dout` (N, OC).
pub fn bias_backward(dbias: &mut [f32], dout: &[f32], n: usize, oc: usize) {
    assert!(
        dout.len() == n * oc && dbias.len() == oc,
        "bias_backward: shapes"
    );
    for row in dout.chunks_exact(dbias.len()) {
        for (d, &g) in dbias.iter_mut().zip(row) {
            *d += g;
        }
    }
}

/// `acc += x` elementwise (the residual's gradient meeting a branch's).
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len(), "add_assign: lengths differ");
    for (a, &x) in acc.iter_mut().zip(x) {
        *a += x;
    }
}

/// Per row of `logits` (N, V): `losses[r] = ln Σ_j e^{logits[r,j]} − logits[r, targets[r]]`;
/// returns the mean (f64 sum in row order). Signature of `kernels::cross_entropy` (branch
/// `pointwise`); `ignore_index` is not supported here.
pub fn cross_entropy_forward(
    losses: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> f32 {
    assert!(ignore_index.is_none() && logits.len() == n * v && losses.len() == n);
    for ((l, z), &tgt) in losses.iter_mut().zip(logits.chunks_exact(v)).zip(targets) {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f32 = z.iter().map(|&x| (x - m).exp()).sum();
        *l = m + sum.ln() - z[tgt as usize];
    }
    (losses.iter().map(|&l| l as f64).sum::<f64>() / n.max(1) as f64) as f32
}

/// Fused softmax + cross-entropy with the gradient written over the logits: on return
/// `logits[r, j] = (softmax(logits[r])_j − [j = targets[r]]) / N` and `losses` as
/// [`cross_entropy_forward`]; returns the mean loss.
pub fn cross_entropy_fused_inplace(
    logits: &mut [f32],
    losses: &mut [f32],
    targets: &[u32],
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
) -> f32 {
    let mean = cross_entropy_forward(losses, logits, targets, n, v, ignore_index);
    let inv_n = 1.0 / n.max(1) as f32;
    for ((z, &l), &tgt) in logits.chunks_exact_mut(v).zip(losses.iter()).zip(targets) {
        let lse = l + z[tgt as usize];
        for z in z.iter_mut() {
            *z = (*z - lse).exp() * inv_n;
        }
        z[tgt as usize] -= inv_n;
    }
    mean
}

/// AdamW hyperparameters (`torch.optim.AdamW`), as `kernels::optim::AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// One AdamW step (Loshchilov & Hutter; PyTorch's update order) at step `t` ≥ 1, in place,
/// decaying every parameter: `p ← p·(1 − lr·wd)`, then Adam with bias correction.
pub fn adamw_step(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamW,
    t: u64,
) {
    let bc1 = 1.0 - cfg.beta1.powi(t as i32);
    let bc2 = 1.0 - cfg.beta2.powi(t as i32);
    for (((p, &g), m), v) in params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *p -= cfg.lr * cfg.weight_decay * *p;
        *m = cfg.beta1 * *m + (1.0 - cfg.beta1) * g;
        *v = cfg.beta2 * *v + (1.0 - cfg.beta2) * g * g;
        *p -= cfg.lr * (*m / bc1) / ((*v / bc2).sqrt() + cfg.eps);
    }
}
