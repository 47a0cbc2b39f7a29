//! License tokens: signed JWTs that say who may run the workload, where, and
//! until when.
//!
//! Verification is pure computation over bytes already in memory; every file
//! is read when a [`Keyring`] is built, never on the request path. A token
//! flows through:
//!
//! 1. [`token::verify`]: size and shape checks, a strict header parse, key
//!    lookup by `kid`, then the signature (over the raw text, before the
//!    claims are parsed), then the [`Claims`].
//! 2. [`Validator::validate`]: issuer, audience and the time window.
//! 3. [`admits`]: the deployment environment against `lic.env`.
//!
//! [`LicenseVerifier`] combines 1 and 2 behind a [`VerificationCache`] so a
//! token seen before costs a map lookup, not a signature check; a token
//! that failed is remembered in a [`NegativeCache`], and a
//! [`VerificationBudget`] bounds the failing signature checks per client.
//! [`issue`] mints keys and tokens for the CLI and for tests.

#![warn(missing_docs)]

pub mod budget;
pub mod cache;
pub mod claims;
pub mod environment;
mod error;
mod gate;
pub mod issue;
pub(crate) mod jose;
pub(crate) mod json;
pub mod keys;
mod metrics;
pub mod negative;
pub mod refresh;
pub mod revocation;
pub mod settings;
pub mod state;
pub mod token;
pub mod validate;
pub mod watch;

#[cfg(test)]
mod tests;

pub use budget::{BudgetSettings, VerificationBudget};
pub use cache::{Answered, LicenseVerifier, VerificationCache};
pub use claims::{Audience, Claims, LicenseClaims, LicenseEnv, NumericDate};
pub use environment::{admits, Environment};
pub(crate) use error::quote;
pub use error::LicenseError;
pub use gate::{GateError, LicenseGate, Loaded, TrustedClock};
pub use keys::{KeyError, KeyFiles, Keyring, VerifyingKey};
pub use metrics::{LicenseMetrics, LicenseState};
pub use negative::NegativeCache;
pub use revocation::RevocationList;
pub use settings::{LicenseSettings, LicenseSource};
pub use token::{Algorithm, VerifiedLicense, MAX_TOKEN_BYTES};
pub use validate::{Validator, Validity};
