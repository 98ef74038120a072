//! The `kubesim` binary.
fn main() {}
