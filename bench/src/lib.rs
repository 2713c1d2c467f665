//! Shared argument types of the benchmark binaries in `src/bin/` (each takes clap flags and
//! prints them with `--help`). The binaries drive real processes through the test harness
//! (`concord-tests`), so what they measure is what the tests check.

use clap::ValueEnum;

/// The xDS protocol a simulated or real Envoy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdsProtocol {
    /// State of the world.
    Sotw,
    /// Incremental (delta) xDS.
    Delta,
}

impl XdsProtocol {
    /// The name the flags and the replicas use.
    pub fn flag(self) -> &'static str {
        match self {
            XdsProtocol::Sotw => "sotw",
            XdsProtocol::Delta => "delta",
        }
    }
}

/// The replicas' `--listener-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListenerMode {
    /// One filter chain per builder.
    FilterChains,
    /// One chain on the SNI suffix with the `sni_cluster` filter.
    SniCluster,
}

impl ListenerMode {
    /// The value `concord serve --listener-mode` takes.
    pub fn flag(self) -> &'static str {
        match self {
            ListenerMode::FilterChains => "filter-chains",
            ListenerMode::SniCluster => "sni-cluster",
        }
    }
}
