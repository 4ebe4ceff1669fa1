//! Shared helpers for Lanes' criterion benches (`cargo bench` from the root runs them all).
//! The benches themselves live in `benches/benches/`, one file per topic.

use kernels::optim::{AdamW, adamw_step};
use model::LanguageModel;

/// Builds a rayon pool of exactly `threads` threads, so a bench measures a fixed thread count.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}

/// Deterministic pseudo-random tokens in `0..v`.
pub fn tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
    let mut rng = model::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// A model, its AdamW moments, and one batch: everything a training step touches.
pub struct Trainer {
    model: Box<dyn LanguageModel>,
    m: Vec<f32>,
    v: Vec<f32>,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    b: usize,
    t: usize,
    step: u64,
}

impl Trainer {
    pub fn new(model: Box<dyn LanguageModel>, b: usize, t: usize) -> Self {
        let n = model.params().len();
        let v = model.vocab_size();
        Trainer {
            model,
            m: vec![0.0; n],
            v: vec![0.0; n],
            inputs: tokens(b * t, v, 1),
            targets: tokens(b * t, v, 2),
            b,
            t,
            step: 0,
        }
    }

    /// forward, zero_grad, backward, AdamW with PyTorch's defaults (lr 1e-3, decay 0.01 on
    /// every tensor, as the PyTorch peers run it).
    pub fn step(&mut self) -> f32 {
        self.step += 1;
        let loss = self
            .model
            .forward(&self.inputs, &self.targets, self.b, self.t);
        self.model.zero_grad();
        self.model.backward();
        let (params, grads) = self.model.params_and_grads();
        adamw_step(
            params,
            grads,
            &mut self.m,
            &mut self.v,
            &AdamW::default(),
            self.step,
        );
        loss
    }
}
