//! The end-to-end tests (in `tests/`) of real concord processes on loopback, driven over their
//! admin API with real Envoys, BIND and TLS builders. The world they run in is the harness crate,
//! `concord-harness` (crates/harness), shared with the chaos runner and the benchmarks; this
//! library is empty.
