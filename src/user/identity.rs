//! A user whose token verified.

use parking_lot::Mutex;

/// What a verified user token says, as the decision reads it. Built once
/// per token (then cached by its exact bytes); the time window is checked
/// again on every use.
#[derive(Debug)]
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
    /// `roles`, comma-separated, as the workload is told them (those that
    /// fit in such a list: see [`forwardable`]); `None` when there are none.
    pub roles_value: Option<http::HeaderValue>,
    /// `subject` as a header value; `None` when it cannot be one.
    pub subject_value: Option<http::HeaderValue>,
    /// The roles told under the last role cap asked for (by its id): a
    /// user works under one license, so the list is made once, not per
    /// request.
    capped: Mutex<Option<(u64, Option<http::HeaderValue>)>>,
}

impl Clone for VerifiedUser {
    fn clone(&self) -> Self {
        VerifiedUser {
            issuer: self.issuer,
            subject: self.subject.clone(),
            roles: self.roles.clone(),
            exp: self.exp,
            nbf: self.nbf,
            kid: self.kid.clone(),
            roles_value: self.roles_value.clone(),
            subject_value: self.subject_value.clone(),
            capped: Mutex::new(None),
        }
    }
}

/// Equal claims and key; the memo of [`VerifiedUser::roles_value_capped`]
/// is not compared.
impl PartialEq for VerifiedUser {
    fn eq(&self, other: &Self) -> bool {
        (
            self.issuer,
            &self.subject,
            &self.roles,
            self.exp,
            self.nbf,
            &self.kid,
        ) == (
            other.issuer,
            &other.subject,
            &other.roles,
            other.exp,
            other.nbf,
            &other.kid,
        )
    }
}

impl Eq for VerifiedUser {}

impl VerifiedUser {
    /// A verified user; the header values are made here, once per token.
    pub fn new(
        issuer: usize,
        subject: Box<str>,
        mut roles: Vec<Box<str>>,
        exp: u64,
        nbf: Option<u64>,
        kid: Box<str>,
    ) -> VerifiedUser {
        roles.sort_unstable();
        roles.dedup();
        let joined = forwardable(&roles).collect::<Vec<_>>().join(",");
        VerifiedUser {
            issuer,
            subject_value: http::HeaderValue::from_str(&subject).ok(),
            subject,
            roles_value: (!joined.is_empty())
                .then(|| http::HeaderValue::from_str(&joined).ok())
                .flatten(),
            roles: roles.into_boxed_slice(),
            exp,
            nbf,
            kid,
            capped: Mutex::new(None),
        }
    }

    /// The roles the workload is told when only the roles `allowed` admits
    /// count, `cap` naming that set: made once per cap, then cloned (a
    /// reference count, no allocation).
    pub fn roles_value_capped(
        &self,
        cap: u64,
        allowed: impl Fn(&str) -> bool,
    ) -> Option<http::HeaderValue> {
        let mut memo = self.capped.lock();
        if let Some((id, value)) = &*memo {
            if *id == cap {
                return value.clone();
            }
        }
        let kept: Vec<&str> = forwardable(&self.roles).filter(|r| allowed(r)).collect();
        let value = (!kept.is_empty())
            .then(|| http::HeaderValue::from_str(&kept.join(",")).ok())
            .flatten();
        *memo = Some((cap, value.clone()));
        value
    }

    /// Whether the token lists `role` (exact, case-sensitive).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}

/// The roles that can be told in a comma-separated header: a role with a
/// comma or a control character would read as other roles (or break the
/// header), so it is left out of the list (it still counts for routes).
pub fn forwardable<'a>(roles: &'a [Box<str>]) -> impl Iterator<Item = &'a str> + 'a {
    roles
        .iter()
        .map(|role| &**role)
        .filter(|role| !role.contains(',') && !role.chars().any(char::is_control))
}
