//! `runner parallelism --project`: a work-span model of the training step, to say what more
//! cores than this machine has would do.
//!
//! Input: every kernel launch of the 1-thread timed steps, traced by [`kernels::launch::trace`]
//! (its median time over the steps, its dependent steps, the independent tasks each step splits
//! into — its *ways* — and its fork-joins), the step's time outside the kernels, and two
//! overheads measured here on a pool of 2 threads: a rayon fork-join and the LSTM walk's
//! barrier. The step on P cores is predicted as
//!
//! ```text
//! S(P) = serial + Σ kernels  max(t / P_eff, joins · fork_join(Q))
//!               + Σ walks    T · max((t / T) / P_eff, barrier(Q)) + joins · fork_join(Q)
//! Q = min(P, ways)                     (threads that get a task; a walk's team is Q threads)
//! P_eff = ways / ceil(ways / P)        (the busiest core runs ceil(ways / P) equal tasks)
//! fork_join(Q) = fork_join(2) · log2 Q (rayon wakes and steals in a tree)
//! barrier(Q)   = barrier(2) · (Q − 1)  (one counter: each arrival moves its cache line)
//! ```
//!
//! and with P = 1 no overhead at all. It is validated against the step times measured on the
//! thread counts of the sweep, and projected for the `--project` core counts.
//!
//! Leaves out: memory bandwidth and cache sharing between cores (every core is taken to run
//! its share as fast as the one core measured), dependencies finer than a launch (independent
//! launches are not overlapped), and SMT.

use std::time::Instant;

use anyhow::{Result, ensure};
use kernels::launch::{Trace, Traced};
use model::ModelKind;
use rayon::prelude::*;
use serde_json::json;

use super::report::{Report, display_name, thousands, times};
use super::{KINDS, Shape};
use crate::plot;

/// A prediction this far from the measurement (as a fraction of it) or closer counts as
/// validated.
const TOLERANCE: f64 = 0.10;

/// One kernel launch of the training step, as the model uses it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct LaunchCost {
    /// Where the kernel opened its launch: `file:line` under `kernels/src`.
    pub(super) kernel: String,
    /// Dependent steps: 1, or T for a walk.
    pub(super) steps: u64,
    /// Independent tasks per step.
    pub(super) ways: u64,
    /// Fork-joins it makes.
    pub(super) joins: u64,
    /// Median wall time on one thread.
    pub(super) seconds: f64,
}

/// The costs of sharing work between cores, measured on 2 threads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Overheads {
    /// One rayon fork-join over 2 threads, beyond the work it hands out, seconds.
    pub(super) fork_join_2: f64,
    /// One spin-barrier crossing of a 2-thread LSTM walk, seconds.
    pub(super) barrier_2: f64,
}

impl Overheads {
    pub(super) fn fork_join(&self, p: usize) -> f64 {
        if p <= 1 {
            0.0
        } else {
            self.fork_join_2 * (p as f64).log2()
        }
    }

    pub(super) fn barrier(&self, p: usize) -> f64 {
        if p <= 1 {
            0.0
        } else {
            self.barrier_2 * (p - 1) as f64
        }
    }

    /// Measures both on a pool of 2 threads: the least of many repetitions, since other work
    /// on the machine can only add to them (a descheduled partner thread stalls a barrier by
    /// a whole time slice).
    pub(super) fn measure() -> Result<Overheads> {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))
        };
        let (one, two) = (pool(1)?, pool(2)?);
        // Two tasks of 20 µs each, so that the second thread must take one: what the pair
        // takes beyond 20 µs is the fork-join.
        let work = std::time::Duration::from_micros(20);
        let fork_join_2 = two.install(|| {
            least_seconds(400, 1, || {
                (0..2usize).into_par_iter().for_each(|_| {
                    let start = Instant::now();
                    while start.elapsed() < work {
                        std::hint::spin_loop();
                    }
                });
            })
        }) - work.as_secs_f64();
        // A walk with one panel of hidden units per thread and a batch of one: each step's
        // work is a few thousand multiply-adds, so its time on 2 threads beyond half the
        // 1-thread time is the barrier.
        let per_step = |pool: &rayon::ThreadPool| {
            let (b, t, h) = (1, 2048, 2 * kernels::simd::LANES);
            let mut hs = vec![0.0; (t + 1) * b * h];
            let mut cs = vec![0.0; (t + 1) * b * h];
            let mut gates = vec![0.01; t * b * 4 * h];
            let mut packed = kernels::recurrence::PackedWhh::new();
            let w_hh = vec![0.01; 4 * h * h];
            let fp32 = kernels::Precision::F32;
            kernels::recurrence::lstm_pack_forward(&mut packed, &w_hh, h, fp32);
            pool.install(|| {
                least_seconds(31, 1, || {
                    let dims = kernels::LstmDims { b, t, h };
                    kernels::recurrence::lstm_forward(&mut hs, &mut cs, &mut gates, &packed, dims);
                })
            }) / t as f64
        };
        let barrier_2 = (per_step(&two) - per_step(&one) / 2.0).max(0.0);
        Ok(Overheads {
            fork_join_2: fork_join_2.max(0.0),
            barrier_2,
        })
    }
}

/// Least over `samples` of the mean time of `reps` calls of `f`, seconds.
fn least_seconds(samples: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    let mut s: Vec<f64> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..reps {
                f();
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    s.sort_by(f64::total_cmp);
    s[0]
}

/// Busiest core's share of the work: `ways` equal tasks on `p` cores run in
/// `ceil(ways / p)` rounds, so the launch speeds up `ways / ceil(ways / p)`.
pub(super) fn effective_cores(ways: u64, p: usize) -> f64 {
    let ways = ways.max(1);
    ways as f64 / ways.div_ceil(p.max(1) as u64) as f64
}

/// The predicted time of one launch on `p` cores.
pub(super) fn launch_seconds(l: &LaunchCost, p: usize, o: &Overheads) -> f64 {
    if p <= 1 || l.ways <= 1 {
        return l.seconds;
    }
    let eff = effective_cores(l.ways, p);
    let q = p.min(l.ways as usize);
    let start = l.joins as f64 * o.fork_join(q);
    if l.steps > 1 {
        let step = l.seconds / l.steps as f64;
        l.steps as f64 * (step / eff).max(o.barrier(q)) + start
    } else {
        (l.seconds / eff).max(start)
    }
}

/// One model's training step at one shape, from its 1-thread trace.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Profile {
    /// Median step time on one thread, seconds.
    pub(super) step: f64,
    /// The part of it outside any kernel (the models' own loops), run on one core whatever P.
    pub(super) serial: f64,
    pub(super) launches: Vec<LaunchCost>,
}

impl Profile {
    /// From the traces of several timed steps (the same launches in the same order each time)
    /// and the median step time: each launch's median time.
    pub(super) fn from_traces(step: f64, traces: &[Trace]) -> Result<Profile> {
        let traces: Vec<&Vec<Traced>> = traces.iter().map(|t| &t.launches).collect();
        ensure!(!traces.is_empty(), "no traced steps to project from");
        let first = traces[0];
        ensure!(
            traces.iter().all(|t| t.len() == first.len()
                && t.iter()
                    .zip(first)
                    .all(|(a, b)| a.kernel == b.kernel && a.steps == b.steps)),
            "the traced steps launched different kernels; the model is not deterministic"
        );
        let launches: Vec<LaunchCost> = first
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut s: Vec<f64> = traces.iter().map(|t| t[i].seconds).collect();
                s.sort_by(f64::total_cmp);
                LaunchCost {
                    kernel: kernel_name(l),
                    steps: l.steps,
                    ways: l.ways.unwrap_or(1),
                    joins: l.joins(),
                    seconds: s[s.len() / 2],
                }
            })
            .collect();
        let in_kernels: f64 = launches.iter().map(|l| l.seconds).sum();
        Ok(Profile {
            step,
            serial: (step - in_kernels).max(0.0),
            launches,
        })
    }

    /// Predicted step time on `p` cores.
    pub(super) fn step_seconds(&self, p: usize, o: &Overheads) -> f64 {
        self.serial
            + self
                .launches
                .iter()
                .map(|l| launch_seconds(l, p, o))
                .sum::<f64>()
    }

    /// The launches grouped by kernel, largest time first, for the JSON.
    pub(super) fn to_json(&self) -> serde_json::Value {
        let mut kernels: Vec<(String, u64, u64, u64, u64, f64)> = Vec::new();
        for l in &self.launches {
            match kernels.iter_mut().find(|k| k.0 == l.kernel) {
                Some(k) => {
                    k.1 += 1;
                    k.2 = k.2.min(l.ways);
                    k.3 = k.3.max(l.ways);
                    k.4 += l.steps;
                    k.5 += l.seconds;
                }
                None => kernels.push((l.kernel.clone(), 1, l.ways, l.ways, l.steps, l.seconds)),
            }
        }
        kernels.sort_by(|a, b| b.5.total_cmp(&a.5));
        json!({
            "step_s": self.step,
            "serial_s": self.serial,
            "kernels": kernels.iter().map(|k| json!({
                "kernel": k.0, "launches": k.1, "ways_min": k.2, "ways_max": k.3,
                "steps": k.4, "seconds": k.5,
            })).collect::<Vec<_>>(),
        })
    }
}

/// `gemm/mod.rs:173`: the launch's place under `kernels/src`.
fn kernel_name(l: &Traced) -> String {
    let file = l.kernel.file().replace('\\', "/");
    let file = file.rsplit_once("src/").map_or(file.as_str(), |(_, f)| f);
    format!("{file}:{}", l.kernel.line())
}

/// The first of `cores` (ascending) where `gpt` tokens/s exceed `lstm`'s and stay ahead at
/// every larger count listed; `None` where that never happens.
pub(super) fn crossover(cores: &[usize], gpt: &[f64], lstm: &[f64]) -> Option<usize> {
    let ahead: Vec<bool> = gpt.iter().zip(lstm).map(|(g, l)| g > l).collect();
    (0..cores.len())
        .find(|&i| ahead[i..].iter().all(|&a| a))
        .map(|i| cores[i])
}

/// The projection of every measured shape, both models.
pub(super) struct Projection {
    pub(super) overheads: Overheads,
    /// Core counts to project onto, ascending.
    pub(super) cores: Vec<usize>,
    /// The 1-thread profile of each (model, shape).
    pub(super) profiles: Vec<(ModelKind, Shape, Profile)>,
    /// The traced steps at every other thread count of the sweep: what the predictions are
    /// checked against, launch by launch.
    pub(super) measured: Vec<(ModelKind, Shape, usize, Profile)>,
}

/// One kernel's share of a prediction's miss: its launches summed (seconds).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Shortfall {
    /// `file:line` of the launch, or "outside the kernels".
    pub(super) kernel: String,
    pub(super) one_thread: f64,
    pub(super) predicted: f64,
    pub(super) measured: f64,
}

/// Where the prediction for `p` cores misses the step measured there (`many`), kernel by
/// kernel, largest miss (measured − predicted) first. `None` when the two steps did not launch
/// the same kernels in the same order.
pub(super) fn shortfalls(
    one: &Profile,
    many: &Profile,
    p: usize,
    o: &Overheads,
) -> Option<Vec<Shortfall>> {
    if one.launches.len() != many.launches.len()
        || one
            .launches
            .iter()
            .zip(&many.launches)
            .any(|(a, b)| a.kernel != b.kernel)
    {
        return None;
    }
    let mut rows: Vec<Shortfall> = Vec::new();
    for (a, b) in one.launches.iter().zip(&many.launches) {
        let part = Shortfall {
            kernel: a.kernel.clone(),
            one_thread: a.seconds,
            predicted: launch_seconds(a, p, o),
            measured: b.seconds,
        };
        part.add_to(&mut rows);
    }
    rows.push(Shortfall {
        kernel: "outside the kernels".into(),
        one_thread: one.serial,
        predicted: one.serial,
        measured: many.serial,
    });
    Shortfall::sort(&mut rows);
    Some(rows)
}

impl Shortfall {
    /// Adds this part to the row of its kernel in `rows`, or starts that row.
    fn add_to(self, rows: &mut Vec<Shortfall>) {
        match rows.iter_mut().find(|r| r.kernel == self.kernel) {
            Some(r) => {
                r.one_thread += self.one_thread;
                r.predicted += self.predicted;
                r.measured += self.measured;
            }
            None => rows.push(self),
        }
    }

    /// Largest miss (measured − predicted) first.
    fn sort(rows: &mut [Shortfall]) {
        rows.sort_by(|x, y| (y.measured - y.predicted).total_cmp(&(x.measured - x.predicted)));
    }
}

impl Projection {
    fn profile(&self, kind: ModelKind, shape: Shape) -> &Profile {
        &self
            .profiles
            .iter()
            .find(|p| p.0 == kind && p.1 == shape)
            .expect("every (model, shape) has a 1-thread profile")
            .2
    }

    fn shapes(&self) -> Vec<Shape> {
        let mut shapes: Vec<Shape> = Vec::new();
        for &(_, s, _) in &self.profiles {
            if !shapes.contains(&s) {
                shapes.push(s);
            }
        }
        shapes
    }

    /// Projected tokens/s.
    pub(super) fn rate(&self, kind: ModelKind, shape: Shape, p: usize) -> f64 {
        shape.tokens() as f64 / self.profile(kind, shape).step_seconds(p, &self.overheads)
    }

    fn rates(&self, kind: ModelKind, shape: Shape) -> Vec<f64> {
        self.cores
            .iter()
            .map(|&p| self.rate(kind, shape, p))
            .collect()
    }

    fn crossover(&self, shape: Shape) -> Option<usize> {
        crossover(
            &self.cores,
            &self.rates(ModelKind::Gpt, shape),
            &self.rates(ModelKind::Lstm, shape),
        )
    }

    /// (model, shape, threads, measured step s, predicted step s) for every measurement.
    fn validation(&self, report: &Report) -> Vec<(ModelKind, Shape, usize, f64, f64)> {
        let mut rows = Vec::new();
        for shape in self.shapes() {
            for kind in KINDS {
                for &n in &report.threads {
                    let measured = report.run(kind, shape, n).median_seconds();
                    let predicted = self.profile(kind, shape).step_seconds(n, &self.overheads);
                    rows.push((kind, shape, n, measured, predicted));
                }
            }
        }
        rows
    }

    /// Per model, the kernels where the predictions outside the tolerance miss most, summed
    /// over those (shape, threads) cases, from the traced steps at those thread counts.
    fn misses_markdown(&self, rows: &[(ModelKind, Shape, usize, f64, f64)]) -> String {
        let mut s = String::new();
        for kind in KINDS {
            let mut total: Vec<Shortfall> = Vec::new();
            let mut cases = Vec::new();
            for &(k, shape, n, measured, predicted) in rows {
                if k != kind || n == 1 || (predicted / measured - 1.0).abs() <= TOLERANCE {
                    continue;
                }
                let Some(many) = self
                    .measured
                    .iter()
                    .find(|m| (m.0, m.1, m.2) == (kind, shape, n))
                else {
                    continue;
                };
                let Some(parts) =
                    shortfalls(self.profile(kind, shape), &many.3, n, &self.overheads)
                else {
                    continue;
                };
                cases.push(format!("{} on {}", shape.label(), n));
                for part in parts {
                    part.add_to(&mut total);
                }
            }
            if cases.is_empty() {
                continue;
            }
            Shortfall::sort(&mut total);
            let miss: f64 = total.iter().map(|t| t.measured - t.predicted).sum();
            s += &format!(
                "\n#### Where the {} prediction misses ({})\n\n\
                 The same launches traced in the measured steps, summed over those cases: \
                 each kernel's time on 1 thread, as predicted, as measured, its measured \
                 speedup, and its share of the whole miss ({:.1} ms).\n\n\
                 | kernel (launch site) | 1 thread | predicted | measured | speedup | share of the miss |\n\
                 |---|--:|--:|--:|--:|--:|\n",
                display_name(kind),
                cases.join(", "),
                miss * 1e3,
            );
            for t in total.iter().take(6) {
                s += &format!(
                    "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}× | {:.0}% |\n",
                    t.kernel,
                    t.one_thread * 1e3,
                    t.predicted * 1e3,
                    t.measured * 1e3,
                    t.one_thread / t.measured.max(f64::MIN_POSITIVE),
                    100.0 * (t.measured - t.predicted) / miss,
                );
            }
        }
        s
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
                (format!("Projection, B = {b}"), series)
            })
            .collect()
    }

    /// The report's section: how the model works, its validation, the projection and the
    /// crossovers.
    pub(super) fn markdown(&self, report: &Report) -> String {
        let o = &self.overheads;
        let mut s = String::from(
            "\n## Projection to more cores (a work-span model, not a measurement)\n\n",
        );
        s += &format!(
            "Each 1-thread timed step was traced launch by launch (median time of each launch, \
             its dependent steps, the independent tasks it splits into, its fork-joins). On P \
             cores, with Q = min(P, tasks) the threads that get work and P_eff = tasks / \
             ⌈tasks / P⌉, a launch is predicted to take max(t / P_eff, fork-joins · \
             fork_join(Q)) and a walk through T steps T · max(t_step / P_eff, barrier(Q)); the \
             time outside the kernels stays serial. Measured here on 2 threads (least of many \
             tries): a fork-join {:.1} µs, a barrier crossing {:.2} µs; projected as \
             fork_join(Q) = fork_join(2) · log2 Q and barrier(Q) = barrier(2) · (Q − 1). Left \
             out: memory bandwidth and caches shared between cores (each core is taken to be as \
             fast as the one measured), so the projection is an upper bound for both models.\n\n",
            o.fork_join_2 * 1e6,
            o.barrier_2 * 1e6,
        );
        s += "### Validation against the measured steps\n\n\
              On 1 thread the prediction is the launches' median times plus the time outside \
              them (the median step less the launches), so it matches the measured step unless \
              the launches' medians alone add up to more: they come from different steps, and \
              only other work on the machine makes them disagree that much. The test of the \
              model is every other thread count.\n\n\
              | model | B | T | threads | measured step | predicted | error |\n\
              |---|--:|--:|--:|--:|--:|--:|\n";
        let rows = self.validation(report);
        for &(kind, shape, n, measured, predicted) in &rows {
            s += &format!(
                "| {} | {} | {} | {} | {:.1} ms | {:.1} ms | {:+.1}% |\n",
                display_name(kind),
                shape.b,
                shape.t,
                n,
                measured * 1e3,
                predicted * 1e3,
                100.0 * (predicted / measured - 1.0),
            );
        }
        let worst = rows
            .iter()
            .map(|r| (r.4 / r.3 - 1.0).abs())
            .fold(0.0, f64::max);
        let outside: Vec<String> = rows
            .iter()
            .filter(|r| (r.4 / r.3 - 1.0).abs() > TOLERANCE)
            .map(|r| format!("{} {} on {}", display_name(r.0), r.1.label(), r.2))
            .collect();
        s += &if outside.is_empty() {
            format!(
                "\nEvery prediction is within {:.0}% of the measurement (at most {:.1}% off).\n",
                100.0 * TOLERANCE,
                100.0 * worst
            )
        } else {
            format!(
                "\nOutside {:.0}%: {} (at most {:.1}% off); read the projection with that \
                 margin.\n",
                100.0 * TOLERANCE,
                outside.join(", "),
                100.0 * worst
            )
        };

        s += &self.misses_markdown(&rows);

        s += "\n### Projected tokens per second\n\n\
              | B | T | cores | GPT tokens/s | LSTM tokens/s | GPT / LSTM |\n\
              |--:|--:|--:|--:|--:|--:|\n";
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

        s += "\n### Where the transformer overtakes the LSTM\n\n";
        let top = *self.cores.last().expect("at least one core count");
        for shape in self.shapes() {
            let ratio =
                |p| self.rate(ModelKind::Gpt, shape, p) / self.rate(ModelKind::Lstm, shape, p);
            s += &match self.crossover(shape) {
                Some(p) if p == self.cores[0] => format!(
                    "- {}: the transformer is ahead at every core count projected ({:.2}× at \
                     {p}, {:.2}× at {top}).\n",
                    shape.label(),
                    ratio(p),
                    ratio(top)
                ),
                Some(p) => format!(
                    "- {}: from {p} cores on ({:.2}× there, {:.2}× at {top}).\n",
                    shape.label(),
                    ratio(p),
                    ratio(top)
                ),
                None => format!(
                    "- {}: none up to {top} cores ({:.2}× at {top}).\n",
                    shape.label(),
                    ratio(top)
                ),
            };
        }
        // Why: the LSTM's walk cannot use more cores than it has panels per step, and each
        // step pays a barrier that grows with the cores.
        if let Some(walk) = self
            .profiles
            .iter()
            .filter(|p| p.0 == ModelKind::Lstm)
            .flat_map(|p| p.2.launches.iter())
            .find(|l| l.steps > 1)
        {
            let most_gpt = self
                .profiles
                .iter()
                .filter(|p| p.0 == ModelKind::Gpt)
                .flat_map(|p| p.2.launches.iter())
                .map(|l| l.ways)
                .max()
                .unwrap_or(1);
            let speedups: Vec<String> = self
                .shapes()
                .iter()
                .map(|&sh| {
                    let up = |k| self.rate(k, sh, top) / self.rate(k, sh, self.cores[0]);
                    format!(
                        "{} the transformer {}, the LSTM {}",
                        sh.label(),
                        times(up(ModelKind::Gpt)),
                        times(up(ModelKind::Lstm))
                    )
                })
                .collect();
            s += &format!(
                "\nWhy: each time step of the LSTM's walk splits into at most {} tasks (panels \
                 of {} hidden units), so beyond {} cores it cannot go faster, and each of its \
                 steps pays a barrier ({:.2} µs among {} threads in this model); the \
                 transformer's largest launches split {} ways. Projected speedup from {} to \
                 {top} cores: {}.\n",
                walk.ways,
                kernels::simd::LANES,
                walk.ways,
                o.barrier(walk.ways as usize) * 1e6,
                walk.ways,
                thousands(most_gpt as f64),
                self.cores[0],
                speedups.join("; "),
            );
        }
        s
    }

    pub(super) fn to_json(&self, report: &Report) -> serde_json::Value {
        json!({
            "overheads": {
                "fork_join_2_s": self.overheads.fork_join_2,
                "barrier_2_s": self.overheads.barrier_2,
            },
            "cores": self.cores,
            "validation": self.validation(report).iter().map(|r| json!({
                "model": r.0.name(), "b": r.1.b, "t": r.1.t, "threads": r.2,
                "measured_step_s": r.3, "predicted_step_s": r.4,
            })).collect::<Vec<_>>(),
            "shapes": self.shapes().iter().map(|&sh| json!({
                "b": sh.b,
                "t": sh.t,
                "gpt_tokens_per_s": self.rates(ModelKind::Gpt, sh),
                "lstm_tokens_per_s": self.rates(ModelKind::Lstm, sh),
                "crossover_cores": self.crossover(sh),
                "gpt_profile": self.profile(ModelKind::Gpt, sh).to_json(),
                "lstm_profile": self.profile(ModelKind::Lstm, sh).to_json(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Overheads = Overheads {
        fork_join_2: 2e-6,
        barrier_2: 1e-7,
    };

    fn cost(steps: u64, ways: u64, joins: u64, seconds: f64) -> LaunchCost {
        LaunchCost {
            kernel: "test.rs:1".into(),
            steps,
            ways,
            joins,
            seconds,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
    }

    #[test]
    fn overheads_grow_as_stated() {
        assert_eq!((O.fork_join(1), O.barrier(1)), (0.0, 0.0));
        assert!(close(O.fork_join(2), 2e-6) && close(O.fork_join(16), 8e-6));
        assert!(close(O.barrier(2), 1e-7) && close(O.barrier(256), 255e-7));
    }

    #[test]
    fn the_busiest_core_sets_the_time() {
        assert_eq!(effective_cores(23, 1), 1.0);
        assert_eq!(effective_cores(23, 16), 11.5); // 2 rounds of 23 tasks
        assert_eq!(effective_cores(23, 23), 23.0);
        assert_eq!(effective_cores(23, 256), 23.0);
        assert_eq!(effective_cores(3, 2), 1.5);
        assert_eq!(effective_cores(0, 4), 1.0);
    }

    #[test]
    fn launches_follow_the_formula() {
        // 1 ms over 3 tasks on 2 cores: 2 rounds of a third, 0.667 ms, above one fork-join.
        let k = cost(1, 3, 1, 1e-3);
        assert!(close(launch_seconds(&k, 2, &O), 1e-3 / 1.5));
        // On one core, or unsplit, the measured time.
        assert_eq!(launch_seconds(&k, 1, &O), 1e-3);
        assert_eq!(launch_seconds(&cost(1, 1, 0, 1e-3), 64, &O), 1e-3);
        // 10 µs over 1000 tasks on 256 cores: 4 rounds of 10 ns = 40 ns, below the
        // 3 fork-joins' 3 × 2 µs × 8 = 48 µs, which set the time.
        let small = cost(1, 1000, 3, 1e-5);
        assert!(close(launch_seconds(&small, 256, &O), 48e-6));
        // Over 4 tasks only 4 threads take part: 2 µs × log2 4 per fork-join.
        assert!(close(launch_seconds(&cost(1, 4, 3, 1e-5), 256, &O), 12e-6));
        // A walk of 100 steps of 10 µs over 23 panels: on 16 cores 2 rounds, 0.87 µs a step,
        // below the barrier's 15 × 0.1 µs = 1.5 µs, plus one team start of 4 × 2 µs.
        let walk = cost(100, 23, 1, 1e-3);
        assert!(close(launch_seconds(&walk, 16, &O), 100.0 * 1.5e-6 + 8e-6));
        // On 256 cores its team is still 23 threads: 10 µs / 23 = 0.43 µs a step, below the
        // barrier's 22 × 0.1 µs; one team start of 2 µs × log2 23.
        assert!(close(
            launch_seconds(&walk, 256, &O),
            100.0 * 2.2e-6 + 2e-6 * 23f64.log2()
        ));
    }

    #[test]
    fn a_step_adds_its_launches_to_the_serial_part() {
        let p = Profile {
            step: 3e-3,
            serial: 1e-3,
            launches: vec![cost(1, 4, 1, 1e-3), cost(10, 2, 1, 1e-3)],
        };
        assert!(close(p.step_seconds(1, &O), 3e-3));
        // 1 ms + 1 ms / 2 + 10 · max(0.1 ms / 2, 0.1 µs) + 2 µs.
        assert!(close(p.step_seconds(2, &O), 1e-3 + 0.5e-3 + 0.5e-3 + 2e-6));
    }

    #[test]
    fn misses_are_summed_per_kernel_and_sorted_by_size() {
        let named = |kernel: &str, ways, seconds| LaunchCost {
            kernel: kernel.into(),
            ..cost(1, ways, 1, seconds)
        };
        // Two launches of a.rs:1 and one of b.rs:2 on 1 thread; on 2 threads the first kernel
        // speeds up only 1.25× (predicted 2×), the second as predicted.
        let one = Profile {
            step: 6e-3,
            serial: 1e-3,
            launches: vec![
                named("a.rs:1", 8, 2e-3),
                named("b.rs:2", 8, 1e-3),
                named("a.rs:1", 8, 2e-3),
            ],
        };
        let two = Profile {
            step: 5e-3,
            serial: 1.2e-3,
            launches: vec![
                named("a.rs:1", 8, 1.6e-3),
                named("b.rs:2", 8, 0.5e-3),
                named("a.rs:1", 8, 1.6e-3),
            ],
        };
        let rows = shortfalls(&one, &two, 2, &O).unwrap();
        let kernels: Vec<&str> = rows.iter().map(|r| r.kernel.as_str()).collect();
        assert_eq!(kernels, ["a.rs:1", "outside the kernels", "b.rs:2"]);
        assert!(close(rows[0].one_thread, 4e-3) && close(rows[0].predicted, 2e-3));
        assert!(close(rows[0].measured, 3.2e-3));
        assert!(close(rows[1].predicted, 1e-3) && close(rows[1].measured, 1.2e-3));
        assert!(close(rows[2].predicted, 0.5e-3) && close(rows[2].measured, 0.5e-3));
        // Different launches cannot be compared.
        let mut other = two.clone();
        other.launches[1].kernel = "c.rs:3".into();
        assert_eq!(shortfalls(&one, &other, 2, &O), None);
    }

    #[test]
    fn the_crossover_is_where_the_transformer_stays_ahead() {
        let cores = [1, 2, 4, 8];
        assert_eq!(
            crossover(&cores, &[1.0, 2.0, 4.0, 8.0], &[2.0, 3.0, 3.5, 3.6]),
            Some(4)
        );
        assert_eq!(
            crossover(&cores, &[3.0, 2.0, 4.0, 8.0], &[2.0, 3.0, 3.5, 3.6]),
            Some(4)
        );
        assert_eq!(crossover(&cores, &[1.0; 4], &[2.0; 4]), None);
        assert_eq!(crossover(&cores, &[3.0; 4], &[2.0; 4]), Some(1));
    }

    #[test]
    fn a_profile_takes_each_launchs_median() {
        let trace = |secs: [f64; 2]| -> Trace {
            let mut t = kernels::launch::trace(|| {
                kernels::elementwise::add_assign(&mut [0.0; 4], &[1.0; 4]);
                kernels::elementwise::add_assign(&mut [0.0; 4], &[1.0; 4]);
            })
            .1;
            for (l, s) in t.launches.iter_mut().zip(secs) {
                l.seconds = s;
            }
            t
        };
        let traces = [trace([1.0, 5.0]), trace([3.0, 4.0]), trace([2.0, 6.0])];
        let p = Profile::from_traces(12.0, &traces).unwrap();
        let secs: Vec<f64> = p.launches.iter().map(|l| l.seconds).collect();
        assert_eq!(secs, [2.0, 5.0]);
        assert_eq!(p.serial, 5.0);
        assert!(p.launches[0].kernel.starts_with("elementwise.rs:"), "{p:?}");
        assert_eq!(p.launches[0].ways, 1);
        let mut short = traces.to_vec();
        short[1].launches.pop();
        assert!(Profile::from_traces(12.0, &short).is_err());
    }
}
