//! Loading refuses what would abort the process or compute garbage, before allocating it:
//! config.json sizes that disagree with the tensors in model.safetensors, sizes beyond the
//! machine's memory, and non-finite weights (issue 17, items 3 and 4).

use std::path::Path;

use model::checkpoint::{CONFIG_FILE, CheckpointError, MODEL_FILE};
use model::{Gpt, GptConfig, LanguageModel, Lstm, LstmConfig, TokenizerKind};

fn tiny_gpt() -> Gpt {
    let mut c = GptConfig::preset("tiny").unwrap();
    c.vocab_size = TokenizerKind::Byte.vocab_size() as usize;
    Gpt::new(c, 1).unwrap()
}

fn edit_config(dir: &Path, field: &str, value: serde_json::Value) {
    let path = dir.join(CONFIG_FILE);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn config_sizes_that_disagree_with_the_tensors_are_refused_before_allocating() {
    // Without the header check, n_positions = 1e9 allocates 2 × 1e9 × 32 floats (256 GB)
    // and aborts the test process.
    for (field, value) in [
        ("n_positions", 1_000_000_000u64),
        ("n_embd", 4_000_000),
        ("n_ctx", 1_000_000_000),
    ] {
        let root = tempfile::tempdir().unwrap();
        tiny_gpt().save(root.path()).unwrap();
        edit_config(root.path(), field, value.into());
        if field == "n_ctx" {
            edit_config(root.path(), "n_positions", value.into());
        }
        match Gpt::load(root.path()) {
            Err(e @ CheckpointError::WrongShape { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains(MODEL_FILE) && text.contains("the config implies"),
                    "{text}"
                );
            }
            Err(e) => panic!("{field}: expected a shape mismatch, got {e}"),
            Ok(_) => panic!("{field}: loaded"),
        }
    }

    let root = tempfile::tempdir().unwrap();
    let lstm = Lstm::new(LstmConfig::tiny(257), 1);
    model::save_checkpoint(root.path(), &lstm, None).unwrap();
    edit_config(root.path(), "hidden_size", 3_000_000.into());
    let err = Lstm::load(root.path()).err().expect("refused");
    assert!(matches!(err, CheckpointError::WrongShape { .. }), "{err}");
}

#[test]
fn sizes_beyond_the_memory_are_refused_with_the_estimate() {
    // A header describing an LSTM of hidden size 3e6 (7e13 parameters) whose shapes agree
    // with its config: only the memory check stands between it and the allocation.
    let root = tempfile::tempdir().unwrap();
    let config = LstmConfig::new(257, 3_000_000, 1);
    std::fs::write(root.path().join(CONFIG_FILE), config.to_json().to_string()).unwrap();
    let (v, h) = (257u64, 3_000_000u64);
    let shapes = [
        ("emb.weight", vec![v, h]),
        ("lstm.weight_ih_l0", vec![4 * h, h]),
        ("lstm.weight_hh_l0", vec![4 * h, h]),
        ("lstm.bias_ih_l0", vec![4 * h]),
        ("lstm.bias_hh_l0", vec![4 * h]),
        ("head.weight", vec![v, h]),
        ("head.bias", vec![v]),
    ];
    let (mut header, mut offset) = (serde_json::Map::new(), 0u64);
    for (name, shape) in shapes {
        let bytes = 4 * shape.iter().product::<u64>();
        header.insert(
            name.into(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    std::fs::write(root.path().join(MODEL_FILE), file).unwrap();
    let err = Lstm::load(root.path()).err().expect("refused");
    assert!(matches!(err, CheckpointError::Memory { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("would take about") && text.contains(MODEL_FILE),
        "{text}"
    );
}

#[test]
fn the_gpt_activation_estimate_is_what_a_forward_allocates() {
    let mut gpt = tiny_gpt();
    let (b, t) = (3, 16);
    let ids: Vec<u32> = (0..(b * t) as u32).map(|i| i % 200).collect();
    gpt.forward(&ids, &ids, b, t);
    let floats = gpt.config().activation_floats(b * t);
    assert_eq!(gpt.activation_bytes() as u128, 4 * floats);
}

#[test]
fn a_nan_weight_is_refused_naming_the_tensor() {
    let root = tempfile::tempdir().unwrap();
    let mut gpt = tiny_gpt();
    let spec = gpt
        .layout()
        .get("transformer.h.0.mlp.c_fc.weight")
        .unwrap()
        .clone();
    gpt.params_mut()[spec.offset + 5] = f32::NAN;
    gpt.save(root.path()).unwrap();
    let err = Gpt::load(root.path()).err().expect("refused");
    assert!(
        err.to_string()
            .contains("`transformer.h.0.mlp.c_fc.weight` holds NaN"),
        "{err}"
    );
}
