//! Prints a sample of the built-in corpus and its exact entropy rate.
//!
//!     cargo run --release -p model --example builtin_corpus
fn main() {
    let g = model::corpus::Grammar::english_like();
    let doc = &model::corpus::builtin_documents(1337, 1, 600)[0];
    println!("{doc}\n");
    println!(
        "entropy rate: {:.4} bits per byte",
        g.entropy_bits_per_byte()
    );
}
