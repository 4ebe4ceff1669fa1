//! How a kernel splits its work: into enough tasks for the pool it runs on, or for a pool it
//! is asked to plan for.
//!
//! Every parallel kernel sizes its split from [`workers`]: the size of the current rayon
//! pool, unless [`plan`] says to split as a pool of another size would. The split a shape
//! gets is a function of the shape and that number alone — never of which thread runs what —
//! and no split changes a result (every output element is computed by the same sequence of
//! operations however the work is cut), so a computation run under `plan(64, …)` on one
//! thread does exactly the work, task by task, that 64 threads would share. That is how a
//! trace (`launch::trace`, feature `trace`) records the tasks of a machine this one is not.
//!
//! ```
//! use kernels::parallel::{Plan, plan, workers};
//! let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
//! pool.install(|| {
//!     assert_eq!(workers(), 1);
//!     plan(Plan::workers(64), || assert_eq!(workers(), 64));
//!     assert_eq!(workers(), 1);
//! });
//! ```

use std::cell::Cell;

/// Tasks per worker a kernel aims for where its shape has the work: enough for work stealing
/// to even out tasks of unequal cost and threads slowed by other work.
pub const TASKS_PER_WORKER: usize = 4;

/// The pool a kernel splits its work for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Threads to plan for.
    pub workers: usize,
    /// At most this many tasks in any one split of a GEMM (for experiments that need a
    /// given task count, such as checking a model of the schedule); `usize::MAX` for none.
    pub max_tasks: usize,
}

impl Plan {
    /// Split as a pool of `workers` threads would, without a cap.
    pub fn workers(workers: usize) -> Plan {
        Plan {
            workers: workers.max(1),
            max_tasks: usize::MAX,
        }
    }
}

thread_local! {
    static PLAN: Cell<Option<Plan>> = const { Cell::new(None) };
}

/// Runs `f` with every kernel it calls on this thread splitting its work as `plan` says.
/// Kernels decide their split on the thread that calls them, so call `plan` inside the pool
/// (`pool.install(|| plan(…))`), not around `install`.
pub fn plan<R>(plan: Plan, f: impl FnOnce() -> R) -> R {
    /// Restores the plan before, even when `f` panics.
    struct Restore(Option<Plan>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PLAN.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PLAN.with(|p| p.replace(Some(plan))));
    f()
}

/// The threads kernels split their work for: the plan's, else the current pool's.
pub fn workers() -> usize {
    PLAN.with(Cell::get)
        .map_or_else(rayon::current_num_threads, |p| p.workers)
        .max(1)
}

/// The most tasks one split may have (see [`Plan::max_tasks`]).
pub fn max_tasks() -> usize {
    PLAN.with(Cell::get)
        .map_or(usize::MAX, |p| p.max_tasks.max(1))
}

/// The tasks a kernel aims for: [`TASKS_PER_WORKER`] per worker (1 on one worker).
pub fn target_tasks() -> usize {
    let w = workers();
    if w <= 1 { 1 } else { TASKS_PER_WORKER * w }
}

/// Cuts `units` equal units of work into `parts` ranges as even as can be (sizes differ by
/// at most one), part `i` being `i·units/parts .. (i+1)·units/parts`.
pub fn even_range(units: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    i * units / parts..(i + 1) * units / parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_holds_inside_and_ends_after() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!((workers(), target_tasks(), max_tasks()), (2, 8, usize::MAX));
            let cap = Plan {
                workers: 16,
                max_tasks: 3,
            };
            plan(cap, || {
                assert_eq!((workers(), target_tasks(), max_tasks()), (16, 64, 3));
                plan(Plan::workers(1), || assert_eq!(target_tasks(), 1));
                assert_eq!(workers(), 16);
            });
            let r = std::panic::catch_unwind(|| plan(Plan::workers(8), || panic!("inside")));
            assert!(r.is_err());
            assert_eq!(workers(), 2);
        });
    }

    #[test]
    fn even_ranges_tile_the_units() {
        let r: Vec<_> = (0..3).map(|i| even_range(10, 3, i)).collect();
        assert_eq!(r, [0..3, 3..6, 6..10]);
        assert_eq!(even_range(2, 4, 0), 0..0);
    }
}
