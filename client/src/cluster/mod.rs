//! Local clusters for operators and benchmarks: [`up`] starts every server of a config as
//! its own process and stops them by PID (`meshfs up`); [`local`] makes a throw-away
//! cluster in a private temporary directory for `meshfs bench --local`.

pub mod local;
pub mod up;
