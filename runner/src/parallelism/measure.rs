//! Measuring: one model trained at one shape on its own rayon pool, and the machine it ran on.
//!
//! Leaves out: data loading (random tokens).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kernels::launch::Trace;
use serde_json::json;

use super::{LR, Shape, build};
use model::{AdamWConfig, LanguageModel, ModelKind, Optimizer, OptimizerConfig};

/// Deterministic pseudo-random tokens in `0..v`.
pub(super) fn random_tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
    let mut rng = model::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// What one model did at one shape on one pool.
#[derive(Clone, Debug)]
pub(super) struct Run {
    pub(super) kind: ModelKind,
    pub(super) shape: Shape,
    pub(super) threads: usize,
    pub(super) params: usize,
    /// Wall time of each timed step.
    pub(super) step_seconds: Vec<f64>,
    /// Sequential kernel launches of one forward and one backward.
    pub(super) forward_launches: u64,
    pub(super) backward_launches: u64,
    /// Every kernel launch of each timed step, when traced (for the projection).
    pub(super) traces: Vec<Trace>,
}

impl Run {
    pub(super) fn median_seconds(&self) -> f64 {
        let mut s = self.step_seconds.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        }
    }

    pub(super) fn tokens_per_s(&self) -> f64 {
        self.shape.tokens() as f64 / self.median_seconds()
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        json!({
            "model": self.kind.name(),
            "b": self.shape.b,
            "t": self.shape.t,
            "threads": self.threads,
            "params": self.params,
            "tokens_per_s": self.tokens_per_s(),
            "median_step_s": self.median_seconds(),
            "step_seconds": self.step_seconds,
            "forward_launches": self.forward_launches,
            "backward_launches": self.backward_launches,
        })
    }
}

/// One model set up to train at one shape on random tokens: what every measurement steps.
pub(super) struct Trainer {
    pub(super) lm: Box<dyn LanguageModel>,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    opt: Optimizer,
    pub(super) shape: Shape,
}

impl Trainer {
    pub(super) fn new(kind: ModelKind, shape: Shape, precision: model::Precision) -> Trainer {
        let lm = build(kind, shape.t, precision);
        let v = lm.vocab_size();
        let opt = Optimizer::new(OptimizerConfig::AdamW(AdamWConfig::default()), lm.layout());
        Trainer {
            inputs: random_tokens(shape.tokens(), v, 1),
            targets: random_tokens(shape.tokens(), v, 2),
            lm,
            opt,
            shape,
        }
    }

    /// One training step (forward, zero_grad, backward, AdamW) on the current pool; returns
    /// the sequential kernel launches of its forward and its backward.
    pub(super) fn step(&mut self) -> (u64, u64) {
        let Shape { b, t } = self.shape;
        let lm = &mut self.lm;
        let (_, forward) = kernels::launch::count(|| lm.forward(&self.inputs, &self.targets, b, t));
        lm.zero_grad();
        let ((), backward) = kernels::launch::count(|| lm.backward());
        let (params, grads) = lm.params_and_grads();
        self.opt.step(params, grads, LR);
        (forward, backward)
    }

    /// One step traced launch by launch ([`kernels::launch::trace`]).
    pub(super) fn traced_step(&mut self) -> Trace {
        kernels::launch::trace(|| self.step()).1
    }
}

/// A rayon pool of `threads`, or an error that says so.
pub(super) fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .with_context(|| format!("cannot start {threads} threads; hint: try fewer --threads"))
}

/// Trains `kind` at `shape` on a pool of `threads`: `warmup` untimed steps (the first counts
/// the launches), then `steps` timed ones, each with its launches traced when `trace`.
pub(super) fn measure(
    kind: ModelKind,
    shape: Shape,
    threads: usize,
    warmup: usize,
    steps: usize,
    trace: bool,
    precision: model::Precision,
) -> Result<Run> {
    pool(threads)?.install(|| {
        let mut trainer = Trainer::new(kind, shape, precision);
        let (forward_launches, backward_launches) = trainer.step();
        for _ in 1..warmup {
            trainer.step();
        }
        let mut traces = Vec::new();
        let step_seconds = (0..steps)
            .map(|_| {
                let start = Instant::now();
                if trace {
                    traces.push(trainer.traced_step());
                } else {
                    trainer.step();
                }
                start.elapsed().as_secs_f64()
            })
            .collect();
        Ok(Run {
            kind,
            shape,
            threads,
            params: trainer.lm.params().len(),
            step_seconds,
            forward_launches,
            backward_launches,
            traces,
        })
    })
}

/// Where the measurements ran.
pub(super) struct Machine {
    pub(super) cpu: String,
    pub(super) cores: usize,
    pub(super) simd: &'static str,
    /// Share of the CPU time other work took just before and just after the sweep (Linux),
    /// to flag a busy machine.
    pub(super) other_work: [Option<f64>; 2],
}

/// How long [`other_work`] watches the machine.
pub(super) const WATCH: Duration = Duration::from_millis(500);

impl Machine {
    pub(super) fn detect() -> Machine {
        Machine {
            cpu: crate::machine::cpu_name(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            simd: kernels::simd::PATH,
            other_work: [other_work(WATCH), None],
        }
    }

    /// Busy: other work took more than 15% of the CPU time before or after the sweep.
    pub(super) fn busy(&self) -> bool {
        self.other_work.iter().flatten().any(|&x| x > 0.15)
    }

    /// "3% of the CPU just before the sweep, 1% just after".
    pub(super) fn other_work_text(&self) -> Option<String> {
        let pct = |x: Option<f64>| x.map(|x| format!("{:.0}%", 100.0 * x));
        match self.other_work.map(pct) {
            [Some(a), Some(b)] => Some(format!(
                "{a} of the CPU just before the sweep, {b} just after"
            )),
            [Some(a), None] => Some(format!("{a} of the CPU just before the sweep")),
            [None, Some(b)] => Some(format!("{b} of the CPU just after the sweep")),
            [None, None] => None,
        }
    }
}

/// The share of all cores' time spent running anything over the next `window`, from the
/// kernel's counters in /proc/stat (this process sleeps meanwhile); `None` off Linux.
pub(super) fn other_work(window: Duration) -> Option<f64> {
    let before = crate::machine::Ticks::read()?;
    std::thread::sleep(window);
    before.others_share(crate::machine::Ticks::read()?)
}
