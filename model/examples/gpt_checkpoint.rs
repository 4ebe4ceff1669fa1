//! Writes a Lanes GPT checkpoint for PyTorch to check, and prints the loss Lanes computes on a
//! fixture's tokens. The other half of the round trip with Hugging Face `transformers`:
//!
//! ```text
//! cargo run --release -p model --example gpt_checkpoint -- /tmp/lanes-gpt model/tests/fixtures/gpt2_v257
//! python3 model/tests/fixtures/make_fixtures.py check /tmp/lanes-gpt model/tests/fixtures/gpt2_v257
//! ```
//!
//! Both print the mean loss on the fixture's tokens; they must agree to about 1e-5. The model
//! is a fresh `tiny` GPT (with the fixture's vocabulary) after a few AdamW steps, so the
//! checkpoint holds weights only Lanes produced. Leaves out: optimizer state.

use std::path::PathBuf;

use kernels::optim::{AdamW, adamw_step};
use model::{Gpt, GptConfig, LanguageModel};
use safetensors::SafeTensors;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out, fixture] = &args[..] else {
        eprintln!("usage: gpt_checkpoint OUT_DIR FIXTURE_DIR");
        std::process::exit(2);
    };
    let bytes = std::fs::read(fixture.join("golden.safetensors")).expect("read golden.safetensors");
    let golden = SafeTensors::deserialize(&bytes).expect("parse golden.safetensors");
    let ids = |name: &str| -> (Vec<usize>, Vec<u32>) {
        let view = golden.tensor(name).expect("tensor in golden.safetensors");
        let data = view.data().chunks_exact(4);
        let ids = data.map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32);
        (view.shape().to_vec(), ids.collect())
    };
    let ((shape, inputs), (_, targets)) = (ids("inputs"), ids("targets"));
    let (b, t) = (shape[0], shape[1]);
    let reference = Gpt::load(fixture).expect("load the fixture's checkpoint");

    let mut cfg = GptConfig::preset("tiny").unwrap();
    cfg.vocab_size = reference.vocab_size();
    cfg.tokenizer = reference.config().tokenizer;
    let mut model = Gpt::new(cfg, 42).unwrap();
    let n = model.params().len();
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let adamw = AdamW {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamW::default()
    };
    for step in 1..=20 {
        model.forward(&inputs, &targets, b, t);
        model.zero_grad();
        model.backward();
        let (params, grads) = model.params_and_grads();
        adamw_step(params, &mut m, &mut v, grads, &adamw, step);
    }
    model.save(out).expect("save the checkpoint");
    let loss = model.forward(&inputs, &targets, b, t);
    println!(
        "{}: Lanes loss on {} tokens = {loss:.6}",
        out.display(),
        fixture.display()
    );
}
