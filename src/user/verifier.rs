//! PLACEHOLDER: the interface the decision engine builds against; the
//! implementation replaces this file.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use super::{UserError, UserSettings, VerifiedUser};

/// Verifies user tokens against the configured issuers' keys.
pub struct UserVerifier {
    settings: UserSettings,
}

impl UserVerifier {
    /// A verifier with no keys loaded yet.
    pub fn new(settings: UserSettings) -> UserVerifier {
        UserVerifier { settings }
    }

    /// What it was built from.
    pub fn settings(&self) -> &UserSettings {
        &self.settings
    }

    /// The user of the request, if its token verifies at `now`.
    pub fn check(
        &self,
        headers: &HeaderMap,
        now: u64,
        client: impl FnOnce() -> IpAddr,
    ) -> Result<Arc<VerifiedUser>, UserError> {
        let _ = (headers, now, client);
        Err(UserError::KeysUnavailable)
    }
}
