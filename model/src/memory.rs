//! Memory a model will take, checked before it is allocated.
//!
//! A config.json field or a flag (`n_positions: 1e9`, `--batch 100000000`) can ask for more
//! memory than the machine has; allocating it first aborts the process (Rust's allocation
//! failure is not an error value). Loaders and trainers estimate the bytes from the sizes,
//! compare them with what the OS says is available, and return [`OutOfMemory`] with both
//! figures instead. Leaves out: swap, cgroup limits below the machine's (on Linux the
//! figure is `/proc/meminfo`'s MemAvailable; elsewhere only the address-space bound holds).

/// A request for more memory than there is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} would take about {}, but {} available", human_bytes(*needed), match available {
    Some(a) => format!("only {} is", human_bytes(*a)),
    None => "that is more than a process can address, so none is".to_string(),
})]
pub struct OutOfMemory {
    /// What would have been allocated ("the weights and gradients", "training at B = 16").
    pub what: String,
    pub needed: u64,
    /// What the OS reports available; `None` when `needed` exceeds the address space.
    pub available: Option<u64>,
}

/// Bytes the OS can give this process now without swapping (Linux: MemAvailable), if known.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// Refuses `needed` bytes for `what` when they exceed what is available (or addressable).
pub fn ensure_fits(what: impl Into<String>, needed: u64) -> Result<(), OutOfMemory> {
    ensure_fits_in(what, needed, available_bytes())
}

/// [`ensure_fits`] against a given figure of available bytes (`None`: unknown).
pub fn ensure_fits_in(
    what: impl Into<String>,
    needed: u64,
    available: Option<u64>,
) -> Result<(), OutOfMemory> {
    if needed > isize::MAX as u64 {
        return Err(OutOfMemory {
            what: what.into(),
            needed,
            available: None,
        });
    }
    match available {
        Some(a) if needed > a => Err(OutOfMemory {
            what: what.into(),
            needed,
            available: Some(a),
        }),
        _ => Ok(()),
    }
}

/// Bytes of `floats` f32 values, saturating (estimates of absurd sizes stay absurd, not
/// wrapped).
pub fn f32_bytes(floats: u128) -> u64 {
    floats.saturating_mul(4).min(u128::from(u64::MAX)) as u64
}

/// A u128 whose `+` and `×` saturate: size estimates of absurd configs stay absurd instead
/// of wrapping (or panicking) before they are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sat(pub u128);

impl std::ops::Add for Sat {
    type Output = Sat;
    fn add(self, other: Sat) -> Sat {
        Sat(self.0.saturating_add(other.0))
    }
}

impl std::ops::Mul for Sat {
    type Output = Sat;
    fn mul(self, other: Sat) -> Sat {
        Sat(self.0.saturating_mul(other.0))
    }
}

/// `3_400_000_000` → `"3.4 GB"` (powers of 1000, as disks and `free -h --si` count).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut x = bytes as f64;
    let mut unit = 0;
    while x >= 1000.0 && unit + 1 < UNITS.len() {
        x /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_available_memory_are_refused_with_both_figures() {
        assert!(ensure_fits_in("x", 1000, Some(2000)).is_ok());
        assert!(ensure_fits_in("x", 1000, None).is_ok());
        let err = ensure_fits_in("the weights", 3_400_000_000, Some(1_000_000_000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the weights would take about 3.4 GB, but only 1.0 GB is available"
        );
        let err = ensure_fits_in("the cache", u64::MAX, None).unwrap_err();
        assert!(
            err.to_string().contains("more than a process can address"),
            "{err}"
        );
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(f32_bytes(u128::MAX), u64::MAX);
        assert!(available_bytes().is_none_or(|a| a > 0));
    }
}
