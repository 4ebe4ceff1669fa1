//! Whole checkpoints, whatever the model: save a model (and, for resuming, its optimizer and
//! the trainer's state) as one directory, and load it back as a `dyn LanguageModel` chosen by
//! the `model_type` in its config.json.
//!
//! A directory holds `config.json` + `model.safetensors` (enough for `score` and `generate`,
//! and for PyTorch / `transformers` to open), plus for resuming `optimizer.safetensors` and
//! `state.json` = the trainer's JSON object with the optimizer's kind, hyperparameters and
//! step under `"optimizer"`. Writes are atomic (`checkpoint::save_atomically`); loads fall
//! back to the `.prev` copy an interrupted save leaves. Leaves out: sharded weights.

use std::path::Path;

use crate::checkpoint::{self, CheckpointError};
use crate::gpt::Gpt;
use crate::lm::LanguageModel;
use crate::lstm::{self, Lstm};
use crate::optim::Optimizer;
use crate::params::ParamLayout;

/// A model of either architecture, owned: for callers that need the concrete type for what
/// only one has (the transformer's attention maps, the LSTM's carried state).
#[allow(clippy::large_enum_variant)] // one per process: boxing would only add a hop
pub enum Net {
    Gpt(Gpt),
    Lstm(Lstm),
}

impl Net {
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

/// Loads the model in checkpoint directory `dir` (or the `.prev` copy an interrupted save
/// left), dispatching on config.json's `model_type`: `"gpt2"` → [`Gpt`], Hugging Face's
/// GPT-2 checkpoints included; `"lanes-lstm"` → [`Lstm`]. The one loader: `runner`'s
/// `score`, `generate` and `train --resume` and [`load_checkpoint`] all come here.
pub fn load_net(dir: &Path) -> Result<Net, CheckpointError> {
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

/// [`load_net`] behind the common interface.
pub fn load_checkpoint(dir: &Path) -> Result<Box<dyn LanguageModel>, CheckpointError> {
    load_net(dir).map(Net::into_lm)
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
