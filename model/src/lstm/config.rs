//! The LSTM's hyperparameters, its presets, and its `config.json` (Lanes' own fields:
//! `model_type: "lanes-lstm"`, `vocab_size`, `hidden_size`, `num_layers`, `tokenizer`).
//! Reading checks every field and names the first that is wrong. Leaves out: the fields of
//! PyTorch's `nn.LSTM` that Lanes does not implement (dropout, bidirectional, proj_size).

use std::path::Path;

use serde_json::json;

use super::tensors::Layout;
use crate::checkpoint::CheckpointError;
use crate::lm::{ConfigError, ModelKind, check_tokenizer, invalid, tokenizer_field};
use crate::memory::Sat;
use crate::tokenizer::TokenizerKind;

/// `model_type` in an LSTM checkpoint's config.json.
pub const MODEL_TYPE: &str = "lanes-lstm";

/// Architecture of an LSTM language model (the fields of its config.json).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LstmConfig {
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// H: hidden size, also the embedding width and every layer's input size.
    pub hidden_size: usize,
    /// L: stacked LSTM layers.
    pub num_layers: usize,
    /// Tokenizer the model was trained with (`byte` or `gpt2`); `None` when not known (see
    /// [`TokenizerKind::infer`]).
    pub tokenizer: Option<TokenizerKind>,
}

impl LstmConfig {
    /// The preset names, in `--help` order.
    pub const PRESETS: [&'static str; 2] = ["tiny", "small"];

    /// A model of vocabulary `vocab_size`, its tokenizer [`TokenizerKind::infer`]red (known
    /// only for GPT-2's vocabulary; set the field, or use [`Self::preset`], for another).
    pub fn new(vocab_size: usize, hidden_size: usize, num_layers: usize) -> Self {
        LstmConfig {
            vocab_size,
            hidden_size,
            num_layers,
            tokenizer: TokenizerKind::infer(vocab_size),
        }
    }

    /// Tests: 2 layers of 32 units (two SIMD panels, so the walk's threading is exercised).
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size, 32, 2)
    }

    /// 3 layers of 360 units: 3.30M parameters with the byte vocabulary, matched to the
    /// `small` transformer.
    pub fn small(vocab_size: usize) -> Self {
        Self::new(vocab_size, 360, 3)
    }

    /// A preset by name ([`Self::PRESETS`]) for `tokenizer`'s vocabulary.
    pub fn preset(name: &str, tokenizer: TokenizerKind) -> Result<Self, ConfigError> {
        let v = tokenizer.vocab_size() as usize;
        let config = match name {
            "tiny" => Self::tiny(v),
            "small" => Self::small(v),
            _ => {
                return Err(ConfigError::UnknownPreset {
                    kind: ModelKind::Lstm,
                    name: name.to_string(),
                });
            }
        };
        Ok(LstmConfig {
            tokenizer: Some(tokenizer),
            ..config
        })
    }

    /// Checks the invariants the model relies on: every size at least 1, parameters a
    /// process can address, token ids that fit `u32`, the tokenizer's vocabulary.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ] {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
        }
        let params = self.num_params_u128();
        if params > (isize::MAX as u128) / 8 {
            return Err(ConfigError::TooLarge {
                sizes: format!(
                    "hidden_size {} and num_layers {}",
                    self.hidden_size, self.num_layers
                ),
                params,
            });
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(invalid("vocab_size", self.vocab_size, "token ids are u32"));
        }
        check_tokenizer(self.tokenizer, self.vocab_size)
    }

    /// Parameter count: V·H + L·(2·4H·H + 2·4H) + V·H + V.
    pub fn num_params(&self) -> usize {
        Layout::new(self).0.len()
    }

    /// [`Self::num_params`] without overflow, for sizes not yet validated:
    /// 2·V·H + L·(8H² + 8H) + V.
    pub fn num_params_u128(&self) -> u128 {
        let (v, h, l) = self.sizes_u128();
        (Sat(2) * v * h + l * (Sat(8) * h * h + Sat(8) * h) + v).0
    }

    /// (V, H, L) for saturating size arithmetic.
    fn sizes_u128(&self) -> (Sat, Sat, Sat) {
        (
            Sat(self.vocab_size as u128),
            Sat(self.hidden_size as u128),
            Sat(self.num_layers as u128),
        )
    }

    /// Floats of activations and scratch for a (B, T) forward and backward, as `Lstm`
    /// allocates them (ids counted as floats): per position 6H + 6LH + V + 4, plus the
    /// projected table 4VH, the states' extra row 2LBH, the walk's packed 4H·H and 2BH + 12H.
    pub fn activation_floats(&self, b: usize, t: usize) -> u128 {
        let (v, h, l) = self.sizes_u128();
        let (b, n) = (Sat(b as u128), Sat(b as u128) * Sat(t as u128));
        let per_position = Sat(6) * h + Sat(6) * l * h + v + Sat(4);
        let fixed = Sat(4) * v * h + Sat(2) * l * b * h + Sat(4) * h * h + Sat(2) * b * h;
        (n * per_position + fixed + Sat(12) * h).0
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "model_type": MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "tokenizer": self.tokenizer.map(TokenizerKind::name),
        })
    }

    /// Parses a config.json (read from `path`, which error messages name).
    pub fn from_json(value: &serde_json::Value, path: &Path) -> Result<Self, CheckpointError> {
        let err = |message: String| CheckpointError::Config {
            path: path.to_path_buf(),
            message,
        };
        let model_type = value.get("model_type").and_then(|v| v.as_str());
        if model_type != Some(MODEL_TYPE) {
            return Err(err(format!(
                "model_type is {model_type:?}, expected \"{MODEL_TYPE}\""
            )));
        }
        let size = |field: &str| -> Result<usize, CheckpointError> {
            match value.get(field).and_then(|v| v.as_u64()) {
                Some(n) if n > 0 => Ok(n as usize),
                _ => Err(err(format!(
                    "field `{field}` must be a positive integer, got {}",
                    value.get(field).unwrap_or(&serde_json::Value::Null)
                ))),
            }
        };
        let mut config = LstmConfig::new(
            size("vocab_size")?,
            size("hidden_size")?,
            size("num_layers")?,
        );
        let field = value.get("tokenizer");
        // Lanes once wrote `gpt2` for every vocabulary but 257: such a name says nothing.
        let legacy = field.and_then(|t| t.as_str()) == Some(TokenizerKind::Gpt2.name())
            && config.vocab_size != TokenizerKind::Gpt2.vocab_size() as usize;
        if !legacy {
            config.tokenizer =
                tokenizer_field(field, config.vocab_size).map_err(|e| err(e.to_string()))?;
        }
        config.validate().map_err(|e| err(e.to_string()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_preset_has_the_advertised_size() {
        // emb 257·360 + 3·(2·1440·360 + 2·1440) + head 257·360 + 257
        assert_eq!(LstmConfig::small(257).num_params(), 3_304_337);
    }

    #[test]
    fn config_json_round_trips_and_names_bad_fields() {
        let c = LstmConfig::tiny(257);
        let p = Path::new("config.json");
        assert_eq!(LstmConfig::from_json(&c.to_json(), p).unwrap(), c);
        let mut bad = c.to_json();
        bad["hidden_size"] = json!(0);
        let e = LstmConfig::from_json(&bad, p).unwrap_err().to_string();
        assert!(
            e.contains("hidden_size") && e.contains("config.json"),
            "{e}"
        );
        bad["model_type"] = json!("gpt2");
        let e = LstmConfig::from_json(&bad, p).unwrap_err().to_string();
        assert!(e.contains("model_type"), "{e}");
    }

    #[test]
    fn the_tokenizer_is_typed_and_inferred_by_the_one_rule() {
        let p = Path::new("config.json");
        // V = 1000 is no Lanes tokenizer's vocabulary (it was once called gpt2).
        let odd = LstmConfig::new(1000, 8, 1);
        assert_eq!(odd.tokenizer, None);
        assert!(odd.to_json()["tokenizer"].is_null());
        assert_eq!(LstmConfig::from_json(&odd.to_json(), p).unwrap(), odd);
        let mut legacy = odd.to_json();
        legacy["tokenizer"] = json!("gpt2"); // as checkpoints before the type were written
        assert_eq!(LstmConfig::from_json(&legacy, p).unwrap(), odd);
        legacy["tokenizer"] = json!("byte"); // a real contradiction is refused
        let e = LstmConfig::from_json(&legacy, p).unwrap_err().to_string();
        assert!(
            e.contains("byte tokenizer has 257") && e.contains("config.json"),
            "{e}"
        );
        legacy["tokenizer"] = json!("bpe");
        let e = LstmConfig::from_json(&legacy, p).unwrap_err().to_string();
        assert!(e.contains("`tokenizer`"), "{e}");
        assert_eq!(
            LstmConfig::new(50257, 8, 1).tokenizer,
            Some(TokenizerKind::Gpt2)
        );
        // 257 alone does not say `byte`; the preset for the byte tokenizer does, on disk too.
        assert_eq!(LstmConfig::new(257, 8, 1).tokenizer, None);
        let byte = LstmConfig::preset("tiny", TokenizerKind::Byte).unwrap();
        assert_eq!(
            (byte.vocab_size, byte.tokenizer),
            (257, Some(TokenizerKind::Byte))
        );
        assert_eq!(byte.to_json()["tokenizer"], "byte");
        assert_eq!(LstmConfig::from_json(&byte.to_json(), p).unwrap(), byte);
        let bad = LstmConfig {
            vocab_size: 300,
            ..byte
        };
        assert!(bad.validate().unwrap_err().to_string().contains("257"));
    }

    #[test]
    fn presets_share_the_transformers_error_type() {
        let gpt2 = LstmConfig::preset("small", TokenizerKind::Gpt2).unwrap();
        assert_eq!((gpt2.vocab_size, gpt2.hidden_size), (50257, 360));
        let e: ConfigError = LstmConfig::preset("gpt2", TokenizerKind::Byte).unwrap_err();
        assert_eq!(
            e,
            ConfigError::UnknownPreset {
                kind: ModelKind::Lstm,
                name: "gpt2".into()
            }
        );
        assert!(
            e.to_string().contains("no LSTM preset `gpt2`")
                && e.to_string().contains("tiny, small")
        );
        let e: ConfigError = crate::GptConfig::preset("huge").unwrap_err();
        assert!(e.to_string().contains("no GPT preset `huge`"), "{e}");
    }
}
