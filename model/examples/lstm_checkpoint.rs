//! Writes a Lanes LSTM checkpoint for PyTorch to check, and prints the loss Lanes computes on
//! the fixture's tokens: the other half of the golden round trip, with PyTorch's `nn.LSTM`.
//!
//! ```text
//! cargo run --release -p model --example lstm_checkpoint -- /tmp/lanes-lstm model/tests/fixtures/lstm
//! python3 model/tests/fixtures/make_fixtures.py check /tmp/lanes-lstm model/tests/fixtures/lstm
//! ```
//!
//! Both print the mean loss on the fixture's tokens; they must agree to about 1e-5. The model
//! is a fresh `tiny` LSTM (the fixture's vocabulary) after a few AdamW steps on those tokens,
//! so the checkpoint holds weights only Lanes produced. Leaves out: optimizer state.

use std::path::PathBuf;

use model::{
    AdamWConfig, LanguageModel, Lstm, LstmConfig, Optimizer, OptimizerConfig, save_checkpoint,
};
use safetensors::SafeTensors;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out, fixture] = &args[..] else {
        eprintln!("usage: lstm_checkpoint OUT_DIR FIXTURE_DIR");
        std::process::exit(2);
    };
    let bytes = std::fs::read(fixture.join("golden.safetensors")).expect("read golden.safetensors");
    let golden = SafeTensors::deserialize(&bytes).expect("parse golden.safetensors");
    let ids = |name: &str| -> (Vec<usize>, Vec<u32>) {
        let view = golden.tensor(name).expect("tensor in golden.safetensors");
        let words = view.data().chunks_exact(4);
        let ids = words.map(|w| i32::from_le_bytes(w.try_into().unwrap()) as u32);
        (view.shape().to_vec(), ids.collect())
    };
    let ((shape, inputs), (_, targets)) = (ids("inputs"), ids("targets"));
    let (b, t) = (shape[0], shape[1]);
    let reference = Lstm::load(fixture).expect("load the fixture's checkpoint");

    let mut model = Lstm::new(LstmConfig::tiny(reference.vocab_size()), 42);
    let adamw = OptimizerConfig::AdamW(AdamWConfig::default());
    let mut opt = Optimizer::new(adamw, model.layout());
    for _ in 0..20 {
        model.forward(&inputs, &targets, b, t);
        model.zero_grad();
        model.backward();
        let (params, grads) = model.params_and_grads();
        opt.step(params, grads, 1e-2);
    }
    save_checkpoint(out, &model, None).expect("save the checkpoint");
    let loss = model.forward(&inputs, &targets, b, t);
    println!(
        "{}: Lanes loss on {} tokens = {loss:.6}",
        out.display(),
        fixture.display()
    );
}
