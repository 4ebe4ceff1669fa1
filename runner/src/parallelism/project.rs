//! `runner parallelism --project`: the training step simulated on more cores than this machine
//! has, checked first on the 2 it has.
//!
//! From the measurements of `cases.rs`, each (model, shape) is simulated on P cores by
//! `simulate.rs` (list scheduling of every phase's tasks, the fork-join and barrier costs
//! measured here added, a memory roofline per launch). This module checks the simulation
//! against the 2-thread steps (whole steps and every launch site with at least 5% of the step,
//! and forced 3- and 5-task GEMMs), counts the tasks each launch offers 16 and 64 cores, and
//! reports the projected tokens/s and the crossover with its sensitivity to the costs.
//!
//! Leaves out: measuring (`cases.rs`) and the simulation itself (`simulate.rs`).

use anyhow::{Result, ensure};
use kernels::launch::{PhaseKind, Trace};
use model::ModelKind;
use serde_json::json;

use super::cases::{Bandwidth, Case, Forced};
use super::report::{Report, display_name, thousands};
use super::simulate::{self, Costs, Spread, TaskCount, TaskCounts};
use super::{KINDS, Shape};
use crate::plot;

/// A prediction this far from the measurement (as a fraction of it) or closer counts as
/// validated.
pub(super) const TOLERANCE: f64 = 0.10;

/// Launch sites with at least this share of the measured 2-thread step are checked one by one.
pub(super) const CHECKED_SHARE: f64 = 0.05;

/// The core counts the task-count table (and its test) is about.
pub(super) const COUNTED_CORES: [usize; 2] = [16, 64];

/// A task smaller than both of these is not worth handing out on its own: it would spend
/// about as long being handed out (a rayon fork-join measured here is some microseconds) as
/// working.
pub(super) const LEAST_TASK_BYTES: u64 = 64 << 10;
pub(super) const LEAST_TASK_SECONDS: f64 = 10e-6;

/// The projection of every measured shape, both models.
pub(super) struct Projection {
    /// Measured here: the fork-join, the barrier and the bandwidth of 1 thread, with the total
    /// bandwidth the 2 threads reach (the machine the validation simulates).
    pub(super) here: Costs,
    pub(super) bandwidth: Bandwidth,
    /// The stated total bandwidth of the machine projected onto, bytes/s (`--bandwidth`).
    pub(super) bw_total: f64,
    /// Core counts to project onto, ascending.
    pub(super) cores: Vec<usize>,
    pub(super) cases: Vec<Case>,
    /// The forced 3- and 5-task GEMMs.
    pub(super) forced: Vec<Forced>,
}

/// One checked prediction: over the pairs, the predicted and the measured 2-thread seconds.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Check {
    /// "whole step", a launch site, or "outside the kernels".
    pub(super) what: String,
    /// Median share of the measured step (1 for the whole step).
    pub(super) share: f64,
    pub(super) predicted: Spread,
    pub(super) measured: Spread,
    /// Each pair's predicted / measured − 1.
    pub(super) error: Spread,
}

impl Check {
    /// From the per-pair predicted and measured seconds.
    pub(super) fn of(what: String, share: f64, predicted: &[f64], measured: &[f64]) -> Check {
        let errors: Vec<f64> = predicted
            .iter()
            .zip(measured)
            .map(|(p, m)| p / m - 1.0)
            .collect();
        Check {
            what,
            share,
            predicted: Spread::of(predicted).expect("at least one pair"),
            measured: Spread::of(measured).expect("at least one pair"),
            error: Spread::of(&errors).expect("at least one pair"),
        }
    }

    /// The error of the medians.
    pub(super) fn miss(&self) -> f64 {
        self.predicted.median / self.measured.median - 1.0
    }

    pub(super) fn holds(&self) -> bool {
        self.miss().abs() <= TOLERANCE
    }
}

/// The whole step, and every site with at least [`CHECKED_SHARE`] of it (sites in the order
/// they first launch, then the time outside the kernels), predicted for 2 threads from `one`
/// and measured in `two`, pair by pair.
pub(super) fn checks(one: &[Trace], two: &[Trace], here: &Costs) -> Result<Vec<Check>> {
    ensure!(
        !one.is_empty() && one.len() == two.len(),
        "no pairs of traced steps to check the simulation against"
    );
    let both: Vec<Trace> = one.iter().chain(two).cloned().collect();
    simulate::same_computation(&both)?;
    let step_p: Vec<f64> = one
        .iter()
        .map(|t| simulate::step_seconds(t, 2, here))
        .collect();
    let step_m: Vec<f64> = two.iter().map(|t| t.seconds).collect();
    let step = Spread::of(&step_m).expect("at least one pair").median;
    let mut rows = vec![Check::of("whole step".into(), 1.0, &step_p, &step_m)];
    let predicted: Vec<Vec<simulate::Site>> = one
        .iter()
        .map(|t| simulate::predicted_sites(t, 2, here))
        .collect();
    let measured: Vec<Vec<simulate::Site>> = two.iter().map(simulate::traced_sites).collect();
    let mut add = |what: String, p: Vec<f64>, m: Vec<f64>| {
        let share = Spread::of(&m).expect("at least one pair").median / step;
        if share >= CHECKED_SHARE {
            rows.push(Check::of(what, share, &p, &m));
        }
    };
    for (i, site) in predicted[0].iter().enumerate() {
        let what = format!("{} ({}×)", site.kernel, site.launches);
        add(
            what,
            predicted.iter().map(|s| s[i].seconds).collect(),
            measured.iter().map(|s| s[i].seconds).collect(),
        );
    }
    add(
        "outside the kernels".into(),
        one.iter().map(Trace::outside).collect(),
        two.iter().map(Trace::outside).collect(),
    );
    Ok(rows)
}

/// One forced GEMM's check: its 1-thread time, and its 2-thread time predicted and measured.
pub(super) struct ForcedCheck {
    pub(super) tasks: usize,
    pub(super) one: Spread,
    pub(super) check: Check,
}

/// Seconds inside the launches of a trace.
fn in_launches(t: &Trace) -> f64 {
    t.launches.iter().map(|l| l.seconds).sum()
}

impl ForcedCheck {
    pub(super) fn of(f: &Forced, here: &Costs) -> ForcedCheck {
        let predicted: Vec<f64> = f
            .one
            .iter()
            .map(|t| {
                t.launches
                    .iter()
                    .map(|l| simulate::launch_seconds(l, 2, here))
                    .sum()
            })
            .collect();
        let measured: Vec<f64> = f.two.iter().map(in_launches).collect();
        let one: Vec<f64> = f.one.iter().map(in_launches).collect();
        let (m, n, k) = f.dims;
        ForcedCheck {
            tasks: f.tasks,
            one: Spread::of(&one).expect("at least one pair"),
            check: Check::of(format!("{m}×{n}×{k}"), 1.0, &predicted, &measured),
        }
    }

    /// Its best speedup on 2 workers: tasks / ⌈tasks / 2⌉.
    pub(super) fn ideal(&self) -> f64 {
        self.tasks as f64 / self.tasks.div_ceil(2) as f64
    }
}

/// Why a launch offers fewer than 4·P tasks to P cores, or `None` where nothing explains it
/// (a kernel that should split finer).
pub(super) fn shortfall_reason(c: &TaskCount, p: usize) -> Option<String> {
    let target = simulate::target_tasks(p);
    if c.tasks >= target {
        return Some("meets".into());
    }
    if c.kind == Some(PhaseKind::Team) {
        return Some(if c.parts as usize >= p {
            format!(
                "a walk's step: {p} seats own its {} equal parts for the whole walk and meet \
                 at a barrier each step, so P parts keep every core busy",
                c.parts
            )
        } else {
            format!(
                "a walk's step has only {} parts (batch rows × panels of hidden units; the \
                 walk cuts at least P wherever the shape has them)",
                c.parts
            )
        });
    }
    let (bytes, seconds) = (c.bytes / target as u64, c.seconds / target as f64);
    (bytes < LEAST_TASK_BYTES && seconds < LEAST_TASK_SECONDS).then(|| {
        format!(
            "too little work: {} tasks would move {} KiB and take {:.1} µs each",
            target,
            bytes >> 10,
            seconds * 1e6
        )
    })
}

/// One launch site's task counts at P cores: its launches, the fewest and most tasks of their
/// main phases, and why it offers fewer than 4·P where it does.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SiteTasks {
    pub(super) kernel: String,
    pub(super) launches: usize,
    pub(super) fewest: usize,
    pub(super) most: usize,
    pub(super) seconds: f64,
    /// "meets", a reason, or `None`: short of 4·P with nothing to explain it.
    pub(super) reason: Option<String>,
}

/// The task counts of a step split for `p` workers, per site (in the order sites first
/// launch); a site's reason is its worst launch's.
pub(super) fn site_tasks(trace: &Trace, p: usize) -> Vec<SiteTasks> {
    let mut rows: Vec<SiteTasks> = Vec::new();
    for c in TaskCounts::of(trace).0 {
        let reason = shortfall_reason(&c, p);
        match rows.iter_mut().find(|r| r.kernel == c.kernel) {
            Some(r) => {
                r.launches += 1;
                r.seconds += c.seconds;
                r.most = r.most.max(c.tasks);
                let unexplained = reason.is_none() || r.reason.is_none();
                if c.tasks < r.fewest {
                    r.fewest = c.tasks;
                    r.reason = reason;
                }
                if unexplained {
                    r.reason = None;
                }
            }
            None => rows.push(SiteTasks {
                kernel: c.kernel.clone(),
                launches: 1,
                fewest: c.tasks,
                most: c.tasks,
                seconds: c.seconds,
                reason,
            }),
        }
    }
    rows
}

/// The cost scalings of the sensitivity table: (name, barrier, fork-join, bandwidth).
pub(super) const SENSITIVITY: [(&str, f64, f64, f64); 6] = [
    ("barrier ×½", 0.5, 1.0, 1.0),
    ("barrier ×2", 2.0, 1.0, 1.0),
    ("fork-join ×½", 1.0, 0.5, 1.0),
    ("fork-join ×2", 1.0, 2.0, 1.0),
    ("bandwidth ×½", 1.0, 1.0, 0.5),
    ("bandwidth ×2", 1.0, 1.0, 2.0),
];

impl Projection {
    /// The costs of the machine projected onto: this one's, with the stated total bandwidth.
    pub(super) fn costs(&self) -> Costs {
        Costs {
            bw_total: self.bw_total,
            ..self.here
        }
    }

    fn case(&self, kind: ModelKind, shape: Shape) -> &Case {
        self.cases
            .iter()
            .find(|c| c.kind == kind && c.shape == shape)
            .expect("every (model, shape) was measured")
    }

    pub(super) fn shapes(&self) -> Vec<Shape> {
        let mut shapes: Vec<Shape> = Vec::new();
        for c in &self.cases {
            if !shapes.contains(&c.shape) {
                shapes.push(c.shape);
            }
        }
        shapes
    }

    /// Simulated step seconds on `p` cores (the median over the traces split for `p`).
    pub(super) fn step(&self, kind: ModelKind, shape: Shape, p: usize, costs: &Costs) -> f64 {
        let traces = self.case(kind, shape).traces(p);
        simulate::predict(traces, p, costs)
            .expect("every projected core count was traced")
            .median
    }

    /// Projected tokens/s on `p` cores.
    pub(super) fn rate(&self, kind: ModelKind, shape: Shape, p: usize) -> f64 {
        shape.tokens() as f64 / self.step(kind, shape, p, &self.costs())
    }

    pub(super) fn crossover(&self, shape: Shape, costs: &Costs) -> Option<usize> {
        simulate::crossover_of(
            &self.cores,
            shape.tokens() as f64,
            |p| self.step(ModelKind::Gpt, shape, p, costs),
            |p| self.step(ModelKind::Lstm, shape, p, costs),
        )
    }

    /// Every case's checks.
    pub(super) fn validation(&self) -> Result<Vec<(ModelKind, Shape, Vec<Check>)>> {
        self.cases
            .iter()
            .map(|c| Ok((c.kind, c.shape, checks(&c.one, &c.two, &self.here)?)))
            .collect()
    }

    /// Distinct T of the shapes, ascending: the colours of the chart.
    pub(super) fn seq_lens(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self.shapes().iter().map(|s| s.t).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// `projection.svg`: one panel per batch size B, tokens/s against cores, one colour per T,
    /// the transformer solid, the LSTM dashed.
    pub(super) fn chart_panels(&self) -> Vec<(String, Vec<plot::Series>)> {
        let seq_lens = self.seq_lens();
        let mut batches: Vec<usize> = self.shapes().iter().map(|s| s.b).collect();
        batches.sort_unstable();
        batches.dedup();
        batches
            .iter()
            .map(|&b| {
                let mut series = Vec::new();
                for shape in self.shapes().into_iter().filter(|s| s.b == b) {
                    let color = seq_lens.iter().position(|&t| t == shape.t).unwrap_or(0);
                    for kind in KINDS {
                        series.push(plot::Series {
                            color,
                            dashed: kind == ModelKind::Lstm,
                            points: self
                                .cores
                                .iter()
                                .map(|&p| (p, self.rate(kind, shape, p)))
                                .collect(),
                        });
                    }
                }
                (format!("Simulated, B = {b}"), series)
            })
            .collect()
    }

    /// The report's section.
    pub(super) fn markdown(&self, _report: &Report) -> String {
        let h = &self.here;
        let mut s = String::from(
            "\n## Simulated on more cores (a work-span simulation, checked on 2 threads)\n\n",
        );
        s += &format!(
            "Each step was traced task by task on 1 thread, with the kernels splitting their work \
             as a pool of P threads would (`kernels::parallel::plan`), once for every P \
             projected. On P cores each launch takes its serial part plus, phase after phase, \
             the list schedule of its tasks on P workers and a fork-join, or for a step of the \
             LSTM's walk the busiest of min(P, parts) seats and a barrier; or, where longer, \
             its bytes (from its shapes) over the bandwidth of P threads. The time outside the \
             kernels (traced inside each step) stays on one thread.\n\n\
             Assumptions, with what was measured here (least of many tries, 2 threads):\n\n\
             - a rayon fork-join: {:.1} µs on 2 threads, growing as log2 of the threads it \
             reaches;\n\
             - a barrier crossing of the walk's team: {:.2} µs on 2 threads, growing as \
             (threads − 1) (one shared counter);\n\
             - bandwidth: {:.1} GB/s on 1 thread, {:.1} GB/s on 2 (a 256 MiB copy), adding up \
             per thread until the machine's total, a stated parameter: {:.0} GB/s \
             (`--bandwidth`; the validation uses the 2-thread figure);\n\
             - each task on P cores takes its 1-thread time: no shared caches, no SMT, no \
             clock changes with the cores busy; independent launches do not overlap.\n",
            h.fork_join_2 * 1e6,
            h.barrier_2 * 1e6,
            self.bandwidth.one / 1e9,
            self.bandwidth.two / 1e9,
            self.bw_total / 1e9,
        );
        s += &self.validation_markdown();
        s += &self.forced_markdown();
        s += &self.tasks_markdown();
        s += &self.rates_markdown();
        s += &self.crossover_markdown();
        s
    }

    fn validation_markdown(&self) -> String {
        let pairs = self.cases.first().map_or(0, |c| c.one.len());
        let mut s = format!(
            "\n### Check on 2 threads\n\n\
             {pairs} pairs per case, interleaved: a 1-thread step split for 2 workers, then a \
             2-thread step traced live. Each 2-thread step is predicted from its pair's \
             1-thread step; the whole step, and every launch site with at least {:.0}% of \
             it, must be within {:.0}% (median against median). The spread is the range of \
             the pairs' own errors.\n\n\
             | model | B | T | what | share | predicted | measured | error | spread of errors |\n\
             |---|--:|--:|---|--:|--:|--:|--:|--:|\n",
            100.0 * CHECKED_SHARE,
            100.0 * TOLERANCE,
        );
        let mut outside = Vec::new();
        let validation = match self.validation() {
            Ok(v) => v,
            Err(e) => return format!("\n### Check on 2 threads\n\nCannot check: {e}.\n"),
        };
        for (kind, shape, rows) in &validation {
            for r in rows {
                s += &format!(
                    "| {} | {} | {} | {} | {:.0}% | {:.2} ms | {:.2} ms | {:+.1}% | {:+.1}% … \
                     {:+.1}% |\n",
                    display_name(*kind),
                    shape.b,
                    shape.t,
                    r.what,
                    100.0 * r.share,
                    r.predicted.median * 1e3,
                    r.measured.median * 1e3,
                    100.0 * r.miss(),
                    100.0 * r.error.min,
                    100.0 * r.error.max,
                );
                if !r.holds() {
                    outside.push(format!(
                        "{} {} {} ({:+.1}%)",
                        display_name(*kind),
                        shape.label(),
                        r.what,
                        100.0 * r.miss()
                    ));
                }
            }
        }
        let worst = validation
            .iter()
            .flat_map(|v| v.2.iter())
            .map(|r| r.miss().abs())
            .fold(0.0, f64::max);
        s += &if outside.is_empty() {
            format!(
                "\nEvery check is within {:.0}% (at most {:.1}% off).\n",
                100.0 * TOLERANCE,
                100.0 * worst
            )
        } else {
            format!(
                "\nOutside {:.0}%: {}. Read the projection with that margin.\n",
                100.0 * TOLERANCE,
                outside.join("; ")
            )
        };
        s
    }

    fn forced_markdown(&self) -> String {
        if self.forced.is_empty() {
            return String::new();
        }
        let mut s = String::from(
            "\n### GEMMs forced into 3 and 5 tasks, on 2 threads\n\n\
             A model that counts only P predicts 2× for both; the list schedule predicts \
             the busiest thread's share.\n\n\
             | tasks | product | 1 thread | predicted | measured | error | best speedup | \
             measured speedup |\n|--:|---|--:|--:|--:|--:|--:|--:|\n",
        );
        for f in &self.forced {
            let c = ForcedCheck::of(f, &self.here);
            s += &format!(
                "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:+.1}% | {:.2}× | {:.2}× |\n",
                c.tasks,
                c.check.what,
                c.one.median * 1e3,
                c.check.predicted.median * 1e3,
                c.check.measured.median * 1e3,
                100.0 * c.check.miss(),
                c.ideal(),
                c.one.median / c.check.measured.median,
            );
        }
        s
    }

    fn tasks_markdown(&self) -> String {
        let mut s = String::new();
        for c in &self.cases {
            let traced: Vec<usize> = COUNTED_CORES
                .into_iter()
                .filter(|&p| !c.traces(p).is_empty())
                .collect();
            if traced.is_empty() {
                continue;
            }
            s += &format!(
                "\n### Tasks per launch: {} {}\n\n\
                 The tasks of each launch's main phase (its phase with the most work) when \
                 split for P workers, the fewest and most over a site's launches, against \
                 4·P.\n\n",
                display_name(c.kind),
                c.shape.label()
            );
            let short: Vec<String> = traced
                .iter()
                .map(|&p| {
                    let counts = TaskCounts::of(&c.traces(p)[0]);
                    let short = counts.meets(simulate::target_tasks(p)).len();
                    format!("{short} of {} at P = {p}", counts.0.len())
                })
                .collect();
            s += &format!(
                "Launches short of 4·P tasks: {}.\n\n| launch site | launches | 1-thread ms |",
                short.join(", ")
            );
            for p in &traced {
                s += &format!(" tasks, P = {p} | 4·P met? |");
            }
            s += "\n|---|--:|--:|";
            for _ in &traced {
                s += "--:|---|";
            }
            s += "\n";
            let per_p: Vec<Vec<SiteTasks>> = traced
                .iter()
                .map(|&p| site_tasks(&c.traces(p)[0], p))
                .collect();
            for (i, row) in per_p[0].iter().enumerate() {
                s += &format!(
                    "| {} | {} | {:.1} |",
                    row.kernel,
                    row.launches,
                    row.seconds * 1e3
                );
                for rows in &per_p {
                    let r = &rows[i];
                    let count = if r.fewest == r.most {
                        r.fewest.to_string()
                    } else {
                        format!("{}–{}", r.fewest, r.most)
                    };
                    let reason = r.reason.as_deref().unwrap_or("**no**: should split finer");
                    s += &format!(" {count} | {reason} |");
                }
                s += "\n";
            }
        }
        s
    }

    fn rates_markdown(&self) -> String {
        let mut s = format!(
            "\n### Simulated tokens per second (machine total {:.0} GB/s)\n\n\
             | B | T | cores | GPT tokens/s | LSTM tokens/s | GPT / LSTM |\n\
             |--:|--:|--:|--:|--:|--:|\n",
            self.bw_total / 1e9
        );
        for shape in self.shapes() {
            for &p in &self.cores {
                let (g, l) = (
                    self.rate(ModelKind::Gpt, shape, p),
                    self.rate(ModelKind::Lstm, shape, p),
                );
                s += &format!(
                    "| {} | {} | {p} | {} | {} | {:.2}× |\n",
                    shape.b,
                    shape.t,
                    thousands(g),
                    thousands(l),
                    g / l
                );
            }
        }
        s
    }

    fn crossover_markdown(&self) -> String {
        let top = *self.cores.last().expect("at least one core count");
        let text = |c: Option<usize>| match c {
            Some(p) if p == self.cores[0] => format!("≤ {p}"),
            Some(p) => p.to_string(),
            None => format!("none ≤ {top}"),
        };
        let mut s = format!(
            "\n### Where the transformer overtakes the LSTM\n\n\
             The fewest cores from which the transformer's simulated tokens/s stay above the \
             LSTM's at every larger count simulated, with the costs as measured and with each \
             scaled; and the ratio at {top} cores.\n\n\
             | B | T | crossover |"
        );
        for (name, ..) in SENSITIVITY {
            s += &format!(" {name} |");
        }
        s += &format!(" GPT / LSTM at {top} |\n|--:|--:|--:|");
        for _ in SENSITIVITY {
            s += "--:|";
        }
        s += "--:|\n";
        let base = self.costs();
        for shape in self.shapes() {
            s += &format!(
                "| {} | {} | {} |",
                shape.b,
                shape.t,
                text(self.crossover(shape, &base))
            );
            for (_, b, f, w) in SENSITIVITY {
                s += &format!(" {} |", text(self.crossover(shape, &base.scaled(b, f, w))));
            }
            s += &format!(
                " {:.2}× |\n",
                self.rate(ModelKind::Gpt, shape, top) / self.rate(ModelKind::Lstm, shape, top)
            );
        }
        s += &self.where_the_time_goes(top);
        s
    }

    /// At `p` cores, the three sites that take most of each model's simulated step, for the
    /// largest shape.
    fn where_the_time_goes(&self, p: usize) -> String {
        let Some(shape) = self.shapes().into_iter().max_by_key(|s| s.tokens() * s.t) else {
            return String::new();
        };
        let costs = self.costs();
        let mut s = format!(
            "\nWhere the simulated step goes at {p} cores, {}:\n\n",
            shape.label()
        );
        for kind in KINDS {
            let traces = self.case(kind, shape).traces(p);
            let step = self.step(kind, shape, p, &costs);
            let Ok(mut sites) = simulate::predict_sites(traces, p, &costs) else {
                continue;
            };
            sites.sort_by(|a, b| b.0.seconds.total_cmp(&a.0.seconds));
            let top: Vec<String> = sites
                .iter()
                .take(3)
                .map(|(x, _)| format!("{} ({}×) {:.1} ms", x.kernel, x.launches, x.seconds * 1e3))
                .collect();
            s += &format!(
                "- {}: {:.1} ms a step, {:.1} ms of it outside the kernels; most: {}.\n",
                display_name(kind),
                step * 1e3,
                traces[0].outside() * 1e3,
                top.join(", ")
            );
        }
        s
    }

    pub(super) fn to_json(&self, _report: &Report) -> serde_json::Value {
        let spread = |s: &Spread| json!({"median": s.median, "min": s.min, "max": s.max});
        let check = |c: &Check| {
            json!({
                "what": c.what, "share": c.share, "predicted_s": spread(&c.predicted),
                "measured_s": spread(&c.measured), "error": spread(&c.error),
            })
        };
        let base = self.costs();
        json!({
            "costs_here": {
                "fork_join_2_s": self.here.fork_join_2,
                "barrier_2_s": self.here.barrier_2,
                "bandwidth_1_thread_bytes_per_s": self.bandwidth.one,
                "bandwidth_2_threads_bytes_per_s": self.bandwidth.two,
            },
            "bandwidth_total_bytes_per_s": self.bw_total,
            "cores": self.cores,
            "validation": self.validation().unwrap_or_default().iter().map(|(k, sh, rows)| json!({
                "model": k.name(), "b": sh.b, "t": sh.t,
                "checks": rows.iter().map(check).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "forced": self.forced.iter().map(|f| {
                let c = ForcedCheck::of(f, &self.here);
                json!({"tasks": c.tasks, "one_thread_s": spread(&c.one), "check": check(&c.check)})
            }).collect::<Vec<_>>(),
            "tasks": self.cases.iter().map(|c| json!({
                "model": c.kind.name(), "b": c.shape.b, "t": c.shape.t,
                "per_cores": COUNTED_CORES.iter().filter(|&&p| !c.traces(p).is_empty()).map(|&p| json!({
                    "cores": p,
                    "sites": site_tasks(&c.traces(p)[0], p).iter().map(|r| json!({
                        "kernel": r.kernel, "launches": r.launches, "fewest": r.fewest,
                        "most": r.most, "seconds": r.seconds, "reason": r.reason,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "shapes": self.shapes().iter().map(|&sh| json!({
                "b": sh.b,
                "t": sh.t,
                "gpt_tokens_per_s": self.cores.iter().map(|&p| self.rate(ModelKind::Gpt, sh, p)).collect::<Vec<_>>(),
                "lstm_tokens_per_s": self.cores.iter().map(|&p| self.rate(ModelKind::Lstm, sh, p)).collect::<Vec<_>>(),
                "crossover_cores": self.crossover(sh, &base),
                "sensitivity": SENSITIVITY.iter().map(|&(name, b, f, w)| json!({
                    "scaling": name, "crossover_cores": self.crossover(sh, &base.scaled(b, f, w)),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::measure::{Trainer, pool};
    use super::*;
    use kernels::parallel::{Plan, plan};

    /// Item 1 of the many-core issue: at B = 16, T = 1024, every launch of both training
    /// steps offers 16 and 64 cores at least 4·P tasks, or has a reason it cannot; and the
    /// launches that carry the step (products, attention, the walk) meet it outright.
    #[test]
    fn the_b16_t1024_steps_offer_4p_tasks_or_say_why() {
        let shape = Shape { b: 16, t: 1024 };
        let one = pool(1).unwrap();
        for kind in KINDS {
            let mut trainer = Trainer::new(kind, shape, model::Precision::F32);
            for p in COUNTED_CORES {
                let trace = one.install(|| plan(Plan::workers(p), || trainer.traced_step()));
                let target = simulate::target_tasks(p);
                let counts = TaskCounts::of(&trace);
                for c in counts.meets(target) {
                    assert!(
                        shortfall_reason(c, p).is_some(),
                        "{kind:?} P = {p}: {} splits into {} tasks of a {target} target, \
                         with nothing to explain it: {c:?}",
                        c.kernel,
                        c.tasks
                    );
                }
                let step: f64 = trace.launches.iter().map(|l| l.seconds).sum();
                for row in site_tasks(&trace, p) {
                    let heavy = [
                        "gemm/",
                        "attention/flash",
                        "attention/mod",
                        "recurrence/mod",
                    ]
                    .iter()
                    .any(|k| row.kernel.starts_with(k));
                    if !heavy || row.seconds < 0.02 * step {
                        continue;
                    }
                    let walk = row.kernel.starts_with("recurrence/mod");
                    let need = if walk { p } else { target };
                    assert!(
                        row.fewest >= need,
                        "{kind:?} P = {p}: {} has launches of {} tasks, fewer than {need}",
                        row.kernel,
                        row.fewest
                    );
                }
            }
        }
    }

    #[test]
    fn a_launch_short_of_its_tasks_needs_a_reason() {
        let count = |kind, tasks, parts, bytes, seconds| TaskCount {
            launch: 0,
            kernel: "gemm/mod.rs:1".into(),
            kind,
            tasks,
            parts,
            seconds,
            bytes,
        };
        let fork = Some(PhaseKind::Fork);
        // Enough tasks; a small launch; a big one that is short: no reason.
        let met = count(fork, 64, 64, 1 << 30, 1.0);
        assert_eq!(shortfall_reason(&met, 16).as_deref(), Some("meets"));
        let small = count(fork, 1, 1, 4096, 1e-5);
        assert!(
            shortfall_reason(&small, 64)
                .unwrap()
                .starts_with("too little work")
        );
        let big = count(fork, 8, 8, 1 << 30, 1.0);
        assert_eq!(shortfall_reason(&big, 16), None);
        // Few bytes but long (a product's flops): still short.
        assert_eq!(shortfall_reason(&count(fork, 8, 8, 4096, 1.0), 16), None);
        // A walk's team needs P parts, not 4·P; fewer only where the shape has no more.
        let team = Some(PhaseKind::Team);
        assert!(
            shortfall_reason(&count(team, 45, 45, 0, 1.0), 16)
                .unwrap()
                .contains("45 equal")
        );
        assert!(
            shortfall_reason(&count(team, 45, 45, 0, 1.0), 64)
                .unwrap()
                .contains("only 45")
        );
    }

    fn trace_of(seconds: f64, outside: f64) -> Trace {
        Trace {
            launches: Vec::new(),
            seconds,
            tail: outside,
        }
    }

    #[test]
    fn checks_compare_medians_and_keep_the_spread() {
        // Steps with nothing but time outside the kernels: predicted as the 1-thread
        // outside time, measured as the 2-thread step.
        let one: Vec<Trace> = [1.0, 1.1, 0.9].map(|x| trace_of(x, x)).into();
        let two: Vec<Trace> = [1.0, 1.25, 1.0].map(|x| trace_of(x, x)).into();
        let c = &Costs {
            fork_join_2: 1e-6,
            barrier_2: 1e-7,
            bw_1: 1e10,
            bw_total: 2e10,
        };
        let rows = checks(&one, &two, c).unwrap();
        assert_eq!(rows[0].what, "whole step");
        assert_eq!(
            (rows[0].predicted.median, rows[0].measured.median),
            (1.0, 1.0)
        );
        assert!(rows[0].holds());
        assert!(
            (rows[0].error.min + 0.12).abs() < 1e-12,
            "{:?}",
            rows[0].error
        );
        assert_eq!(rows[1].what, "outside the kernels");
        let far: Vec<Trace> = [1.2, 1.3, 1.25].map(|x| trace_of(x, x)).into();
        assert!(!checks(&one, &far, c).unwrap()[0].holds());
        assert!(checks(&one, &two[..2], c).is_err());
    }
}
