//! Multiplies two matrices with `kernels::sgemm`:
//! `cargo run --release -p kernels --example sgemm`.

use kernels::{Transpose, sgemm};

fn main() {
    let (m, k, n) = (2, 3, 4);
    let a: Vec<f32> = (1..=6).map(|x| x as f32).collect(); // (m, k), row-major
    let b: Vec<f32> = (0..12).map(|x| x as f32).collect(); // (k, n)
    let mut c = vec![0.0; m * n]; // (m, n)
    // C = 1·A·B + 0·C; leading dimensions are the row lengths; beta = 0 never reads C.
    sgemm(
        Transpose::No,
        Transpose::No,
        m,
        n,
        k,
        1.0,
        &a,
        k,
        &b,
        n,
        0.0,
        &mut c,
        n,
    );
    for row in c.chunks(n) {
        println!("{row:?}");
    }
    println!("computed with {}", kernels::simd::PATH);
}
