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
    #[error("{path}: {source}")]
    Memory {
        path: PathBuf,
        source: crate::memory::OutOfMemory,
    },
    #[error(
        "{path}: tensor `{name}` holds {value} at flat index {index}; a model with non-finite weights computes only NaN"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
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
    // safetensors writes a private (0600) temporary file and renames it into place; give the
    // result the permissions of a file created here, which follow the umask as the JSON
    // files' do.
    let permissions = fs::File::create(path)
        .and_then(|f| f.metadata())
        .map_err(io_err(path))?
        .permissions();
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CheckpointError::Safetensors {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })?;
    fs::set_permissions(path, permissions).map_err(io_err(path))
}

/// What a safetensors parse error means, in words a user can act on.
fn safetensors_message(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "its size does not match its header (the tensors the header \
             lists do not end where the file does): the file is truncated or has bytes appended, \
             e.g. an interrupted copy or download"
                .to_string()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            "it is too short to hold a safetensors header (an empty or cut file?)".to_string()
        }
        other => other.to_string(),
    }
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
        message: safetensors_message(&e),
    })?;
    let mut seen = HashSet::new();
    for (file_name, view) in st.tensors() {
        let Some(name) = rename(&file_name) else {
            continue;
        };
        let dtype = format!("{:?}", view.dtype());
        let spec = check_tensor(path, layout, &file_name, &name, &dtype, view.shape())?;
        // The file's bytes need not be 4-aligned: copy little-endian floats out one by one.
        let dst = &mut data[spec.range()];
        for (dst, src) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes(src.try_into().unwrap());
        }
        if let Some(index) = first_non_finite(dst) {
            return Err(CheckpointError::NonFinite {
                path: path.to_path_buf(),
                name: file_name,
                index,
                value: dst[index],
            });
        }
        seen.insert(name);
    }
    check_all_present(path, layout, &seen)
}

/// The layout's tensor for `file_name` (renamed `name`), if the file's dtype and shape match.
fn check_tensor<'l>(
    path: &Path,
    layout: &'l ParamLayout,
    file_name: &str,
    name: &str,
    dtype: &str,
    shape: &[usize],
) -> Result<&'l crate::params::TensorSpec> {
    let spec = layout
        .get(name)
        .ok_or_else(|| CheckpointError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: file_name.to_string(),
        })?;
    if dtype != format!("{:?}", Dtype::F32) {
        return Err(CheckpointError::WrongDtype {
            path: path.to_path_buf(),
            name: file_name.to_string(),
            got: dtype.to_string(),
        });
    }
    if shape != spec.shape.as_slice() {
        return Err(CheckpointError::WrongShape {
            path: path.to_path_buf(),
            name: file_name.to_string(),
            expected: spec.shape.clone(),
            got: shape.to_vec(),
        });
    }
    Ok(spec)
}

fn check_all_present(path: &Path, layout: &ParamLayout, seen: &HashSet<String>) -> Result<()> {
    if let Some(missing) = layout.tensors().iter().find(|t| !seen.contains(&t.name)) {
        return Err(CheckpointError::MissingTensor {
            path: path.to_path_buf(),
            name: missing.name.clone(),
        });
    }
    Ok(())
}

/// Checks a safetensors file against `layout` from its header alone, and the memory a model
/// of `params` parameters takes to load (weights, gradients and the file's bytes) against
/// what is available — before anything of the model's size is allocated, so a config.json
/// whose sizes disagree with the weights (`n_positions: 1000000000`) or exceed the machine
/// is an error naming the file, not an allocation abort. `rename` as in [`read_safetensors`].
pub fn check_before_loading(
    path: &Path,
    layout: &ParamLayout,
    rename: impl Fn(&str) -> Option<String>,
    params: u128,
) -> Result<()> {
    use std::io::Read;
    let bad = |message: String| CheckpointError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        bad("it is too short to hold a safetensors header (an empty or cut file?)".into())
    })?;
    let header_len = u64::from_le_bytes(len);
    if header_len > file_len - 8 || header_len > 100 << 20 {
        return Err(bad(format!(
            "its header claims {header_len} bytes in a file of {file_len}: not a safetensors file, or a cut one"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io_err(path))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("its header is not a JSON object: {e}")))?;
    let mut seen = HashSet::new();
    for (file_name, entry) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let Some(name) = rename(file_name) else {
            continue;
        };
        let dtype = entry["dtype"].as_str().unwrap_or("(none)");
        let shape: Option<Vec<usize>> = entry["shape"].as_array().and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect()
        });
        let shape = shape.ok_or_else(|| bad(format!("tensor `{file_name}` has no valid shape")))?;
        check_tensor(path, layout, file_name, &name, dtype, &shape)?;
        seen.insert(name);
    }
    check_all_present(path, layout, &seen)?;
    crate::memory::ensure_fits(
        format!("loading {params} parameters (weights, gradients, the file)"),
        crate::memory::f32_bytes(3 * params),
    )
    .map_err(|source| CheckpointError::Memory {
        path: path.to_path_buf(),
        source,
    })
}

/// The index of the first NaN or infinity in `data`, if any. Scans blocks with a branch-free
/// OR of "exponent bits all set" (which the compiler vectorizes), and looks inside a block
/// only when it holds one: about a memory read's cost (GPT-2 124M: tens of milliseconds).
pub fn first_non_finite(data: &[f32]) -> Option<usize> {
    const BLOCK: usize = 4096;
    const EXPONENT: u32 = 0x7f80_0000;
    data.chunks(BLOCK).enumerate().find_map(|(b, block)| {
        let any = block.iter().fold(0u32, |acc, x| {
            acc | u32::from(x.to_bits() & EXPONENT == EXPONENT)
        });
        if any == 0 {
            return None;
        }
        block
            .iter()
            .position(|x| !x.is_finite())
            .map(|i| b * BLOCK + i)
    })
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

/// Writes a checkpoint directory so that a crash or power loss at any moment leaves either
/// the previous complete checkpoint or the new one: `write` fills `DIR.tmp`, its files and
/// the folder itself are synced to disk, then the old `DIR` is moved to `DIR.prev`, `DIR.tmp`
/// is renamed to `DIR`, and the parent folder is synced so the renames are on disk too
/// (as SQLite and PostgreSQL do: a rename is durable only once its directory is synced);
/// then `DIR.prev` is removed. [`resolve`] finds `DIR.prev` if a crash hit between the two
/// renames. A failed `write` (a full disk) leaves `DIR` as it was.
pub fn save_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    let prev = sibling(dir, ".prev");
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    write(&tmp)?;
    for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
        sync(&entry.map_err(io_err(&tmp))?.path())?;
    }
    sync_dir(&tmp)?;
    if dir.exists() {
        if prev.exists() {
            fs::remove_dir_all(&prev).map_err(io_err(&prev))?;
        }
        fs::rename(dir, &prev).map_err(io_err(dir))?;
    }
    fs::rename(&tmp, dir).map_err(io_err(&tmp))?;
    sync_dir(parent)?;
    if prev.exists() {
        fs::remove_dir_all(&prev).map_err(io_err(&prev))?;
        sync_dir(parent)?;
    }
    Ok(())
}

/// Flushes a file's data and metadata to the disk (`fsync`).
fn sync(path: &Path) -> Result<()> {
    #[cfg(test)]
    tests::SYNCED.with(|s| s.borrow_mut().push(path.to_path_buf()));
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Flushes a directory's entries (created, renamed, removed files) to the disk. Unix only:
/// Windows cannot open a directory as a file, and its renames are journaled by NTFS.
fn sync_dir(path: &Path) -> Result<()> {
    if cfg!(unix) { sync(path) } else { Ok(()) }
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
    use std::cell::RefCell;

    thread_local! {
        /// Every path [`sync`] flushed on this thread, in order.
        pub(super) static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

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

#[cfg(test)]
mod durability_tests {
    use super::tests::SYNCED;
    use super::*;

    fn layout() -> ParamLayout {
        let mut l = ParamLayout::new();
        l.push("w", &[2, 3]);
        l
    }

    #[test]
    fn a_save_syncs_its_files_its_folder_and_the_parent_after_the_rename() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let save = || {
            save_atomically(&dir, |tmp| {
                write_json(&tmp.join(CONFIG_FILE), &serde_json::json!({}))?;
                write_safetensors(&tmp.join(MODEL_FILE), &layout(), &[1.0; 6])
            })
        };
        save().unwrap();
        SYNCED.with(|s| s.borrow_mut().clear());
        save().unwrap(); // over an existing checkpoint: two renames
        let synced = SYNCED.with(|s| s.borrow().clone());
        let tmp = sibling(&dir, ".tmp");
        let at = |p: &Path| synced.iter().position(|s| s == p);
        let (config, model) = (at(&tmp.join(CONFIG_FILE)), at(&tmp.join(MODEL_FILE)));
        assert!(
            config.is_some() && model.is_some(),
            "files synced: {synced:?}"
        );
        if cfg!(unix) {
            let folder = at(&tmp).expect("the new folder is synced");
            assert!(folder > config.unwrap() && folder > model.unwrap());
            let parent = at(root.path()).expect("the parent folder is synced after the renames");
            assert!(parent > folder, "{synced:?}");
        }
        assert_eq!(
            read_json(&dir.join(CONFIG_FILE)).unwrap(),
            serde_json::json!({})
        );
    }

    #[cfg(unix)]
    #[test]
    fn safetensors_files_get_the_same_permissions_as_json_files() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let (json, st) = (
            root.path().join("a.json"),
            root.path().join("b.safetensors"),
        );
        write_json(&json, &serde_json::json!({})).unwrap();
        write_safetensors(&st, &layout(), &[1.0; 6]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&st),
            mode(&json),
            "{:o} vs {:o}",
            mode(&st),
            mode(&json)
        );
    }

    #[test]
    fn non_finite_weights_are_refused_naming_the_tensor() {
        assert_eq!(
            first_non_finite(&[0.0, 1.0, f32::MAX, f32::MIN_POSITIVE]),
            None
        );
        let mut big = vec![0.5f32; 10_000];
        big[9_000] = f32::NEG_INFINITY;
        big[9_500] = f32::NAN;
        assert_eq!(first_non_finite(&big), Some(9_000));
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(MODEL_FILE);
        let mut l = layout();
        l.push("b", &[3]);
        let mut data = [1.0f32; 9];
        data[7] = f32::NAN;
        write_safetensors(&path, &l, &data).unwrap();
        let err = read_safetensors(&path, &l, &mut [0.0; 9], |n| Some(n.to_string())).unwrap_err();
        assert!(
            matches!(err, CheckpointError::NonFinite { ref name, index: 1, .. } if name == "b"),
            "{err}"
        );
        assert!(err.to_string().contains("`b` holds NaN"), "{err}");
    }

    #[test]
    fn a_cut_safetensors_file_is_called_truncated() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(MODEL_FILE);
        write_safetensors(&path, &layout(), &[1.0; 6]).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read_safetensors(&path, &layout(), &mut [0.0; 6], |n| Some(n.to_string()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains(MODEL_FILE),
            "{err}"
        );
        assert!(!err.contains("not fully covered"), "{err}");
    }
}
