//! What the runner knows about the machine it measures on: the CPU's name and the kernel's
//! CPU-time counters, to say how busy other work kept the machine (Linux; `None` elsewhere).
//!
//! Leaves out: per-core counters and other operating systems' equivalents.

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// A reading of the CPU-time counters, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticks {
    /// All cores, running anything (neither idle nor waiting for I/O).
    pub busy: u64,
    /// All cores, in total.
    pub total: u64,
    /// This process, all its threads (user + system).
    pub own: u64,
}

impl Ticks {
    /// Now, from /proc/stat and /proc/self/stat.
    pub fn read() -> Option<Ticks> {
        // "cpu  user nice system idle iowait irq softirq steal ...".
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if v.len() != 8 {
            return None;
        }
        let total: u64 = v.iter().sum();
        // "pid (comm) state ...": utime and stime are fields 14 and 15.
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Ticks {
            busy: total - v[3] - v[4],
            total,
            own,
        })
    }

    /// Share of all cores' time from `self` to `later` that went to processes other than
    /// this one; `None` when no time passed.
    pub fn others_share(self, later: Ticks) -> Option<f64> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)?;
        let others = later
            .busy
            .saturating_sub(self.busy)
            .saturating_sub(later.own.saturating_sub(self.own));
        Some(others as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_work_is_what_this_process_did_not_use() {
        let a = Ticks {
            busy: 100,
            total: 1000,
            own: 50,
        };
        let b = Ticks {
            busy: 700,
            total: 2000,
            own: 450,
        };
        // 600 busy ticks of 1000, 400 of them ours.
        assert_eq!(a.others_share(b), Some(0.2));
        assert_eq!(a.others_share(a), None);
        let now = Ticks::read().expect("Linux counters");
        assert!(now.busy <= now.total);
    }
}
