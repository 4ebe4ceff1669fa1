//! Refuse to run on a CPU that lacks the instructions this build was compiled for.
//!
//! `.cargo/config.toml` compiles for the native CPU, so a binary copied to an older machine
//! would die of SIGILL at the first AVX-512 instruction. [`check`] compares the target features
//! enabled at compile time with what the running CPU reports (`is_x86_feature_detected!`) and
//! returns an error naming each missing feature and how to rebuild. Call it first thing in
//! `main`, before any kernel runs (the `runner` binary does). Leaves out: non-x86 targets,
//! where it always succeeds.

use std::fmt;

/// One target feature: its name, whether this build enables it, and whether this CPU has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub compiled: bool,
    pub detected: bool,
}

/// Expands to the table of x86 features that both `cfg(target_feature)` and
/// `is_x86_feature_detected!` know, each with its compile-time and run-time answer.
#[cfg(target_arch = "x86_64")]
macro_rules! feature_table {
    ($($name:tt),* $(,)?) => {
        vec![$(Feature {
            name: $name,
            compiled: cfg!(target_feature = $name),
            detected: std::is_x86_feature_detected!($name),
        }),*]
    };
}

/// Every feature this module knows, with its compiled/detected state.
pub fn features() -> Vec<Feature> {
    #[cfg(target_arch = "x86_64")]
    {
        feature_table![
            "sse",
            "sse2",
            "sse3",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "sse4a",
            "popcnt",
            "fxsr",
            "cmpxchg16b",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "bmi1",
            "bmi2",
            "lzcnt",
            "movbe",
            "adx",
            "aes",
            "pclmulqdq",
            "sha",
            "rdrand",
            "rdseed",
            "xsave",
            "xsaveopt",
            "xsavec",
            "xsaves",
            "avx512f",
            "avx512cd",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512ifma",
            "avx512vbmi",
            "avx512vbmi2",
            "avx512vnni",
            "avx512bitalg",
            "avx512vpopcntdq",
            "avx512bf16",
            "avx512fp16",
            "avx512vp2intersect",
            "gfni",
            "vaes",
            "vpclmulqdq",
        ]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The target features this build was compiled with (among those [`features`] knows).
pub fn compiled_features() -> Vec<&'static str> {
    features()
        .into_iter()
        .filter(|f| f.compiled)
        .map(|f| f.name)
        .collect()
}

/// The build needs features the CPU does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedCpu {
    /// Compiled-in features the running CPU lacks, in table order.
    pub missing: Vec<&'static str>,
}

impl fmt::Display for UnsupportedCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this build of Lanes uses CPU instructions this machine lacks: {} \
             (it was compiled for another CPU, {}). \
             hint: rebuild on this machine with `cargo build --release` (.cargo/config.toml targets \
             the native CPU), or build a portable binary with \
             RUSTFLAGS=\"-C target-cpu=x86-64-v3\" (AVX2) or \"-C target-cpu=x86-64\" (SSE2)",
            self.missing.join(", "),
            crate::simd::PATH
        )
    }
}

impl std::error::Error for UnsupportedCpu {}

/// The features compiled in but not detected, from an explicit table (testable without
/// another CPU).
pub fn missing_features(table: &[Feature]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|f| f.compiled && !f.detected)
        .map(|f| f.name)
        .collect()
}

/// Ok if this CPU has every feature the build was compiled for; otherwise the list of missing
/// ones in a message that says how to rebuild.
#[inline(never)]
pub fn check() -> Result<(), UnsupportedCpu> {
    let missing = missing_features(&features());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(UnsupportedCpu { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_build_runs_on_this_cpu() {
        check().unwrap();
    }

    #[test]
    fn a_missing_feature_is_named_with_a_rebuild_hint() {
        let table = [
            Feature {
                name: "avx2",
                compiled: true,
                detected: true,
            },
            Feature {
                name: "avx512f",
                compiled: true,
                detected: false,
            },
            Feature {
                name: "avx512bw",
                compiled: true,
                detected: false,
            },
            Feature {
                name: "sha",
                compiled: false,
                detected: false,
            },
        ];
        let missing = missing_features(&table);
        assert_eq!(missing, vec!["avx512f", "avx512bw"]);
        let msg = UnsupportedCpu { missing }.to_string();
        assert!(msg.contains("avx512f, avx512bw"), "{msg}");
        assert!(msg.contains("target-cpu"), "{msg}");
    }

    #[test]
    fn the_lane_width_matches_the_compiled_features() {
        let compiled = compiled_features();
        assert_eq!(compiled.contains(&"avx512f"), crate::simd::LANES == 16);
    }
}
