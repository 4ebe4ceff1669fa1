//! Checkpoint directories the Python ecosystem opens as they are.
//!
//! A checkpoint is a directory: `config.json` + `model.safetensors` (f32 tensors named as in
//! Hugging Face GPT-2 or PyTorch `nn.LSTM`, with the `{"format": "pt"}` metadata `transformers`
//! requires), and for resuming `optimizer.safetensors` + `state.json`. This module is the
//! generic part: named-tensor I/O checked against a [`ParamLayout`], JSON files, and writing a
//! whole directory atomically. Each model maps its own names and config fields. Leaves out:
//! sharded (multi-file) safetensors and dtypes other than f32.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::params::ParamLayout;

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";

/// What can be wrong with a checkpoint; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a checkpoint directory (no {CONFIG_FILE} and {MODEL_FILE})")]
    NotACheckpoint { path: PathBuf },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, the config implies {expected:?}")]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` is {got}, only F32 is supported")]
    WrongDtype {
        path: PathBuf,
        name: String,
        got: String,
    },
    #[error("{path}: unexpected tensor `{name}` (does the config match the weights?)")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
}

type Result<T> = std::result::Result<T, CheckpointError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes every tensor of `layout` from the flat `data` to a safetensors file.
pub fn write_safetensors(path: &Path, layout: &ParamLayout, data: &[f32]) -> Result<()> {
    assert_eq!(
        data.len(),
        layout.len(),
        "write_safetensors: data does not match the layout"
    );
    let views = layout
        .tensors()
        .iter()
        .map(|t| {
            let bytes: &[u8] = bytemuck::cast_slice(&data[t.range()]);
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytes)
                .expect("a layout tensor is a valid safetensors view");
            (t.name.clone(), view)
        })
        .collect::<Vec<_>>();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CheckpointError::Safetensors {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}

/// Reads a safetensors file into the flat `data` according to `layout`.
///
/// `rename` maps each name in the file to a layout name, or to `None` for tensors to skip
/// (e.g. GPT-2's `attn.bias` mask buffers or a tied `lm_head.weight`). Every layout tensor
/// must appear exactly once with the same shape and dtype F32; any other tensor is an error.
pub fn read_safetensors(
    path: &Path,
    layout: &ParamLayout,
    data: &mut [f32],
    rename: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    assert_eq!(
        data.len(),
        layout.len(),
        "read_safetensors: data does not match the layout"
    );
    let bytes = fs::read(path).map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut seen = HashSet::new();
    for (file_name, view) in st.tensors() {
        let Some(name) = rename(&file_name) else {
            continue;
        };
        let spec = layout
            .get(&name)
            .ok_or_else(|| CheckpointError::UnexpectedTensor {
                path: path.to_path_buf(),
                name: file_name.clone(),
            })?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                path: path.to_path_buf(),
                name: file_name,
                got: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != spec.shape.as_slice() {
            return Err(CheckpointError::WrongShape {
                path: path.to_path_buf(),
                name: file_name,
                expected: spec.shape.clone(),
                got: view.shape().to_vec(),
            });
        }
        // The file's bytes need not be 4-aligned: copy little-endian floats out one by one.
        for (dst, src) in data[spec.range()]
            .iter_mut()
            .zip(view.data().chunks_exact(4))
        {
            *dst = f32::from_le_bytes(src.try_into().unwrap());
        }
        seen.insert(name);
    }
    if let Some(missing) = layout.tensors().iter().find(|t| !seen.contains(&t.name)) {
        return Err(CheckpointError::MissingTensor {
            path: path.to_path_buf(),
            name: missing.name.clone(),
        });
    }
    Ok(())
}

/// Writes `value` as pretty-printed JSON.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    fs::write(path, text + "\n").map_err(io_err(path))
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "checkpoint".into());
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes a checkpoint directory so that a crash at any moment leaves either the previous
/// complete checkpoint or the new one: `write` fills `DIR.tmp`, then the old `DIR` is moved to
/// `DIR.prev`, `DIR.tmp` is renamed to `DIR`, and `DIR.prev` is removed. [`resolve`] finds
/// `DIR.prev` if a crash hit between the two renames.
pub fn save_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    let prev = sibling(dir, ".prev");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    write(&tmp)?;
    for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        let path = entry.map_err(io_err(&tmp))?.path();
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path))?;
    }
    if dir.exists() {
        if prev.exists() {
            fs::remove_dir_all(&prev).map_err(io_err(&prev))?;
        }
        fs::rename(dir, &prev).map_err(io_err(dir))?;
    }
    fs::rename(&tmp, dir).map_err(io_err(&tmp))?;
    if prev.exists() {
        fs::remove_dir_all(&prev).map_err(io_err(&prev))?;
    }
    Ok(())
}

/// The checkpoint directory to load for `dir`: `dir` itself if it holds a checkpoint, else the
/// `.prev` copy an interrupted [`save_atomically`] left behind.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    let complete = |d: &Path| d.join(CONFIG_FILE).is_file() && d.join(MODEL_FILE).is_file();
    if complete(dir) {
        return Ok(dir.to_path_buf());
    }
    let prev = sibling(dir, ".prev");
    if complete(&prev) {
        return Ok(prev);
    }
    Err(CheckpointError::NotACheckpoint {
        path: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        let mut l = ParamLayout::new();
        l.push("w", &[2, 3]);
        l.push("b", &[3]);
        l
    }

    #[test]
    fn tensors_round_trip_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        let l = layout();
        let data: Vec<f32> = (0..9).map(|i| i as f32 * 0.5).collect();
        write_safetensors(&path, &l, &data).unwrap();
        let mut back = vec![0.0; 9];
        read_safetensors(&path, &l, &mut back, |n| Some(n.to_string())).unwrap();
        assert_eq!(back, data);

        let mut wrong = ParamLayout::new();
        wrong.push("w", &[3, 2]);
        wrong.push("b", &[3]);
        let err = read_safetensors(&path, &wrong, &mut back, |n| Some(n.to_string())).unwrap_err();
        assert!(
            matches!(err, CheckpointError::WrongShape { ref name, .. } if name == "w"),
            "{err}"
        );

        let mut more = layout();
        more.push("extra", &[1]);
        let mut buf = vec![0.0; 10];
        let err = read_safetensors(&path, &more, &mut buf, |n| Some(n.to_string())).unwrap_err();
        assert!(
            matches!(err, CheckpointError::MissingTensor { ref name, .. } if name == "extra"),
            "{err}"
        );

        let skip_b = |n: &str| (n != "b").then(|| n.to_string());
        let err = read_safetensors(&path, &l, &mut back, skip_b).unwrap_err();
        assert!(err.to_string().contains("`b` is missing"), "{err}");

        fs::write(&path, b"not safetensors").unwrap();
        let err = read_safetensors(&path, &l, &mut back, |n| Some(n.to_string())).unwrap_err();
        assert!(matches!(err, CheckpointError::Safetensors { .. }), "{err}");
        assert!(err.to_string().contains(MODEL_FILE));
    }

    #[test]
    fn atomic_save_replaces_and_a_half_done_swap_is_recovered() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let save = |v: u64| {
            save_atomically(&dir, |tmp| {
                write_json(&tmp.join(CONFIG_FILE), &serde_json::json!({ "v": v }))?;
                write_safetensors(&tmp.join(MODEL_FILE), &layout(), &[v as f32; 9])
            })
        };
        save(1).unwrap();
        save(2).unwrap();
        assert_eq!(
            read_json(&resolve(&dir).unwrap().join(CONFIG_FILE)).unwrap()["v"],
            2
        );
        assert!(!sibling(&dir, ".prev").exists() && !sibling(&dir, ".tmp").exists());

        // A crash after moving the old checkpoint aside but before the rename of the new one.
        fs::rename(&dir, sibling(&dir, ".prev")).unwrap();
        assert_eq!(resolve(&dir).unwrap(), sibling(&dir, ".prev"));
        // A failed write leaves the previous checkpoint untouched.
        let failed = save_atomically(&dir, |tmp| {
            Err(CheckpointError::Config {
                path: tmp.to_path_buf(),
                message: "boom".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(
            read_json(&resolve(&dir).unwrap().join(CONFIG_FILE)).unwrap()["v"],
            2
        );
        assert!(resolve(&root.path().join("nothing")).is_err());
    }
}
