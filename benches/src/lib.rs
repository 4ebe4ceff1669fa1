//! Shared helpers for Lanes' criterion benches (`cargo bench` from the root runs them all).
//! The benches themselves live in `benches/benches/`, one file per topic.

use std::ops::Range;

use model::data::DataError;
use model::train::{Batches, TrainConfig};
use model::{AdamWConfig, LanguageModel, Optimizer, OptimizerConfig, Schedule};

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

/// One batch of random tokens, the same at every step: what a bench of the step itself needs
/// (reading shards is measured separately).
pub struct FixedBatch {
    inputs: Vec<u32>,  // (B, T)
    targets: Vec<u32>, // (B, T)
}

impl FixedBatch {
    pub fn new(b: usize, t: usize, v: usize) -> Self {
        FixedBatch {
            inputs: tokens(b * t, v, 1),
            targets: tokens(b * t, v, 2),
        }
    }
}

impl Batches for FixedBatch {
    fn train_rows(
        &self,
        _seed: u64,
        _step: u64,
        _b: usize,
        rows: Range<usize>,
        t: usize,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), DataError> {
        let rows = rows.start * t..rows.end * t;
        inputs.copy_from_slice(&self.inputs[rows.clone()]);
        targets.copy_from_slice(&self.targets[rows]);
        Ok(())
    }

    fn eval_windows(&self, _t: usize) -> u64 {
        0
    }

    fn eval_rows(&self, _first: u64, _t: usize, _inputs: &mut [u32], _targets: &mut [u32]) {}
}

/// Lanes' training loop (`model::Trainer`, the one `runner train` runs) on a fixed batch:
/// forward, zero_grad, backward, AdamW with PyTorch's defaults (lr 1e-3, betas (0.9, 0.999),
/// decay 0.01, as the PyTorch peers run it; Lanes decays matrices and embeddings only, which
/// costs the same), no clipping.
pub struct Trainer(model::Trainer);

impl Trainer {
    pub fn new(model: Box<dyn LanguageModel>, b: usize, t: usize) -> Self {
        let batch = FixedBatch::new(b, t, model.vocab_size());
        let optimizer = Optimizer::new(
            OptimizerConfig::AdamW(AdamWConfig::default()),
            model.layout(),
        );
        let config = TrainConfig {
            seed: 0,
            batch: b,
            seq_len: t,
            schedule: Schedule::constant(1e-3),
            grad_clip: 0.0,
        };
        Trainer(model::Trainer::new(model, optimizer, config, batch).expect("T fits the model"))
    }

    /// One training step; returns its loss.
    pub fn step(&mut self) -> f32 {
        self.0.step().expect("a bench's step does not diverge").loss
    }
}
