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

/// CPU seconds (user + system) process `pid` has used (`/proc/<pid>/stat`).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 12 and 13 after `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    anyhow::ensure!(fields.len() > 12, "unexpected /proc/{pid}/stat: {stat}");
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}
