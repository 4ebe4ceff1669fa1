//! The transformer's hyperparameters, its presets, and its `config.json` in Hugging Face
//! GPT-2's format.
//!
//! A Lanes checkpoint's `config.json` is the file `transformers.GPT2Config` writes, plus one
//! Lanes field, `tokenizer` (`"byte"` or `"gpt2"`), so `GPT2LMHeadModel.from_pretrained` opens it
//! and Lanes opens GPT-2's. Reading checks every field that changes the computation and names
//! the first one Lanes cannot honour. Leaves out: GPT-2 variants Lanes does not implement
//! (untied heads, unscaled or layer-scaled attention, cross-attention, other activations); the
//! dropout fields are written as 0 and ignored on reading (Lanes trains without dropout).

use serde_json::{Value, json};

pub use crate::lm::ConfigError;
use crate::lm::{ModelKind, check_tokenizer, invalid, tokenizer_field};
use crate::memory::Sat;
use crate::tokenizer::TokenizerKind;

/// LayerNorm's ε, fixed as in GPT-2 (a config asking for another is refused).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// GPT-2 architecture hyperparameters (names from the papers: L, C, NH, T, V).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptConfig {
    /// L: transformer blocks.
    pub n_layer: usize,
    /// C: embedding width (residual stream).
    pub n_embd: usize,
    /// NH: attention heads; C must be a multiple of NH (HS = C / NH).
    pub n_head: usize,
    /// T max: rows of the position embedding, the longest window.
    pub n_positions: usize,
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// Tokenizer the vocabulary comes from: `byte` (V = 257) or `gpt2` (V = 50257); `None`
    /// for a checkpoint from elsewhere that does not say (see [`TokenizerKind::infer`]).
    pub tokenizer: Option<TokenizerKind>,
}

impl GptConfig {
    /// The preset names, in `--help` order.
    pub const PRESETS: [&'static str; 3] = ["tiny", "small", "gpt2"];

    /// `tiny`: 2 blocks of width 32 for fast tests. `small`: L=4, C=256, NH=4, T=256 with the
    /// byte vocabulary (3.29 M parameters). `gpt2`: GPT-2 124M (L=12, C=768, NH=12, T=1024,
    /// V=50257).
    pub fn preset(name: &str) -> Result<GptConfig, ConfigError> {
        let (n_layer, n_embd, n_head, n_positions, tokenizer) = match name {
            "tiny" => (2, 32, 4, 64, TokenizerKind::Byte),
            "small" => (4, 256, 4, 256, TokenizerKind::Byte),
            "gpt2" => (12, 768, 12, 1024, TokenizerKind::Gpt2),
            _ => {
                return Err(ConfigError::UnknownPreset {
                    kind: ModelKind::Gpt,
                    name: name.to_string(),
                });
            }
        };
        Ok(GptConfig {
            n_layer,
            n_embd,
            n_head,
            n_positions,
            vocab_size: tokenizer.vocab_size() as usize,
            tokenizer: Some(tokenizer),
        })
    }

    /// HS: width of one attention head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters: V·C + T·C + L·(12C² + 13C) + 2C.
    pub fn num_params(&self) -> usize {
        let (c, l) = (self.n_embd, self.n_layer);
        self.vocab_size * c + self.n_positions * c + l * (12 * c * c + 13 * c) + 2 * c
    }

    /// [`Self::num_params`] without overflow (saturating), for sizes not yet validated.
    pub fn num_params_u128(&self) -> u128 {
        let (c, l) = (Sat(self.n_embd as u128), Sat(self.n_layer as u128));
        let (v, t) = (Sat(self.vocab_size as u128), Sat(self.n_positions as u128));
        (v * c + t * c + l * (Sat(12) * c * c + Sat(13) * c) + Sat(2) * c).0
    }

    /// Floats of activations and backward scratch for `bt` = B·T positions, as `Gpt`
    /// allocates them: L·(16C + NH + 4) + 16C + V + 3 per position (saturating).
    pub fn activation_floats(&self, bt: usize) -> u128 {
        let (c, l) = (Sat(self.n_embd as u128), Sat(self.n_layer as u128));
        let (nh, v) = (Sat(self.n_head as u128), Sat(self.vocab_size as u128));
        (Sat(bt as u128) * (l * (Sat(16) * c + nh + Sat(4)) + Sat(16) * c + v + Sat(3))).0
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                return Err(invalid(field, value, "must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(invalid(
                "n_head",
                self.n_head,
                format!("must divide n_embd = {}", self.n_embd),
            ));
        }
        let params = self.num_params_u128();
        if params > (isize::MAX as u128) / 8 {
            return Err(ConfigError::TooLarge {
                sizes: format!(
                    "n_layer {}, n_embd {}, n_positions {}",
                    self.n_layer, self.n_embd, self.n_positions
                ),
                params,
            });
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(invalid("vocab_size", self.vocab_size, "token ids are u32"));
        }
        check_tokenizer(self.tokenizer, self.vocab_size)
    }

    /// The end-of-sequence (and beginning-of-sequence) id of the tokenizer, if known.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.tokenizer.map(TokenizerKind::eos_id)
    }

    /// `config.json` as `transformers.GPT2Config` writes it, plus Lanes' `tokenizer`.
    pub fn to_json(&self) -> Value {
        json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": LAYER_NORM_EPS,
            "tie_word_embeddings": true,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "add_cross_attention": false,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": self.eos_token_id(),
            "eos_token_id": self.eos_token_id(),
            "use_cache": true,
            "dtype": "float32",
            "tokenizer": self.tokenizer.map(TokenizerKind::name),
        })
    }

    /// Reads a GPT-2 `config.json` (Lanes' or Hugging Face's). Fields that only matter to
    /// training in PyTorch (dropout, initializer range, summary heads) are ignored; every
    /// field that changes the forward pass must have the value Lanes implements. A missing
    /// `tokenizer` is inferred by [`TokenizerKind::infer`] (Hugging Face's GPT-2 → `gpt2`).
    pub fn from_json(v: &Value) -> Result<GptConfig, ConfigError> {
        let obj = v
            .as_object()
            .ok_or_else(|| invalid("(root)", v, "expected a JSON object"))?;
        let get = |f: &'static str| obj.get(f).filter(|x| !x.is_null());
        let size = |f: &'static str| -> Result<usize, ConfigError> {
            let x = get(f).ok_or(ConfigError::Missing { field: f })?;
            x.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| invalid(f, x, "expected a non-negative integer"))
        };
        match get("model_type") {
            Some(Value::String(s)) if s == "gpt2" => {}
            Some(other) => return Err(invalid("model_type", other, "expected \"gpt2\"")),
            None => {
                return Err(ConfigError::Missing {
                    field: "model_type",
                });
            }
        }
        let n_embd = size("n_embd")?;
        let vocab_size = size("vocab_size")?;
        if let Some(x) = get("n_inner")
            && x.as_u64() != Some(4 * n_embd as u64)
        {
            return Err(invalid("n_inner", x, "Lanes' MLP is 4·n_embd wide"));
        }
        if let Some(x) = get("layer_norm_epsilon")
            && x.as_f64().is_none_or(|e| (e - 1e-5).abs() > 1e-12)
        {
            return Err(invalid("layer_norm_epsilon", x, "Lanes uses 1e-5"));
        }
        if let Some(x) = get("activation_function")
            && !matches!(x.as_str(), Some("gelu_new" | "gelu_pytorch_tanh"))
        {
            return Err(invalid(
                "activation_function",
                x,
                "Lanes implements GELU's tanh approximation (\"gelu_new\")",
            ));
        }
        for (field, want, reason) in [
            (
                "tie_word_embeddings",
                true,
                "the output head is tied to wte",
            ),
            (
                "scale_attn_weights",
                true,
                "attention scores are scaled by 1/√HS",
            ),
            (
                "scale_attn_by_inverse_layer_idx",
                false,
                "no per-layer attention scaling",
            ),
            ("add_cross_attention", false, "no cross-attention"),
        ] {
            if let Some(x) = get(field)
                && x.as_bool() != Some(want)
            {
                return Err(invalid(field, x, format!("must be {want}: {reason}")));
            }
        }
        let tokenizer = tokenizer_field(get("tokenizer"), vocab_size)?;
        for field in ["bos_token_id", "eos_token_id"] {
            if let Some(x) = get(field)
                && x.as_u64().is_none_or(|id| id as usize >= vocab_size)
            {
                return Err(invalid(
                    field,
                    x,
                    format!("must be < vocab_size {vocab_size}"),
                ));
            }
        }
        let cfg = GptConfig {
            n_layer: size("n_layer")?,
            n_embd,
            n_head: size("n_head")?,
            n_positions: size("n_positions")?,
            vocab_size,
            tokenizer,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_sizes() {
        let small = GptConfig::preset("small").unwrap();
        assert_eq!(small.num_params(), 3_290_880);
        let gpt2 = GptConfig::preset("gpt2").unwrap();
        assert_eq!(gpt2.num_params(), 124_439_808); // GPT-2 small, as Hugging Face counts it
        for name in GptConfig::PRESETS {
            GptConfig::preset(name).unwrap().validate().unwrap();
        }
        assert!(GptConfig::preset("huge").is_err());
    }

    #[test]
    fn json_round_trips_and_bad_fields_are_named() {
        let cfg = GptConfig::preset("tiny").unwrap();
        assert_eq!(GptConfig::from_json(&cfg.to_json()).unwrap(), cfg);

        let with = |field: &str, value: Value| {
            let mut j = cfg.to_json();
            j[field] = value;
            GptConfig::from_json(&j).unwrap_err().to_string()
        };
        assert!(with("model_type", json!("bert")).contains("`model_type`"));
        assert!(with("n_head", json!(5)).contains("must divide n_embd = 32"));
        assert!(with("n_layer", json!(-1)).contains("`n_layer`"));
        assert!(with("n_inner", json!(100)).contains("`n_inner`"));
        assert!(with("activation_function", json!("relu")).contains("tanh approximation"));
        assert!(with("tie_word_embeddings", json!(false)).contains("tied"));
        assert!(with("layer_norm_epsilon", json!(1e-6)).contains("1e-5"));
        assert!(with("tokenizer", json!("bpe")).contains("`tokenizer`"));
        assert!(with("vocab_size", json!(300)).contains("byte tokenizer has 257"));
        assert!(with("eos_token_id", json!(257)).contains("`eos_token_id`"));

        let mut j = cfg.to_json();
        j.as_object_mut().unwrap().remove("n_embd");
        let err = GptConfig::from_json(&j).unwrap_err();
        assert_eq!(err, ConfigError::Missing { field: "n_embd" });

        // Hugging Face's own configs have no `tokenizer`: inferred from the vocabulary.
        let mut j = GptConfig::preset("gpt2").unwrap().to_json();
        j.as_object_mut().unwrap().remove("tokenizer");
        assert_eq!(
            GptConfig::from_json(&j).unwrap().tokenizer,
            Some(TokenizerKind::Gpt2)
        );
    }
}
