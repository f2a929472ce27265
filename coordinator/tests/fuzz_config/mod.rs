//! The settings every property test of this crate runs under: a fast default, longer campaigns on request, no failure files in the tree, and a printed seed to replay a failure.

use proptest::test_runner::{Config, RngSeed};

/// `default_cases` cases unless `PROPTEST_CASES` asks for more (or fewer). Failures are not
/// persisted to files: the seed of the run is printed instead (shown when a test fails), and
/// `PROPTEST_RNG_SEED=<seed>` replays exactly that run.
pub fn config(default_cases: u32) -> Config {
    // `Config::default` reads every `PROPTEST_*` variable, the seed included.
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => random_seed(),
    };
    eprintln!("proptest seed {seed}: replay with PROPTEST_RNG_SEED={seed}");
    config.rng_seed = RngSeed::Fixed(seed);
    config.failure_persistence = None;
    config
}

/// A seed that differs from run to run, so that repeated runs explore different inputs.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
