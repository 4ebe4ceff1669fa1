//! The training loop as a library: a [`Trainer`] owns a model, its optimizer, the
//! learning-rate schedule, a batch source and the step counter, and does one optimizer step
//! per [`Trainer::step`]. `runner train` is this loop plus flags and reporting; the benches
//! time the same `step`.
//!
//! ```text
//! step(s):
//!     inputs, targets = rows of training batch s          a pure function of (seed, s)
//!     loss = model.forward(inputs, targets)                 mean −ln p, nats/token
//!     collective.backward(model)                            the hook: backward, then the
//!                                                           gradient averaged over ranks
//!     optimizer.step(params, grads, schedule.at(s)), clipped to grad_clip
//! ```
//!
//! **Data parallelism.** A [`Collective`] is the one place between backward and the optimizer
//! step where gradients are reduced. The default, [`SingleProcess`], reduces nothing. With
//! N ranks (`runner`'s MPI collective), batch `s` is the same B windows one process would
//! draw; rank r takes rows r·B/N .. (r+1)·B/N, and the gradients and losses are averaged, so
//! N ranks train the model one process trains with the same B, up to summation order.
//! Evaluation is split over the ranks the same way and summed.
//!
//! **Checkpoints** go through [`crate::save_checkpoint`]: `config.json` + `model.safetensors`
//! (Hugging Face / PyTorch names), `optimizer.safetensors`, and `state.json` holding the
//! step, the [`TrainConfig`] and whatever the caller adds. [`Trainer::resume`] reads it back
//! on any number of ranks; on the same number the continued run is bit-exact.
//!
//! A tiny GPT trained from shards:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use model::train::{TrainConfig, Trainer};
//! use model::{AdamWConfig, Dataset, Gpt, GptConfig, LanguageModel, Optimizer, OptimizerConfig, Schedule};
//! # let dir = tempfile::tempdir()?;
//! # let shards = dir.path();
//! # model::train::write_example_shards(shards)?;
//! let data = Dataset::open(shards)?; // train_*.bin, val_*.bin, meta.json from `runner prepare`
//! let mut config = GptConfig::preset("tiny").unwrap();
//! (config.vocab_size, config.n_positions) = (data.tokenizer().vocab_size() as usize, 32);
//! let gpt = Gpt::new(config, 1)?;
//! let optimizer = Optimizer::new(OptimizerConfig::AdamW(AdamWConfig::default()), gpt.layout());
//! let schedule = Schedule { lr: 3e-3, min_lr: 3e-4, warmup: 5, total: 30 };
//! let config = TrainConfig { seed: 1, batch: 4, seq_len: 32, schedule, grad_clip: 1.0 };
//! let mut trainer = Trainer::new(Box::new(gpt), optimizer, config, data)?;
//! let first = trainer.step()?.loss;
//! while trainer.steps_done() < 30 {
//!     trainer.step()?;
//! }
//! let val = trainer.evaluate(2).expect("the shards have a validation split");
//! assert!(val.loss < f64::from(first));
//! trainer.save(&shards.join("checkpoint"), &serde_json::json!({}))?;
//! # Ok(())
//! # }
//! ```
//!
//! Leaves out: gradient accumulation, early stopping, and everything a person watches (the
//! progress bar, metrics files, plots): that is the caller's.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError};
use crate::data::{DataError, Dataset};
use crate::lm::LanguageModel;
use crate::optim::{Optimizer, Schedule, grad_norm};

/// Everything that defines a training run's steps, besides the model and the optimizer (whose
/// hyperparameters the optimizer keeps). Saved flat in `state.json`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Seed of the batches: batch `s` is a pure function of (seed, s).
    pub seed: u64,
    /// Windows per step B, over all ranks together.
    pub batch: usize,
    /// Tokens per window T.
    #[serde(rename = "seq_len")]
    pub seq_len: usize,
    /// Learning rate per step.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Clip the gradients' global L2 norm to this (0 = no clipping).
    pub grad_clip: f32,
}

/// Where the windows come from: training batches drawn from (seed, step), evaluation windows
/// in order. [`Dataset`] is one; a bench can feed a fixed batch.
pub trait Batches: Send {
    /// Fills rows `rows` of training batch `step` of `b` windows of `t` tokens: the same
    /// windows whichever ranks ask for which rows.
    #[allow(clippy::too_many_arguments)]
    fn train_rows(
        &self,
        seed: u64,
        step: u64,
        b: usize,
        rows: Range<usize>,
        t: usize,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), DataError>;

    /// Evaluation windows of `t` tokens available (0 if there is no validation text).
    fn eval_windows(&self, t: usize) -> u64;

    /// Fills `inputs.len() / t` evaluation windows from window `first` on.
    fn eval_rows(&self, first: u64, t: usize, inputs: &mut [u32], targets: &mut [u32]);
}

impl Batches for Dataset {
    fn train_rows(
        &self,
        seed: u64,
        step: u64,
        b: usize,
        rows: Range<usize>,
        t: usize,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), DataError> {
        self.train()
            .train_rows(seed, step, b, rows, t, inputs, targets)
    }

    fn eval_windows(&self, t: usize) -> u64 {
        self.val().eval_windows(t)
    }

    fn eval_rows(&self, first: u64, t: usize, inputs: &mut [u32], targets: &mut [u32]) {
        for (r, (inp, tgt)) in inputs.chunks_mut(t).zip(targets.chunks_mut(t)).enumerate() {
            self.val().eval_batch(first + r as u64, 1, t, inp, tgt);
        }
    }
}

/// The processes that train one model together, and the hook between backward and the
/// optimizer step. Every rank calls every method in the same order (they are collective).
pub trait Collective {
    /// This process's index, 0-based; rank 0 alone should print and write files.
    fn rank(&self) -> usize {
        0
    }

    /// Processes training together.
    fn ranks(&self) -> usize {
        1
    }

    /// Runs the model's backward for its last forward and leaves in its gradient the mean of
    /// every rank's gradient (each rank's is the mean over its rows, and every rank has the
    /// same number of rows). The default, for one process: `zero_grad` and `backward`.
    fn backward(&mut self, model: &mut dyn LanguageModel) {
        model.zero_grad();
        model.backward();
    }

    /// Sums `values` over the ranks, in place, on every rank.
    fn sum(&mut self, values: &mut [f64]) {
        let _ = values;
    }

    /// Copies rank 0's `values` to every rank.
    fn broadcast(&mut self, values: &mut [f64]) {
        let _ = values;
    }

    /// Collects every rank's `bytes` on rank 0, in rank order (the others get nothing back).
    fn gather(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        vec![bytes.to_vec()]
    }

    /// Seconds spent waiting for the gradient reduction since the last call.
    fn take_wait_seconds(&mut self) -> f64 {
        0.0
    }
}

impl<C: Collective + ?Sized> Collective for Box<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn ranks(&self) -> usize {
        (**self).ranks()
    }
    fn backward(&mut self, model: &mut dyn LanguageModel) {
        (**self).backward(model)
    }
    fn sum(&mut self, values: &mut [f64]) {
        (**self).sum(values)
    }
    fn broadcast(&mut self, values: &mut [f64]) {
        (**self).broadcast(values)
    }
    fn gather(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        (**self).gather(bytes)
    }
    fn take_wait_seconds(&mut self) -> f64 {
        (**self).take_wait_seconds()
    }
}

/// One process, nothing to reduce.
pub struct SingleProcess;

impl Collective for SingleProcess {}

/// What can stop training; every variant says where.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A NaN or infinite loss (before the update) or gradient norm (after it) at `step`
    /// (1-based: the step being taken).
    #[error("the {what} became {value} at step {step}: training diverged")]
    Diverged {
        step: u64,
        what: &'static str,
        value: f32,
    },
    #[error("batch of {batch} windows cannot be split evenly over {ranks} ranks")]
    UnevenBatch { batch: usize, ranks: usize },
    #[error("the window of {seq_len} tokens is longer than the model's context of {context}")]
    WindowTooLong { seq_len: usize, context: usize },
    #[error("{path}: {message}")]
    State {
        path: std::path::PathBuf,
        message: String,
    },
}

/// The figures of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// The step just taken, 1-based.
    pub step: u64,
    /// Mean training loss over the whole batch (all ranks), nats/token.
    pub loss: f32,
    /// Learning rate of the update.
    pub lr: f32,
    /// Global L2 norm of the (averaged) gradient, before clipping.
    pub grad_norm: f32,
    /// Tokens in the batch, all ranks together (B·T).
    pub tokens: u64,
    /// Seconds the step took on this rank.
    pub seconds: f64,
    /// Of those, seconds waiting for the gradient reduction after backward.
    pub wait_seconds: f64,
}

/// A validation loss.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation {
    /// Mean −ln p over the windows, nats/token.
    pub loss: f64,
    /// Tokens scored, all ranks together.
    pub tokens: u64,
}

/// A model in training: see the [module documentation](self). `C` is how the ranks reduce
/// gradients: [`SingleProcess`] (the default) or any [`Collective`] given to
/// [`Trainer::with_collective`].
pub struct Trainer<C: Collective = SingleProcess> {
    model: Box<dyn LanguageModel>,
    optimizer: Optimizer,
    config: TrainConfig,
    data: Box<dyn Batches>,
    collective: C,
    /// Optimizer steps done; the next batch is batch `step`.
    step: u64,
    inputs: Vec<u32>,  // (B/N, T)
    targets: Vec<u32>, // (B/N, T)
}

impl Trainer {
    /// A trainer at step 0 in one process. Errors if T exceeds the model's context.
    pub fn new(
        model: Box<dyn LanguageModel>,
        optimizer: Optimizer,
        config: TrainConfig,
        data: impl Batches + 'static,
    ) -> Result<Trainer, TrainError> {
        if let Some(context) = model.max_seq_len().filter(|&c| config.seq_len > c) {
            return Err(TrainError::WindowTooLong {
                seq_len: config.seq_len,
                context,
            });
        }
        let mut trainer = Trainer {
            model,
            optimizer,
            config,
            data: Box::new(data),
            collective: SingleProcess,
            step: 0,
            inputs: Vec::new(),
            targets: Vec::new(),
        };
        trainer.size_buffers();
        Ok(trainer)
    }

    /// Trains with `collective`'s ranks: B must split evenly over them.
    pub fn with_collective<D: Collective>(self, collective: D) -> Result<Trainer<D>, TrainError> {
        let ranks = collective.ranks();
        if !self.config.batch.is_multiple_of(ranks) {
            return Err(TrainError::UnevenBatch {
                batch: self.config.batch,
                ranks,
            });
        }
        let mut trainer = Trainer {
            model: self.model,
            optimizer: self.optimizer,
            config: self.config,
            data: self.data,
            collective,
            step: self.step,
            inputs: Vec::new(),
            targets: Vec::new(),
        };
        trainer.size_buffers();
        Ok(trainer)
    }

    /// Loads the model, optimizer and trainer state from checkpoint directory `dir` (written
    /// by [`Trainer::save`]), to continue with `data`. Also returns `state.json` as written,
    /// without the optimizer's entry, for the caller's own fields.
    pub fn resume(
        dir: &Path,
        data: impl Batches + 'static,
    ) -> Result<(Trainer, serde_json::Value), TrainError> {
        Trainer::resume_from(crate::load_checkpoint(dir)?, dir, data)
    }

    /// [`Trainer::resume`] for a caller that has loaded the model from `dir` already.
    pub fn resume_from(
        model: Box<dyn LanguageModel>,
        dir: &Path,
        data: impl Batches + 'static,
    ) -> Result<(Trainer, serde_json::Value), TrainError> {
        let (optimizer, state) =
            crate::load_resume(dir, model.layout())?.ok_or_else(|| TrainError::State {
                path: dir.join(checkpoint::STATE_FILE),
                message: "missing: the checkpoint holds a model but no training state".into(),
            })?;
        let bad = |message: String| TrainError::State {
            path: dir.join(checkpoint::STATE_FILE),
            message,
        };
        let config: TrainConfig =
            serde_json::from_value(state.clone()).map_err(|e| bad(format!("{e}")))?;
        let step = state["step"]
            .as_u64()
            .ok_or_else(|| bad("no `step`".into()))?;
        if optimizer.steps() != step {
            return Err(bad(format!(
                "step {step} but the optimizer has taken {} steps",
                optimizer.steps()
            )));
        }
        let mut trainer = Trainer::new(model, optimizer, config, data)?;
        trainer.step = step;
        Ok((trainer, state))
    }
}

impl<C: Collective> Trainer<C> {
    fn size_buffers(&mut self) {
        let n = self.rows().len() * self.config.seq_len;
        self.inputs = vec![0; n];
        self.targets = vec![0; n];
    }

    /// This rank's rows of every batch.
    pub fn rows(&self) -> Range<usize> {
        let per = self.config.batch / self.collective.ranks();
        let r = self.collective.rank();
        r * per..(r + 1) * per
    }

    /// Writes a checkpoint to `dir` (atomically; only on rank 0, the others return at once):
    /// the model, the optimizer, and `state.json` = `extra`'s fields (a JSON object), the
    /// [`TrainConfig`]'s and `step`.
    pub fn save(&self, dir: &Path, extra: &serde_json::Value) -> Result<(), CheckpointError> {
        if self.collective.rank() != 0 {
            return Ok(());
        }
        let mut state = match extra {
            serde_json::Value::Object(o) => o.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            other => panic!("Trainer::save: extra state must be a JSON object, got {other}"),
        };
        let serde_json::Value::Object(own) =
            serde_json::to_value(self.config).expect("TrainConfig serializes")
        else {
            unreachable!("a struct serializes to an object")
        };
        state.extend(own);
        state.insert("step".into(), self.step.into());
        crate::save_checkpoint(
            dir,
            self.model.as_ref(),
            Some((&self.optimizer, &state.into())),
        )
    }

    /// One optimizer step on batch [`Self::steps_done`]. On a NaN or infinite loss the model is
    /// left as it was; on a NaN or infinite gradient norm the update has been applied (the
    /// caller should not save it).
    pub fn step(&mut self) -> Result<StepStats, TrainError> {
        let started = Instant::now();
        let (b, t, step) = (self.config.batch, self.config.seq_len, self.step);
        let rows = self.rows();
        let per = rows.len();
        self.data.train_rows(
            self.config.seed,
            step,
            b,
            rows,
            t,
            &mut self.inputs,
            &mut self.targets,
        )?;
        let lr = self.config.schedule.at(step);
        let local = self.model.forward(&self.inputs, &self.targets, per, t);
        let loss = self.mean_over_ranks(local);
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                what: "loss",
                value: loss,
            });
        }
        self.collective.backward(self.model.as_mut());
        let wait_seconds = self.collective.take_wait_seconds();
        let (params, grads) = self.model.params_and_grads();
        let norm = if self.config.grad_clip > 0.0 {
            self.optimizer
                .step_clipped(params, grads, lr, self.config.grad_clip)
        } else {
            let norm = grad_norm(grads);
            self.optimizer.step(params, grads, lr);
            norm
        };
        if !norm.is_finite() {
            return Err(TrainError::Diverged {
                step: step + 1,
                what: "gradient norm",
                value: norm,
            });
        }
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            grad_norm: norm,
            tokens: (b * t) as u64,
            seconds: started.elapsed().as_secs_f64(),
            wait_seconds,
        })
    }

    /// The mean of every rank's `value` (each over the same number of rows); `value` itself in
    /// one process.
    fn mean_over_ranks(&mut self, value: f32) -> f32 {
        let ranks = self.collective.ranks();
        if ranks == 1 {
            return value;
        }
        let mut sum = [f64::from(value)];
        self.collective.sum(&mut sum);
        (sum[0] / ranks as f64) as f32
    }

    /// Mean validation loss over the first `batches` × B windows of the validation split
    /// (fewer if it is shorter), split over the ranks in chunks of B/N windows. `None` if
    /// there is no validation window.
    pub fn evaluate(&mut self, batches: u64) -> Option<Evaluation> {
        let t = self.config.seq_len;
        let per = self.rows().len();
        let windows = self
            .data
            .eval_windows(t)
            .min(batches.saturating_mul(self.config.batch as u64));
        if windows == 0 {
            return None;
        }
        let (rank, ranks) = (self.collective.rank(), self.collective.ranks());
        let chunks = windows.div_ceil(per as u64);
        let mut sums = [0.0f64; 2]; // nats, tokens
        for chunk in (rank as u64..chunks).step_by(ranks) {
            let first = chunk * per as u64;
            let n = (windows - first).min(per as u64) as usize * t;
            let (inputs, targets) = (&mut self.inputs[..n], &mut self.targets[..n]);
            self.data.eval_rows(first, t, inputs, targets);
            self.model.reset_state();
            let loss = self.model.forward(inputs, targets, n / t, t);
            sums[0] += f64::from(loss) * n as f64;
            sums[1] += n as f64;
        }
        self.collective.sum(&mut sums);
        Some(Evaluation {
            loss: sums[0] / sums[1],
            tokens: sums[1] as u64,
        })
    }

    /// Optimizer steps done; the next step trains on batch `steps_done()`.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Changes the schedule (e.g. its length, when a time budget sets it). Every rank must
    /// set the same one.
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.config.schedule = schedule;
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    pub fn model_mut(&mut self) -> &mut dyn LanguageModel {
        self.model.as_mut()
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    pub fn collective(&mut self) -> &mut C {
        &mut self.collective
    }

    /// This process's rank (0 in one process).
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Processes training together (1 in one process).
    pub fn ranks(&self) -> usize {
        self.collective.ranks()
    }

    /// The model, when training is over.
    pub fn into_model(self) -> Box<dyn LanguageModel> {
        self.model
    }
}

/// Writes a small byte-tokenized shard folder (train and val splits of the built-in corpus,
/// and meta.json) to `dir`: data for examples and tests.
#[doc(hidden)]
pub fn write_example_shards(dir: &Path) -> Result<(), DataError> {
    use crate::data::{Meta, Split, SplitStats, SplitWriter, shard::MAX_SHARD_TOKENS};
    use crate::{Tokenizer, TokenizerKind};
    let tokenizer = Tokenizer::new(TokenizerKind::Byte);
    let docs = crate::corpus::builtin_documents(7, 12, 2_000);
    let [mut train, mut val] = [SplitStats::default(); 2];
    for (split, docs, stats) in [
        (Split::Train, &docs[..10], &mut train),
        (Split::Val, &docs[10..], &mut val),
    ] {
        let mut writer = SplitWriter::new(dir, split, MAX_SHARD_TOKENS);
        for doc in docs {
            let mut ids = tokenizer.encode(doc);
            ids.push(tokenizer.eos_id());
            writer.write(&ids)?;
            stats.documents += 1;
            stats.text_bytes += doc.len() as u64;
        }
        stats.tokens = writer.tokens();
        stats.shards = writer.finish()?.len() as u64;
    }
    Meta::new(TokenizerKind::Byte, "example document", train, val).write(dir)
}
