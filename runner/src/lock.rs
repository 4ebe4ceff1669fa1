//! The run folder's lock: one writer at a time.
//!
//! `runner train` takes an exclusive OS lock (`flock` on Unix, `LockFileEx` on Windows, through
//! std's `File::try_lock`) on `RUN/run.lock` before it reads or writes anything else there, and
//! holds it until the process ends. A second `train` on the same folder — a fresh start or a
//! `--resume` — is refused with one line naming the holder (its pid, command line and start
//! time, which the holder writes into the file). The OS drops the lock when the process dies,
//! however it dies, so a crash leaves nothing to clean up: the file's text is only a label.
//! Leaves out: network file systems whose locks are advisory per host (NFS without lockd).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// An exclusive lock on a run folder, released when dropped (or when the process ends).
/// A folder the lock created is removed again on drop if nothing else was written to it
/// (a run refused for a bad flag leaves no empty folder behind).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    dir: PathBuf,
    created: bool,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let only_the_lock = std::fs::read_dir(&self.dir).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == LOCK_FILE)
        });
        if self.created && only_the_lock {
            // Still locked while removing, so no other process starts in between.
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

impl RunLock {
    /// Creates `dir` if needed and locks it, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot open {}; hint: check the permissions of the run folder",
                    path.display()
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder may not have written its label yet; then it is "another process".
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                };
                bail!(
                    "{} is in use by {holder}; hint: wait for that run to end (or stop it), or choose another --out",
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot lock {}; hint: put the run folder on a local file system",
                        path.display()
                    )
                });
            }
        }
        // Label the lock for whoever is refused next; a failure here costs only the label.
        let label = holder_label();
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(label.as_bytes()))
            .and_then(|()| file.flush());
        Ok(RunLock {
            _file: file,
            dir: dir.to_path_buf(),
            created,
        })
    }
}

/// "pid 1234 (`runner train --out runs/a`, since 2026-12-04 05:40:12 UTC)".
fn holder_label() -> String {
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("{a:?}") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = crate::train::civil_from_days((secs / 86_400) as i64);
    let t = secs % 86_400;
    format!(
        "pid {} (`{command}`, since {y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC)\n",
        std::process::id(),
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        // A second open file description conflicts with flock even in one process.
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains("is in use by pid "), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        assert!(err.contains("hint: "), "{err}");
        drop(first);
        assert!(!run.exists(), "a folder holding only the lock is removed");
        let again = RunLock::acquire(&run).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "").unwrap();
        drop(again);
        assert!(
            run.join("metrics.jsonl").is_file(),
            "a folder with a run stays"
        );
        let _kept = RunLock::acquire(&run).unwrap();
        assert!(run.join(LOCK_FILE).is_file());
    }
}
