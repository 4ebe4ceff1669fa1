//! `--threads`: bounded, and a warning when it is more than the cores.
//!
//! A rayon pool of 10⁸ threads never finishes spawning, and the LSTM's per-step spin barrier
//! waits for every descheduled thread, so more threads than cores cost thousands of times the
//! speed with no error. `runner` refuses more than [`PER_CORE`] threads per core and warns on
//! stderr, whatever the subcommand, when the count is above the cores. Leaves out: telling
//! physical cores from SMT siblings (the OS's count of logical CPUs is the cores here).

use anyhow::{Result, bail};

/// The most threads per core `--threads` accepts.
pub const PER_CORE: usize = 8;

/// Logical CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Refuses a thread count above [`PER_CORE`] × `cores`; 0 means one per core.
pub fn check(n: usize, cores: usize) -> Result<()> {
    let max = PER_CORE * cores;
    if n > max {
        bail!(
            "--threads {n} is more than {PER_CORE} per core on this machine's {} (at most {max}); hint: --threads 0 uses one per core",
            crate::fmt::counted(cores as u64, "core")
        );
    }
    Ok(())
}

/// The warning for `n` threads on `cores` cores, if `n` is more.
pub fn oversubscribed(n: usize, cores: usize) -> Option<String> {
    (n > cores).then(|| {
        format!(
            "warning: --threads {n} on {}: threads will share cores and every step waits for the slowest (the LSTM's most of all); hint: --threads 0 uses one per core",
            crate::fmt::counted(cores as u64, "core")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_bounded_and_oversubscription_warned() {
        assert!(check(0, 2).is_ok());
        assert!(check(16, 2).is_ok());
        let err = check(17, 2).unwrap_err().to_string();
        assert!(
            err.contains("at most 16") && err.contains("2 cores"),
            "{err}"
        );
        assert!(check(100_000_000, 64).is_err());
        assert_eq!(oversubscribed(2, 2), None);
        assert_eq!(oversubscribed(0, 2), None);
        let warning = oversubscribed(3, 1).unwrap();
        assert!(warning.contains("--threads 3 on 1 core:"), "{warning}");
    }
}
