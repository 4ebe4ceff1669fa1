//! `runner train`: a training run, from a shard folder (or the built-in corpus) to a
//! checkpoint you can score and generate with. The loop itself is `model::Trainer`; this file
//! is its flags and what a person watches. Reads like nanoGPT's `train.py`:
//!
//! ```text
//! for step in start..target:
//!     inputs, targets = train batch `step`            a pure function of (seed, step)
//!     loss = model.forward(inputs, targets)            mean −ln p, nats/token
//!     model.zero_grad(); model.backward()
//!     optimizer.step(params, grads, lr = schedule(step)), gradients clipped to --grad-clip
//!     every --eval-every: validation loss, bits/byte, perplexity → metrics.jsonl, loss.svg
//!     every --save-every: checkpoint (atomic)
//! ```
//!
//! A run folder (`--out`, default `runs/MODEL-PRESET-DATE`) holds:
//!
//! ```text
//! checkpoint/   config.json, model.safetensors (Hugging Face / PyTorch names),
//!               optimizer.safetensors, state.json (step, seed, schedule, metrics so far)
//! metrics.jsonl one JSON object per line: training steps and evaluations
//! loss.svg      train and validation loss curves, redrawn at every evaluation
//! data/         the built-in corpus, when no --shards was given
//! ```
//!
//! Resuming (`--resume`) is bit-exact: batch `step` depends only on (seed, step), the
//! optimizer's moments and step count come back from the checkpoint, the schedule from
//! state.json, and every kernel gives the same bits on any thread count — so a resumed run
//! logs the very losses the uninterrupted run would have. Ctrl-C finishes the current step,
//! saves and exits with status 130 (a second Ctrl-C exits at once, leaving the last
//! checkpoint). A loss or gradient that is NaN or infinite stops the run with exit status 2
//! without saving, so the last checkpoint is the last good one.
//!
//! Under `mpirun -np N` (feature `mpi`, see `comm.rs`) every rank runs this file: the ranks
//! first check they agree on the flags and the shards, each trains on its B/N windows of every
//! batch, and rank 0 alone prints and writes.
//!
//! Leaves out: gradient accumulation, mixed precision, early stopping.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args as ClapArgs, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use model::data::TokenStream;
use model::sampling::{Rule, Sampler};
use model::train::{Collective, TrainConfig, Trainer};
use model::{
    AdamWConfig, Dataset, LanguageModel, ModelKind, NetConfig, Optimizer, OptimizerConfig,
    Precision, Schedule, SgdConfig, Split, Tokenizer, TokenizerKind,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::builtin;
use crate::ckpt::{self, CHECKPOINT_DIR, Net, thousands};
use crate::comm;
use crate::fmt;
use crate::generate;
use crate::plot::{self, Level};
use crate::precision::PrecisionArg;

/// The budget of a run given neither --steps nor --time: the README's first command.
const DEFAULT_TIME: Duration = Duration::from_secs(60);
/// Steps timed (after the first) before a --time run's length is first planned.
const TIMED_STEPS: u64 = 10;
/// A --time run re-plans its length every this share of the budget...
const REPLAN_EVERY: f64 = 0.02;
/// ...from the mean seconds of the steps of the latest this share of the budget.
const RATE_WINDOW: f64 = 0.1;
/// Share of the budget a --time run's plan keeps back for the speed's wobble.
const KEEP_BACK: f64 = 0.02;
/// The most training steps a validation batch is counted as in a --time run's plan: it is a
/// forward alone (about a third of a step's forward, backward and update), so an evaluation
/// that took longer was slowed by something that need not last.
const EVAL_BATCH_STEPS: f64 = 0.5;
/// Characters per line of the sample printed at the end of a run.
const SAMPLE_WIDTH: usize = 100;
/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;
/// Train tokens read to measure the unigram baseline (the start of the split).
const UNIGRAM_TOKENS: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelArg {
    /// GPT-2-architecture transformer.
    Gpt,
    /// Multi-layer LSTM.
    Lstm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerArg {
    /// AdamW, betas (0.9, 0.95), eps 1e-8, decoupled weight decay on matrices and
    /// embeddings.
    Adamw,
    /// SGD with momentum 0.9 (weight decay as L2 on matrices and
    /// embeddings).
    Sgd,
}

/// Every flag of `runner train` with its default. The flags that define a run (data, model,
/// batch, schedule, optimizer, seed) are fixed once it starts: `--resume` takes them from the
/// checkpoint and refuses different ones. `--steps`, `--time`, `--eval-every`,
/// `--eval-batches` and `--save-every` may change on resume.
#[derive(ClapArgs, Serialize)]
pub struct Args {
    /// Shard folder from `runner prepare` (train_*.bin, val_*.bin, meta.json). Without it:
    /// the built-in English-like corpus, generated from --seed into OUT/data, whose exact
    /// entropy rate is printed beside the result.
    #[arg(long, value_name = "DIR")]
    pub shards: Option<PathBuf>,

    /// Architecture.
    #[arg(long, value_enum, default_value_t = ModelArg::Gpt)]
    pub model: ModelArg,

    /// Size preset: tiny (2 layers of 32, for tests), small (about 3.3M parameters), gpt2
    /// (GPT-2 124M; transformer only). The size flags below override its fields.
    #[arg(long, default_value = "small", value_parser = ["tiny", "small", "gpt2"])]
    pub preset: String,

    /// Layers: transformer blocks (GPT) or stacked LSTM layers.
    #[arg(long, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub layers: Option<u64>,

    /// GPT: embedding width C (a multiple of --heads).
    #[arg(long, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub d_model: Option<u64>,

    /// GPT: attention heads NH.
    #[arg(long, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub heads: Option<u64>,

    /// LSTM: hidden size H (also the embedding width).
    #[arg(long, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub hidden: Option<u64>,

    /// Tokens per training window T, for the GPT also its context (n_positions) [default:
    /// tiny 64, small 128, gpt2 1024]. `small` trains on 128 rather than its benchmark
    /// window of 256: twice the steps per minute, and a sentence fits.
    #[arg(long, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub seq_len: Option<u64>,

    /// Windows per batch B.
    #[arg(long, default_value_t = 16, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub batch: u64,

    /// Optimizer steps [default: as many as fit in --time].
    #[arg(long, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub steps: Option<u64>,

    /// Wall-clock budget, e.g. 90s, 10m, 1h30m [default: 1m when --steps is not given].
    /// Without --steps, the step count is planned from the measured speed of the latest
    /// steps, again every 2% of the budget (the schedule decays over them); with --steps,
    /// the run stops at whichever comes first.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub time: Option<Duration>,

    /// Peak learning rate [default: 3e-3 for adamw, 0.1 for sgd].
    #[arg(long)]
    pub lr: Option<f32>,

    /// Learning-rate floor reached by the cosine decay at the last step [default: lr / 10].
    #[arg(long)]
    pub min_lr: Option<f32>,

    /// Steps of linear warmup from lr/warmup to lr.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,

    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    pub optimizer: OptimizerArg,

    /// Weight decay of matrices and embeddings (biases and LayerNorm gains never decay)
    /// [default: 0.1 for adamw (decoupled), 0 for sgd].
    #[arg(long)]
    pub weight_decay: Option<f32>,

    /// Clip the gradients' global L2 norm to this (0 = no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f32,

    /// Seed of the initial weights, the batches and the built-in corpus.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,

    /// Evaluate on the validation split every N steps (and at the start and the end).
    #[arg(long, default_value_t = 100, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub eval_every: u64,

    /// Batches of B windows per evaluation (the first ones of the validation split, the same
    /// every time).
    #[arg(long, default_value_t = 16, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub eval_batches: u64,

    /// Save a checkpoint every N steps (and always at the end and on Ctrl-C).
    #[arg(long, default_value_t = 200, value_parser = crate::fmt::parse_count, allow_negative_numbers = true)]
    pub save_every: u64,

    /// Run folder [default: runs/MODEL-PRESET-YYYYMMDD-HHMMSS].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Continue the run in --out from its checkpoint, bit-exactly.
    #[arg(long, requires = "out")]
    pub resume: bool,

    /// (On --resume the run keeps the precision it started with unless this flag is given.)
    #[command(flatten)]
    pub precision: PrecisionArg,
}

/// The runner's part of `state.json`. The library's [`model::Trainer`] adds the step and its
/// [`TrainConfig`] (seed, batch, seq_len, the schedule, grad_clip), the optimizer its own
/// entry under `optimizer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    /// The step the run stops at.
    target_steps: u64,
    /// The shard folder (its canonical path), or None for the built-in corpus in OUT/data.
    shards: Option<PathBuf>,
    /// What the shards held when the run started (`data_identity`); a resume checks it.
    #[serde(default)]
    shards_identity: Option<serde_json::Value>,
    model: ModelArg,
    /// Processes that trained the latest part (MPI ranks; 1 without MPI).
    #[serde(default = "one")]
    ranks: usize,
    /// Wall-clock budget of the whole run, if any, and the seconds spent so far.
    time_budget_s: Option<f64>,
    elapsed_s: f64,
    tokens_seen: u64,
    /// Evaluation and checkpoint cadence (may change on resume).
    eval_every: u64,
    eval_batches: u64,
    save_every: u64,
    /// The precision of the matrix products, `"bf16"` or `"fp32"` (runs from before mixed
    /// precision existed were fp32).
    #[serde(default = "fp32_name")]
    precision: String,
    /// The latest figures (also in metrics.jsonl).
    train_loss: Option<f32>,
    val_loss: Option<f64>,
    val_bits_per_byte: Option<f64>,
}

fn one() -> usize {
    1
}

fn fp32_name() -> String {
    Precision::F32.name().to_string()
}

/// The configuration the flags describe, with the data's tokenizer, and the window T
/// (`seq_len`, else the preset's).
fn config_from_args(
    args: &Args,
    tokenizer: TokenizerKind,
    seq_len: Option<u64>,
) -> Result<(NetConfig, usize)> {
    let size = |x: Option<u64>| x.map(|n| n as usize);
    let kind = match args.model {
        ModelArg::Gpt => ModelKind::Gpt,
        ModelArg::Lstm => ModelKind::Lstm,
    };
    let preset = NetConfig::preset(kind, &args.preset, tokenizer).map_err(|e| {
        anyhow::anyhow!("{e}; hint: --preset tiny or small, or size it with --layers and --hidden")
    })?;
    let t = size(seq_len).unwrap_or(default_window(&args.preset));
    let config = match preset {
        NetConfig::Gpt(mut c) => {
            if args.hidden.is_some() {
                bail!(
                    "--hidden sizes the LSTM; hint: the GPT's width is --d-model (its MLP is 4 × d-model)"
                );
            }
            c.n_layer = size(args.layers).unwrap_or(c.n_layer);
            c.n_embd = size(args.d_model).unwrap_or(c.n_embd);
            c.n_head = size(args.heads).unwrap_or(c.n_head);
            c.n_positions = t;
            NetConfig::Gpt(c)
        }
        NetConfig::Lstm(mut c) => {
            if args.d_model.is_some() || args.heads.is_some() {
                bail!("--d-model and --heads size the GPT; hint: the LSTM's width is --hidden");
            }
            c.hidden_size = size(args.hidden).unwrap_or(c.hidden_size);
            c.num_layers = size(args.layers).unwrap_or(c.num_layers);
            NetConfig::Lstm(c)
        }
    };
    config.validate().map_err(|e| {
        anyhow::anyhow!("{e}; hint: --d-model must be a multiple of --heads, every size at least 1")
    })?;
    Ok((config, t))
}

/// Refuses sizes whose training would not fit in memory: weights, gradients, the two AdamW
/// moments and the activations of a (B, T) batch, estimated before any exists.
fn check_memory(config: &NetConfig, b: usize, t: usize) -> Result<()> {
    use model::memory::{Sat, ensure_fits, f32_bytes};
    let (params, acts) = (config.num_params_u128(), config.activation_floats(b, t));
    let what = format!(
        "training {} parameters at B={b} × T={t} (weights, gradients, optimizer moments, activations)",
        params
    );
    ensure_fits(what, f32_bytes((Sat(4) * Sat(params) + Sat(acts)).0))
        .context("hint: use a smaller --batch, --seq-len, --layers, --d-model or --hidden")
}

/// Where a run reads the time: the wall clock, or in tests a simulated machine whose speed
/// changes mid-run.
trait Clock {
    /// Seconds since this session's training loop began.
    fn now(&self) -> f64;
    /// Seconds a training step took, given the trainer's measurement of it: the wall clock
    /// takes the measurement; a simulated machine advances its own time instead.
    fn step_took(&self, measured: f64) -> f64;
}

/// The wall clock, from the start of the loop.
struct Wall(Instant);

impl Clock for Wall {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    fn step_took(&self, measured: f64) -> f64 {
        measured
    }
}

/// How long a --time run (without --steps) plans to be: as many steps as fit in the rest of
/// the budget at the speed of the latest steps. Planned after the first [`TIMED_STEPS`]
/// timed steps and again every [`REPLAN_EVERY`] of the budget, so that a machine whose speed
/// changes (other work starting or ending on it) still ends the run, and the schedule, with
/// the clock. Rank 0's plan is broadcast (`Run::train_on`).
struct Planner {
    budget: f64,
    /// (elapsed seconds at its end, seconds) of the latest timed steps, oldest first: those
    /// of the last [`RATE_WINDOW`] of the budget, and at least [`TIMED_STEPS`] of them.
    recent: VecDeque<(f64, f64)>,
    /// Seconds of the latest evaluation, until the next plan turns them into `eval_steps`.
    eval_s: Option<f64>,
    /// The latest evaluation's cost in steps of the speed at the time (so an evaluation timed
    /// under load is not counted at that price once the load is gone), at most
    /// [`EVAL_BATCH_STEPS`] a validation batch.
    eval_steps: f64,
    /// Its bound: --eval-batches × [`EVAL_BATCH_STEPS`].
    eval_steps_max: f64,
    /// Seconds of the latest checkpoint.
    save_s: f64,
    /// Mean seconds per step of the latest plan.
    step_s: f64,
    /// When the next plan is due (None before the first).
    next: Option<f64>,
    /// The first plan's step count (the one announced).
    first: Option<u64>,
}

impl Planner {
    fn new(budget: f64, eval_batches: u64) -> Planner {
        Planner {
            budget,
            recent: VecDeque::new(),
            eval_s: None,
            eval_steps: 0.0,
            eval_steps_max: eval_batches as f64 * EVAL_BATCH_STEPS,
            save_s: 0.0,
            step_s: 0.0,
            next: None,
            first: None,
        }
    }

    /// A training step of `seconds` ended at `now` (the run's elapsed seconds).
    fn timed(&mut self, now: f64, seconds: f64) {
        self.recent.push_back((now, seconds));
        let since = now - RATE_WINDOW * self.budget;
        while self.recent.len() > TIMED_STEPS as usize && self.recent[0].0 < since {
            self.recent.pop_front();
        }
    }

    /// Whether a plan is due at `now`.
    fn due(&self, now: f64) -> bool {
        match self.next {
            None => self.recent.len() >= TIMED_STEPS as usize,
            Some(next) => now >= next,
        }
    }

    /// The run's length, planned at `now` after `done` steps: the steps that fit in the rest
    /// of the budget, less [`KEEP_BACK`] of it for the speed's wobble, the final evaluation
    /// and checkpoint, and the share of the evaluations and checkpoints on the way (an
    /// evaluation costs what it did in steps, at today's step time). At least one more step.
    fn plan(&mut self, now: f64, done: u64, eval_every: u64, save_every: u64) -> u64 {
        self.step_s =
            self.recent.iter().map(|r| r.1).sum::<f64>() / self.recent.len().max(1) as f64;
        if let Some(seconds) = self.eval_s.take() {
            self.eval_steps = (seconds / self.step_s.max(1e-9)).min(self.eval_steps_max);
        }
        let eval = self.eval_steps * self.step_s;
        let per_step = self.step_s + eval / eval_every as f64 + self.save_s / save_every as f64;
        let left = ((1.0 - KEEP_BACK) * self.budget - now - eval - self.save_s).max(0.0);
        self.next = Some(now + REPLAN_EVERY * self.budget);
        done + ((left / per_step.max(1e-9)) as u64).max(1)
    }
}

/// Why the loop ended.
#[derive(PartialEq)]
enum Stop {
    Done,
    TimeUp,
    Interrupted,
}

/// A run: the library's trainer plus what a person watches (the printed lines, the progress
/// bar, metrics.jsonl, loss.svg). With several ranks, rank 0 alone prints and writes.
struct Run {
    out: PathBuf,
    trainer: Trainer<Box<dyn Collective>>,
    state: RunState,
    /// What the model is, in one line.
    description: String,
    /// The shards, for the header and the unigram level (the trainer reads batches itself).
    data: Dataset,
    tokenizer: Tokenizer,
    /// Validation text bytes per token (turns nats/token into bits/byte); the training
    /// split's when there is no validation text (`bytes_split` says which).
    val_bytes_per_token: f64,
    bytes_split: Split,
    /// The exact entropy rate when training on the built-in corpus, bits/byte.
    source_entropy: Option<f64>,
    /// Loss of the unigram model of the training tokens, nats/token.
    unigram: f64,
    /// Open on rank 0 only.
    metrics: Option<File>,
    train_curve: Vec<(u64, f32)>,
    val_curve: Vec<(u64, f64)>,
    /// Seconds the run took before this process resumed it.
    elapsed_before: f64,
    /// Whether the run's length is planned from its speed (--time alone, see [`Planner`]).
    estimate_steps: bool,
}

/// The global batch must split evenly over the ranks.
fn check_batch_split(batch: u64, ranks: usize) -> Result<()> {
    if !(batch as usize).is_multiple_of(ranks) {
        bail!(
            "--batch {batch} cannot be split evenly over {ranks} ranks; hint: --batch is the global batch, each rank takes batch / ranks windows: use a multiple of {ranks}"
        );
    }
    Ok(())
}

pub fn run(mut args: Args, matches: &ArgMatches) -> Result<()> {
    let mut collective = comm::world()?;
    let rank = collective.rank();
    let result = (|| {
        // Before anything is written: every rank was given the same command.
        let flags = json!({
            "flags": serde_json::to_value(&args).expect("flags serialize"),
            "ranks": collective.ranks(),
        });
        comm::agree(collective.as_mut(), "the flags", &flags)?;
        // One writer per run folder, from before the first check until the process ends:
        // rank 0, the only one that writes there.
        let out = args.out.clone().unwrap_or_else(|| default_run_dir(&args));
        args.out = Some(out.clone());
        // Before the lock creates the run folder (a rank that stops here may take the others
        // down before rank 0 could remove it again); `Run::start` checks it as well.
        let ranks = collective.ranks();
        if !args.resume {
            check_batch_split(args.batch, ranks)?;
        }
        let _lock = (rank == 0 && (!args.resume || out.is_dir()))
            .then(|| crate::lock::RunLock::acquire(&out))
            .transpose()?;
        let mut run = if args.resume {
            Run::resume(&args, matches, collective)?
        } else {
            Run::start(&args, collective)?
        };
        run.train()
    })();
    match result {
        Err(e) if rank != 0 => {
            // Rank 0 has said what went wrong (a disagreement) or says it too.
            if e.downcast_ref::<comm::Disagreed>().is_none() {
                eprintln!("error (rank {rank}): {e:#}");
            }
            std::process::exit(2);
        }
        other => other,
    }
}

impl Run {
    /// A new run in a new (or empty) folder.
    fn start(args: &Args, mut collective: Box<dyn Collective>) -> Result<Run> {
        let root = collective.rank() == 0;
        let out = args.out.clone().unwrap_or_else(|| default_run_dir(args));
        if model::checkpoint::resolve(&out.join(CHECKPOINT_DIR)).is_ok() {
            bail!(
                "{} already holds a training run; hint: add --resume to continue it, or choose another --out",
                out.display()
            );
        }
        if out.join("metrics.jsonl").exists() {
            bail!(
                "{} holds a run stopped before its first checkpoint; hint: delete the folder or choose another --out",
                out.display()
            );
        }
        let lr = args.lr.unwrap_or(match args.optimizer {
            OptimizerArg::Adamw => 3e-3,
            OptimizerArg::Sgd => 0.1,
        });
        let min_lr = args.min_lr.unwrap_or(lr / 10.0);
        if !(lr.is_finite() && lr > 0.0 && min_lr >= 0.0 && min_lr <= lr) {
            bail!(
                "--lr {lr} and --min-lr {min_lr}: need 0 <= min-lr <= lr and lr > 0; hint: e.g. --lr 3e-3 --min-lr 3e-4"
            );
        }
        let weight_decay = args.weight_decay.unwrap_or(match args.optimizer {
            OptimizerArg::Adamw => 0.1,
            OptimizerArg::Sgd => 0.0,
        });
        if !(args.grad_clip >= 0.0 && weight_decay >= 0.0) {
            bail!("--grad-clip and --weight-decay must be >= 0; hint: 0 turns either off");
        }
        let ranks = collective.ranks();
        check_batch_split(args.batch, ranks)?;
        let data_dir = match &args.shards {
            Some(dir) => dir.clone(),
            None => {
                let dir = out.join("data");
                if root {
                    std::fs::create_dir_all(&out).with_context(|| {
                        format!("cannot create the run folder {}", out.display())
                    })?;
                    if builtin::ensure(&dir, args.seed)? {
                        println!(
                            "wrote the built-in corpus (seed {}) to {}",
                            args.seed,
                            dir.display()
                        );
                    }
                }
                collective.broadcast(&mut [0.0]); // the others wait for it
                dir
            }
        };
        let data = open_agreed(collective.as_mut(), &data_dir)?;
        let tokenizer = data.tokenizer();
        let (config, t) = config_from_args(args, tokenizer, args.seq_len)?;
        check_memory(&config, args.batch as usize, t)?;
        let mut net = Net::new(config, args.seed).expect("validated config");
        let precision = PrecisionArg::apply(args.precision.or(Precision::fastest()), net.lm_mut());
        check_data(&data, &data_dir, net.lm(), t, root)?;
        let opt_config = match args.optimizer {
            OptimizerArg::Adamw => OptimizerConfig::AdamW(AdamWConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay,
            }),
            OptimizerArg::Sgd => OptimizerConfig::Sgd(SgdConfig {
                weight_decay,
                ..SgdConfig::default()
            }),
        };
        let opt = Optimizer::new(opt_config, net.lm().layout());
        // Without --steps the length is planned from the steps' speed (see `Planner`).
        let time = args.time.or(args.steps.is_none().then_some(DEFAULT_TIME));
        let estimate_steps = args.steps.is_none();
        let target = args.steps.unwrap_or(u64::MAX);
        let config = TrainConfig {
            seed: args.seed,
            batch: args.batch as usize,
            seq_len: t,
            schedule: Schedule {
                lr,
                min_lr,
                warmup: args.warmup,
                total: target,
            },
            grad_clip: args.grad_clip,
        };
        let state = RunState {
            target_steps: target,
            shards: args.shards.as_deref().map(canonical),
            shards_identity: args.shards.is_some().then(|| data_identity(&data)),
            model: args.model,
            ranks,
            time_budget_s: time.map(|d| d.as_secs_f64()),
            elapsed_s: 0.0,
            tokens_seen: 0,
            eval_every: args.eval_every,
            eval_batches: args.eval_batches,
            save_every: args.save_every,
            precision: precision.name().to_string(),
            train_loss: None,
            val_loss: None,
            val_bits_per_byte: None,
        };
        let description = net.describe();
        let trainer = Trainer::new(net.into_lm(), opt, config, open_data(&data_dir)?)
            .and_then(|t| t.with_collective(collective))
            .context("hint: check --seq-len and --batch")?;
        let metrics = if root {
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create the run folder {}", out.display()))?;
            let path = out.join("metrics.jsonl");
            Some(File::create(&path).with_context(|| format!("cannot create {}", path.display()))?)
        } else {
            None
        };
        Run::assemble(
            out,
            trainer,
            description,
            state,
            data,
            metrics,
            estimate_steps,
        )
    }

    /// The run in --out, from its checkpoint.
    fn resume(args: &Args, matches: &ArgMatches, collective: Box<dyn Collective>) -> Result<Run> {
        let root = collective.rank() == 0;
        let out = args.out.clone().expect("clap: --resume requires --out");
        let hint = format!(
            "hint: {} holds no resumable run; start one with `runner train --out {}` (without --resume)",
            out.display(),
            out.display()
        );
        let dir = model::checkpoint::resolve(&out.join(CHECKPOINT_DIR)).context(hint.clone())?;
        let loaded = ckpt::open(&dir, None)?;
        let mut net = loaded.net;
        let state_path = dir.join(model::checkpoint::STATE_FILE);
        let damaged = "hint: the checkpoint is damaged or from another version; start a new run";
        let state_json = model::checkpoint::read_json(&state_path)
            .with_context(|| format!("{}: no training state; {hint}", dir.display()))?;
        let mut state: RunState = serde_json::from_value(state_json.clone())
            .with_context(|| format!("{}: unreadable state.json", dir.display()))
            .context(damaged)?;
        let config: TrainConfig = serde_json::from_value(state_json)
            .with_context(|| format!("{}: unreadable state.json", dir.display()))
            .context(damaged)?;
        // The precision the run started with, unless --precision says otherwise.
        let saved: Precision = state
            .precision
            .parse()
            .with_context(|| format!("{}: state.json names an unknown precision", dir.display()))?;
        let want = args.precision.or(saved);
        let got = PrecisionArg::apply(want, net.lm_mut());
        if got != saved && root {
            println!("precision: {saved} → {got} from here on (--precision {want})");
        }
        state.precision = got.name().to_string();
        let data_dir = match &state.shards {
            Some(dir) => dir.clone(),
            None => {
                let data = out.join("data");
                if root {
                    builtin::ensure(&data, config.seed)?; // regenerated bit-identically if deleted
                }
                data
            }
        };
        let mut collective = collective;
        if state.shards.is_none() {
            collective.broadcast(&mut [0.0]); // the others wait for rank 0's corpus
        }
        let data = open_agreed(collective.as_mut(), &data_dir)?;
        let description = net.describe();
        let kind = loaded.tokenizer.kind();
        let (trainer, _) =
            Trainer::resume_from(net.into_lm(), &dir, open_data(&data_dir)?).context(damaged)?;
        check_resume_flags(
            args,
            matches,
            trainer.config(),
            trainer.optimizer(),
            trainer.model(),
            &description,
            &state,
            kind,
        )?;
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        // `--steps N` on resume sets where the run ends, and the cosine ends there too: a
        // finished run extended with --steps follows, from its step on, the schedule of a run
        // of N steps (rather than the old schedule's floor). N equal to the run's own length
        // (an interrupted run, whose schedule may end a step before: a --time run's plan)
        // changes nothing, so that resume stays bit-exact.
        let mut trainer = trainer;
        let mut restretched = None;
        if let Some(steps) = args.steps {
            let length = std::mem::replace(&mut state.target_steps, steps);
            let mut schedule = trainer.config().schedule;
            if steps != length && steps > trainer.steps_done() {
                restretched = Some(schedule.total);
                schedule.total = steps;
                trainer.set_schedule(schedule);
            }
        }
        if let Some(time) = args.time {
            state.time_budget_s = Some(time.as_secs_f64());
        }
        if given("eval_every") {
            state.eval_every = args.eval_every;
        }
        if given("eval_batches") {
            state.eval_batches = args.eval_batches;
        }
        if given("save_every") {
            state.save_every = args.save_every;
        }
        let step = trainer.steps_done();
        if step >= state.target_steps {
            bail!(
                "the run in {} is already at step {} of {}; hint: pass --steps N with N > {} to train further",
                out.display(),
                step,
                state.target_steps,
                step
            );
        }
        if data.tokenizer() != kind {
            bail!(
                "{} is tokenized with {} but the checkpoint's model uses {}; hint: resume with the shards the run started with",
                data_dir.display(),
                data.tokenizer(),
                loaded.tokenizer.name()
            );
        }
        if let Some(then) = &state.shards_identity {
            let now = data_identity(&data);
            let keys = then.as_object().into_iter().flat_map(|o| o.keys());
            if let Some(key) = keys
                .into_iter()
                .find(|k| then[k.as_str()] != now[k.as_str()])
            {
                bail!(
                    "the shards in {} are not the ones the run started with: {key} is {} now but was {}; hint: resume with the run's own shard folder, or start a new run on these shards",
                    data_dir.display(),
                    now[key.as_str()],
                    then[key.as_str()]
                );
            }
        }
        check_data(&data, &data_dir, trainer.model(), config.seq_len, root)?;
        let ranks = collective.ranks();
        let trainer = trainer.with_collective(collective).with_context(|| {
            format!(
                "hint: the run's batch of {} windows must split evenly over the ranks; resume it on a number of ranks that divides it",
                config.batch
            )
        })?;
        state.ranks = ranks;
        let (metrics, train_curve, val_curve) = if root {
            let (file, train, val) = truncate_metrics(&out.join("metrics.jsonl"), step)?;
            (Some(file), train, val)
        } else {
            (None, Vec::new(), Vec::new())
        };
        let mut run = Run::assemble(out, trainer, description, state, data, metrics, false)?;
        (run.train_curve, run.val_curve) = (train_curve, val_curve);
        run.say(format_args!(
            "resuming {} at step {} of {}",
            run.out.display(),
            step,
            run.state.target_steps
        ));
        if let Some(old) = restretched {
            let schedule = run.trainer.config().schedule;
            let was = if old == u64::MAX {
                String::new()
            } else {
                format!(" (was step {old})")
            };
            run.say(format_args!(
                "--steps {}: the learning rate now decays to {} at step {}{was}; step {} runs at {}",
                schedule.total,
                fmt::short(schedule.min_lr),
                schedule.total,
                step + 1,
                fmt::short(schedule.at(step))
            ));
        }
        Ok(run)
    }

    fn assemble(
        out: PathBuf,
        trainer: Trainer<Box<dyn Collective>>,
        description: String,
        state: RunState,
        data: Dataset,
        metrics: Option<File>,
        estimate_steps: bool,
    ) -> Result<Run> {
        let tokenizer = Tokenizer::new(data.tokenizer());
        let (val_bytes_per_token, bytes_split) = bytes_per_token(&data)?;
        let source_entropy = state.shards.is_none().then(builtin::entropy_bits_per_byte);
        let unigram = unigram_loss(data.train(), tokenizer.vocab_size() as usize);
        Ok(Run {
            elapsed_before: state.elapsed_s,
            out,
            trainer,
            state,
            description,
            data,
            tokenizer,
            val_bytes_per_token,
            bytes_split,
            source_entropy,
            unigram,
            metrics,
            train_curve: Vec::new(),
            val_curve: Vec::new(),
            estimate_steps,
        })
    }

    /// Rank 0 prints, the others keep quiet.
    fn root(&self) -> bool {
        self.trainer.rank() == 0
    }

    fn say(&self, line: std::fmt::Arguments) {
        if self.root() {
            println!("{line}");
        }
    }

    /// Seconds the run has taken, earlier sessions included.
    fn elapsed(&self, clock: &dyn Clock) -> f64 {
        self.elapsed_before + clock.now()
    }

    fn train(&mut self) -> Result<()> {
        self.train_on(&Wall(Instant::now()))
    }

    /// The training loop, reading the time from `clock` (the wall clock but in tests).
    fn train_on(&mut self, clock: &dyn Clock) -> Result<()> {
        let interrupted = install_sigint()?;
        self.print_header();

        let bar = if self.root() {
            progress_bar(self.trainer.steps_done(), self.state.target_steps)
        } else {
            ProgressBar::hidden()
        };
        let mut planner = self.estimate_steps.then(|| {
            let budget = self.state.time_budget_s.expect("--time given");
            Planner::new(budget, self.state.eval_batches)
        });
        if self.trainer.steps_done() == 0 && self.val_curve.is_empty() {
            let started = clock.now();
            self.evaluate(&bar, clock)?;
            if let Some(p) = &mut planner {
                p.eval_s = Some(clock.now() - started);
            }
        }
        let floats = self.trainer.model().params().len();
        if let Some(seconds) = comm::probe_allreduce(self.trainer.collective().as_mut(), floats) {
            let (bytes, n) = (floats as f64 * 4.0, self.trainer.ranks() as f64);
            self.say(format_args!(
                "reduce: all-reduce of the {:.1} MB gradient over {n} ranks: {:.1} ms ({:.2} GB/s bus bandwidth, 2(N−1)/N × bytes / time), overlapped with the backward",
                bytes / 1e6,
                seconds * 1e3,
                2.0 * (n - 1.0) / n * bytes / seconds / 1e9
            ));
            self.log(json!({
                "step": self.trainer.steps_done(), "allreduce_bytes": bytes as u64,
                "allreduce_probe_s": seconds,
            }))?;
        }
        let (mut train_seconds, mut train_tokens) = (0.0f64, 0u64);
        let mut last_saved = self.trainer.steps_done();
        let ranks = self.trainer.ranks();
        let stop = loop {
            if self.trainer.steps_done() >= self.state.target_steps {
                break Stop::Done;
            }
            // Rank 0's clock and Ctrl-C decide for every rank, and so does its plan of the
            // run's length: one broadcast a step carries all three, so every rank stops, and
            // re-plans, at the same step.
            let now = self.elapsed(clock);
            let time_up = self.state.time_budget_s.is_some_and(|budget| now >= budget);
            let done = self.trainer.steps_done();
            let plan = match &mut planner {
                Some(p) if self.root() && p.due(now) => {
                    let (eval_every, save_every) = (self.state.eval_every, self.state.save_every);
                    p.plan(now, done, eval_every, save_every) as f64
                }
                _ => 0.0,
            };
            let mut decided = [
                f64::from(u8::from(time_up)),
                f64::from(u8::from(interrupted.load(Ordering::SeqCst))),
                plan,
            ];
            self.trainer.collective().broadcast(&mut decided);
            if decided[0] != 0.0 {
                break Stop::TimeUp;
            }
            if decided[1] != 0.0 {
                break Stop::Interrupted;
            }
            if decided[2] != 0.0 {
                self.set_length(decided[2] as u64, &bar, planner.as_mut(), now)?;
            }
            let step = self.trainer.steps_done();
            let stats = match self.trainer.step() {
                Ok(stats) => stats,
                Err(model::train::TrainError::Diverged { what, value, .. }) => {
                    return Err(self.diverged(&bar, step, what, value, last_saved));
                }
                Err(e) => return Err(e.into()),
            };
            let seconds = clock.step_took(stats.seconds);
            train_seconds += seconds;
            train_tokens += stats.tokens;
            self.state.tokens_seen += stats.tokens;
            self.state.train_loss = Some(stats.loss);
            self.train_curve.push((stats.step, stats.loss));
            let tokens_per_s = train_tokens as f64 / train_seconds;
            let mut line = json!({
                "step": stats.step, "train_loss": stats.loss, "lr": stats.lr,
                "grad_norm": stats.grad_norm, "tokens_per_s": tokens_per_s,
                "elapsed_s": self.elapsed(clock),
            });
            if ranks > 1 {
                line["ranks"] = ranks.into();
                line["allreduce_wait_s"] = stats.wait_seconds.into();
            }
            self.log(line)?;
            bar.set_message(format!(
                "loss {:.4} | {} tok/s",
                stats.loss,
                thousands(tokens_per_s as u64)
            ));
            bar.set_position(stats.step);

            if let Some(p) = &mut planner
                && step > 0
            {
                p.timed(self.elapsed_before + clock.now(), seconds); // step 0 pays for first-touch allocation
            }
            let s = stats.step;
            if s.is_multiple_of(self.state.eval_every) || s == self.state.target_steps {
                let started = clock.now();
                self.evaluate(&bar, clock)?;
                if let Some(p) = &mut planner {
                    p.eval_s = Some(clock.now() - started);
                }
            }
            if s.is_multiple_of(self.state.save_every) && s < self.state.target_steps {
                let started = clock.now();
                self.save(clock)?;
                if let Some(p) = &mut planner {
                    p.save_s = clock.now() - started;
                }
                last_saved = s;
            }
        };
        bar.finish_and_clear();

        let step = self.trainer.steps_done();
        if stop != Stop::Interrupted && self.val_curve.last().map(|v| v.0) != Some(step) {
            self.evaluate(&bar, clock)?;
        }
        self.save(clock)?;
        if !self.root() {
            return Ok(());
        }
        self.plot()?;
        let rate = train_tokens as f64 / train_seconds.max(1e-9);
        match stop {
            Stop::Interrupted => {
                println!(
                    "interrupted: saved step {} to {}\ncontinue with: runner train --out {} --resume",
                    step,
                    self.out.join(CHECKPOINT_DIR).display(),
                    self.out.display()
                );
                std::process::exit(EXIT_INTERRUPTED);
            }
            Stop::TimeUp => println!(
                "time is up after step {} of {}",
                step, self.state.target_steps
            ),
            Stop::Done => {}
        }
        if let Some(p) = &planner
            && let Some(first) = p.first
            && first != self.state.target_steps
        {
            println!(
                "--time {}: re-planned as the speed changed, from {} to {}",
                format_duration(p.budget),
                fmt::counted(first, "step"),
                fmt::counted(self.state.target_steps, "step"),
            );
        }
        self.print_summary(rate);
        Ok(())
    }

    /// Sets the run's length to `target` steps (a --time run's plan, `Planner::plan`, which
    /// rank 0 broadcast): the run ends after step `target`, whose update runs at --min-lr.
    /// The schedule is a function of step / length, so a new length re-draws the rest of the
    /// cosine: from this step on the learning rate follows the curve that ends at --min-lr at
    /// the new last step. It jumps only by the two curves' difference at this step, small as
    /// the plans of a steady machine differ little and a changed speed enters the rate
    /// window a step at a time. The first plan is announced; every plan is logged to
    /// metrics.jsonl (`planned_steps`).
    fn set_length(
        &mut self,
        target: u64,
        bar: &ProgressBar,
        planner: Option<&mut Planner>,
        now: f64,
    ) -> Result<()> {
        self.state.target_steps = target;
        let mut schedule = self.trainer.config().schedule;
        schedule.total = target - 1; // `Schedule::at(total)` is min_lr: the last update's
        self.trainer.set_schedule(schedule);
        bar.set_length(target);
        let Some(p) = planner else {
            return Ok(()); // only a --time run plans (on every rank alike)
        };
        self.log(json!({
            "step": self.trainer.steps_done(), "planned_steps": target,
            "step_s": p.step_s, "elapsed_s": now,
        }))?;
        if p.first.is_none() {
            p.first = Some(target);
            if self.root() {
                bar.suspend(|| {
                    println!(
                        "--time {}: {} fit at {:.0} ms per step; the learning rate decays over them (re-planned every {:.1} s from the latest steps' speed)",
                        format_duration(p.budget),
                        fmt::counted(target, "step"),
                        p.step_s * 1e3,
                        p.budget * REPLAN_EVERY,
                    )
                });
            }
        }
        Ok(())
    }

    fn print_header(&self) {
        if !self.root() {
            return;
        }
        let data = self.state.shards.as_ref().map_or_else(
            || "the built-in corpus".to_string(),
            |p| p.display().to_string(),
        );
        let train = self.data.train().len();
        println!("model:  {}", self.description);
        println!(
            "data:   {data} ({} tokenizer, {} train tokens, {} val tokens, {:.3} bytes/token{})",
            self.tokenizer.name(),
            thousands(train),
            thousands(self.data.val().len()),
            self.val_bytes_per_token,
            match self.bytes_split {
                Split::Val => "",
                Split::Train => " of the training text",
            }
        );
        let steps = if self.estimate_steps {
            format!(
                "as many steps as fit in {}",
                format_duration(self.state.time_budget_s.expect("--time"))
            )
        } else {
            fmt::counted(self.state.target_steps, "step")
        };
        let opt = match self.trainer.optimizer().config() {
            OptimizerConfig::AdamW(_) => "AdamW",
            OptimizerConfig::Sgd(_) => "SGD",
        };
        let c = self.trainer.config();
        let ranks = self.trainer.ranks();
        let workers = if ranks > 1 {
            format!(
                "{ranks} ranks × {}, each rank {} of the batch",
                fmt::threads(rayon::current_num_threads()),
                fmt::counted((c.batch / ranks) as u64, "window")
            )
        } else {
            fmt::threads(rayon::current_num_threads())
        };
        println!(
            "train:  {steps} of B={} × T={} tokens, {opt}, lr {} → {} (warmup {}, cosine), {} products, {workers}",
            c.batch,
            c.seq_len,
            fmt::short(c.schedule.lr),
            fmt::short(c.schedule.min_lr),
            c.schedule.warmup,
            self.state.precision,
        );
        let mut reference = format!(
            "a unigram model of the training tokens scores {:.3} nats/token ({:.3} bits/byte)",
            self.unigram,
            self.bits_per_byte(self.unigram)
        );
        if let Some(h) = self.source_entropy {
            reference += &format!("; the source's entropy rate is {h:.3} bits/byte");
        }
        println!("levels: {reference}");
        println!(
            "run:    {} (metrics.jsonl, loss.svg, checkpoint/)",
            self.out.display()
        );
    }

    fn bits_per_byte(&self, nats_per_token: f64) -> f64 {
        nats_per_token / std::f64::consts::LN_2 / self.val_bytes_per_token
    }

    /// Mean validation loss over the first --eval-batches batches (split over the ranks);
    /// logs and plots it.
    fn evaluate(&mut self, bar: &ProgressBar, clock: &dyn Clock) -> Result<()> {
        let Some(eval) = self.trainer.evaluate(self.state.eval_batches) else {
            return Ok(()); // no validation text: check_data said so once
        };
        let loss = eval.loss;
        let bpb = self.bits_per_byte(loss);
        let step = self.trainer.steps_done();
        self.state.val_loss = Some(loss);
        self.state.val_bits_per_byte = Some(bpb);
        self.val_curve.push((step, loss));
        self.log(json!({
            "step": step, "val_loss": loss, "val_bits_per_byte": bpb,
            "val_perplexity": loss.exp(), "val_tokens": eval.tokens, "elapsed_s": self.elapsed(clock),
        }))?;
        if !self.root() {
            return Ok(());
        }
        let train = self
            .state
            .train_loss
            .map_or(String::new(), |l| format!("train {l:.4} | "));
        let line = format!(
            "step {:>6} | {train}val {loss:.4} nats/token, {bpb:.4} bits/byte, perplexity {:.3} | {:.1} s",
            step,
            loss.exp(),
            self.elapsed(clock)
        );
        bar.suspend(|| println!("{line}"));
        self.plot()
    }

    fn plot(&self) -> Result<()> {
        let mut levels = vec![Level {
            label: format!("unigram model ({:.3})", self.unigram),
            nats: self.unigram,
        }];
        if let Some(h) = self.source_entropy {
            let nats = h * std::f64::consts::LN_2 * self.val_bytes_per_token;
            levels.push(Level {
                label: format!("source entropy rate ({h:.3} bits/byte)"),
                nats,
            });
        }
        let title = format!(
            "{} — {}",
            self.out.file_name().unwrap_or_default().to_string_lossy(),
            self.description
        );
        plot::loss_curves(
            &self.out.join("loss.svg"),
            &title,
            &self.train_curve,
            &self.val_curve,
            &levels,
        )
    }

    fn log(&mut self, line: serde_json::Value) -> Result<()> {
        let Some(metrics) = &mut self.metrics else {
            return Ok(());
        };
        writeln!(metrics, "{line}")
            .with_context(|| format!("cannot write {}/metrics.jsonl", self.out.display()))
    }

    fn save(&mut self, clock: &dyn Clock) -> Result<()> {
        self.state.elapsed_s = self.elapsed(clock);
        let extra = serde_json::to_value(&self.state).expect("RunState serializes");
        self.trainer
            .save(&self.out.join(CHECKPOINT_DIR), &extra)
            .context("hint: check the free space and permissions of the run folder")
    }

    /// The error for a NaN or infinite loss or gradient at `step`.
    fn diverged(
        &self,
        bar: &ProgressBar,
        step: u64,
        what: &str,
        value: f32,
        last_saved: u64,
    ) -> anyhow::Error {
        bar.abandon();
        let kept = if last_saved > 0 {
            format!(
                "the last good checkpoint (step {last_saved}) is kept in {}",
                self.out.join(CHECKPOINT_DIR).display()
            )
        } else {
            "no checkpoint was saved before it".to_string()
        };
        anyhow::anyhow!(
            "the {what} became {value} at step {}: training diverged; {kept}; hint: lower --lr (now {}) or keep --grad-clip on",
            step + 1,
            fmt::short(self.trainer.config().schedule.lr)
        )
    }

    fn print_summary(&self, tokens_per_s: f64) {
        let s = &self.state;
        println!(
            "\ntrained {}, {} tokens, in {:.1} s ({} tokens/s)",
            fmt::counted(self.trainer.steps_done(), "step"),
            thousands(s.tokens_seen),
            s.elapsed_s,
            thousands(tokens_per_s as u64)
        );
        if let (Some(loss), Some(bpb)) = (s.val_loss, s.val_bits_per_byte) {
            println!(
                "validation: {loss:.4} nats/token, {bpb:.4} bits/byte, perplexity {:.3}  (unigram model: {:.4} bits/byte)",
                loss.exp(),
                self.bits_per_byte(self.unigram)
            );
            if let Some(h) = self.source_entropy {
                println!(
                    "the source's true entropy rate: {h:.4} bits/byte — no model can do better; this one is {:.4} bits/byte ({:.0}%) above it",
                    bpb - h,
                    100.0 * (bpb - h) / h
                );
            }
        }
        println!("\na sample (temperature 0.8, seed 1):");
        for line in self.sample_lines(3) {
            println!("  {line}");
        }
        let example = if self.source_entropy.is_some() {
            "The old king sees a river."
        } else {
            "The"
        };
        println!("\nscore or generate with it:");
        println!(
            "  runner score --ckpt {} --text \"{example}\"",
            self.out.display()
        );
        println!(
            "  runner generate --ckpt {} --prompt \"The\" --top-p 0.95",
            self.out.display()
        );
    }

    /// Up to `n` lines of at most [`SAMPLE_WIDTH`] characters sampled from the model,
    /// starting a new document (long lines are wrapped at a space).
    fn sample_lines(&self, n: usize) -> Vec<String> {
        let rule = Rule::Sample {
            temperature: 0.8,
            top_k: None,
            top_p: None,
        };
        let mut sampler = Sampler::new(rule, 1);
        let prompt = [self.tokenizer.eos_id()];
        let mut text = String::new();
        let budget = n * SAMPLE_WIDTH;
        generate::generate(
            self.trainer.model(),
            &self.tokenizer,
            &prompt,
            &mut sampler,
            budget,
            false,
            |piece| {
                text.push_str(piece);
                text.chars().count() < budget && text.matches('\n').count() < n
            },
        );
        let mut lines = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut rest = line.trim_end();
            while !rest.is_empty() && lines.len() < n {
                let (head, tail) = wrap(rest, SAMPLE_WIDTH);
                lines.push(head.to_string());
                rest = tail;
            }
        }
        lines.truncate(n);
        lines
    }
}

/// Splits `line` after at most `width` characters, at the last space if there is one.
fn wrap(line: &str, width: usize) -> (&str, &str) {
    let Some((cut, _)) = line.char_indices().nth(width) else {
        return (line, "");
    };
    match line[..cut].rfind(' ') {
        Some(space) if space > 0 => (&line[..space], &line[space + 1..]),
        _ => (&line[..cut], &line[cut..]),
    }
}

/// Refuses flags typed on a `--resume` command line that define the run differently from
/// the run being resumed (repeating the run's own value is fine).
#[allow(clippy::too_many_arguments)]
fn check_resume_flags(
    args: &Args,
    matches: &ArgMatches,
    config: &TrainConfig,
    opt: &Optimizer,
    lm: &dyn LanguageModel,
    description: &str,
    state: &RunState,
    tokenizer: TokenizerKind,
) -> Result<()> {
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    fn text<T: ToString>(x: Option<T>) -> String {
        x.map_or(String::new(), |x| x.to_string())
    }
    let name = |x: &dyn std::fmt::Debug| format!("{x:?}").to_lowercase();
    let shards = |p: &Option<PathBuf>| {
        p.as_deref().map_or("the built-in corpus".into(), |p| {
            canonical(p).display().to_string()
        })
    };
    let (optimizer, decay) = match opt.config() {
        OptimizerConfig::AdamW(c) => (OptimizerArg::Adamw, c.weight_decay),
        OptimizerConfig::Sgd(c) => (OptimizerArg::Sgd, c.weight_decay),
    };
    // (clap id, the value typed, the run's value), compared as text.
    let checks = [
        ("shards", shards(&args.shards), shards(&state.shards)),
        ("seed", args.seed.to_string(), config.seed.to_string()),
        ("model", name(&args.model), name(&state.model)),
        ("batch", args.batch.to_string(), config.batch.to_string()),
        ("seq_len", text(args.seq_len), config.seq_len.to_string()),
        ("lr", text(args.lr), config.schedule.lr.to_string()),
        (
            "min_lr",
            text(args.min_lr),
            config.schedule.min_lr.to_string(),
        ),
        (
            "warmup",
            args.warmup.to_string(),
            config.schedule.warmup.to_string(),
        ),
        (
            "grad_clip",
            args.grad_clip.to_string(),
            config.grad_clip.to_string(),
        ),
        ("optimizer", name(&args.optimizer), name(&optimizer)),
        ("weight_decay", text(args.weight_decay), decay.to_string()),
    ];
    for (id, typed, run) in checks {
        if given(id) && typed != run {
            bail!(
                "--{} differs from the run being resumed ({}); hint: drop it when resuming, or start a new run with another --out",
                id.replace('_', "-"),
                run
            );
        }
    }
    if ["preset", "layers", "d_model", "heads", "hidden"]
        .into_iter()
        .any(given)
    {
        let t = args.seq_len.unwrap_or(config.seq_len as u64);
        let (model, _) = config_from_args(args, tokenizer, Some(t))?;
        if model.to_json() != lm.config_json() {
            bail!(
                "the size flags describe another model than the run's ({description}); hint: drop --preset, --layers, --d-model, --heads and --hidden when resuming"
            );
        }
    }
    Ok(())
}

/// The training window of a preset when --seq-len is not given.
pub(crate) fn default_window(preset: &str) -> usize {
    match preset {
        "tiny" => 64,
        "gpt2" => 1024,
        _ => 128,
    }
}

/// Opens a shard folder with a hint for each way it can be wrong.
pub(crate) fn open_data(dir: &Path) -> Result<Dataset> {
    Dataset::open(dir).with_context(|| {
        // Over an existing folder, prepare needs --overwrite to replace what is there.
        let overwrite = if dir.exists() { " --overwrite" } else { "" };
        format!(
            "cannot open the shard folder {}; hint: make one with `runner prepare --input FILES --out {}{overwrite}`",
            dir.display(),
            dir.display()
        )
    })
}

/// Opens the shard folder on every rank and checks that all see the same data (its
/// [`data_identity`]); a rank that cannot open it is named by rank 0 too.
fn open_agreed(collective: &mut dyn Collective, dir: &Path) -> Result<Dataset> {
    let data = open_data(dir);
    let identity = match &data {
        Ok(d) => data_identity(d),
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    comm::agree(collective, "the shards", &json!({ "data": identity }))?;
    data
}

/// Tokens hashed at each end of a split for [`data_identity`].
const IDENTITY_TOKENS: usize = 4096;

/// What tells one shard folder's data from another's: the tokenizer, every shard's token
/// count, and an FNV-1a hash of the first and last [`IDENTITY_TOKENS`] tokens of each split
/// (different text of the same length differs there, whatever the folder is called).
fn data_identity(data: &Dataset) -> serde_json::Value {
    let lens = |s: &TokenStream| s.shards().iter().map(|x| x.len()).collect::<Vec<_>>();
    let hash = |s: &TokenStream| {
        let n = (IDENTITY_TOKENS as u64).min(s.len()) as usize;
        let mut buf = vec![0u32; n];
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for start in [0, s.len() - n as u64] {
            s.copy_tokens(start, &mut buf);
            for byte in buf.iter().flat_map(|t| t.to_le_bytes()) {
                h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    };
    json!({
        "tokenizer": data.tokenizer().name(),
        "train_shard_tokens": lens(data.train()),
        "val_shard_tokens": lens(data.val()),
        "train_hash": hash(data.train()),
        "val_hash": hash(data.val()),
    })
}

/// `path` made absolute and free of `.`, `..` and links when it exists (so `byte`, `./byte/`
/// and `/abs/byte` are one folder, wherever the command runs), else as given.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The data fits the model: every token id is inside its vocabulary (the error names the
/// shard), and the training split holds at least one window.
fn check_data(
    data: &Dataset,
    dir: &Path,
    lm: &dyn LanguageModel,
    t: usize,
    root: bool,
) -> Result<()> {
    let v = lm.vocab_size();
    data.check_vocab(v as u32).with_context(|| {
        format!(
            "the shards in {} do not fit the model's vocabulary of {v}; hint: prepare them with the model's tokenizer",
            dir.display()
        )
    })?;
    data.train()
        .check_window(t)
        .context("hint: use a shorter --seq-len or more text")?;
    if !root {
        return Ok(()); // the notes below are rank 0's to print
    }
    if data.val().is_empty() {
        println!(
            "note: {} has no validation split; no validation loss will be reported, and bits/byte use the training text's bytes per token (hint: prepare with --val-fraction 0.1)",
            dir.display()
        );
    } else if data.val().eval_windows(t) == 0 {
        println!(
            "note: the validation split of {} holds less than one window of {} tokens; no validation loss will be reported (hint: prepare with --val-fraction 0.1)",
            dir.display(),
            t + 1
        );
    }
    Ok(())
}

/// Text bytes per token, the factor from nats/token to bits/byte: the validation split's,
/// else (no validation text) the training split's, so no level is NaN or infinite.
fn bytes_per_token(data: &Dataset) -> Result<(f64, Split)> {
    let Some(meta) = data.meta() else {
        bail!("the shards have no meta.json; hint: prepare them with `runner prepare`");
    };
    let usable = |split: Split| {
        let stats = meta.split(split);
        let ratio = stats.bytes_per_token();
        (stats.tokens > 0 && ratio.is_finite() && ratio > 0.0).then_some((ratio, split))
    };
    usable(Split::Val).or_else(|| usable(Split::Train)).with_context(|| {
        format!(
            "{}: neither split records its text bytes, so bits/byte is unknown; hint: prepare the shards again with `runner prepare`",
            model::data::Meta::FILE
        )
    })
}

/// Loss in nats/token of predicting every token by its frequency in (the start of) the
/// training split: H = −Σ p ln p. The floor a model with no context reaches.
pub(crate) fn unigram_loss(train: &TokenStream, v: usize) -> f64 {
    let n = train.len().min(UNIGRAM_TOKENS);
    let mut counts = vec![0u64; v];
    let mut buf = vec![0u32; 1 << 16];
    let mut pos = 0;
    while pos < n {
        let len = (n - pos).min(buf.len() as u64) as usize;
        train.copy_tokens(pos, &mut buf[..len]);
        for &id in &buf[..len] {
            counts[(id as usize).min(v - 1)] += 1;
        }
        pos += len as u64;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum()
}

/// Keeps the lines of `path` up to `step` (a resumed run rewrites what came after its
/// checkpoint) and returns the file, open for appending, with the curves so far.
#[allow(clippy::type_complexity)]
fn truncate_metrics(path: &Path, step: u64) -> Result<(File, Vec<(u64, f32)>, Vec<(u64, f64)>)> {
    let (mut kept, mut train, mut val) = (String::new(), Vec::new(), Vec::new());
    if let Ok(file) = File::open(path) {
        for line in BufReader::new(file).lines() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue; // a line cut by a crash
            };
            let Some(s) = v["step"].as_u64().filter(|&s| s <= step) else {
                continue;
            };
            if let Some(l) = v["train_loss"].as_f64() {
                train.push((s, l as f32));
            }
            if let Some(l) = v["val_loss"].as_f64() {
                val.push((s, l));
            }
            kept += &line;
            kept.push('\n');
        }
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot rewrite {}", path.display()))?;
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((file, train, val))
}

/// A flag set by Ctrl-C; the loop checks it between steps. A second Ctrl-C exits at once.
/// The handler is installed once per process (`runner race` trains several runs in turn).
fn install_sigint() -> Result<Arc<AtomicBool>> {
    static FLAG: std::sync::Mutex<Option<Arc<AtomicBool>>> = std::sync::Mutex::new(None);
    let mut installed = FLAG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(flag) = installed.as_ref() {
        return Ok(flag.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    ctrlc::set_handler(move || {
        if seen.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving (the last checkpoint stays)");
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!("\ninterrupt: finishing this step, then saving (Ctrl-C again to quit now)");
    })
    .context("cannot install the Ctrl-C handler; hint: run without a custom signal setup")?;
    Ok(installed.insert(flag).clone())
}

fn progress_bar(position: u64, length: u64) -> ProgressBar {
    let bar = ProgressBar::new(length).with_position(position);
    bar.set_style(
        ProgressStyle::with_template("{bar:20} step {pos}/{len} | {msg} | eta {eta}")
            .expect("valid template"),
    );
    bar
}

/// `runs/gpt-small-20250101-120000` (UTC).
fn default_run_dir(args: &Args) -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    let model = format!("{:?}", args.model).to_lowercase();
    PathBuf::from("runs").join(format!(
        "{model}-{}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        args.preset,
        t / 3600,
        t / 60 % 60,
        t % 60
    ))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses `90`, `90s`, `10m`, `1h30m`, `1.5h` into a duration (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 90s, 10m or 1h30m");
    let mut total = 0.0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "" | "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    if total <= 0.0 || !total.is_finite() {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// `75.0` → `1m15s`.
fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose step time is a function of the simulated time: `cost(now)` seconds
    /// for a step begun at `now`. Evaluations and checkpoints take no simulated time.
    struct Simulated {
        now: std::cell::Cell<f64>,
        cost: fn(f64) -> f64,
    }

    impl Clock for Simulated {
        fn now(&self) -> f64 {
            self.now.get()
        }

        fn step_took(&self, _measured: f64) -> f64 {
            let seconds = (self.cost)(self.now.get());
            self.now.set(self.now.get() + seconds);
            seconds
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// What a simulated run did.
    struct Ran {
        /// (step, lr, elapsed_s) of every step line of metrics.jsonl.
        steps: Vec<(u64, f32, f64)>,
        /// The lengths it planned.
        plans: Vec<u64>,
        min_lr: f32,
        target: u64,
    }

    /// Trains the tiny GPT with `--time 60s` on a simulated machine.
    fn simulated_minute(cost: fn(f64) -> f64) -> Ran {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let cli = Cli::parse_from([
            "train",
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--seq-len",
            "16",
            "--eval-batches",
            "1",
            "--time",
            "60s",
            "--out",
            out.to_str().unwrap(),
        ]);
        let mut run = Run::start(&cli.args, Box::new(model::train::SingleProcess)).unwrap();
        let clock = Simulated {
            now: std::cell::Cell::new(0.0),
            cost,
        };
        run.train_on(&clock).unwrap();
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = metrics
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let steps = lines
            .iter()
            .filter(|l| l.get("lr").is_some())
            .map(|l| {
                let step = l["step"].as_u64().unwrap();
                (
                    step,
                    l["lr"].as_f64().unwrap() as f32,
                    l["elapsed_s"].as_f64().unwrap(),
                )
            })
            .collect();
        let plans = lines
            .iter()
            .filter_map(|l| l.get("planned_steps").and_then(|p| p.as_u64()))
            .collect();
        let min_lr = run.trainer.config().schedule.min_lr;
        Ran {
            steps,
            plans,
            min_lr,
            target: run.state.target_steps,
        }
    }

    /// The run's last step is its planned last, ends within 5 % of the budget and runs at
    /// --min-lr; after the warmup the learning rate never jumps by more than `jump` of its
    /// peak from one step to the next.
    fn ends_with_the_clock(cost: fn(f64) -> f64, jump: f32) {
        let Ran {
            steps,
            plans,
            min_lr,
            target,
        } = simulated_minute(cost);
        let &(last, lr, elapsed) = steps.last().unwrap();
        assert_eq!(last, target, "the run stopped before its plan (time up)");
        assert!(
            (57.0..=60.0).contains(&elapsed),
            "{last} steps took {elapsed:.1} of 60 simulated seconds; plans: {plans:?}"
        );
        assert_eq!(lr, min_lr, "the last step's learning rate");
        assert!(
            plans.len() > 20,
            "re-planned every 2% of the budget: {plans:?}"
        );
        let peak = steps.iter().map(|s| s.1).fold(0.0, f32::max);
        let worst = steps[20..]
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).abs() / peak)
            .fold(0.0, f32::max);
        assert!(
            worst <= jump,
            "the learning rate jumped by {worst} of its peak"
        );
    }

    #[test]
    fn an_evaluation_slowed_by_a_passing_load_is_not_reserved_at_that_price() {
        // The first evaluation (16 batches) took 14.5 s under load; the steps after it, with
        // the load gone, take 0.5 s. Its cost is bounded by 16 × 0.5 steps (4 s), not 14.5 s.
        let mut p = Planner::new(60.0, 16);
        p.eval_s = Some(14.5);
        for i in 1..=10 {
            p.timed(15.0 + 0.5 * i as f64, 0.5);
        }
        let target = p.plan(20.0, 10, 100, 200);
        let left = 0.98 * 60.0 - 20.0 - 16.0 * 0.5 * 0.5;
        assert_eq!(target, 10 + (left / (0.5 + 4.0 / 100.0)) as u64);
        // The same evaluation under the same speed as its steps keeps its measured cost, and
        // follows the step time: steps twice as fast, an evaluation half as long.
        let mut p = Planner::new(60.0, 16);
        p.eval_s = Some(2.0);
        for i in 1..=10 {
            p.timed(2.0 + 0.5 * i as f64, 0.5);
        }
        p.plan(7.0, 10, 100, 200);
        assert_eq!(p.eval_steps, 4.0);
        for i in 1..=40 {
            p.timed(7.0 + 0.25 * i as f64, 0.25);
        }
        let target = p.plan(17.0, 50, 100, 200);
        let left = 0.98 * 60.0 - 17.0 - 1.0;
        assert_eq!(target, 50 + (left / (0.25 + 1.0 / 100.0)) as u64);
    }

    #[test]
    fn a_time_run_ends_with_the_clock_when_the_first_steps_are_slow() {
        // Another program busy for the first 15 s: steps twice as slow. Planned from the
        // first steps alone, the run ended after about 36 s.
        ends_with_the_clock(|now| if now < 15.0 { 0.6 } else { 0.3 }, 0.05);
    }

    #[test]
    fn a_time_run_ends_with_the_clock_when_the_machine_slows_down() {
        // Another program starts at 30 s and steps take 2.5 times as long: planned from the
        // first steps alone, the run would stop (time up) long before the schedule's end.
        // Its last 60 steps planned turn into 25, so the learning rate has to fall faster:
        // by up to 8% of its peak at a re-plan.
        ends_with_the_clock(|now| if now < 30.0 { 0.2 } else { 0.5 }, 0.1);
    }

    #[test]
    fn durations_parse() {
        let secs = |s| parse_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("90"), Ok(90.0));
        assert_eq!(secs("90s"), Ok(90.0));
        assert_eq!(secs("10m"), Ok(600.0));
        assert_eq!(secs("1h30m"), Ok(5400.0));
        assert_eq!(secs("1.5m"), Ok(90.0));
        for bad in ["", "m", "10x", "0s", "-5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(75.0), "1m15s");
        assert_eq!(format_duration(600.0), "10m");
        assert_eq!(format_duration(5.0), "5s");
    }

    #[test]
    fn sample_lines_wrap_at_spaces() {
        assert_eq!(wrap("short", 10), ("short", ""));
        assert_eq!(wrap("the old king sees", 10), ("the old", "king sees"));
        assert_eq!(wrap("abcdefghijkl", 5), ("abcde", "fghijkl"));
    }

    #[test]
    fn dates_from_day_counts() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_089), (2025, 1, 1));
    }
}
