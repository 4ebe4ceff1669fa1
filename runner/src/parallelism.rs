//! `runner parallelism`: when and why the transformer trains faster than the LSTM, measured.
//!
//! Times full training steps (forward, backward, AdamW) of the matched `small` GPT and `small`
//! LSTM (3.3–3.5M parameters each, byte vocabulary, the same random tokens) on explicit rayon pools
//! of each `--threads` count, over two sweeps: T at a fixed number of tokens per step
//! (B = 4096 / T), and T at B = 1, where the LSTM has no batch to spread its recurrence over.
//! For each configuration it also counts the critical path the lecture counts: the kernel
//! launches the backward pass makes one after another ([`kernels::launch`]), where a walk
//! through T time steps counts T. The transformer's is fixed by its layers; the LSTM's grows
//! as L·T.
//!
//! Prints a Markdown report (tokens/s, GPT/LSTM ratio, 1 → N speedups, critical paths, and
//! what the numbers show) and writes it with the raw measurements and a chart under `--out`:
//! `parallelism.md`, `parallelism.json`, `parallelism.svg`.
//!
//! Leaves out: data loading and checkpoints (random tokens, no files read), and the GPT-2
//! vocabulary (the byte vocabulary keeps the head small, so the comparison is about the body).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;
use serde_json::json;

use crate::{fmt, plot};
use model::{
    AdamWConfig, Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, ModelKind, Optimizer,
    OptimizerConfig,
};

#[derive(ClapArgs)]
pub struct Args {
    /// Sequence lengths T run at --batch-tokens tokens per step (B = batch-tokens / T); the
    /// flag alone, with no list, skips them.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "64,256,1024")]
    seq_lens: Vec<usize>,

    /// Tokens per step B·T of the --seq-lens sweep.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,

    /// Sequence lengths T run at B = 1; the flag alone skips them.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "256,1024")]
    b1_seq_lens: Vec<usize>,

    /// Thread counts to measure, each on its own rayon pool (e.g. 1,2,4,8,16); 0 = one per
    /// core.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,

    /// Timed training steps per measurement and round; the report gives the median of all
    /// rounds' steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,

    /// Times the whole sweep runs, in turn (a noisy moment then hits every configuration a
    /// little instead of one a lot).
    #[arg(long, default_value_t = 2)]
    rounds: usize,

    /// Untimed steps before them, at least 1 (the first allocates activations, faults pages
    /// in and counts the kernel launches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,

    /// Folder for parallelism.md, parallelism.json and parallelism.svg.
    #[arg(long, default_value = "parallelism")]
    out: PathBuf,

    /// Print the JSON instead of the Markdown report.
    #[arg(long)]
    json: bool,
}

/// Learning rate of the timed steps (AdamW, PyTorch's defaults otherwise); it changes no
/// timing, but keeps the weights moving as in real training.
const LR: f32 = 1e-3;

/// The LSTM "keeps up" where its tokens/s are at least this fraction of the transformer's.
const KEEPS_UP: f64 = 0.8;

/// One shape of training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    b: usize,
    t: usize,
}

impl Shape {
    fn tokens(self) -> usize {
        self.b * self.t
    }

    fn label(self) -> String {
        format!("B={} T={}", self.b, self.t)
    }
}

/// The two sweeps: T at B·T = `batch_tokens`, then T at B = 1.
fn shapes(args: &Args) -> Result<Vec<Shape>> {
    let mut shapes = Vec::new();
    for &t in &args.seq_lens {
        ensure!(
            t > 0 && t <= args.batch_tokens && args.batch_tokens.is_multiple_of(t),
            "--seq-lens {t} does not divide --batch-tokens {}; hint: use powers of two, e.g. \
             --seq-lens 64,256,1024 --batch-tokens 4096",
            args.batch_tokens
        );
        shapes.push(Shape {
            b: args.batch_tokens / t,
            t,
        });
    }
    for &t in &args.b1_seq_lens {
        ensure!(t > 0, "--b1-seq-lens must be positive; hint: e.g. 256,1024");
        let s = Shape { b: 1, t };
        if !shapes.contains(&s) {
            shapes.push(s);
        }
    }
    ensure!(
        !shapes.is_empty(),
        "nothing to measure; hint: give --seq-lens or --b1-seq-lens"
    );
    Ok(shapes)
}

/// The matched pair: `small` GPT (L=4, C=256, NH=4) with a position table long enough for
/// `t`, and `small` LSTM (L=3, H=360), both over the byte vocabulary.
fn build(kind: ModelKind, t: usize) -> Box<dyn LanguageModel> {
    match kind {
        ModelKind::Gpt => {
            let small = GptConfig::preset("small").expect("the small preset exists");
            let cfg = GptConfig {
                n_positions: small.n_positions.max(t),
                ..small
            };
            Box::new(Gpt::new(cfg, 0).expect("a valid config"))
        }
        ModelKind::Lstm => Box::new(Lstm::new(LstmConfig::small(257), 0)),
    }
}

const KINDS: [ModelKind; 2] = [ModelKind::Gpt, ModelKind::Lstm];

/// Deterministic pseudo-random tokens in `0..v`.
fn random_tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
    let mut rng = model::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.below(v as u64) as u32).collect()
}

/// What one model did at one shape on one pool.
#[derive(Clone, Debug)]
struct Run {
    kind: ModelKind,
    shape: Shape,
    threads: usize,
    params: usize,
    /// Wall time of each timed step.
    step_seconds: Vec<f64>,
    /// Sequential kernel launches of one forward and one backward.
    forward_launches: u64,
    backward_launches: u64,
}

impl Run {
    fn median_seconds(&self) -> f64 {
        let mut s = self.step_seconds.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n % 2 == 1 {
            s[n / 2]
        } else {
            0.5 * (s[n / 2 - 1] + s[n / 2])
        }
    }

    fn tokens_per_s(&self) -> f64 {
        self.shape.tokens() as f64 / self.median_seconds()
    }

    fn to_json(&self) -> serde_json::Value {
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

/// Trains `kind` at `shape` on a pool of `threads`: `warmup` untimed steps (the first counts
/// the launches), then `steps` timed ones.
fn measure(
    kind: ModelKind,
    shape: Shape,
    threads: usize,
    warmup: usize,
    steps: usize,
) -> Result<Run> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .with_context(|| format!("cannot start {threads} threads; hint: try fewer --threads"))?;
    pool.install(|| {
        let mut lm = build(kind, shape.t);
        let v = lm.vocab_size();
        let inputs = random_tokens(shape.tokens(), v, 1);
        let targets = random_tokens(shape.tokens(), v, 2);
        let mut opt = Optimizer::new(OptimizerConfig::AdamW(AdamWConfig::default()), lm.layout());
        let mut step = |lm: &mut Box<dyn LanguageModel>| {
            let (_, forward) =
                kernels::launch::count(|| lm.forward(&inputs, &targets, shape.b, shape.t));
            lm.zero_grad();
            let ((), backward) = kernels::launch::count(|| lm.backward());
            let (params, grads) = lm.params_and_grads();
            opt.step(params, grads, LR);
            (forward, backward)
        };
        let (forward_launches, backward_launches) = step(&mut lm);
        for _ in 1..warmup {
            step(&mut lm);
        }
        let step_seconds = (0..steps)
            .map(|_| {
                let start = Instant::now();
                step(&mut lm);
                start.elapsed().as_secs_f64()
            })
            .collect();
        Ok(Run {
            kind,
            shape,
            threads,
            params: lm.params().len(),
            step_seconds,
            forward_launches,
            backward_launches,
        })
    })
}

/// Where the measurements ran.
struct Machine {
    cpu: String,
    cores: usize,
    simd: &'static str,
    /// Share of the CPU time other work took just before and just after the sweep (Linux),
    /// to flag a busy machine.
    other_work: [Option<f64>; 2],
}

/// How long [`other_work`] watches the machine.
const WATCH: Duration = Duration::from_millis(500);

impl Machine {
    fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, name)| name.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            simd: kernels::simd::PATH,
            other_work: [other_work(WATCH), None],
        }
    }

    /// Busy: other work took more than 15% of the CPU time before or after the sweep.
    fn busy(&self) -> bool {
        self.other_work.iter().flatten().any(|&x| x > 0.15)
    }

    /// "3% of the CPU just before the sweep, 1% just after".
    fn other_work_text(&self) -> Option<String> {
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
fn other_work(window: Duration) -> Option<f64> {
    // "cpu  user nice system idle iowait irq softirq steal ...", in clock ticks.
    let ticks = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        (v.len() == 8).then(|| (v[3] + v[4], v.iter().sum()))
    };
    let (idle0, total0) = ticks()?;
    std::thread::sleep(window);
    let (idle1, total1) = ticks()?;
    let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
    Some(1.0 - idle1.saturating_sub(idle0) as f64 / total as f64)
}

/// A finished sweep.
struct Report {
    machine: Machine,
    /// The command line that produced it.
    command: String,
    steps: usize,
    rounds: usize,
    warmup: usize,
    /// B·T of the fixed-tokens sweep.
    batch_tokens: usize,
    shapes: Vec<Shape>,
    /// Sorted, distinct.
    threads: Vec<usize>,
    runs: Vec<Run>,
}

impl Report {
    fn run(&self, kind: ModelKind, shape: Shape, threads: usize) -> &Run {
        self.runs
            .iter()
            .find(|r| r.kind == kind && r.shape == shape && r.threads == threads)
            .expect("every (model, shape, threads) was measured")
    }

    fn rate(&self, kind: ModelKind, shape: Shape, threads: usize) -> f64 {
        self.run(kind, shape, threads).tokens_per_s()
    }

    /// Transformer tokens/s over the LSTM's.
    fn ratio(&self, shape: Shape, threads: usize) -> f64 {
        self.rate(ModelKind::Gpt, shape, threads) / self.rate(ModelKind::Lstm, shape, threads)
    }

    /// Tokens/s on `threads` over tokens/s on the fewest threads measured.
    fn speedup(&self, kind: ModelKind, shape: Shape, threads: usize) -> f64 {
        self.rate(kind, shape, threads) / self.rate(kind, shape, self.threads[0])
    }

    fn params(&self, kind: ModelKind) -> (usize, usize) {
        let p = self
            .runs
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.params);
        (p.clone().min().unwrap_or(0), p.max().unwrap_or(0))
    }

    fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::from("# Why transformers train faster: the parallelism sweep\n\n");
        s += &format!(
            "Machine: {}, {} cores, {}{}.  \n",
            m.cpu,
            m.cores,
            m.simd,
            m.other_work_text()
                .map_or(String::new(), |t| format!("; other work used {t}"))
        );
        let params = |kind| {
            let (lo, hi) = self.params(kind);
            if lo == hi {
                format!("{:.2}M", lo as f64 / 1e6)
            } else {
                format!("{:.2}M–{:.2}M", lo as f64 / 1e6, hi as f64 / 1e6)
            }
        };
        s += &format!(
            "Models: GPT `small` (L=4, C=256, NH=4, {} parameters: the position table grows \
             with T) and LSTM `small` (L=3, H=360, {} parameters), byte vocabulary (V=257), \
             AdamW; tokens/s from the median step of {} × {} (each after {} untimed).  \n",
            params(ModelKind::Gpt),
            params(ModelKind::Lstm),
            fmt::counted(self.rounds as u64, "round"),
            fmt::counted(self.steps as u64, "timed step"),
            self.warmup.max(1),
        );
        s += &format!("Command: `{}`\n\n", self.command);

        s += "## Tokens per second\n\n| B | T | threads | GPT tokens/s | LSTM tokens/s | GPT / LSTM |\n|--:|--:|--:|--:|--:|--:|\n";
        for &shape in &self.shapes {
            for &n in &self.threads {
                s += &format!(
                    "| {} | {} | {} | {} | {} | {:.2}× |\n",
                    shape.b,
                    shape.t,
                    n,
                    thousands(self.rate(ModelKind::Gpt, shape, n)),
                    thousands(self.rate(ModelKind::Lstm, shape, n)),
                    self.ratio(shape, n)
                );
            }
        }

        let base = self.threads[0];
        let more = &self.threads[1..];
        if !more.is_empty() {
            s += &format!("\n## Speedup over {}\n\n| B | T |", fmt::threads(base));
            for kind in KINDS {
                for &n in more {
                    s += &format!(" {} {base}→{n} |", display_name(kind));
                }
            }
            s += &format!("\n|--:|--:|{}\n", "--:|".repeat(2 * more.len()));
            for &shape in &self.shapes {
                s += &format!("| {} | {} |", shape.b, shape.t);
                for kind in KINDS {
                    for &n in more {
                        s += &format!(" {:.2}× |", self.speedup(kind, shape, n));
                    }
                }
                s += "\n";
            }
        }

        s += "\n## Critical path of the backward pass\n\nKernel launches that run one after \
              another (a walk through T time steps counts T).\n\n\
              | B | T | GPT | LSTM | LSTM / GPT |\n|--:|--:|--:|--:|--:|\n";
        for &shape in &self.shapes {
            let g = self.run(ModelKind::Gpt, shape, base).backward_launches;
            let l = self.run(ModelKind::Lstm, shape, base).backward_launches;
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                shape.b,
                shape.t,
                thousands(g as f64),
                thousands(l as f64),
                times(l as f64 / g as f64)
            );
        }

        s += "\n## What this shows\n\n";
        for finding in self.findings() {
            s += &format!("- {finding}\n");
        }
        s
    }
}

/// "GPT" or "LSTM".
fn display_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Gpt => "GPT",
        ModelKind::Lstm => "LSTM",
    }
}

/// A ratio: "1.4×" below ten, "40×" above.
fn times(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.0}×")
    }
}

/// A rate rounded to an integer with thousands separators: 12,345.
fn thousands(x: f64) -> String {
    crate::ckpt::thousands(x.max(0.0).round() as u64)
}

impl Report {
    /// Plain sentences about what the measurements show, each computed from them.
    fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (base, top) = (self.threads[0], *self.threads.last().unwrap());
        let on = |n| format!("on {}", fmt::threads(n));
        let (gpt, lstm) = (ModelKind::Gpt, ModelKind::Lstm);

        // Who wins where the LSTM has no batch to spread its walk over.
        for &shape in self.shapes.iter().filter(|s| s.b == 1) {
            let per_thread: Vec<String> = self
                .threads
                .iter()
                .map(|&n| format!("{:.2}× {}", self.ratio(shape, n), on(n)))
                .collect();
            out.push(format!(
                "At B = 1, T = {} the transformer trains at these multiples of the LSTM's \
                 tokens/s: {}.",
                shape.t,
                per_thread.join(", ")
            ));
        }

        // The critical paths: constant for the transformer, L·T for the LSTM.
        let launches = |kind| -> Vec<(usize, u64)> {
            self.shapes
                .iter()
                .map(|&s| (s.t, self.run(kind, s, base).backward_launches))
                .collect()
        };
        let (g, l) = (launches(gpt), launches(lstm));
        let (g_lo, g_hi) = (
            g.iter().map(|p| p.1).min().unwrap(),
            g.iter().map(|p| p.1).max().unwrap(),
        );
        let (short, long) = (
            l.iter().min_by_key(|p| p.0).unwrap(),
            l.iter().max_by_key(|p| p.0).unwrap(),
        );
        let gpt_path = if g_lo == g_hi {
            format!("{g_lo} kernel launches one after another at every T")
        } else {
            format!("{g_lo}–{g_hi} kernel launches one after another")
        };
        let mut sentence = format!(
            "The transformer's backward pass runs {gpt_path}: each launch handles all B·T \
             positions of a layer at once."
        );
        if long.0 > short.0 {
            let slope = (long.1 - short.1) as f64 / (long.0 - short.0) as f64;
            sentence += &format!(
                " The LSTM's grows with T, from {} at T = {} to {} at T = {} ({:.0} more per \
                 position: each of its {} layers walks all T steps in order), {} the \
                 transformer's.",
                thousands(short.1 as f64),
                short.0,
                thousands(long.1 as f64),
                long.0,
                slope,
                LstmConfig::small(257).num_layers,
                times(long.1 as f64 / g_hi as f64),
            );
        } else {
            sentence += &format!(
                " The LSTM's runs {} at T = {}: its walk takes T steps in order.",
                thousands(long.1 as f64),
                long.0
            );
        }
        out.push(sentence);

        // Where the LSTM outruns the transformer, keeps up with it, or falls behind.
        let share = |s: Shape, n: usize| 1.0 / self.ratio(s, n);
        let shares = |s: Shape| -> String {
            let per_thread: Vec<String> = self
                .threads
                .iter()
                .map(|&n| format!("{:.2}× {}", share(s, n), on(n)))
                .collect();
            format!("{} ({})", s.label(), per_thread.join(", "))
        };
        let (mut faster, mut close, mut behind) = (Vec::new(), Vec::new(), Vec::new());
        for &s in &self.shapes {
            let lo = self
                .threads
                .iter()
                .map(|&n| share(s, n))
                .fold(f64::MAX, f64::min);
            let hi = self
                .threads
                .iter()
                .map(|&n| share(s, n))
                .fold(0.0, f64::max);
            match (lo >= 1.0, hi >= KEEPS_UP) {
                (true, _) => faster.push(s),
                (false, true) => close.push(s),
                (false, false) => behind.push(s),
            }
        }
        let list = |shapes: &[Shape]| {
            shapes
                .iter()
                .map(|&s| shares(s))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let mut clauses = Vec::new();
        if !faster.is_empty() {
            clauses.push(format!("the LSTM is faster at {}", list(&faster)));
        }
        if !close.is_empty() {
            clauses.push(format!(
                "it keeps up (at least {:.0}% on some thread count) at {}",
                100.0 * KEEPS_UP,
                list(&close)
            ));
        }
        if !behind.is_empty() {
            clauses.push(format!("it falls behind at {}", list(&behind)));
        }
        let mut sentence = format!(
            "The LSTM's tokens/s as a multiple of the transformer's: {}.",
            clauses.join("; ")
        );
        if faster.is_empty() && close.is_empty() {
            sentence += &format!(
                " It reaches {:.0}% of the transformer's nowhere in this sweep.",
                100.0 * KEEPS_UP
            );
        }
        if faster.iter().chain(&close).any(|s| s.b > 1) {
            sentence += " A batch turns each of its sequential steps into a (B, H)·(H, 4H) \
                         product with B rows: enough work to keep a few cores busy between two \
                         steps, so the long critical path costs little until the cores \
                         outnumber what one step can use.";
        }
        if base == 1
            && self
                .shapes
                .iter()
                .any(|&s| s.b == 1 && share(s, 1) >= KEEPS_UP)
        {
            sentence += " On one thread the critical path does not matter, only the \
                         arithmetic: both models do about ten million multiply-adds per token, \
                         the LSTM's one time step after another, the transformer's all at once.";
        }
        out.push(sentence);

        // Thread scaling.
        if top > base {
            let x = |kind, s: &Shape| self.speedup(kind, *s, top);
            let least = |kind| {
                *self
                    .shapes
                    .iter()
                    .min_by(|a, b| x(kind, a).total_cmp(&x(kind, b)))
                    .unwrap()
            };
            // "1.62–1.95× (least at B=1 T=256)", or one figure where all agree.
            let spread = |kind| {
                let worst = least(kind);
                let best = self.shapes.iter().map(|s| x(kind, s)).fold(0.0, f64::max);
                if best - x(kind, &worst) < 0.005 {
                    format!("{best:.2}×")
                } else {
                    format!(
                        "{:.2}–{best:.2}× (least at {})",
                        x(kind, &worst),
                        worst.label()
                    )
                }
            };
            let mut sentence = format!(
                "From {} to {} the transformer speeds up {}, the LSTM {}",
                fmt::threads(base),
                fmt::threads(top),
                spread(gpt),
                spread(lstm),
            );
            let h = LstmConfig::small(257).hidden_size;
            if x(lstm, &least(lstm)) + 0.1 < x(gpt, &least(gpt)) {
                sentence += ": the LSTM can split only its batch and its hidden units within \
                             each time step, and its threads meet at a barrier once per step.";
            } else {
                sentence += &format!(
                    ": on {} even a batch of one leaves every time step enough work to share \
                     ({} multiply-adds per step, sequence and layer), and the LSTM's threads wait \
                     for each other at a spin barrier instead of being handed work kernel by \
                     kernel. Its long critical path costs throughput only once the cores \
                     outnumber what one step can use.",
                    fmt::threads(top),
                    thousands((4 * h * h) as f64),
                );
            }
            out.push(sentence);
        }

        // What T costs the transformer at a fixed number of tokens per step.
        let fixed: Vec<Shape> = self
            .shapes
            .iter()
            .copied()
            .filter(|s| s.tokens() == self.batch_tokens)
            .collect();
        if let (Some(&first), Some(&last)) = (fixed.first(), fixed.last())
            && last.t > first.t
        {
            let (a, b) = (self.rate(gpt, first, top), self.rate(gpt, last, top));
            let mut sentence = format!(
                "At {} tokens per step {} the transformer's tokens/s go from {} at T = {} to {} \
                 at T = {} ({:+.0}%).",
                thousands(self.batch_tokens as f64),
                on(top),
                thousands(a),
                first.t,
                thousands(b),
                last.t,
                100.0 * (b / a - 1.0),
            );
            if b < a {
                sentence += " Its attention costs O(T) per token against O(C) for the rest of \
                             a layer, so its share of the step grows with T.";
            }
            out.push(sentence);
        }

        if self.machine.busy() {
            out.push(format!(
                "Caution: the machine was busy (other work used {}). Threads \
                 that lose their core stall the others at every join, the LSTM's at every time \
                 step, so the multi-thread figures suffer most. Rerun on a quiet machine.",
                self.machine.other_work_text().unwrap_or_default(),
            ));
        }
        out
    }
}

impl Report {
    fn to_json(&self) -> serde_json::Value {
        let m = &self.machine;
        json!({
            "machine": {
                "cpu": m.cpu,
                "cores": m.cores,
                "simd": m.simd,
                "other_work_before": m.other_work[0],
                "other_work_after": m.other_work[1],
            },
            "command": self.command,
            "steps": self.steps,
            "rounds": self.rounds,
            "warmup": self.warmup.max(1),
            "batch_tokens": self.batch_tokens,
            "threads": self.threads,
            "runs": self.runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        })
    }
}

impl Report {
    /// `parallelism.svg`: one panel per sweep (B·T fixed, B = 1), one colour per thread
    /// count, the transformer solid, the LSTM dashed.
    fn chart_panels(&self) -> Vec<(String, Vec<plot::Series>)> {
        let panel = |title: String, shapes: Vec<Shape>| {
            let mut series = Vec::new();
            for (color, &n) in self.threads.iter().enumerate() {
                for kind in KINDS {
                    series.push(plot::Series {
                        color,
                        dashed: kind == ModelKind::Lstm,
                        points: shapes
                            .iter()
                            .map(|&s| (s.t, self.rate(kind, s, n)))
                            .collect(),
                    });
                }
            }
            (title, shapes, series)
        };
        let fixed = self
            .shapes
            .iter()
            .copied()
            .filter(|s| s.tokens() == self.batch_tokens);
        let b1 = self.shapes.iter().copied().filter(|s| s.b == 1);
        [
            panel(
                format!(
                    "B·T = {} tokens per step",
                    thousands(self.batch_tokens as f64)
                ),
                fixed.collect(),
            ),
            panel("B = 1".to_string(), b1.collect()),
        ]
        .into_iter()
        .filter(|(_, shapes, _)| !shapes.is_empty())
        .map(|(title, _, series)| (title, series))
        .collect()
    }
}

pub fn run(args: Args) -> Result<()> {
    let shapes = shapes(&args)?;
    let mut machine = Machine::detect();
    let mut threads: Vec<usize> = args
        .threads
        .iter()
        .map(|&n| if n == 0 { machine.cores } else { n })
        .collect();
    threads.sort_unstable();
    threads.dedup();
    for &n in &threads {
        crate::threads::check(n, machine.cores)?;
    }
    ensure!(
        args.steps > 0 && args.rounds > 0,
        "--steps and --rounds must be at least 1; hint: e.g. --steps 5 --rounds 2"
    );
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create {}; hint: choose another --out",
            args.out.display()
        )
    })?;
    if let Some(&n) = threads.iter().find(|&&n| n > machine.cores) {
        eprintln!(
            "warning: {n} threads on {} cores: threads will share cores, and the LSTM's \
             per-step barrier waits for descheduled ones",
            machine.cores
        );
    }
    let command = std::iter::once("runner".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");

    // Rounds sweep everything in turn, so a slow minute of the machine spreads over every
    // configuration instead of spoiling one; each run's steps join its earlier rounds'.
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=args.rounds {
        for &shape in &shapes {
            for &n in &threads {
                // Both models back to back, so a noisy moment hits them alike.
                for kind in KINDS {
                    let run = measure(kind, shape, n, args.warmup, args.steps)?;
                    eprintln!(
                        "round {round}/{}  {:>4} {:<12} {:<10} {:>8} tokens/s",
                        args.rounds,
                        display_name(kind),
                        shape.label(),
                        fmt::threads(n),
                        thousands(run.tokens_per_s())
                    );
                    match runs
                        .iter_mut()
                        .find(|r| (r.kind, r.shape, r.threads) == (kind, shape, n))
                    {
                        Some(earlier) => earlier.step_seconds.extend(run.step_seconds),
                        None => runs.push(run),
                    }
                }
            }
        }
    }
    machine.other_work[1] = other_work(WATCH);
    let report = Report {
        machine,
        command,
        steps: args.steps,
        rounds: args.rounds,
        warmup: args.warmup,
        batch_tokens: args.batch_tokens,
        shapes,
        threads,
        runs,
    };

    let markdown = report.markdown();
    let json = serde_json::to_string_pretty(&report.to_json())?;
    let write = |name: &str, text: &str| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| {
            format!(
                "cannot write {}; hint: choose another --out",
                path.display()
            )
        })
    };
    write("parallelism.md", &markdown)?;
    write("parallelism.json", &json)?;
    let legend = plot::Legend {
        colors: report.threads.iter().map(|&n| fmt::threads(n)).collect(),
        solid: "GPT".into(),
        dashed: "LSTM".into(),
    };
    plot::throughput_panels(
        &args.out.join("parallelism.svg"),
        &report.chart_panels(),
        &legend,
    )?;
    if args.json {
        println!("{json}");
    } else {
        print!("{markdown}");
        println!(
            "\nWrote parallelism.md, parallelism.json and parallelism.svg to {}",
            args.out.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(seq_lens: &[usize], batch_tokens: usize, b1: &[usize]) -> Args {
        Args {
            seq_lens: seq_lens.to_vec(),
            batch_tokens,
            b1_seq_lens: b1.to_vec(),
            threads: vec![1],
            steps: 1,
            rounds: 1,
            warmup: 1,
            out: PathBuf::from("unused"),
            json: false,
        }
    }

    #[test]
    fn shapes_follow_the_flags() {
        let s = shapes(&args(&[64, 1024], 4096, &[256, 1024])).unwrap();
        let want = [(64, 64), (4, 1024), (1, 256), (1, 1024)].map(|(b, t)| Shape { b, t });
        assert_eq!(s, want);
        // B = 1 shapes already in the first sweep are measured once.
        let s = shapes(&args(&[1024], 1024, &[1024])).unwrap();
        assert_eq!(s, [Shape { b: 1, t: 1024 }]);
        let e = shapes(&args(&[100], 4096, &[])).unwrap_err().to_string();
        assert!(e.contains("100") && e.contains("hint:"), "{e}");
        assert!(shapes(&args(&[], 4096, &[])).is_err());
    }

    #[test]
    fn critical_paths_are_counted_from_the_models() {
        let path = |kind, b, t| {
            let run = measure(kind, Shape { b, t }, 1, 1, 1).unwrap();
            assert!(run.tokens_per_s() > 0.0);
            run.backward_launches
        };
        // The transformer's does not depend on the shape; the LSTM's grows by one launch per
        // layer and position, whatever the batch.
        let gpt = path(ModelKind::Gpt, 1, 8);
        assert_eq!(path(ModelKind::Gpt, 4, 32), gpt);
        let layers = LstmConfig::small(257).num_layers as u64;
        let (short, long) = (path(ModelKind::Lstm, 4, 8), path(ModelKind::Lstm, 1, 32));
        assert_eq!(long - short, layers * 24);
        assert!(long > layers * 32 && gpt < 100, "gpt {gpt}, lstm {long}");
    }

    /// A report over made-up timings: the GPT at 10,000 tokens/s on 1 thread and 1.9× that on
    /// 2; the LSTM at `lstm[shape]` on 1 thread and `lstm_speedup` times that on 2.
    fn report(lstm: [f64; 2], lstm_speedup: f64) -> Report {
        let shapes = vec![Shape { b: 64, t: 64 }, Shape { b: 1, t: 1024 }];
        let mut runs = Vec::new();
        for (i, &shape) in shapes.iter().enumerate() {
            for threads in [1, 2] {
                for kind in KINDS {
                    let rate = match (kind, threads) {
                        (ModelKind::Gpt, 1) => 10_000.0,
                        (ModelKind::Gpt, _) => 19_000.0,
                        (ModelKind::Lstm, 1) => lstm[i],
                        (ModelKind::Lstm, _) => lstm_speedup * lstm[i],
                    };
                    runs.push(Run {
                        kind,
                        shape,
                        threads,
                        params: 3_300_000,
                        step_seconds: vec![shape.tokens() as f64 / rate; 3],
                        forward_launches: 0,
                        backward_launches: match kind {
                            ModelKind::Gpt => 77,
                            ModelKind::Lstm => 3 * shape.t as u64 + 18,
                        },
                    });
                }
            }
        }
        Report {
            machine: Machine {
                cpu: "test CPU".into(),
                cores: 2,
                simd: "test lanes",
                other_work: [Some(0.02), Some(0.01)],
            },
            command: "runner parallelism".into(),
            steps: 3,
            rounds: 1,
            warmup: 1,
            batch_tokens: 4096,
            shapes,
            threads: vec![1, 2],
            runs,
        }
    }

    #[test]
    fn the_report_says_what_the_numbers_show() {
        let r = report([11_000.0, 4_000.0], 1.2);
        let md = r.markdown();
        assert!(
            md.contains("| 64 | 64 | 1 | 10,000 | 11,000 | 0.91× |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | 1024 | 2 | 19,000 | 4,800 | 3.96× |"),
            "{md}"
        );
        assert!(md.contains("| 1 | 1024 | 1.90× | 1.20× |"), "{md}");
        assert!(md.contains("| 1 | 1024 | 77 | 3,090 | 40× |"), "{md}");
        let f = r.findings().join("\n");
        assert!(
            f.contains("T = 1024 the transformer trains at these multiples of the LSTM's tokens/s: 2.50× on 1 thread, 3.96× on 2 threads."),
            "{f}"
        );
        assert!(
            f.contains("77 kernel launches one after another at every T"),
            "{f}"
        );
        assert!(
            f.contains("from 210 at T = 64 to 3,090 at T = 1024 (3 more per position"),
            "{f}"
        );
        assert!(
            f.contains(
                "transformer's: it keeps up (at least 80% on some thread count) at B=64 T=64 \
                 (1.10× on 1 thread, 0.69× on 2 threads); it falls behind at B=1 T=1024 \
                 (0.40× on 1 thread, 0.25× on 2 threads)."
            ),
            "{f}"
        );
        assert!(!f.contains("is faster at"), "{f}");
        assert!(
            f.contains("A batch turns") && !f.contains("On one thread"),
            "{f}"
        );
        assert!(
            f.contains("speeds up 1.90×, the LSTM 1.20×: the LSTM can split only"),
            "{f}"
        );
        assert!(!f.contains("Caution"), "{f}");

        // Where the LSTM keeps up nowhere, and the machine was busy, the report says so.
        let mut r = report([5_000.0, 4_000.0], 1.2);
        r.machine.other_work[1] = Some(0.4);
        let f = r.findings().join("\n");
        assert!(
            f.contains("nowhere in this sweep") && f.contains("Caution"),
            "{f}"
        );

        // An LSTM that is faster everywhere and scales as well as the transformer.
        let f = report([12_000.0, 11_000.0], 2.0).findings().join("\n");
        assert!(
            f.contains("the LSTM is faster at B=64 T=64 (1.20× on 1 thread, 1.26× on 2 threads)"),
            "{f}"
        );
        assert!(
            f.contains("On one thread the critical path does not matter"),
            "{f}"
        );
        assert!(
            f.contains("the LSTM 2.00×: on 2 threads even a batch of one leaves every time step")
                && f.contains("(518,400 multiply-adds"),
            "{f}"
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.5), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(
            (times(3.04), times(40.2)),
            ("3.0×".to_string(), "40×".to_string())
        );
        assert_eq!(fmt::threads(1), "1 thread");
        assert_eq!(fmt::threads(16), "16 threads");
    }
}
