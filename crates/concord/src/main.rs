//! concord
fn main() {}
