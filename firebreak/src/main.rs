//! The `firebreak` binary: the one composition root that wires the stages together.
fn main() {}
