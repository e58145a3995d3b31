//! How many cases a fuzz target runs: its own bounded default, so that `cargo test
//! --workspace` stays quick, or `PROPTEST_CASES` for a longer run
//! (`PROPTEST_CASES=100000 cargo test --test fuzz`). Shared by every crate's fuzz suite.

use proptest::test_runner::Config;

pub fn cases(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // A failure prints its minimal input; it becomes an explicit regression test, not a
        // file written next to the sources.
        failure_persistence: None,
        ..Config::default()
    }
}
