//! `--precision`, shared by every subcommand that runs a model: the precision of the matrix
//! products (bf16 operands with fp32 accumulation, or fp32), defaulting to the fastest this
//! build has. Leaves out: what stays fp32 either way (`docs/models.md`, mixed precision).

use clap::Args as ClapArgs;
use model::{LanguageModel, Precision};

#[derive(ClapArgs, Clone, Debug, Default)]
pub struct PrecisionArg {
    /// Matrix products in bf16 (operands rounded to bfloat16, sums in fp32: AVX512_BF16's
    /// vdpbf16ps) or fp32. Parameters, gradients, optimizer state and the pointwise layers stay
    /// fp32 either way. [default: bf16 where this build has AVX512_BF16, else fp32]
    #[arg(long, value_name = "bf16|fp32")]
    pub precision: Option<Precision>,
}

/// As the flag was given: `"bf16"`, `"fp32"` or null (for the ranks' agreement check, which
/// compares every flag).
impl serde::Serialize for PrecisionArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.precision {
            Some(p) => s.serialize_str(p.name()),
            None => s.serialize_none(),
        }
    }
}

impl PrecisionArg {
    /// The precision asked for, or `fallback` when the flag is absent.
    pub fn or(&self, fallback: Precision) -> Precision {
        self.precision.unwrap_or(fallback)
    }

    /// Sets `want` on the model; says once, on stderr, when this build runs fp32 instead.
    pub fn apply(want: Precision, lm: &mut dyn LanguageModel) -> Precision {
        let got = lm.set_precision(want);
        if got != want {
            eprintln!("{}", fallback_note(want));
        }
        got
    }
}

/// The one line a run asked for bf16 prints on a build without it.
pub fn fallback_note(want: Precision) -> String {
    format!(
        "note: --precision {want} runs fp32 here: this build lacks AVX512_BF16 ({}); hint: \
         `runner info` shows the paths; rebuild on a CPU with AVX512_BF16 (Sapphire Rapids, Zen 4, \
         Zen 5) for bf16",
        kernels::precision::BF16_PATH
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_fastest_and_a_flag_wins() {
        let none = PrecisionArg::default();
        assert_eq!(none.or(Precision::fastest()), Precision::fastest());
        let f32 = PrecisionArg {
            precision: Some(Precision::F32),
        };
        assert_eq!(f32.or(Precision::Bf16), Precision::F32);
        assert!(fallback_note(Precision::Bf16).contains("AVX512_BF16"));
    }
}
