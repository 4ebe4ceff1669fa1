//! The Markdown report and the JSON of a finished sweep, and the findings computed from it.
//!
//! Leaves out: the chart (see `chart.rs`).

use crate::fmt;
use model::ModelKind;
use serde_json::json;

use super::measure::{Machine, Run};
use super::{KEEPS_UP, KINDS, Shape};

/// A finished sweep.
pub(super) struct Report {
    /// The work-span model's projection, when --project asked for one.
    pub(super) projection: Option<super::project::Projection>,
    pub(super) machine: Machine,
    /// The precision of the models' matrix products.
    pub(super) precision: model::Precision,
    /// The command line that produced it.
    pub(super) command: String,
    pub(super) steps: usize,
    pub(super) rounds: usize,
    pub(super) warmup: usize,
    /// B·T of the fixed-tokens sweep.
    pub(super) batch_tokens: usize,
    pub(super) shapes: Vec<Shape>,
    /// Sorted, distinct.
    pub(super) threads: Vec<usize>,
    pub(super) runs: Vec<Run>,
}

impl Report {
    pub(super) fn run(&self, kind: ModelKind, shape: Shape, threads: usize) -> &Run {
        self.runs
            .iter()
            .find(|r| r.kind == kind && r.shape == shape && r.threads == threads)
            .expect("every (model, shape, threads) was measured")
    }

    pub(super) fn rate(&self, kind: ModelKind, shape: Shape, threads: usize) -> f64 {
        self.run(kind, shape, threads).tokens_per_s()
    }

    /// Transformer tokens/s over the LSTM's.
    pub(super) fn ratio(&self, shape: Shape, threads: usize) -> f64 {
        self.rate(ModelKind::Gpt, shape, threads) / self.rate(ModelKind::Lstm, shape, threads)
    }

    /// Tokens/s on `threads` over tokens/s on the fewest threads measured.
    pub(super) fn speedup(&self, kind: ModelKind, shape: Shape, threads: usize) -> f64 {
        self.rate(kind, shape, threads) / self.rate(kind, shape, self.threads[0])
    }

    pub(super) fn params(&self, kind: ModelKind) -> (usize, usize) {
        let p = self
            .runs
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.params);
        (p.clone().min().unwrap_or(0), p.max().unwrap_or(0))
    }

    pub(super) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::from("# Why transformers train faster: the parallelism sweep\n\n");
        s += &format!(
            "Machine: {}, {} cores, {}, {} products{}.  \n",
            m.cpu,
            m.cores,
            m.simd,
            self.precision,
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
        if let Some(p) = &self.projection {
            s += &p.markdown(self);
        }
        s
    }
}

/// "GPT" or "LSTM".
pub(super) fn display_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Gpt => "GPT",
        ModelKind::Lstm => "LSTM",
    }
}

/// A ratio: "1.4×" below ten, "40×" above.
pub(super) fn times(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.0}×")
    }
}

/// A rate rounded to an integer with thousands separators: 12,345.
pub(super) fn thousands(x: f64) -> String {
    crate::ckpt::thousands(x.max(0.0).round() as u64)
}

impl Report {
    /// Plain sentences about what the measurements show, each computed from them.
    pub(super) fn findings(&self) -> Vec<String> {
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
                super::lstm_small().num_layers,
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
            let h = super::lstm_small().hidden_size;
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
    pub(super) fn to_json(&self) -> serde_json::Value {
        let m = &self.machine;
        json!({
            "machine": {
                "cpu": m.cpu,
                "cores": m.cores,
                "simd": m.simd,
                "other_work_before": m.other_work[0],
                "other_work_after": m.other_work[1],
            },
            "precision": self.precision.name(),
            "command": self.command,
            "steps": self.steps,
            "rounds": self.rounds,
            "warmup": self.warmup.max(1),
            "batch_tokens": self.batch_tokens,
            "threads": self.threads,
            "runs": self.runs.iter().map(Run::to_json).collect::<Vec<_>>(),
            "projection": self.projection.as_ref().map(|p| p.to_json(self)),
        })
    }
}
