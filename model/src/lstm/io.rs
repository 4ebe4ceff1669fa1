//! Loading an LSTM checkpoint: `config.json` and `model.safetensors` in PyTorch's names,
//! every name, shape and dtype checked against the config before anything is allocated.
//! (Saving is `crate::save_checkpoint`, the same for both models.) Leaves out: other formats.

use std::path::Path;

use super::tensors::Layout;
use super::{Lstm, LstmConfig};
use crate::checkpoint::{self, CheckpointError};

impl Lstm {
    /// Loads `dir/config.json` and `dir/model.safetensors` (PyTorch `nn.LSTM` names), checking
    /// every name, shape and dtype against the config. A `dir` that an interrupted save left
    /// without its files is read from the `.prev` copy beside it.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let dir = checkpoint::resolve(dir)?;
        let path = dir.join(checkpoint::CONFIG_FILE);
        let config = LstmConfig::from_json(&checkpoint::read_json(&path)?, &path)?;
        let file = dir.join(checkpoint::MODEL_FILE);
        checkpoint::check_before_loading(
            &file,
            &Layout::new(&config).0,
            |name| Some(name.to_string()),
            config.num_params_u128(),
        )?;
        let mut model = Self::zeros(config);
        checkpoint::read_safetensors(
            &dir.join(checkpoint::MODEL_FILE),
            &model.layout,
            &mut model.params,
            |name| Some(name.to_string()),
        )?;
        Ok(model)
    }
}
