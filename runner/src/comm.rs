//! The processes a training run spans: one, or the ranks `mpirun -np N runner train` starts
//! (cargo feature `mpi`, on OpenMPI through the `mpi` crate). [`world`] gives the
//! `model::Collective` the trainer reduces gradients with, and [`agree`] checks that every
//! rank was started on the same run before anything is written.
//!
//! The MPI collective's backward (as PyTorch's DDP does it): while the model's backward runs,
//! each part of the gradient that is final (`LanguageModel::backward_ready`: ln_f, then each
//! block from the last, then the embeddings) is copied into a send buffer, and once
//! [`BUCKET_BYTES`] have gathered, a non-blocking all-reduce (`MPI_Iallreduce`, sum) of that
//! bucket starts; the backward of the layers below overlaps it. After the backward, the wait
//! for the outstanding buckets is timed (the per-step `allreduce_wait_s`), and the sums,
//! divided by N, replace the gradient. Every rank then takes the same optimizer step.
//!
//! Leaves out: other transports (MPI is the transport), gradient compression, and a rank
//! joining or leaving a running job: a rank that dies takes the job down (mpirun ends the
//! others) and the run resumes from its last checkpoint.

use std::time::Instant;

use anyhow::{Result, bail};
use model::train::Collective;
use serde_json::Value;

/// Gradient bytes per all-reduce bucket (PyTorch DDP's default is 25 MB; a `small` GPT's
/// whole gradient is 13 MB, so smaller buckets let the first reductions start early).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub const BUCKET_BYTES: usize = 4 << 20;

#[cfg(not(feature = "mpi"))]
/// Environment variables process managers set for each rank, with the world size.
const LAUNCHER_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// The processes of this run: MPI's world when built with the `mpi` feature, else this one
/// process (refusing to run as one of several ranks, which would train N separate copies).
pub fn world() -> Result<Box<dyn Collective>> {
    #[cfg(feature = "mpi")]
    {
        mpi_world::init()
    }
    #[cfg(not(feature = "mpi"))]
    {
        if let Some(n) = launched_ranks().filter(|&n| n > 1) {
            bail!(
                "this runner was started as one of {n} MPI ranks but was built without MPI, so each would train alone; hint: build it with `cargo build --release --features mpi` (needs apt-get install libopenmpi-dev openmpi-bin libclang-dev)"
            );
        }
        Ok(Box::new(model::train::SingleProcess))
    }
}

#[cfg(not(feature = "mpi"))]
/// The world size a process manager (mpirun, srun) announced to this process, if any.
fn launched_ranks() -> Option<usize> {
    LAUNCHER_SIZE_VARS
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Checks that every rank holds the same `mine` (a JSON description of `what`: the flags, the
/// data's identity). On a difference, rank 0 prints one line naming the first one, and only
/// then does every rank return [`Disagreed`], which `main` turns into exit code 2 quietly.
pub fn agree(c: &mut dyn Collective, what: &str, mine: &Value) -> Result<()> {
    if c.ranks() == 1 {
        return Ok(());
    }
    let all = c.gather(mine.to_string().as_bytes());
    let mut message = None;
    for (r, bytes) in all.iter().enumerate().skip(1) {
        let theirs: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        if let Some(d) = first_difference(mine, &theirs, "", r) {
            message = Some(format!(
                "the ranks were started on different runs: {what} differ: {d}; hint: start every rank with the same flags and the same shard folder (one command line, `mpirun -np N runner train ...`)"
            ));
            break;
        }
    }
    let mut verdict = [f64::from(u8::from(message.is_some()))];
    c.broadcast(&mut verdict);
    if verdict[0] == 0.0 {
        return Ok(());
    }
    // Rank 0 says why before any rank returns: a rank that exits non-zero makes mpirun end the
    // job, which could otherwise cut rank 0's line before it is written.
    if let Some(m) = message {
        eprintln!("error: {m}");
        let _ = std::io::Write::flush(&mut std::io::stderr());
    }
    c.broadcast(&mut [0.0]);
    Err(Disagreed.into())
}

/// Seconds of one blocking all-reduce (sum) of `floats` 4-byte values over the ranks (the
/// best of 3 after a warm-up; rank 0's figure on every rank): the cost of reducing a gradient
/// of that size with nothing to overlap it, so the bandwidth the reduction gets. `None` in one
/// process.
pub fn probe_allreduce(c: &mut dyn Collective, floats: usize) -> Option<f64> {
    if c.ranks() == 1 {
        return None;
    }
    let mut buf = vec![0.0f64; floats.div_ceil(2)]; // the same bytes as f64
    c.sum(&mut buf);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        c.sum(&mut buf);
        best = best.min(started.elapsed().as_secs_f64());
    }
    let mut best = [best];
    c.broadcast(&mut best);
    Some(best[0])
}

/// The error of every rank when the ranks disagree: rank 0 has said why (in [`agree`]), so the
/// process exits non-zero quietly.
#[derive(Debug)]
pub struct Disagreed;

impl std::fmt::Display for Disagreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the ranks disagree (rank 0 says how)")
    }
}

impl std::error::Error for Disagreed {}

/// The first place (in key order) where rank 0's `a` and rank `r`'s `b` differ, as
/// "`key.sub` is X on rank r but Y on rank 0".
fn first_difference(a: &Value, b: &Value, path: &str, r: usize) -> Option<String> {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &at(k),
                    r,
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &at(&i.to_string()), r)),
        _ if a == b => None,
        _ => Some(format!("`{path}` is {b} on rank {r} but {a} on rank 0")),
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use std::time::Instant;

    use anyhow::{Result, bail};
    use model::LanguageModel;
    use model::train::Collective;
    use mpi::Threading;
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::traits::*;

    use super::BUCKET_BYTES;

    /// MPI's world communicator and the buffers of the gradient reduction.
    pub struct MpiWorld {
        world: SimpleCommunicator,
        send: Vec<f32>,
        recv: Vec<f32>,
        wait_seconds: f64,
        // Last: MPI_Finalize runs when the universe drops, after everything that uses it.
        _universe: Universe,
    }

    /// Initializes MPI (rayon's threads never call it: `Funneled` suffices).
    pub fn init() -> Result<Box<dyn Collective>> {
        let Some((universe, _)) = mpi::initialize_with_threading(Threading::Funneled) else {
            bail!("MPI was initialized twice; hint: this is a bug in runner");
        };
        Ok(Box::new(MpiWorld {
            world: universe.world(),
            send: Vec::new(),
            recv: Vec::new(),
            wait_seconds: 0.0,
            _universe: universe,
        }))
    }

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        fn ranks(&self) -> usize {
            self.world.size() as usize
        }

        fn backward(&mut self, model: &mut dyn LanguageModel) {
            let n_ranks = self.ranks();
            model.zero_grad();
            if n_ranks == 1 {
                model.backward();
                return;
            }
            let n = model.grads().len();
            self.send.resize(n, 0.0);
            self.recv.resize(n, 0.0);
            let bucket = BUCKET_BYTES / size_of::<f32>();
            let world = &self.world;
            let (send, recv) = (&mut self.send[..], &mut self.recv[..]);
            let wait = mpi::request::scope(|scope| {
                // send[..filled_from] and recv[..sent_from] are still ours; the tails are lent
                // to MPI requests in flight.
                let (mut send_rest, mut recv_rest) = (send, recv);
                let (mut filled_from, mut sent_from) = (n, n);
                let mut requests = Vec::new();
                model.backward_ready(&mut |offset, chunk| {
                    assert_eq!(
                        offset + chunk.len(),
                        filled_from,
                        "backward_ready: chunks must come back to front"
                    );
                    send_rest[offset..filled_from].copy_from_slice(chunk);
                    filled_from = offset;
                    if sent_from - filled_from >= bucket || filled_from == 0 {
                        let (head, tail) = std::mem::take(&mut send_rest).split_at_mut(offset);
                        send_rest = head;
                        let (rhead, rtail) = std::mem::take(&mut recv_rest).split_at_mut(offset);
                        recv_rest = rhead;
                        let tail: &[f32] = tail;
                        requests.push(world.immediate_all_reduce_into(
                            scope,
                            tail,
                            rtail,
                            SystemOperation::sum(),
                        ));
                        sent_from = filled_from;
                    }
                    // Let MPI progress the buckets in flight while the backward goes on.
                    requests = std::mem::take(&mut requests)
                        .into_iter()
                        .filter_map(|r| r.test().err())
                        .collect();
                });
                let started = Instant::now();
                for r in requests {
                    r.wait();
                }
                started.elapsed().as_secs_f64()
            });
            self.wait_seconds += wait;
            let scale = 1.0 / n_ranks as f32;
            for (g, s) in model.grads_mut().iter_mut().zip(&self.recv) {
                *g = s * scale;
            }
        }

        fn sum(&mut self, values: &mut [f64]) {
            let mine = values.to_vec();
            self.world
                .all_reduce_into(&mine[..], values, SystemOperation::sum());
        }

        fn broadcast(&mut self, values: &mut [f64]) {
            self.world.process_at_rank(0).broadcast_into(values);
        }

        fn gather(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
            let root = self.world.process_at_rank(0);
            if self.rank() != 0 {
                root.send(bytes);
                return Vec::new();
            }
            let mut all = vec![bytes.to_vec()];
            for r in 1..self.world.size() {
                let (theirs, _) = self.world.process_at_rank(r).receive_vec::<u8>();
                all.push(theirs);
            }
            all
        }

        fn take_wait_seconds(&mut self) -> f64 {
            std::mem::take(&mut self.wait_seconds)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_difference_is_named_with_its_path() {
        let a = json!({"flags": {"seed": 1, "batch": 16}, "data": {"shards": [10, 20]}});
        let same = a.clone();
        assert_eq!(first_difference(&a, &same, "", 1), None);
        let b = json!({"flags": {"seed": 2, "batch": 8}, "data": {"shards": [10, 20]}});
        assert_eq!(
            first_difference(&a, &b, "", 1).unwrap(),
            "`flags.batch` is 8 on rank 1 but 16 on rank 0"
        );
        let c = json!({"flags": {"seed": 1, "batch": 16}, "data": {"shards": [10, 21]}});
        assert_eq!(
            first_difference(&a, &c, "", 3).unwrap(),
            "`data.shards.1` is 21 on rank 3 but 20 on rank 0"
        );
        let d = json!({"flags": {"seed": 1, "batch": 16, "precision": "bf16"}, "data": {"shards": [10, 20]}});
        assert_eq!(
            first_difference(&a, &d, "", 1).unwrap(),
            "`flags.precision` is \"bf16\" on rank 1 but null on rank 0"
        );
    }
}
