//! Verified users: who is calling, from a token their organisation's
//! identity provider signed, checked offline in the sidecar.
//!
//! The license says what a customer bought; a user token says which of the
//! customer's people is asking, and with which roles. Seats counted by
//! `identity: user` and routes that need `roles` read the user from here,
//! never from a header a client can type.
//!
//! A token flows through:
//!
//! 1. [`TokenLocation::find`]: the token in the request (`Authorization:
//!    Bearer`, a cookie, or another header);
//! 2. [`token::verify`]: size and shape, a strict header (`alg` on the
//!    issuer's allow-list, no `jwk`/`jku`/`x5u`/`x5c`/`crit`), the key by
//!    `kid` among the configured issuers' JWKS, then the signature, and
//!    only then the claims: `iss` must be the issuer whose key signed,
//!    `aud`, and the subject and roles read from the issuer's claim paths;
//!    [`token::validate`] checks `exp`/`nbf` with leeway on every use;
//! 3. [`UserVerifier`] remembers verified tokens by their exact bytes, so a
//!    token seen before costs a map lookup and the time check.
//!
//! Keys come from [`source`]: a JWKS file, or an issuer's JWKS fetched over
//! HTTPS, refreshed on schedule and when a token names a `kid` not yet
//! known, and kept in a state file so a restart while the identity
//! provider is unreachable still verifies.

#![warn(missing_docs)]

mod claims;
mod error;
mod identity;
pub mod keys;
mod metrics;
pub mod settings;
pub mod source;
mod start;
pub mod token;
mod verifier;

#[cfg(test)]
mod tests;

pub use error::UserError;
pub use identity::{forwardable, VerifiedUser};
pub use keys::{UserKey, UserKeyError, UserKeyring};
pub use metrics::UserMetrics;
pub use settings::{
    ClaimPath, IssuerSettings, JwksSource, TokenLocation, UserAlgorithm, UserForwarding,
    UserSettings,
};
pub use start::{explain_verifier, Users, UsersError};
pub use verifier::UserVerifier;
