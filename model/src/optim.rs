//! Optimizers over a model's flat parameters, the learning-rate schedule and gradient
//! clipping, with their state saved beside a checkpoint for bit-exact resume.
//!
//! - [`Optimizer`]: AdamW (Loshchilov & Hutter: Adam with bias correction and *decoupled*
//!   weight decay) or SGD with momentum, both with PyTorch's semantics; weight decay applies
//!   only where the [`ParamLayout`] says a tensor decays (matrices and embeddings, not biases
//!   or LayerNorm gains). The update itself is a kernel over contiguous runs of the flat
//!   buffer; this module keeps the state (moments, step count) and the decay runs.
//! - Clipping by the global L2 norm ([`Optimizer::step_clipped`], `clip_grad_norm_`'s rule):
//!   the model's gradients stay as they are; when clipping is needed the update reads a scaled
//!   copy.
//! - [`Schedule`]: linear warmup then cosine decay to a floor (GPT-2/nanoGPT style).
//!
//! State on disk: `optimizer.safetensors` holds the moments as tensors named after PyTorch's
//! optimizer state (`exp_avg.<param>`, `exp_avg_sq.<param>`, `momentum_buffer.<param>`, same
//! shapes as the parameters); the kind, hyperparameters and step count are JSON
//! ([`Optimizer::state_json`]) that `crate::load::save_checkpoint` puts in `state.json`.
//! Leaves out: per-group learning rates, fused multi-tensor tricks, and mixed precision.

use std::ops::Range;
use std::path::Path;

use serde_json::json;

use crate::checkpoint::{self, CheckpointError};
use crate::params::ParamLayout;
use kernels::optim::{self as k, adamw_step, global_norm, sgd_step};

/// AdamW hyperparameters; the defaults are PyTorch's `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Decoupled: each step multiplies decaying parameters by (1 − lr·weight_decay).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// SGD hyperparameters, as `torch.optim.SGD`: `d = g + weight_decay·p` (coupled L2), `buf =
/// momentum·buf + (1 − dampening)·d` (a copy of d at the first step), `p −= lr·buf` (or
/// `lr·(d + momentum·buf)` with Nesterov). Defaults: momentum 0.9, the rest off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Which optimizer, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    AdamW(AdamWConfig),
    Sgd(SgdConfig),
}

/// An optimizer's state over one model's flat parameters.
#[derive(Clone, Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// Updates taken so far (AdamW's bias correction uses step + 1 for the next one).
    step: u64,
    /// AdamW: first moments then second moments (2·N); SGD: the momentum buffer (N).
    state: Vec<f32>,
    /// Maximal runs of consecutive tensors with the same decay flag.
    runs: Vec<(Range<usize>, bool)>,
    /// Names and shapes of `state` as saved.
    state_layout: ParamLayout,
    /// Clipped gradients, when a step needs them (allocated on first use).
    clipped: Vec<f32>,
}

impl Optimizer {
    /// Zero state for a model with parameters laid out as `layout`.
    pub fn new(config: OptimizerConfig, layout: &ParamLayout) -> Self {
        let prefixes: &[&str] = match config {
            OptimizerConfig::AdamW(_) => &["exp_avg", "exp_avg_sq"],
            OptimizerConfig::Sgd(_) => &["momentum_buffer"],
        };
        let mut state_layout = ParamLayout::new();
        for prefix in prefixes {
            for t in layout.tensors() {
                state_layout.push(format!("{prefix}.{}", t.name), &t.shape);
            }
        }
        let mut runs: Vec<(Range<usize>, bool)> = Vec::new();
        for t in layout.tensors() {
            match runs.last_mut() {
                Some((r, decays)) if *decays == t.decays() && r.end == t.offset => {
                    r.end = t.range().end
                }
                _ => runs.push((t.range(), t.decays())),
            }
        }
        Optimizer {
            config,
            step: 0,
            state: vec![0.0; state_layout.len()],
            runs,
            state_layout,
            clipped: Vec::new(),
        }
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        let n = self.state_layout.len() / self.moments();
        assert_eq!(
            params.len(),
            n,
            "Optimizer::step: params do not match the layout"
        );
        assert_eq!(
            grads.len(),
            n,
            "Optimizer::step: grads do not match the layout"
        );
        self.step += 1;
        let (first, second) = self.state.split_at_mut(n);
        for (r, decays) in &self.runs {
            let (p, g) = (&mut params[r.clone()], &grads[r.clone()]);
            match self.config {
                OptimizerConfig::AdamW(c) => {
                    let cfg = k::AdamW {
                        lr,
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        weight_decay: if *decays { c.weight_decay } else { 0.0 },
                    };
                    let (m, v) = (&mut first[r.clone()], &mut second[r.clone()]);
                    adamw_step(p, m, v, g, &cfg, self.step);
                }
                OptimizerConfig::Sgd(c) => {
                    let cfg = k::Sgd {
                        lr,
                        momentum: c.momentum,
                        dampening: c.dampening,
                        weight_decay: if *decays { c.weight_decay } else { 0.0 },
                        nesterov: c.nesterov,
                    };
                    sgd_step(p, &mut first[r.clone()], g, &cfg, self.step);
                }
            }
        }
    }

    /// [`Self::step`] with the gradients clipped to global L2 norm `max_norm` as PyTorch's
    /// `clip_grad_norm_` does (scaled by `max_norm / (norm + 1e-6)` when that is below 1).
    /// Returns the norm before clipping; a non-finite norm is returned and the step taken
    /// unclipped, so the caller sees the blow-up.
    pub fn step_clipped(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        lr: f32,
        max_norm: f32,
    ) -> f32 {
        let norm = grad_norm(grads);
        let scale = (max_norm as f64 / (norm as f64 + 1e-6)) as f32;
        if scale < 1.0 {
            let mut clipped = std::mem::take(&mut self.clipped);
            clipped.resize(grads.len(), 0.0);
            clipped
                .iter_mut()
                .zip(grads)
                .for_each(|(c, &g)| *c = g * scale);
            self.step(params, &clipped, lr);
            self.clipped = clipped;
        } else {
            self.step(params, grads, lr);
        }
        norm
    }

    fn moments(&self) -> usize {
        match self.config {
            OptimizerConfig::AdamW(_) => 2,
            OptimizerConfig::Sgd(_) => 1,
        }
    }

    /// Kind, hyperparameters and step count, for `state.json`.
    pub fn state_json(&self) -> serde_json::Value {
        match self.config {
            OptimizerConfig::AdamW(c) => json!({
                "kind": "adamw", "step": self.step, "beta1": c.beta1, "beta2": c.beta2,
                "eps": c.eps, "weight_decay": c.weight_decay,
            }),
            OptimizerConfig::Sgd(c) => json!({
                "kind": "sgd", "step": self.step, "momentum": c.momentum,
                "dampening": c.dampening, "weight_decay": c.weight_decay,
                "nesterov": c.nesterov,
            }),
        }
    }

    /// Writes the moments to `path` (an `optimizer.safetensors`).
    pub fn write_state(&self, path: &Path) -> Result<(), CheckpointError> {
        checkpoint::write_safetensors(path, &self.state_layout, &self.state)
    }

    /// Rebuilds an optimizer from its [`Self::state_json`] (read from `json_path`) and the
    /// moments in `path`, for a model laid out as `layout`.
    pub fn read_state(
        value: &serde_json::Value,
        json_path: &Path,
        path: &Path,
        layout: &ParamLayout,
    ) -> Result<Self, CheckpointError> {
        let err = |message: String| CheckpointError::Config {
            path: json_path.to_path_buf(),
            message,
        };
        let float = |field: &str| -> Result<f32, CheckpointError> {
            value
                .get(field)
                .and_then(|v| v.as_f64())
                .map(|v| v as f32)
                .ok_or_else(|| {
                    err(format!(
                        "optimizer field `{field}` is missing or not a number"
                    ))
                })
        };
        let config = match value.get("kind").and_then(|k| k.as_str()) {
            Some("adamw") => OptimizerConfig::AdamW(AdamWConfig {
                beta1: float("beta1")?,
                beta2: float("beta2")?,
                eps: float("eps")?,
                weight_decay: float("weight_decay")?,
            }),
            Some("sgd") => OptimizerConfig::Sgd(SgdConfig {
                momentum: float("momentum")?,
                dampening: float("dampening")?,
                weight_decay: float("weight_decay")?,
                nesterov: value
                    .get("nesterov")
                    .and_then(|v| v.as_bool())
                    .ok_or_else(|| {
                        err("optimizer field `nesterov` is missing or not a bool".into())
                    })?,
            }),
            other => {
                return Err(err(format!(
                    "unknown optimizer kind {other:?} (adamw, sgd)"
                )));
            }
        };
        let mut opt = Optimizer::new(config, layout);
        opt.step = value
            .get("step")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| err("optimizer field `step` is missing or not an integer".into()))?;
        checkpoint::read_safetensors(path, &opt.state_layout, &mut opt.state, |n| {
            Some(n.to_string())
        })?;
        Ok(opt)
    }
}

/// Global L2 norm of the gradients, ‖g‖₂ (what clipping compares with its bound).
pub fn grad_norm(grads: &[f32]) -> f32 {
    global_norm(&[grads])
}

/// Learning rate per step: linear warmup from `lr / warmup` to `lr` over `warmup` steps, then
/// cosine decay to `min_lr` at step `total`, constant after.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// A constant learning rate.
    pub fn constant(lr: f32) -> Self {
        Schedule {
            lr,
            min_lr: lr,
            warmup: 0,
            total: 0,
        }
    }

    /// The learning rate for the update with index `step` (0-based).
    pub fn at(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        if step >= self.total {
            return self.min_lr;
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.min_lr as f64 + cosine * (self.lr - self.min_lr) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        let mut l = ParamLayout::new();
        l.push("w", &[2, 2]);
        l.push("b", &[2]);
        l.push("v", &[1, 3]);
        l
    }

    #[test]
    fn adamw_matches_pytorch_first_steps_and_skips_decay_on_biases() {
        // torch.optim.AdamW([w], lr=0.1, weight_decay=0.5) on p = 1, g = 2: the first update
        // is p·(1 − 0.1·0.5) − 0.1·m̂/(√v̂ + eps) = 0.95 − 0.1 = 0.85.
        let l = layout();
        let c = AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = Optimizer::new(OptimizerConfig::AdamW(c), &l);
        let mut p = vec![1.0; l.len()];
        let g = vec![2.0; l.len()];
        opt.step(&mut p, &g, 0.1);
        for t in l.tensors() {
            let want = if t.decays() { 0.85 } else { 0.9 };
            for &x in &p[t.range()] {
                assert!((x - want).abs() < 1e-6, "{}: {x} != {want}", t.name);
            }
        }
        assert_eq!(opt.steps(), 1);
        assert_eq!(opt.runs.len(), 3);
    }

    #[test]
    fn sgd_momentum_accumulates() {
        let l = layout();
        let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::default()), &l);
        let mut p = vec![0.0; l.len()];
        let g = vec![1.0; l.len()];
        opt.step(&mut p, &g, 0.1);
        opt.step(&mut p, &g, 0.1);
        // buf: 1 (a copy at the first step), then 1.9; p = -0.1 - 0.19.
        assert!(p.iter().all(|&x| (x + 0.29).abs() < 1e-6), "{p:?}");
    }

    #[test]
    fn state_round_trips_bit_exactly() {
        let l = layout();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(checkpoint::OPTIMIZER_FILE);
        for config in [
            OptimizerConfig::AdamW(AdamWConfig::default()),
            OptimizerConfig::Sgd(SgdConfig::default()),
        ] {
            let mut opt = Optimizer::new(config, &l);
            let mut p: Vec<f32> = (0..l.len()).map(|i| i as f32 * 0.3).collect();
            let g: Vec<f32> = (0..l.len()).map(|i| 1.0 - i as f32 * 0.1).collect();
            opt.step(&mut p, &g, 0.01);
            opt.write_state(&path).unwrap();
            let json = serde_json::from_str(&opt.state_json().to_string()).unwrap();
            let mut back =
                Optimizer::read_state(&json, Path::new("state.json"), &path, &l).unwrap();
            assert_eq!((back.config, back.step), (opt.config, opt.step));
            assert_eq!(back.state, opt.state);
            let mut q = p.clone();
            opt.step(&mut p, &g, 0.01);
            back.step(&mut q, &g, 0.01);
            assert_eq!(p, q);
        }
        let e = Optimizer::read_state(&json!({"kind": "lion"}), Path::new("state.json"), &path, &l)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lion") && e.contains("state.json"), "{e}");
    }

    #[test]
    fn clipping_scales_the_update_not_the_gradients() {
        let l = layout();
        let sgd = OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.0,
            ..Default::default()
        });
        let g: Vec<f32> = (0..l.len())
            .map(|i| if i < 2 { [3.0, 4.0][i] } else { 0.0 })
            .collect();
        let mut opt = Optimizer::new(sgd, &l);
        let mut p = vec![0.0; l.len()];
        assert_eq!(opt.step_clipped(&mut p, &g, 1.0, 1.0), 5.0);
        // Scaled by 1 / (5 + 1e-6): p = -g / 5.
        assert!(
            (p[0] + 0.6).abs() < 1e-6 && (p[1] + 0.8).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(g[0], 3.0);
        let mut q = vec![0.0; l.len()];
        opt.step_clipped(&mut q, &g, 1.0, 10.0);
        assert_eq!(q[..2], [-3.0, -4.0]);
    }

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            total: 110,
        };
        assert_eq!(s.at(0), 0.1);
        assert_eq!(s.at(9), 1.0);
        assert_eq!(s.at(10), 1.0);
        assert!((s.at(60) - 0.55).abs() < 1e-6);
        assert_eq!(s.at(110), 0.1);
        assert_eq!(s.at(1000), 0.1);
        assert_eq!(Schedule::constant(0.3).at(5), 0.3);
    }
}
