//! A simulation of the training step on P cores, from a trace of its tasks.
//!
//! Input: a [`Trace`] taken on a rayon pool of one thread, with the kernels splitting their
//! work as a pool of `plan` threads would ([`kernels::parallel::plan`]), so every task of
//! every phase is there with its 1-thread time. On P cores:
//!
//! ```text
//! step(P)   = outside + Σ launches  launch(P)
//! launch(P) = max(serial + Σ phases  phase(P),  bytes / bandwidth(P))      (bytes > 0)
//! Fork      = list schedule of its tasks, in order, on P workers + fork_join(min(P, tasks))
//!             (no tasks: a walk's team start, fork_join(min(P, parts)))
//! Team      = busiest of Q = min(P, parts) seats + barrier(Q),  seat p owning parts
//!             p·parts/Q .. (p+1)·parts/Q for the whole walk
//! fork_join(q) = fork_join_2 · log2 q    barrier(q) = barrier_2 · (q − 1)
//! bandwidth(P) = min(P · bw_1, bw_total)
//! ```
//!
//! with no overhead on one core (a fork-join needs two tasks and two workers, a barrier two
//! seats), so on P = 1 a launch is predicted to take its traced time unless its bytes bind.
//! The machine's parameters are [`Costs`], each an assumption stated there.
//!
//! Leaves out: dependencies finer or coarser than a launch (independent launches are not
//! overlapped, a launch's phases run one after another), caches shared between cores and
//! SMT (a task on P cores takes its 1-thread time, unless the roofline binds the whole
//! launch), and stealing's own cost per task (only the fork-join's).
//!
//! Pure: no I/O, no clock.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use anyhow::{Result, ensure};
use kernels::launch::{Phase, PhaseKind, Trace, Traced};

/// The machine the step is simulated on: what sharing work between cores costs, and how fast
/// memory streams. Every field is an assumption of the model, measured (or stated) elsewhere.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Costs {
    /// One rayon fork-join over 2 threads, beyond the work it hands out, seconds. Assumed to
    /// grow as log2 of the threads it reaches ([`Costs::fork_join`]): rayon wakes threads and
    /// they steal in a tree.
    pub(super) fork_join_2: f64,
    /// One spin-barrier crossing of a 2-thread walk, seconds. Assumed to grow linearly with
    /// the seats ([`Costs::barrier`]): one shared counter, each arrival moves its cache line.
    pub(super) barrier_2: f64,
    /// Bytes per second one thread streams to or from memory. Assumed to add up over threads
    /// until [`Costs::bw_total`].
    pub(super) bw_1: f64,
    /// Bytes per second the whole machine streams, however many threads: a stated parameter
    /// of the machine simulated, not one measured on this one.
    pub(super) bw_total: f64,
}

impl Costs {
    /// One fork-join reaching `q` threads: `fork_join_2 · log2 q`, nothing for `q <= 1`.
    pub(super) fn fork_join(&self, q: usize) -> f64 {
        if q <= 1 {
            0.0
        } else {
            self.fork_join_2 * (q as f64).log2()
        }
    }

    /// One barrier crossing of `q` seats: `barrier_2 · (q − 1)`, nothing for `q <= 1`.
    pub(super) fn barrier(&self, q: usize) -> f64 {
        if q <= 1 {
            0.0
        } else {
            self.barrier_2 * (q - 1) as f64
        }
    }

    /// Bytes per second `p` threads stream: `min(p · bw_1, bw_total)` (`p` at least 1).
    pub(super) fn bandwidth(&self, p: usize) -> f64 {
        (p.max(1) as f64 * self.bw_1).min(self.bw_total)
    }

    /// These costs with the barrier, the fork-join and both bandwidths multiplied by the
    /// factors given: the sensitivity of a prediction (0.5 and 2.0 halve and double).
    pub(super) fn scaled(&self, barrier: f64, fork_join: f64, bandwidth: f64) -> Costs {
        Costs {
            fork_join_2: self.fork_join_2 * fork_join,
            barrier_2: self.barrier_2 * barrier,
            bw_1: self.bw_1 * bandwidth,
            bw_total: self.bw_total * bandwidth,
        }
    }
}

/// A worker of a list schedule: when it is next free and its index. Ordered so that a
/// [`BinaryHeap`] pops the one free first, and of those the lowest index.
#[derive(Clone, Copy, Debug)]
struct Free {
    at: f64,
    worker: usize,
}

impl Ord for Free {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then(other.worker.cmp(&self.worker))
    }
}

impl PartialOrd for Free {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Free {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Free {}

/// List scheduling, what work stealing approximates: the tasks in the order given, each to
/// the worker free first (ties: the lowest index), on `p` workers. Returns each worker's
/// load, `min(p, tasks)` of them (a worker that gets no task is left out).
pub(super) fn list_schedule(tasks: impl ExactSizeIterator<Item = f64>, p: usize) -> Vec<f64> {
    let workers = p.max(1).min(tasks.len());
    let mut free: BinaryHeap<Free> = (0..workers)
        .map(|worker| Free { at: 0.0, worker })
        .collect();
    for seconds in tasks {
        let mut first = free
            .pop()
            .expect("at least one worker when there is a task");
        first.at += seconds;
        free.push(first);
    }
    let mut loads = vec![0.0; workers];
    for f in free {
        loads[f.worker] = f.at;
    }
    loads
}

/// The largest of `values`; 0 for none.
fn most(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, f64::max)
}

/// A [`PhaseKind::Fork`] phase on `p` workers: its tasks list-scheduled, plus a fork-join
/// over the workers that get one when it has 2 tasks or more and `p >= 2`. With no tasks
/// (a walk's team start) a fork-join over `min(p, parts)` threads.
pub(super) fn fork_seconds(phase: &Phase, p: usize, costs: &Costs) -> f64 {
    let p = p.max(1);
    let n = phase.tasks.len();
    if n == 0 {
        return costs.fork_join(p.min(phase.parts as usize));
    }
    let makespan = most(list_schedule(phase.tasks.iter().map(|t| t.seconds), p));
    let join = if n >= 2 && p >= 2 {
        costs.fork_join(p.min(n))
    } else {
        0.0
    };
    makespan + join
}

/// The seat of `q` that owns `part` of `parts`, seat `s` owning `s·parts/q .. (s+1)·parts/q`
/// (as `kernels::raw::team` shares them out); `q <= parts`. A part past the end goes to the
/// last seat.
pub(super) fn seat_of(part: u64, parts: u64, q: u64) -> usize {
    let (parts, q) = (parts.max(1), q.clamp(1, parts.max(1)));
    // The largest s with floor(s·parts/q) <= part, i.e. s·parts < (part + 1)·q.
    let s = ((part.min(parts - 1) + 1) * q - 1) / parts;
    s as usize
}

/// A [`PhaseKind::Team`] phase on `p` workers: `Q = min(p, parts)` seats, each task charged
/// to the seat owning its first part; the busiest seat's sum plus a barrier among `Q`. An
/// empty phase (the one a walk opens after its last barrier) costs nothing.
pub(super) fn team_seconds(phase: &Phase, p: usize, costs: &Costs) -> f64 {
    if phase.tasks.is_empty() {
        return 0.0;
    }
    let parts = phase.parts.max(1);
    let q = (p.max(1) as u64).min(parts);
    let mut seats = vec![0.0; q as usize];
    for t in &phase.tasks {
        seats[seat_of(u64::from(t.part), parts, q)] += t.seconds;
    }
    most(seats) + costs.barrier(q as usize)
}

/// One phase on `p` workers, by its kind.
pub(super) fn phase_seconds(phase: &Phase, p: usize, costs: &Costs) -> f64 {
    match phase.kind {
        PhaseKind::Fork => fork_seconds(phase, p, costs),
        PhaseKind::Team => team_seconds(phase, p, costs),
    }
}

/// One launch on `p` cores: its serial part (on the launching thread whatever `p`) and its
/// phases one after another, or the time its bytes take to stream on `p` threads where that
/// is longer. On `p = 1` its traced time, unless `bytes / bw_1` is longer.
pub(super) fn launch_seconds(l: &Traced, p: usize, costs: &Costs) -> f64 {
    let compute = l.serial()
        + l.phases
            .iter()
            .map(|ph| phase_seconds(ph, p, costs))
            .sum::<f64>();
    if l.bytes > 0 {
        compute.max(l.bytes as f64 / costs.bandwidth(p))
    } else {
        compute
    }
}

/// One traced step on `p` cores: its launches one after another, plus the time outside them
/// ([`Trace::outside`]), assumed to stay on one thread (the models' own loops are serial).
pub(super) fn step_seconds(trace: &Trace, p: usize, costs: &Costs) -> f64 {
    trace.outside()
        + trace
            .launches
            .iter()
            .map(|l| launch_seconds(l, p, costs))
            .sum::<f64>()
}

/// `gemm/mod.rs:173`: the launch's site, its place under `kernels/src`.
pub(super) fn site(l: &Traced) -> String {
    let file = l.kernel.file().replace('\\', "/");
    let file = file.rsplit_once("src/").map_or(file.as_str(), |(_, f)| f);
    format!("{file}:{}", l.kernel.line())
}

/// The launches of one site added up.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Site {
    /// Where the kernel opened its launch ([`site`]).
    pub(super) kernel: String,
    /// Its launches in the step.
    pub(super) launches: usize,
    /// Their seconds added up.
    pub(super) seconds: f64,
}

/// The launches of `trace` grouped by site, each costing `seconds(launch)`; in the order
/// each site first launches.
fn sites_by(trace: &Trace, seconds: impl Fn(&Traced) -> f64) -> Vec<Site> {
    let mut sites: Vec<Site> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for l in &trace.launches {
        let kernel = site(l);
        let i = *index.entry(kernel.clone()).or_insert_with(|| {
            sites.push(Site {
                kernel,
                launches: 0,
                seconds: 0.0,
            });
            sites.len() - 1
        });
        sites[i].launches += 1;
        sites[i].seconds += seconds(l);
    }
    sites
}

/// Each site's predicted seconds on `p` cores, in the order sites first launch.
pub(super) fn predicted_sites(trace: &Trace, p: usize, costs: &Costs) -> Vec<Site> {
    sites_by(trace, |l| launch_seconds(l, p, costs))
}

/// Each site's traced seconds (of a trace taken on any pool: a measured 2-thread step to
/// compare [`predicted_sites`] with), in the order sites first launch.
pub(super) fn traced_sites(trace: &Trace) -> Vec<Site> {
    sites_by(trace, |l| l.seconds)
}

/// The median of several values and their range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Spread {
    /// The middle value; the mean of the middle two for an even count.
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Spread {
    /// Of `values`; `None` for none.
    pub(super) fn of(values: &[f64]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Checks that `traces` are steps of one computation: at least one, each launching the same
/// kernels (site and dependent steps) in the same order.
pub(super) fn same_computation(traces: &[Trace]) -> Result<()> {
    ensure!(!traces.is_empty(), "no traced steps to simulate");
    let first = &traces[0].launches;
    ensure!(
        traces.iter().all(|t| t.launches.len() == first.len()
            && t.launches
                .iter()
                .zip(first)
                .all(|(a, b)| a.kernel == b.kernel && a.steps == b.steps)),
        "the traced steps launched different kernels; the model is not deterministic"
    );
    Ok(())
}

/// Several traced steps of one computation on `p` cores: each predicted, their median and
/// range.
pub(super) fn predict(traces: &[Trace], p: usize, costs: &Costs) -> Result<Spread> {
    same_computation(traces)?;
    let steps: Vec<f64> = traces.iter().map(|t| step_seconds(t, p, costs)).collect();
    Ok(Spread::of(&steps).expect("at least one step"))
}

/// Several traced steps of one computation on `p` cores, per site: each site's median and
/// range over the steps, with its launches per step, in the order sites first launch.
pub(super) fn predict_sites(
    traces: &[Trace],
    p: usize,
    costs: &Costs,
) -> Result<Vec<(Site, Spread)>> {
    same_computation(traces)?;
    let per_step: Vec<Vec<Site>> = traces
        .iter()
        .map(|t| predicted_sites(t, p, costs))
        .collect();
    Ok((0..per_step[0].len())
        .map(|i| {
            let seconds: Vec<f64> = per_step.iter().map(|s| s[i].seconds).collect();
            let spread = Spread::of(&seconds).expect("at least one step");
            let site = Site {
                seconds: spread.median,
                ..per_step[0][i].clone()
            };
            (site, spread)
        })
        .collect())
}

/// The first of `cores` (ascending) where `gpt` tokens/s exceed `lstm`'s and stay ahead at
/// every larger count listed; `None` where that never happens.
pub(super) fn crossover(cores: &[usize], gpt: &[f64], lstm: &[f64]) -> Option<usize> {
    let ahead: Vec<bool> = gpt.iter().zip(lstm).map(|(g, l)| g > l).collect();
    (0..ahead.len())
        .find(|&i| ahead[i..].iter().all(|&a| a))
        .map(|i| cores[i])
}

/// [`crossover`] from predictions: `gpt(p)` and `lstm(p)` give each model's step seconds on
/// `p` cores, each step training `tokens` tokens.
pub(super) fn crossover_of(
    cores: &[usize],
    tokens: f64,
    gpt: impl Fn(usize) -> f64,
    lstm: impl Fn(usize) -> f64,
) -> Option<usize> {
    let rates = |step: &dyn Fn(usize) -> f64| -> Vec<f64> {
        cores.iter().map(|&p| tokens / step(p)).collect()
    };
    crossover(cores, &rates(&gpt), &rates(&lstm))
}

/// The tasks a launch offers a pool in its main phase: the phase with the most work (not
/// the one with the most tasks, which can be a short one beside a coarse main phase), its
/// work judged by its typical task ([`typical_work`]) so that one task held up by the OS
/// does not make a GEMM's packing the main phase in place of its products.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TaskCount {
    /// Its index among the trace's launches.
    pub(super) launch: usize,
    /// Its site ([`site`]).
    pub(super) kernel: String,
    /// The kind of its main phase; `None` for a launch that never splits (it runs as one
    /// task).
    pub(super) kind: Option<PhaseKind>,
    /// The tasks of its main phase (the first of the phases with the most work); 1 when it
    /// never splits.
    pub(super) tasks: usize,
    /// That phase's parts: the tasks a fork said it splits into, or the parts a team shares
    /// out; 1 when it never splits.
    pub(super) parts: u64,
    /// The launch's 1-thread seconds and the bytes it states.
    pub(super) seconds: f64,
    pub(super) bytes: u64,
}

impl TaskCount {
    /// Of one launch, the `launch`-th of its trace.
    pub(super) fn of(launch: usize, l: &Traced) -> TaskCount {
        let main = l.phases.iter().reduce(|a, b| {
            if typical_work(b) > typical_work(a) {
                b
            } else {
                a
            }
        });
        TaskCount {
            launch,
            kernel: site(l),
            kind: main.map(|ph| ph.kind),
            tasks: main.map_or(1, |ph| ph.tasks.len()),
            parts: main.map_or(1, |ph| ph.parts),
            seconds: l.seconds,
            bytes: l.bytes,
        }
    }
}

/// A phase's work as its median task's seconds times its tasks: the work it has, robust to
/// a few tasks descheduled or faulting pages (a pack phase 1/100 of its GEMM's products, with
/// one task preempted for 3 ms, sums to more than the products it feeds).
pub(super) fn typical_work(phase: &Phase) -> f64 {
    let seconds: Vec<f64> = phase.tasks.iter().map(|t| t.seconds).collect();
    Spread::of(&seconds).map_or(0.0, |s| s.median * seconds.len() as f64)
}

/// Every launch's [`TaskCount`] of one trace, for the report.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TaskCounts(pub(super) Vec<TaskCount>);

impl TaskCounts {
    /// Of every launch of `trace`, in order.
    pub(super) fn of(trace: &Trace) -> TaskCounts {
        TaskCounts(
            trace
                .launches
                .iter()
                .enumerate()
                .map(|(i, l)| TaskCount::of(i, l))
                .collect(),
        )
    }

    /// The launches whose main phase has fewer than `target` tasks ([`target_tasks`]):
    /// empty when every launch meets it.
    pub(super) fn meets(&self, target: usize) -> Vec<&TaskCount> {
        self.0.iter().filter(|c| c.tasks < target).collect()
    }
}

/// The tasks a launch should offer `p` cores: [`kernels::parallel::TASKS_PER_WORKER`] each.
pub(super) fn target_tasks(p: usize) -> usize {
    kernels::parallel::TASKS_PER_WORKER * p
}

#[cfg(test)]
mod tests {
    use std::panic::Location;

    use kernels::launch::Task;

    use super::*;

    /// Round numbers in binary, so that most expected values below are exact.
    const C: Costs = Costs {
        fork_join_2: 0.25,
        barrier_2: 0.125,
        bw_1: 4.0,
        bw_total: 10.0,
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
    }

    /// A launch site: the caller's line.
    #[track_caller]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    /// A fork over `parts` whose tasks took `seconds`, in order.
    fn fork(parts: u64, seconds: &[f64]) -> Phase {
        Phase {
            kind: PhaseKind::Fork,
            parts,
            tasks: (0..)
                .zip(seconds)
                .map(|(part, &seconds)| Task { seconds, part })
                .collect(),
        }
    }

    /// A team phase over `parts` whose tasks (first part, seconds) ran in order.
    fn team(parts: u64, tasks: &[(u32, f64)]) -> Phase {
        Phase {
            kind: PhaseKind::Team,
            parts,
            tasks: tasks
                .iter()
                .map(|&(part, seconds)| Task { seconds, part })
                .collect(),
        }
    }

    /// A launch at `kernel` of `serial` seconds outside its phases, moving nothing.
    fn launch(kernel: &'static Location<'static>, serial: f64, phases: Vec<Phase>) -> Traced {
        Traced {
            kernel,
            steps: 1,
            ways: None,
            seconds: serial + phases.iter().map(Phase::work).sum::<f64>(),
            gap: 0.0,
            bytes: 0,
            phases,
        }
    }

    /// The fork of the tests below: 8 s of work in 5 tasks, the first the longest.
    fn uneven() -> Phase {
        fork(5, &[3.0, 1.0, 1.0, 1.0, 2.0])
    }

    /// The team phase of the tests below: 10 parts, traced on 3 seats (4.5 s in all).
    fn three_seats() -> Phase {
        team(10, &[(0, 1.0), (3, 2.0), (6, 1.5)])
    }

    #[test]
    fn costs_grow_as_stated() {
        assert_eq!((C.fork_join(0), C.fork_join(1)), (0.0, 0.0));
        assert_eq!((C.fork_join(2), C.fork_join(8)), (0.25, 0.75));
        assert!(close(C.fork_join(3), 0.25 * 3f64.log2()));
        assert_eq!((C.barrier(0), C.barrier(1)), (0.0, 0.0));
        assert_eq!((C.barrier(2), C.barrier(5)), (0.125, 0.5));
        // 4 bytes/s a thread, 10 the machine.
        assert_eq!(
            (C.bandwidth(0), C.bandwidth(1), C.bandwidth(2)),
            (4.0, 4.0, 8.0)
        );
        assert_eq!((C.bandwidth(3), C.bandwidth(64)), (10.0, 10.0));
        let s = C.scaled(0.5, 2.0, 0.5);
        assert_eq!(
            (s.barrier_2, s.fork_join_2, s.bw_1, s.bw_total),
            (0.0625, 0.5, 2.0, 5.0)
        );
        assert_eq!(C.scaled(1.0, 1.0, 1.0), C);
    }

    #[test]
    fn list_scheduling_hands_each_task_to_the_worker_free_first() {
        let tasks = [3.0, 1.0, 1.0, 1.0, 2.0];
        // On 2: 3 → w0; the three 1s → w1 (free at 1, 2, then 3); 2 → w0, tied with w1 at 3.
        assert_eq!(list_schedule(tasks.into_iter(), 2), [5.0, 3.0]);
        // On 3: 3 → w0, 1 → w1, 1 → w2, 1 → w1 (tied with w2 at 1), 2 → w2.
        assert_eq!(list_schedule(tasks.into_iter(), 3), [3.0, 2.0, 3.0]);
        // More workers than tasks: one each.
        assert_eq!(list_schedule(tasks.into_iter(), 8), tasks);
        assert_eq!(list_schedule(tasks.into_iter(), 1), [8.0]);
        assert_eq!(list_schedule(tasks.into_iter(), 0), [8.0]);
        // Ties go to the lowest index.
        assert_eq!(list_schedule([1.0; 3].into_iter(), 2), [2.0, 1.0]);
        assert!(list_schedule(std::iter::empty(), 4).is_empty());
    }

    #[test]
    fn a_fork_is_its_makespan_and_a_fork_join() {
        let f = uneven();
        assert_eq!(fork_seconds(&f, 1, &C), 8.0);
        assert_eq!(fork_seconds(&f, 2, &C), 5.0 + 0.25);
        assert!(close(fork_seconds(&f, 3, &C), 3.0 + 0.25 * 3f64.log2()));
        // 5 tasks reach 5 threads however many there are.
        assert!(close(fork_seconds(&f, 64, &C), 3.0 + 0.25 * 5f64.log2()));
        // One task is not handed out.
        assert_eq!(fork_seconds(&fork(4, &[2.0]), 16, &C), 2.0);
        // A walk's team start: no tasks, a fork-join over min(P, parts).
        let start = fork(4, &[]);
        assert_eq!(fork_seconds(&start, 1, &C), 0.0);
        assert_eq!(fork_seconds(&start, 2, &C), 0.25);
        assert_eq!(fork_seconds(&start, 16, &C), 0.5);
    }

    #[test]
    fn seats_own_the_parts_a_team_gives_them() {
        for parts in 1..40u64 {
            for q in 1..=parts {
                for s in 0..q {
                    let own = kernels::parallel::even_range(parts as usize, q as usize, s as usize);
                    for part in own {
                        assert_eq!(seat_of(part as u64, parts, q), s as usize, "{parts} {q}");
                    }
                }
            }
        }
        assert_eq!(seat_of(12, 10, 3), 2);
    }

    #[test]
    fn a_team_phase_is_its_busiest_seat_and_a_barrier() {
        let t = three_seats();
        assert_eq!(team_seconds(&t, 1, &C), 4.5);
        // Seats own parts 0..5 and 5..10: 1 + 2 and 1.5.
        assert_eq!(team_seconds(&t, 2, &C), 3.0 + 0.125);
        // 0..3, 3..6, 6..10: 1, 2, 1.5, and a barrier among 3.
        assert_eq!(team_seconds(&t, 3, &C), 2.0 + 0.25);
        // 10 seats at most, one part each: the longest task and a barrier among 10.
        assert_eq!(team_seconds(&t, 16, &C), 2.0 + 9.0 * 0.125);
        assert_eq!(team_seconds(&team(10, &[]), 4, &C), 0.0);
        assert_eq!(phase_seconds(&t, 3, &C), 2.25);
        assert_eq!(phase_seconds(&uneven(), 2, &C), 5.25);
    }

    #[test]
    fn a_launch_is_its_serial_part_its_phases_and_its_bytes() {
        let mut l = launch(here(), 0.5, vec![uneven(), three_seats()]);
        assert_eq!(l.seconds, 13.0);
        // On one core its traced time, exactly.
        assert_eq!(launch_seconds(&l, 1, &C), 13.0);
        assert_eq!(launch_seconds(&l, 2, &C), 0.5 + 5.25 + 3.125);
        // 40 bytes take 10 s on one thread and 5 s on two: neither binds.
        l.bytes = 40;
        assert_eq!(launch_seconds(&l, 1, &C), 13.0);
        assert_eq!(launch_seconds(&l, 2, &C), 8.875);
        // 100 bytes do: 25 s on one thread, 12.5 on two, 10 on any number from 3.
        l.bytes = 100;
        assert_eq!(launch_seconds(&l, 1, &C), 25.0);
        assert_eq!(launch_seconds(&l, 2, &C), 12.5);
        assert_eq!(launch_seconds(&l, 64, &C), 10.0);
        // Timings that are not round: equal up to rounding.
        let odd = launch(here(), 0.1, vec![fork(3, &[0.3, 0.7, 0.11])]);
        assert!(close(launch_seconds(&odd, 1, &C), odd.seconds));
    }

    #[test]
    fn a_walk_pays_its_team_start_and_a_barrier_each_step() {
        // A team start over 4 parts, then 3 steps traced on 2 seats (parts 0-1 and 2-3) of
        // 1 s each, and the empty phase after the last barrier.
        let step = || team(4, &[(0, 1.0), (2, 1.0)]);
        let phases = vec![fork(4, &[]), step(), step(), step(), team(4, &[])];
        let walk = Traced {
            steps: 3,
            ..launch(here(), 0.25, phases)
        };
        assert_eq!(launch_seconds(&walk, 1, &C), 6.25);
        // 0.25 serial + a fork-join over 2 + 3 · (1 s + a barrier among 2).
        assert_eq!(launch_seconds(&walk, 2, &C), 0.25 + 0.25 + 3.0 * 1.125);
        // On 4 the tasks still cover 2 parts each, so one seat in two idles, and the
        // barrier among 4 costs more: slower than on 2.
        assert_eq!(launch_seconds(&walk, 4, &C), 0.25 + 0.5 + 3.0 * 1.375);
    }

    /// A step of two launches at `a` around one at `b`, with time outside them.
    fn three_launches(a: &'static Location<'static>, b: &'static Location<'static>) -> Trace {
        let mut launches = vec![
            launch(a, 0.5, vec![uneven(), three_seats()]),
            launch(b, 1.0, vec![]),
            launch(a, 0.0, vec![fork(2, &[1.0, 1.0])]),
        ];
        launches[0].gap = 1.0;
        launches[1].gap = 0.5;
        let tail = 0.25;
        let seconds = tail + launches.iter().map(|l| l.gap + l.seconds).sum::<f64>();
        Trace {
            launches,
            seconds,
            tail,
        }
    }

    #[test]
    fn a_step_adds_its_launches_to_the_time_outside_them() {
        let t = three_launches(here(), here());
        assert_eq!(t.seconds, 1.75 + 13.0 + 1.0 + 2.0);
        assert_eq!(step_seconds(&t, 1, &C), t.seconds);
        // 1.75 outside + 8.875 + 1 serial + (1 + a fork-join over 2).
        assert_eq!(step_seconds(&t, 2, &C), 1.75 + 8.875 + 1.0 + 1.25);
    }

    #[test]
    fn sites_add_up_their_launches() {
        let a = here();
        let b = here();
        let t = three_launches(a, b);
        let name = |l: &Location| format!("parallelism/simulate.rs:{}", l.line());
        let sites = predicted_sites(&t, 2, &C);
        let expected = [(name(a), 2, 8.875 + 1.25), (name(b), 1, 1.0)];
        let got: Vec<(String, usize, f64)> = sites
            .iter()
            .map(|s| (s.kernel.clone(), s.launches, s.seconds))
            .collect();
        assert_eq!(got, expected);
        let traced: Vec<f64> = traced_sites(&t).iter().map(|s| s.seconds).collect();
        assert_eq!(traced, [15.0, 1.0]);
    }

    #[test]
    fn spreads_take_the_middle() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn several_steps_give_a_median_and_a_range() {
        let a = here();
        let b = here();
        // The same step with 1, 3 and 2 s more after its last launch.
        let traces: Vec<Trace> = [1.0, 3.0, 2.0]
            .iter()
            .map(|extra| {
                let mut t = three_launches(a, b);
                t.tail += extra;
                t.launches[1].phases = vec![fork(2, &[*extra, 1.0])];
                t.launches[1].seconds = 1.0 + extra + 1.0;
                t
            })
            .collect();
        // On 1 core: 1.75 + extra outside, 13 + (2 + extra) + 2 in the launches.
        let s = predict(&traces, 1, &C).unwrap();
        assert_eq!((s.median, s.min, s.max), (22.75, 20.75, 24.75));
        // Site b on 2 cores: 1 serial + max(extra, 1) + a fork-join over 2.
        let sites = predict_sites(&traces, 2, &C).unwrap();
        assert_eq!(sites.len(), 2);
        let (site, spread) = &sites[1];
        assert_eq!((site.launches, site.seconds), (1, 3.25));
        assert_eq!((spread.min, spread.max), (2.25, 4.25));
        assert_eq!(sites[0].1.min, sites[0].1.max);
        // Steps of different computations, or none, are refused.
        let mut other = traces.clone();
        other[2].launches[1].kernel = here();
        assert!(predict(&other, 2, &C).is_err());
        assert!(predict_sites(&other, 2, &C).is_err());
        other[2].launches.pop();
        assert!(predict(&other, 2, &C).is_err());
        assert!(predict(&[], 2, &C).is_err());
    }

    #[test]
    fn the_crossover_is_where_the_transformer_stays_ahead() {
        let cores = [1, 2, 4, 8];
        let gpt = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(crossover(&cores, &gpt, &[2.0, 3.0, 3.5, 3.6]), Some(4));
        assert_eq!(
            crossover(&cores, &[3.0, 2.0, 4.0, 8.0], &[2.0, 3.0, 3.5, 3.6]),
            Some(4)
        );
        assert_eq!(crossover(&cores, &[1.0; 4], &[2.0; 4]), None);
        assert_eq!(crossover(&cores, &[3.0; 4], &[2.0; 4]), Some(1));
        // 100 tokens a step: the GPT at 10·P tokens/s, the LSTM at 25.
        let gpt_step = |p: usize| 10.0 / p as f64;
        assert_eq!(crossover_of(&cores, 100.0, gpt_step, |_| 4.0), Some(4));
        // Equal is not ahead: 10 against 10 on 1.
        assert_eq!(crossover_of(&cores, 100.0, gpt_step, |_| 10.0), Some(2));
        // Falling behind again at 8 cores: no crossover.
        let dips = |p: usize| if p == 8 { 10.0 } else { gpt_step(p) };
        assert_eq!(crossover_of(&cores, 100.0, dips, |_| 4.0), None);
    }

    #[test]
    fn task_counts_name_the_launches_short_of_the_target() {
        let site = here();
        let walk = launch(
            site,
            0.0,
            vec![fork(4, &[]), team(4, &[(0, 1.0), (2, 1.0)]), team(4, &[])],
        );
        let trace = Trace {
            launches: vec![
                launch(site, 1.0, vec![]),
                launch(site, 0.0, vec![uneven(), fork(3, &[1.0; 3])]),
                walk,
                launch(site, 0.0, vec![fork(40, &[0.5; 40])]),
                // A tie: the first of the largest phases counts.
                launch(
                    site,
                    0.0,
                    vec![fork(6, &[1.0; 3]), team(4, &[(0, 1.0), (1, 1.0), (2, 1.0)])],
                ),
                // A GEMM's packing (16 tasks, one held up by the OS: 6.5 s summed) beside
                // its products (64 tasks, 3.2 s): the products are the main phase.
                launch(
                    site,
                    0.0,
                    vec![
                        fork(16, &[[0.1; 15].as_slice(), &[5.0]].concat()),
                        fork(64, &[0.05; 64]),
                    ],
                ),
            ],
            ..Trace::default()
        };
        let counts = TaskCounts::of(&trace);
        let got: Vec<(usize, Option<PhaseKind>, usize, u64)> = counts
            .0
            .iter()
            .map(|c| (c.launch, c.kind, c.tasks, c.parts))
            .collect();
        let (fork_, team_) = (Some(PhaseKind::Fork), Some(PhaseKind::Team));
        assert_eq!(
            got,
            [
                (0, None, 1, 1),
                (1, fork_, 5, 5),
                (2, team_, 2, 4),
                (3, fork_, 40, 40),
                (4, fork_, 3, 6),
                (5, fork_, 64, 64)
            ]
        );
        let short =
            |target| -> Vec<usize> { counts.meets(target).iter().map(|c| c.launch).collect() };
        assert_eq!(target_tasks(2), 8);
        assert_eq!(short(target_tasks(2)), [0, 1, 2, 4]);
        assert_eq!(short(5), [0, 2, 4]);
        assert_eq!(short(2), [0]);
        assert!(short(1).is_empty());
        assert_eq!(short(41), [0, 1, 2, 3, 4]);
        assert_eq!(short(65), [0, 1, 2, 3, 4, 5]);
        assert_eq!(
            counts.0[0].kernel,
            format!("parallelism/simulate.rs:{}", site.line())
        );
    }

    #[test]
    fn a_real_trace_is_predicted_at_its_own_time_on_one_core() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let plan = kernels::parallel::Plan::workers(4);
        let ((), trace) = pool.install(|| {
            kernels::parallel::plan(plan, || {
                kernels::launch::trace(|| {
                    let (n, a) = (96, vec![0.5f32; 96 * 96]);
                    let mut c = vec![0.0f32; n * n];
                    let no = kernels::Transpose::No;
                    kernels::sgemm(no, no, n, n, n, 1.0, &a, n, &a, n, 0.0, &mut c, n);
                    kernels::elementwise::add_assign(&mut c, &a);
                })
            })
        });
        assert_eq!(trace.launches.len(), 2, "{trace:?}");
        assert!(site(&trace.launches[1]).starts_with("elementwise.rs:"));
        let no_roofline = Costs {
            bw_1: f64::INFINITY,
            bw_total: f64::INFINITY,
            ..C
        };
        for l in &trace.launches {
            assert!(
                close(launch_seconds(l, 1, &no_roofline), l.seconds),
                "{l:?}"
            );
        }
        assert!(close(step_seconds(&trace, 1, &no_roofline), trace.seconds));
    }
}
