//! `runner info`: which SIMD path this build uses, what this CPU offers, and whether the two
//! agree.

use clap::Args as ClapArgs;

#[derive(ClapArgs)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let features = kernels::cpu::features();
    let list = |pred: &dyn Fn(&kernels::cpu::Feature) -> bool| {
        features
            .iter()
            .filter(|f| pred(f))
            .map(|f| f.name)
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("SIMD path:          {}", kernels::simd::PATH);
    println!("lanes per vector:   {}", kernels::simd::LANES);
    println!("bf16 products:      {}", kernels::precision::BF16_PATH);
    println!(
        "default precision:  {} (--precision bf16|fp32 on train, race, score, generate, parallelism)",
        kernels::Precision::fastest()
    );
    println!("compiled features:  {}", list(&|f| f.compiled));
    println!("CPU features:       {}", list(&|f| f.detected));
    println!("threads (rayon):    {}", rayon::current_num_threads());
    match kernels::cpu::check() {
        Ok(()) => println!("this CPU can run this build: yes"),
        Err(e) => println!("this CPU can run this build: no — {e}"),
    }
    Ok(())
}
