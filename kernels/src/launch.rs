//! Kernel launches counted per thread: how many operations a computation runs one after
//! another, its critical path at the granularity of kernels.
//!
//! Everything inside one kernel call runs in parallel (over rows, heads, tiles, hidden units),
//! but consecutive calls depend on each other, so a computation that makes N calls needs at
//! least N steps however many cores it has. The LSTM walk is the exception that shows the
//! point: one call of [`crate::recurrence::lstm_backward`] walks T time steps, each needing
//! the one before, so it counts T launches, what PyTorch or cuDNN would issue as T
//! (B, 4H)·(4H, H) products.
//!
//! Every public kernel (not the `_ref` references) opens a `Launch` on entry. The count is
//! kept per thread (so computations on other threads, and tests running side by side, do not
//! mix) and only the outermost kernel on a thread counts: a kernel calling another, or a
//! rayon task of a kernel running on the waiting caller's thread, adds nothing. Cost: two
//! thread-local updates per call, nanoseconds against kernels of microseconds.
//!
//! Only with the `trace` feature (the `runner` turns it on for its `parallelism` report).
//! Without it this module is private and its hooks are empty inline functions: a kernel
//! call costs nothing extra.
//!
//! ```
//! use kernels::elementwise::add_assign;
//! let (_, steps) = kernels::launch::count(|| {
//!     let mut acc = [1.0f32; 4];
//!     add_assign(&mut acc, &[1.0; 4]);
//!     add_assign(&mut acc, &[1.0; 4]);
//! });
//! assert_eq!(steps, 2);
//! ```
//!
//! ## Tracing: the work-span model's input
//!
//! [`trace`] also records every outermost launch on this thread as a [`Traced`]: the kernel
//! (where it opened its launch), its dependent steps, its wall time, and how many ways its
//! work is split: the independent tasks a pool could hand to separate cores (row blocks of a
//! GEMM, heads × query tiles of attention, panels of hidden units in one LSTM time step).
//! Kernels state that number with [`ways`] where they split; a kernel that never splits
//! states 1. From these a caller can predict the step time on more cores than it has.
//!
//! Leaves out: dependencies between calls (two independent calls count as two), and work done
//! outside the kernels (plain loops in the models).

#[cfg(not(feature = "trace"))]
pub(crate) use off::{bytes, start, task, team_phase, ways};
#[cfg(feature = "trace")]
use std::cell::{Cell, RefCell};
#[cfg(feature = "trace")]
use std::panic::Location;
#[cfg(feature = "trace")]
use std::time::Instant;

/// The hooks as the kernels see them without the `trace` feature: nothing to count.
#[cfg(not(feature = "trace"))]
mod off {
    /// A kernel running; holds nothing.
    pub(crate) struct Launch;

    /// Starts a launch: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn start(_steps: u64) -> Launch {
        Launch
    }

    /// States a kernel's split: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn ways(_n: usize) {}

    /// States the bytes a launch moves: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn bytes(_n: usize) {}

    /// Starts a phase of a walk's team: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn team_phase(_parts: usize) {}

    /// A task running; holds nothing.
    pub(crate) struct Task;

    /// Starts a task: nothing to do without the `trace` feature.
    #[inline(always)]
    pub(crate) fn task(_part: usize) -> Task {
        Task
    }
}

#[cfg(feature = "trace")]
thread_local! {
    /// Launch steps counted on this thread.
    static STEPS: Cell<u64> = const { Cell::new(0) };
    /// Kernels running on this thread right now (nested calls count nothing).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Tasks running on this thread right now (a task inside a task is part of the outer one).
    static TASK_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The launches recorded by [`trace`], while it runs on this thread.
    static TRACE: RefCell<Option<Vec<Traced>>> = const { RefCell::new(None) };
    /// Whether tasks started now belong to the launch's last phase: from a split into tasks
    /// until a kernel states it runs unsplit (`ways(1)`).
    static PHASE_OPEN: Cell<bool> = const { Cell::new(false) };
    /// When the last outermost launch traced on this thread ended (or the trace started).
    static LAST_END: Cell<Option<Instant>> = const { Cell::new(None) };
}

#[cfg(feature = "trace")]
/// How the tasks of a [`Phase`] are handed to threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    /// A rayon fork-join: idle threads take the next task (work stealing), so the phase is
    /// list-scheduled; it ends when the last task does.
    Fork,
    /// One step of a walk's team (`raw::team`): thread `p` of `Q` owns parts
    /// `p·n/Q .. (p+1)·n/Q` for the whole walk, and the phase ends at a barrier.
    Team,
}

#[cfg(feature = "trace")]
/// One task of a phase, as run on the tracing thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Task {
    /// Its wall time.
    pub seconds: f64,
    /// In a [`PhaseKind::Team`] phase, the first part it covers (so the thread owning that
    /// part runs it); in a fork, its index.
    pub part: u32,
}

#[cfg(feature = "trace")]
/// One parallel region of a launch: a fork-join, or one step of a walk between barriers.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub kind: PhaseKind,
    /// The tasks the kernel said it splits into (a fork), or the parts its team shares out
    /// (a walk step).
    pub parts: u64,
    /// The tasks that ran, in the order they ran. Complete only when the trace runs on a
    /// pool of one thread (on more, tasks that other threads ran are missing).
    pub tasks: Vec<Task>,
}

#[cfg(feature = "trace")]
impl Phase {
    /// The tasks' time added up.
    pub fn work(&self) -> f64 {
        self.tasks.iter().map(|t| t.seconds).sum()
    }
}

#[cfg(feature = "trace")]
/// One outermost kernel launch, as [`trace`] records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Traced {
    /// Where the kernel opened its launch (its file and line).
    pub kernel: &'static Location<'static>,
    /// Dependent steps: 1, or T for a walk through T time steps.
    pub steps: u64,
    /// Independent tasks each step splits into, the most any of its (nested) kernels stated;
    /// `None` when no kernel said.
    pub ways: Option<u64>,
    /// Wall time of the whole launch.
    pub seconds: f64,
    /// Wall time on the tracing thread between the end of the launch before (or the start
    /// of the trace) and this one's start: work outside the kernels.
    pub gap: f64,
    /// Bytes the launch must move to or from memory at least, from its shapes (its operands
    /// read once and its results written once); 0 where the kernel states none.
    pub bytes: u64,
    /// Its parallel regions in order; the time of the launch outside their tasks runs on
    /// the launching thread alone.
    pub phases: Vec<Phase>,
}

#[cfg(feature = "trace")]
impl Traced {
    /// Times it handed work to the pool (a split into more than one task): each costs a
    /// fork-join, or for a walk the start of its team. One per [`PhaseKind::Fork`] phase.
    pub fn joins(&self) -> u64 {
        self.phases
            .iter()
            .filter(|p| p.kind == PhaseKind::Fork)
            .count() as u64
    }

    /// The time of the launch outside any task: on one thread whatever the pool.
    pub fn serial(&self) -> f64 {
        (self.seconds - self.phases.iter().map(Phase::work).sum::<f64>()).max(0.0)
    }
}

#[cfg(feature = "trace")]
/// Every outermost launch of a traced computation, and the time around them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub launches: Vec<Traced>,
    /// Wall time of the whole computation.
    pub seconds: f64,
    /// Time after the last launch ended (work outside the kernels, with each launch's
    /// [`Traced::gap`]).
    pub tail: f64,
}

#[cfg(feature = "trace")]
impl Trace {
    /// Time outside every kernel: the gaps between launches and the tail.
    pub fn outside(&self) -> f64 {
        self.tail + self.launches.iter().map(|l| l.gap).sum::<f64>()
    }
}

#[cfg(feature = "trace")]
/// A kernel running on this thread; dropping it ends the launch. Holds the start time of an
/// outermost launch being traced.
pub(crate) struct Launch(Option<Instant>);

#[cfg(feature = "trace")]
/// Runs `f` on the launch being traced on this thread, if any, when no task is running here
/// (a task's nested kernels and phases belong to the task).
fn with_current(f: impl FnOnce(&mut Traced)) {
    if DEPTH.with(Cell::get) == 0 || TASK_DEPTH.with(Cell::get) > 0 {
        return;
    }
    TRACE.with(|t| {
        if let Some(last) = t.borrow_mut().as_mut().and_then(|l| l.last_mut()) {
            f(last);
        }
    });
}

#[cfg(feature = "trace")]
/// Starts a launch of `steps` dependent steps: 1 for a kernel whose work all runs in parallel,
/// T for a walk through T time steps. Counts nothing when called inside another kernel.
#[track_caller]
pub(crate) fn start(steps: u64) -> Launch {
    let kernel = Location::caller();
    let outermost = DEPTH.with(|depth| {
        let outermost = depth.get() == 0;
        if outermost {
            STEPS.with(|s| s.set(s.get() + steps));
        }
        depth.set(depth.get() + 1);
        outermost
    });
    let now = Instant::now();
    let traced = outermost
        && TRACE.with(|t| match t.borrow_mut().as_mut() {
            Some(launches) => {
                let gap = LAST_END
                    .with(Cell::get)
                    .map_or(0.0, |e| now.duration_since(e).as_secs_f64());
                launches.push(Traced {
                    kernel,
                    steps,
                    ways: None,
                    seconds: 0.0,
                    gap,
                    bytes: 0,
                    phases: Vec::new(),
                });
                PHASE_OPEN.with(|o| o.set(false));
                true
            }
            None => false,
        });
    Launch(traced.then_some(now))
}

#[cfg(feature = "trace")]
impl Drop for Launch {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get() - 1));
        if let Some(started) = self.0 {
            let end = Instant::now();
            TRACE.with(|t| {
                if let Some(last) = t.borrow_mut().as_mut().and_then(|l| l.last_mut()) {
                    last.seconds = end.duration_since(started).as_secs_f64();
                }
            });
            LAST_END.with(|e| e.set(Some(end)));
        }
    }
}

#[cfg(feature = "trace")]
/// States that the running kernel splits its work into `n` independent tasks (1 for one that
/// does not split) and, when `n > 1`, hands them to the pool: a fork-join, which opens a
/// [`PhaseKind::Fork`] phase for the [`task`]s that follow. Called on the kernel's own
/// thread, where it decides the split; the outermost launch keeps the largest number any
/// nested kernel states. Records nothing unless [`trace`] runs, or inside a task.
pub(crate) fn ways(n: usize) {
    with_current(|last| {
        let n = n.max(1) as u64;
        last.ways = Some(last.ways.map_or(n, |w| w.max(n)));
        PHASE_OPEN.with(|o| o.set(n > 1));
        if n > 1 {
            last.phases.push(Phase {
                kind: PhaseKind::Fork,
                parts: n,
                tasks: Vec::new(),
            });
        }
    });
}

#[cfg(feature = "trace")]
/// States that the running launch moves `n` more bytes to or from memory (see
/// [`Traced::bytes`]).
pub(crate) fn bytes(n: usize) {
    with_current(|last| last.bytes += n as u64);
}

#[cfg(feature = "trace")]
/// Opens the next phase of a walk whose team shares out `parts` (at its start and after each
/// barrier).
pub(crate) fn team_phase(parts: usize) {
    with_current(|last| {
        PHASE_OPEN.with(|o| o.set(true));
        last.phases.push(Phase {
            kind: PhaseKind::Team,
            parts: parts as u64,
            tasks: Vec::new(),
        });
    });
}

#[cfg(feature = "trace")]
/// A task running on this thread; dropping it records its time in the current phase.
pub(crate) struct TaskGuard(Option<(Instant, u32)>);

#[cfg(feature = "trace")]
/// Starts one task of the current phase: `part` is its index in a fork, or the first part it
/// covers in a team phase. Wrap the whole body of each task: `let _task = task(i);`.
pub(crate) fn task(part: usize) -> TaskGuard {
    let mut recording = false;
    with_current(|last| recording = !last.phases.is_empty() && PHASE_OPEN.with(Cell::get));
    if recording {
        TASK_DEPTH.with(|d| d.set(d.get() + 1));
    }
    TaskGuard(recording.then(|| (Instant::now(), part as u32)))
}

#[cfg(feature = "trace")]
impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some((started, part)) = self.0 {
            let seconds = started.elapsed().as_secs_f64();
            TASK_DEPTH.with(|d| d.set(d.get() - 1));
            with_current(|last| {
                if let Some(phase) = last.phases.last_mut() {
                    phase.tasks.push(Task { seconds, part });
                }
            });
        }
    }
}

#[cfg(feature = "trace")]
/// Runs `f` and returns its result with every outermost kernel launch it made on this thread,
/// in order, their phases and tasks, and the time between them. Not reentrant: a `trace`
/// inside `f` takes the launches from there on. Run it on a pool of one thread to record
/// every task (with [`crate::parallel::plan`] to split as a larger pool would).
pub fn trace<R>(f: impl FnOnce() -> R) -> (R, Trace) {
    /// Ends the trace even when `f` panics.
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            TRACE.with(|t| t.borrow_mut().take());
            LAST_END.with(|e| e.set(None));
        }
    }
    let begin = Instant::now();
    TRACE.with(|t| *t.borrow_mut() = Some(Vec::new()));
    LAST_END.with(|e| e.set(Some(begin)));
    let stop = Stop;
    let result = f();
    let end = Instant::now();
    let launches = TRACE.with(|t| t.borrow_mut().take()).unwrap_or_default();
    let tail = LAST_END
        .with(Cell::get)
        .map_or(0.0, |e| end.duration_since(e).as_secs_f64());
    drop(stop);
    let trace = Trace {
        launches,
        seconds: end.duration_since(begin).as_secs_f64(),
        tail,
    };
    (result, trace)
}

#[cfg(feature = "trace")]
/// Launch steps counted on this thread since it started.
pub fn steps() -> u64 {
    STEPS.with(Cell::get)
}

#[cfg(feature = "trace")]
/// Runs `f` and returns its result with the launch steps it took on this thread: the length
/// of its critical path in kernel launches.
pub fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = steps();
    let result = f();
    (result, steps() - before)
}

#[cfg(all(test, feature = "trace"))]
mod tests {
    use super::*;

    #[test]
    fn nested_launches_count_once() {
        let (_, n) = count(|| {
            let _outer = start(1);
            let _inner = start(5);
        });
        assert_eq!(n, 1);
        let (_, n) = count(|| {
            drop(start(3));
            drop(start(1));
        });
        assert_eq!(n, 4);
    }

    #[test]
    fn a_panicking_kernel_ends_its_launch() {
        let r = std::panic::catch_unwind(|| {
            let _l = start(1);
            panic!("broken precondition");
        });
        assert!(r.is_err());
        assert_eq!(count(|| drop(start(1))).1, 1);
    }

    #[test]
    fn a_trace_records_outermost_launches_with_their_ways() {
        let ((), Trace { launches, .. }) = trace(|| {
            {
                let _outer = start(1);
                ways(3);
                let _inner = start(7);
                ways(5);
                ways(2);
            }
            let _walk = start(4);
        });
        assert_eq!(launches.len(), 2, "{launches:?}");
        assert_eq!((launches[0].steps, launches[0].ways), (1, Some(5)));
        assert_eq!(launches[0].joins(), 3);
        assert_eq!((launches[1].steps, launches[1].ways), (4, None));
        assert_eq!(launches[0].kernel.file(), file!());
        assert!(launches.iter().all(|l| l.seconds >= 0.0));
        // Outside a trace nothing is kept.
        drop(start(1));
        ways(9);
        assert!(trace(|| ()).1.launches.is_empty());
    }

    #[test]
    fn a_trace_records_phases_tasks_gaps_and_bytes() {
        let spin = |us: u64| {
            let t = Instant::now();
            while t.elapsed().as_micros() < us as u128 {
                std::hint::spin_loop();
            }
        };
        let ((), tr) = trace(|| {
            spin(300);
            {
                let _l = start(1);
                bytes(100);
                ways(3);
                for i in 0..3 {
                    let _t = task(i);
                    // A kernel inside a task: its split and bytes are the task's own.
                    let _inner = start(1);
                    ways(7);
                    bytes(5);
                    spin(200);
                }
                spin(100);
            }
            {
                let _walk = start(2);
                team_phase(4);
                for part in [0, 2] {
                    let _t = task(part);
                    spin(50);
                }
                team_phase(4);
            }
            spin(200);
        });
        let [fork, walk] = &tr.launches[..] else {
            panic!("{tr:?}")
        };
        assert_eq!(fork.bytes, 100);
        assert_eq!(fork.phases.len(), 1);
        let phase = &fork.phases[0];
        assert_eq!(
            (phase.kind, phase.parts, phase.tasks.len()),
            (PhaseKind::Fork, 3, 3)
        );
        assert_eq!(
            phase.tasks.iter().map(|t| t.part).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(phase.tasks.iter().all(|t| t.seconds >= 200e-6), "{phase:?}");
        assert!(fork.serial() >= 100e-6 && fork.serial() < fork.seconds);
        assert!(fork.gap >= 300e-6, "{fork:?}");
        assert_eq!(walk.phases.len(), 2);
        assert!(
            walk.phases
                .iter()
                .all(|p| p.kind == PhaseKind::Team && p.parts == 4)
        );
        assert_eq!(walk.phases[0].tasks.len(), 2);
        assert_eq!(walk.phases[0].tasks[1].part, 2);
        assert!(walk.phases[1].tasks.is_empty());
        assert!(tr.tail >= 200e-6);
        assert!(tr.outside() >= 500e-6 && tr.outside() < tr.seconds);
        // A task outside any phase, or after the kernel says it runs unsplit, records nothing.
        let ((), tr) = trace(|| {
            let _l = start(1);
            drop(task(0));
            ways(2);
            drop(task(0));
            ways(1);
            drop(task(1));
        });
        assert_eq!(tr.launches[0].phases.len(), 1);
        assert_eq!(tr.launches[0].phases[0].tasks.len(), 1);
    }

    #[test]
    fn a_trace_times_its_launches() {
        let ((), Trace { launches, .. }) = trace(|| {
            let _l = start(1);
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        assert!(launches[0].seconds >= 0.02, "{launches:?}");
    }

    #[test]
    fn walks_count_their_time_steps() {
        use crate::Precision;
        use crate::recurrence::{
            LstmDims, PackedWhh, lstm_backward, lstm_forward, lstm_pack_backward, lstm_pack_forward,
        };
        let (b, t, h) = (2, 7, 3);
        let dims = LstmDims { b, t, h };
        let mut hs = vec![0.0; (t + 1) * b * h];
        let mut cs = vec![0.0; (t + 1) * b * h];
        let mut gates = vec![0.1; t * b * 4 * h];
        let w_hh = vec![0.01; 4 * h * h];
        let (mut forward, mut backward) = (PackedWhh::new(), PackedWhh::new());
        lstm_pack_forward(&mut forward, &w_hh, h, Precision::F32);
        lstm_pack_backward(&mut backward, &w_hh, h, Precision::F32);
        let (_, n) = count(|| lstm_forward(&mut hs, &mut cs, &mut gates, &forward, dims));
        assert_eq!(n, t as u64);
        let mut dgates = vec![0.0; t * b * 4 * h];
        let (mut dh0, mut dc0) = (vec![0.0; b * h], vec![0.0; b * h]);
        let dhs = vec![1.0; t * b * h];
        let (_, n) = count(|| {
            lstm_backward(
                &mut dgates,
                &mut dh0,
                &mut dc0,
                &dhs,
                &gates,
                &cs,
                &backward,
                dims,
            )
        });
        assert_eq!(n, t as u64);
    }
}
