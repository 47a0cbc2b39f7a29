//! Sidecar injection, the way Linkerd users know it:
//!
//! - `licensegate inject patch` reads Kubernetes YAML (Pods and the workloads
//!   that hold pod templates) and writes it back with the licensegate sidecar
//!   added (`workload.rs`);
//! - `licensegate inject serve` is a mutating admission webhook over HTTPS that
//!   answers `AdmissionReview`s for Pods with a JSON Patch (`review.rs`,
//!   `server.rs`);
//! - `licensegate inject certs` makes a CA and the webhook's serving
//!   certificate and prints the `caBundle` (`certs.rs`);
//! - `licensegate inject wait` blocks until the sidecar is ready, for the
//!   `postStart` hook of a classic (non-native) sidecar.
//!
//! Both injection paths compute one JSON Patch per pod from the same rules
//! (`sidecar.rs`), so a workload injected by hand and a pod injected by the
//! webhook carry the same sidecar.

pub mod certs;
pub mod cli;
pub mod review;
pub mod server;
pub mod sidecar;
pub mod wait;
pub mod workload;

#[cfg(test)]
mod tests;

pub use cli::{run, InjectCommand};
pub use sidecar::{plan, Defaults, InjectError, Plan, Scope, SidecarMode};
