//! Work in progress on a branch: see scripts/bench.
fn main() {}
