//! Shared helpers for Lanes' criterion benches (`cargo bench` from the root runs them all).
//! The benches themselves live in `benches/benches/`, one file per topic.

/// Builds a rayon pool of exactly `threads` threads, so a bench measures a fixed thread count.
pub fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool")
}
