//! The transformer's checkpoints: Hugging Face GPT-2 directories, read and written.
//!
//! Writes `config.json` ([`GptConfig::to_json`]) and `model.safetensors` with the tensors of
//! [`super::tensors::layout`] under their `transformer.`-prefixed names, which
//! `GPT2LMHeadModel.from_pretrained` opens. Reads Lanes' own checkpoints and Hugging Face's:
//! names with or without the `transformer.` prefix (`GPT2LMHeadModel` vs `GPT2Model`), the
//! causal-mask buffers `h.N.attn.bias` / `h.N.attn.masked_bias` that older `transformers` saved
//! are skipped, and so is a stored `lm_head.weight` (tied to `wte`). Leaves out: sharded
//! checkpoints, f16/bf16 weights, PyTorch pickles (`pytorch_model.bin`).

use std::path::Path;

use super::tensors::PREFIX;
use super::{Gpt, GptConfig};
use crate::checkpoint::{
    self, CONFIG_FILE, CheckpointError, MODEL_FILE, read_json, read_safetensors,
};

/// The layout name of a tensor named `name` in a GPT-2 safetensors file, `None` to skip it.
fn layout_name(name: &str) -> Option<String> {
    if name == "lm_head.weight" {
        return None;
    }
    let bare = name.strip_prefix(PREFIX).unwrap_or(name);
    let parts: Vec<&str> = bare.split('.').collect();
    if let ["h", _, "attn", "bias" | "masked_bias"] = parts[..] {
        return None;
    }
    Some(format!("{PREFIX}{bare}"))
}

impl Gpt {
    /// Loads a checkpoint directory (Lanes' or Hugging Face's `save_pretrained` output); an
    /// interrupted save's `.prev` copy is found (see [`checkpoint::resolve`]). Errors name the
    /// file and the config field or tensor that is wrong.
    pub fn load(dir: &Path) -> Result<Gpt, CheckpointError> {
        let dir = checkpoint::resolve(dir)?;
        let config_path = dir.join(CONFIG_FILE);
        let config_err = |e: super::ConfigError| CheckpointError::Config {
            path: config_path.clone(),
            message: e.to_string(),
        };
        let config = GptConfig::from_json(&read_json(&config_path)?).map_err(config_err)?;
        config.validate().map_err(config_err)?;
        checkpoint::check_before_loading(
            &dir.join(MODEL_FILE),
            &super::tensors::layout(&config),
            layout_name,
            config.num_params_u128(),
        )?;
        let mut model = Gpt::zeroed(config).map_err(config_err)?;
        read_safetensors(
            &dir.join(MODEL_FILE),
            &model.layout,
            &mut model.params,
            layout_name,
        )?;
        Ok(model)
    }

    /// Saves the model to `dir` atomically: [`crate::save_checkpoint`] without training
    /// state.
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        crate::save_checkpoint(dir, self, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_the_layout() {
        let name = |n: &str| layout_name(n);
        assert_eq!(
            name("transformer.wte.weight").unwrap(),
            "transformer.wte.weight"
        );
        assert_eq!(
            name("h.3.attn.c_attn.bias").unwrap(),
            "transformer.h.3.attn.c_attn.bias"
        );
        assert_eq!(name("transformer.h.0.attn.bias"), None);
        assert_eq!(name("h.11.attn.masked_bias"), None);
        assert_eq!(name("lm_head.weight"), None);
        assert_eq!(name("ln_f.bias").unwrap(), "transformer.ln_f.bias");
    }
}
