//! One model API over both architectures, and whole checkpoints, whatever the model.
//!
//! [`NetConfig`] is an architecture and its size before any weight exists
//! ([`NetConfig::preset`]`(kind, name, tokenizer)`); [`Net`] is a model of either architecture
//! ([`Net::new`], [`Net::load`], [`Net::save`]), behind the common [`LanguageModel`] interface
//! or as its concrete type. A model saves (and, for resuming, its optimizer and the trainer's
//! state) as one directory, and loads back as the type the `model_type` in its config.json
//! names.
//!
//! A directory holds `config.json` + `model.safetensors` (enough for `score` and `generate`,
//! and for PyTorch / `transformers` to open), plus for resuming `optimizer.safetensors` and
//! `state.json` = the trainer's JSON object with the optimizer's kind, hyperparameters and
//! step under `"optimizer"`. Writes are atomic (`checkpoint::save_atomically`); loads fall
//! back to the `.prev` copy an interrupted save leaves. Leaves out: sharded weights.

use std::path::Path;

use crate::checkpoint::{self, CheckpointError};
use crate::gpt::{Gpt, GptConfig};
use crate::lm::{ConfigError, LanguageModel, ModelKind};
use crate::lstm::{self, Lstm, LstmConfig};
use crate::optim::Optimizer;
use crate::params::ParamLayout;
use crate::tokenizer::TokenizerKind;

/// An architecture and its size, before any weight exists: what [`Net::new`] builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetConfig {
    Gpt(GptConfig),
    Lstm(LstmConfig),
}

impl NetConfig {
    /// The preset `name` of architecture `kind` ([`ModelKind::presets`]) for `tokenizer`'s
    /// vocabulary, or [`ConfigError::UnknownPreset`].
    pub fn preset(
        kind: ModelKind,
        name: &str,
        tokenizer: TokenizerKind,
    ) -> Result<NetConfig, ConfigError> {
        match kind {
            ModelKind::Gpt => Ok(NetConfig::Gpt(GptConfig {
                vocab_size: tokenizer.vocab_size() as usize,
                tokenizer: Some(tokenizer),
                ..GptConfig::preset(name)?
            })),
            ModelKind::Lstm => LstmConfig::preset(name, tokenizer).map(NetConfig::Lstm),
        }
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            NetConfig::Gpt(_) => ModelKind::Gpt,
            NetConfig::Lstm(_) => ModelKind::Lstm,
        }
    }

    /// The tokenizer the vocabulary comes from, if known.
    pub fn tokenizer(&self) -> Option<TokenizerKind> {
        match self {
            NetConfig::Gpt(c) => c.tokenizer,
            NetConfig::Lstm(c) => c.tokenizer,
        }
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            NetConfig::Gpt(c) => c.validate(),
            NetConfig::Lstm(c) => c.validate(),
        }
    }

    /// The model's `config.json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            NetConfig::Gpt(c) => c.to_json(),
            NetConfig::Lstm(c) => c.to_json(),
        }
    }

    /// Parameter count, without overflow for sizes not yet validated.
    pub fn num_params_u128(&self) -> u128 {
        match self {
            NetConfig::Gpt(c) => c.num_params_u128(),
            NetConfig::Lstm(c) => c.num_params_u128(),
        }
    }

    /// Floats of activations and scratch a (B, T) forward and backward allocate (saturating).
    pub fn activation_floats(&self, b: usize, t: usize) -> u128 {
        match self {
            NetConfig::Gpt(c) => c.activation_floats(b.saturating_mul(t)),
            NetConfig::Lstm(c) => c.activation_floats(b, t),
        }
    }
}

/// A model of either architecture, owned: for callers that need the concrete type for what
/// only one has (the transformer's attention maps, the LSTM's carried state).
#[allow(clippy::large_enum_variant)] // one per process: boxing would only add a hop
pub enum Net {
    Gpt(Gpt),
    Lstm(Lstm),
}

impl Net {
    /// A freshly initialized model (weights drawn from `seed`), after checking `config`.
    pub fn new(config: NetConfig, seed: u64) -> Result<Net, ConfigError> {
        config.validate()?;
        match config {
            NetConfig::Gpt(c) => Gpt::new(c, seed).map(Net::Gpt),
            NetConfig::Lstm(c) => Ok(Net::Lstm(Lstm::new(c, seed))),
        }
    }

    /// [`Net::new`] on [`NetConfig::preset`]: the preset `name` of architecture `kind` for
    /// `tokenizer`'s vocabulary.
    pub fn preset(
        kind: ModelKind,
        name: &str,
        tokenizer: TokenizerKind,
        seed: u64,
    ) -> Result<Net, ConfigError> {
        Net::new(NetConfig::preset(kind, name, tokenizer)?, seed)
    }

    /// Loads the model in checkpoint directory `dir` (or the `.prev` copy an interrupted save
    /// left), dispatching on config.json's `model_type`: `"gpt2"` → [`Gpt`], Hugging Face's
    /// GPT-2 checkpoints included; `"lanes-lstm"` → [`Lstm`]. The one loader: `runner`'s
    /// `score`, `generate` and `train --resume` and [`load_checkpoint`] all come here.
    pub fn load(dir: &Path) -> Result<Net, CheckpointError> {
        let dir = checkpoint::resolve(dir)?;
        let path = dir.join(checkpoint::CONFIG_FILE);
        let config = checkpoint::read_json(&path)?;
        match config.get("model_type").and_then(|t| t.as_str()) {
            Some("gpt2") => Ok(Net::Gpt(Gpt::load(&dir)?)),
            Some(lstm::MODEL_TYPE) => Ok(Net::Lstm(Lstm::load(&dir)?)),
            other => Err(CheckpointError::Config {
                path,
                message: format!(
                    "unknown model_type {other:?}: neither \"gpt2\" nor \"{}\"",
                    lstm::MODEL_TYPE
                ),
            }),
        }
    }

    /// Writes the model to checkpoint directory `dir`, atomically ([`save_checkpoint`], which
    /// also describes `resume`).
    pub fn save(
        &self,
        dir: &Path,
        resume: Option<(&Optimizer, &serde_json::Value)>,
    ) -> Result<(), CheckpointError> {
        save_checkpoint(dir, self.lm(), resume)
    }

    /// The model's configuration.
    pub fn config(&self) -> NetConfig {
        match self {
            Net::Gpt(m) => NetConfig::Gpt(m.config().clone()),
            Net::Lstm(m) => NetConfig::Lstm(m.config().clone()),
        }
    }

    /// The tokenizer the model's vocabulary comes from, if its config says (or
    /// [`TokenizerKind::infer`] could tell).
    pub fn tokenizer(&self) -> Option<TokenizerKind> {
        match self {
            Net::Gpt(m) => m.config().tokenizer,
            Net::Lstm(m) => m.config().tokenizer,
        }
    }

    pub fn lm(&self) -> &dyn LanguageModel {
        match self {
            Net::Gpt(m) => m,
            Net::Lstm(m) => m,
        }
    }

    pub fn lm_mut(&mut self) -> &mut dyn LanguageModel {
        match self {
            Net::Gpt(m) => m,
            Net::Lstm(m) => m,
        }
    }

    /// The model behind the common interface, owned.
    pub fn into_lm(self) -> Box<dyn LanguageModel> {
        match self {
            Net::Gpt(m) => Box::new(m),
            Net::Lstm(m) => Box::new(m),
        }
    }

    /// "GPT, 3,290,880 parameters (L=4, C=256, NH=4, T=256, V=257)": what the model is, in
    /// one line.
    pub fn describe(&self) -> String {
        let n = thousands(self.lm().layout().len() as u64);
        match self {
            Net::Gpt(m) => {
                let c = m.config();
                format!(
                    "GPT, {n} parameters (L={}, C={}, NH={}, T={}, V={})",
                    c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size
                )
            }
            Net::Lstm(m) => {
                let c = m.config();
                format!(
                    "LSTM, {n} parameters (L={}, H={}, V={})",
                    c.num_layers, c.hidden_size, c.vocab_size
                )
            }
        }
    }
}

/// `1234567` → `"1,234,567"`: how counts read in descriptions and reports.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// [`Net::load`] behind the common interface.
pub fn load_checkpoint(dir: &Path) -> Result<Box<dyn LanguageModel>, CheckpointError> {
    Net::load(dir).map(Net::into_lm)
}

/// Writes `model` to checkpoint directory `dir`, atomically. With `resume`, also the
/// optimizer's moments (`optimizer.safetensors`) and `state.json`: the trainer's JSON object
/// (step, data position, seeds…) with the optimizer's state added under `"optimizer"`.
pub fn save_checkpoint(
    dir: &Path,
    model: &dyn LanguageModel,
    resume: Option<(&Optimizer, &serde_json::Value)>,
) -> Result<(), CheckpointError> {
    checkpoint::save_atomically(dir, |tmp| {
        checkpoint::write_json(&tmp.join(checkpoint::CONFIG_FILE), &model.config_json())?;
        checkpoint::write_safetensors(
            &tmp.join(checkpoint::MODEL_FILE),
            model.layout(),
            model.params(),
        )?;
        if let Some((optimizer, trainer)) = resume {
            let mut state = match trainer {
                serde_json::Value::Object(o) => o.clone(),
                serde_json::Value::Null => serde_json::Map::new(),
                other => {
                    panic!("save_checkpoint: trainer state must be a JSON object, got {other}")
                }
            };
            state.insert("optimizer".into(), optimizer.state_json());
            checkpoint::write_json(&tmp.join(checkpoint::STATE_FILE), &state.into())?;
            optimizer.write_state(&tmp.join(checkpoint::OPTIMIZER_FILE))?;
        }
        Ok(())
    })
}

/// The resume state in checkpoint directory `dir` for a model laid out as `layout`: the
/// optimizer and the trainer's JSON (state.json without `"optimizer"`), or `None` if the
/// directory holds only a model.
pub fn load_resume(
    dir: &Path,
    layout: &ParamLayout,
) -> Result<Option<(Optimizer, serde_json::Value)>, CheckpointError> {
    let dir = checkpoint::resolve(dir)?;
    let path = dir.join(checkpoint::STATE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let mut state = checkpoint::read_json(&path)?;
    let opt_json = state
        .as_object_mut()
        .and_then(|o| o.remove("optimizer"))
        .ok_or_else(|| CheckpointError::Config {
            path: path.clone(),
            message: "no `optimizer` entry: not a resumable checkpoint".into(),
        })?;
    let optimizer = Optimizer::read_state(
        &opt_json,
        &path,
        &dir.join(checkpoint::OPTIMIZER_FILE),
        layout,
    )?;
    Ok(Some((optimizer, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both architectures through the one API: a preset for a tokenizer, built, saved and
    /// loaded back as the same type with the same weights and tokenizer.
    #[test]
    fn presets_build_save_and_load_either_architecture() {
        let root = tempfile::tempdir().unwrap();
        for kind in [ModelKind::Gpt, ModelKind::Lstm] {
            let config = NetConfig::preset(kind, "tiny", TokenizerKind::Byte).unwrap();
            assert_eq!(config.kind(), kind);
            assert_eq!(config.tokenizer(), Some(TokenizerKind::Byte));
            let net = Net::new(config.clone(), 3).unwrap();
            assert_eq!(net.config(), config);
            assert_eq!(net.lm().vocab_size(), 257);
            let dir = root.path().join(kind.name());
            net.save(&dir, None).unwrap();
            let back = Net::load(&dir).unwrap();
            assert_eq!(back.config(), config);
            assert_eq!(back.lm().kind(), kind);
            assert_eq!(back.tokenizer(), Some(TokenizerKind::Byte));
            assert_eq!(back.lm().params(), net.lm().params());
            let e = NetConfig::preset(kind, "huge", TokenizerKind::Byte).unwrap_err();
            assert_eq!(
                e,
                ConfigError::UnknownPreset {
                    kind,
                    name: "huge".into()
                }
            );
        }
        // The tokenizer sets the vocabulary, whatever the preset's own.
        let gpt = NetConfig::preset(ModelKind::Gpt, "small", TokenizerKind::Gpt2).unwrap();
        assert_eq!(
            Net::new(gpt, 0).unwrap().lm().vocab_size(),
            TokenizerKind::Gpt2.vocab_size() as usize
        );
        // A config that breaks an invariant is refused before anything is allocated.
        let NetConfig::Lstm(lstm) =
            NetConfig::preset(ModelKind::Lstm, "tiny", TokenizerKind::Byte).unwrap()
        else {
            unreachable!()
        };
        let zero = NetConfig::Lstm(LstmConfig {
            hidden_size: 0,
            ..lstm
        });
        let e = Net::new(zero, 0).err().unwrap().to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
