//! licensegate: a license-enforcing sidecar reverse proxy.
//!
//! A request flows one way through the modules:
//! `proxy` (accept, normalise) → `decision` (allow or deny) → `proxy::forward`
//! (upstream) or `problem` (rejection). `admin` exposes `metrics` and the
//! `lifecycle` state; `gateway` wires them together and owns every
//! background task; `cli` runs it in the runtime `process` builds.
//!
//! Lints are set for every target in `Cargo.toml`'s `[lints]`; unsafe code
//! is denied there and forbidden here.
#![forbid(unsafe_code)]

pub mod admin;
pub mod atomic_file;
pub mod backoff;
pub mod bytesize;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod decision;
pub mod demo;
pub mod dev;
pub mod duration;
pub mod exit;
pub mod gateway;
pub mod inject;
pub mod license;
pub mod lifecycle;
pub mod limits;
pub mod metering;
pub mod metrics;
pub mod policy;
pub mod problem;
pub mod process;
pub mod proxy;
pub mod reload;
pub mod remote;
pub mod tls;
pub mod untrusted;
pub mod user;
pub mod watch;
pub mod yaml;

/// The crate version, as reported by `licensegate_build_info` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
