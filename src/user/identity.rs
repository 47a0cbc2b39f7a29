//! A user whose token verified.

/// What a verified user token says, as the decision reads it. Built once
/// per token (then cached by its exact bytes); the time window is checked
/// again on every use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUser {
    /// Position of the issuer in [`UserSettings::issuers`](super::UserSettings::issuers).
    pub issuer: usize,
    /// The subject: `sub`, or the issuer's configured claim (e.g. `email`).
    /// Not empty.
    pub subject: Box<str>,
    /// The roles read from the issuer's roles claim path; sorted, no
    /// duplicates. Empty when the issuer has no roles claim or the token
    /// lacks it.
    pub roles: Box<[Box<str>]>,
    /// `exp`, unix seconds (required).
    pub exp: u64,
    /// `nbf`, unix seconds.
    pub nbf: Option<u64>,
    /// The key that signed it.
    pub kid: Box<str>,
}

impl VerifiedUser {
    /// Whether the token lists `role` (exact, case-sensitive).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}
