//! The xDS protocols of one stream as plain data, no I/O and no clock: [`sotw`] (state of the
//! world) and [`delta`] (incremental) decide what each request means and what is owed, and the
//! stream drivers (`stream`) act on it. They read the snapshot's resource maps and
//! nothing above them.

pub mod delta;
pub mod sotw;
