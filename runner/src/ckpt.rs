//! Opening a checkpoint for `score`, `generate` and `train --resume`: which folder, which
//! architecture, which tokenizer.
//!
//! `--ckpt` may name a run folder (`runs/NAME`, whose checkpoint is `runs/NAME/checkpoint`) or
//! a checkpoint folder itself (`config.json` + `model.safetensors`, e.g. a Hugging Face GPT-2
//! download). The architecture comes from config.json's `model_type` (`gpt2` or
//! `lanes-lstm`). The tokenizer comes from its `tokenizer` field, which Lanes writes; a
//! GPT-2 checkpoint from elsewhere has none, and vocabulary 50257 then means `gpt2`
//! (`model::TokenizerKind::infer`, the rule the models' configs follow); anything else needs
//! `--tokenizer`. Leaves out: checkpoints in other formats (pickles, GGUF).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use model::checkpoint::{self, CONFIG_FILE};
use model::{Tokenizer, TokenizerKind};

/// The checkpoint folder inside a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// A model of either architecture (`model::Net`: `lm()`, `describe()`, the concrete type).
pub use model::Net;
/// `1234567` → `"1,234,567"`.
pub use model::load::thousands;

/// A loaded checkpoint with its tokenizer.
pub struct Loaded {
    pub net: Net,
    /// The folder the weights came from (after resolving a run folder and `.prev`).
    pub dir: PathBuf,
    pub tokenizer: Tokenizer,
}

/// The checkpoint folder `path` names: `path/checkpoint` for a run folder, else `path`.
pub fn checkpoint_dir(path: &Path) -> PathBuf {
    let inner = path.join(CHECKPOINT_DIR);
    if checkpoint::resolve(&inner).is_ok() {
        inner
    } else {
        path.to_path_buf()
    }
}

/// Loads the model at `path` (a run or checkpoint folder) and picks its tokenizer: the
/// config's (its `tokenizer` field, else `gpt2` for vocabulary 50257), else `flag`
/// (`--tokenizer`), which must agree with the config's when both are given.
pub fn open(path: &Path, flag: Option<TokenizerKind>) -> Result<Loaded> {
    let hint = || {
        format!(
            "hint: train one with `runner train --out {}`, or point --ckpt at a folder with {CONFIG_FILE} and model.safetensors",
            path.display()
        )
    };
    let dir = checkpoint::resolve(&checkpoint_dir(path)).with_context(hint)?;
    let config_path = dir.join(CONFIG_FILE);
    checkpoint::read_json(&config_path).with_context(hint)?;
    let corrupt =
        "hint: the checkpoint is damaged or from another program; retrain or re-download it";
    let net = Net::load(&dir).context(corrupt)?;
    let v = net.lm().vocab_size();
    let kind = match (net.tokenizer(), flag) {
        (Some(f), Some(g)) if f != g => bail!(
            "--tokenizer {g} disagrees with the checkpoint's tokenizer {f}; hint: drop --tokenizer"
        ),
        (Some(f), _) => f,
        (None, Some(g)) => g,
        (None, None) if v == TokenizerKind::Gpt2.vocab_size() as usize => TokenizerKind::Gpt2,
        (None, None) => bail!(
            "{} names no tokenizer and its vocabulary ({v}) is not GPT-2's; hint: pass --tokenizer byte or --tokenizer gpt2",
            config_path.display()
        ),
    };
    if kind.vocab_size() as usize != v {
        bail!(
            "the {kind} tokenizer has {} tokens but the model's vocabulary is {v}; hint: pass the --tokenizer the model was trained with",
            kind.vocab_size()
        );
    }
    Ok(Loaded {
        net,
        dir,
        tokenizer: Tokenizer::new(kind),
    })
}

/// How a token looks in a table: printable text as is, control characters and bytes that
/// are not UTF-8 on their own escaped (`\n`, `\x9c`), the end-of-sequence id by its name.
pub fn show_token(tokenizer: &Tokenizer, id: u32) -> String {
    if id == tokenizer.eos_id() {
        return tokenizer.kind().eos_text().to_string();
    }
    let bytes = tokenizer.token_bytes(id).unwrap_or(&[]);
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(3_290_880), "3,290,880");
    }

    #[test]
    fn tokens_show_escaped() {
        let byte = Tokenizer::new(TokenizerKind::Byte);
        assert_eq!(show_token(&byte, b'a' as u32), "a");
        assert_eq!(show_token(&byte, b'\n' as u32), "\\n");
        assert_eq!(show_token(&byte, 0xE2), "\\xe2");
        assert_eq!(show_token(&byte, 256), "<eos>");
    }
}
