//! Checks on verified claims: issuer, audience and the validity window.
//! Time is an argument, so callers (and tests) choose the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::claims::Claims;
use super::error::{quote, LicenseError};

/// What a verified license must satisfy besides its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// A value `aud` must contain, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `nbf` and `exp`.
    pub leeway: Duration,
    /// How long after `exp` (plus leeway) the license still works, reported
    /// as [`Validity::InGrace`] so the caller can warn.
    pub grace: Duration,
}

impl Default for Validator {
    fn default() -> Self {
        Validator {
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
            grace: Duration::ZERO,
        }
    }
}

/// A license that passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Within its validity window; `exp` in unix seconds.
    Valid {
        /// `exp`.
        expires_at: u64,
    },
    /// Expired, but within the grace period (unix seconds).
    InGrace {
        /// `exp`.
        expired_at: u64,
        /// When the license stops working: `exp` + leeway + grace.
        grace_ends: u64,
    },
}

impl Validity {
    /// Whether the license is past `exp` but still in its grace period.
    pub fn is_in_grace(&self) -> bool {
        matches!(self, Validity::InGrace { .. })
    }
}

impl Validator {
    /// Check `claims` at `now` (unix seconds), in this order: issuer,
    /// audience, not-before, expiry.
    ///
    /// With `exp` = E, leeway L and grace G: valid while `now < E + L`, in
    /// grace while `now < E + L + G`, expired after. `nbf` = N fails while
    /// `now + L < N`.
    pub fn validate(&self, claims: &Claims, now: u64) -> Result<Validity, LicenseError> {
        if let Some(expected) = &self.issuer {
            if claims.iss.as_deref() != Some(expected.as_str()) {
                return Err(LicenseError::IssuerMismatch {
                    expected: expected.clone(),
                    found: claims.iss.as_deref().map_or_else(|| "absent".into(), quote),
                });
            }
        }
        if let Some(expected) = &self.audience {
            if !claims.aud.contains(expected) {
                let found = if claims.aud.is_empty() {
                    "absent".into()
                } else {
                    claims
                        .aud
                        .0
                        .iter()
                        .take(5)
                        .map(|a| quote(a))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(LicenseError::AudienceMismatch {
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let leeway = self.leeway.as_secs();
        if let Some(nbf) = claims.nbf {
            if now.saturating_add(leeway) < nbf.0 {
                return Err(LicenseError::NotYetValid {
                    not_before: nbf.0,
                    now,
                });
            }
        }
        let exp = claims.exp.0;
        if now < exp.saturating_add(leeway) {
            return Ok(Validity::Valid { expires_at: exp });
        }
        let grace_ends = self.serve_until(claims);
        if now < grace_ends {
            return Ok(Validity::InGrace {
                expired_at: exp,
                grace_ends,
            });
        }
        Err(LicenseError::Expired {
            expired_at: exp,
            now,
        })
    }

    /// The first second at which `claims` is expired outright.
    pub(crate) fn serve_until(&self, claims: &Claims) -> u64 {
        claims
            .exp
            .0
            .saturating_add(self.leeway.as_secs())
            .saturating_add(self.grace.as_secs())
    }
}

/// The system clock in unix seconds (0 if it is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::license::claims::{Audience, LicenseClaims, NumericDate};

    const EXP: u64 = 2_000_000_000;

    fn claims() -> Claims {
        Claims {
            iss: Some("https://licenses.example".into()),
            sub: "lic-1".into(),
            aud: Audience(vec!["gateway".into(), "other".into()]),
            exp: NumericDate(EXP),
            nbf: Some(NumericDate(EXP - 1000)),
            iat: None,
            jti: None,
            lic: LicenseClaims::default(),
        }
    }

    fn validator() -> Validator {
        Validator {
            issuer: Some("https://licenses.example".into()),
            audience: Some("gateway".into()),
            leeway: Duration::from_secs(60),
            grace: Duration::from_secs(3600),
        }
    }

    #[test]
    fn defaults_are_sixty_seconds_leeway_no_grace() {
        let v = Validator::default();
        assert_eq!(v.leeway, Duration::from_secs(60));
        assert_eq!(v.grace, Duration::ZERO);
        assert_eq!(
            v.validate(&claims(), EXP + 59),
            Ok(Validity::Valid { expires_at: EXP })
        );
        assert_eq!(
            v.validate(&claims(), EXP + 60).unwrap_err().reason(),
            "license_expired"
        );
    }

    #[test]
    fn issuer_must_match_exactly() {
        let v = validator();
        let mut c = claims();
        c.iss = Some("https://licenses.example/".into());
        let err = v.validate(&c, EXP - 500).unwrap_err();
        assert_eq!(err.reason(), "license_issuer_mismatch");
        c.iss = None;
        assert!(v
            .validate(&c, EXP - 500)
            .unwrap_err()
            .detail()
            .contains("absent"));
        // No configured issuer: anything goes.
        let open = Validator {
            issuer: None,
            ..validator()
        };
        assert!(open.validate(&c, EXP - 500).is_ok());
    }

    #[test]
    fn audience_must_be_contained() {
        let v = validator();
        let mut c = claims();
        c.aud = Audience(vec!["gateway-x".into()]);
        let err = v.validate(&c, EXP - 500).unwrap_err();
        assert_eq!(err.reason(), "license_audience_mismatch");
        assert!(err.detail().contains("`gateway-x`"), "{err}");
        c.aud = Audience::default();
        assert!(v
            .validate(&c, EXP - 500)
            .unwrap_err()
            .detail()
            .contains("absent"));
    }

    #[test]
    fn not_before_honours_leeway() {
        let v = validator();
        let nbf = EXP - 1000;
        assert!(v.validate(&claims(), nbf - 60).is_ok());
        let err = v.validate(&claims(), nbf - 61).unwrap_err();
        assert_eq!(
            err,
            LicenseError::NotYetValid {
                not_before: nbf,
                now: nbf - 61
            }
        );
    }

    #[test]
    fn expiry_leeway_then_grace_then_expired() {
        let v = validator();
        let c = claims();
        assert_eq!(
            v.validate(&c, EXP - 1),
            Ok(Validity::Valid { expires_at: EXP })
        );
        assert_eq!(
            v.validate(&c, EXP + 59),
            Ok(Validity::Valid { expires_at: EXP })
        );
        let in_grace = Validity::InGrace {
            expired_at: EXP,
            grace_ends: EXP + 60 + 3600,
        };
        assert_eq!(v.validate(&c, EXP + 60), Ok(in_grace));
        assert!(in_grace.is_in_grace());
        assert_eq!(v.validate(&c, EXP + 60 + 3599), Ok(in_grace));
        assert_eq!(
            v.validate(&c, EXP + 60 + 3600),
            Err(LicenseError::Expired {
                expired_at: EXP,
                now: EXP + 3660
            })
        );
    }

    #[test]
    fn checks_run_in_order_and_never_overflow() {
        // Wrong issuer and expired: the issuer is reported.
        let mut c = claims();
        c.iss = Some("x".into());
        assert_eq!(
            validator().validate(&c, u64::MAX).unwrap_err().reason(),
            "license_issuer_mismatch"
        );
        let huge = Validator {
            leeway: Duration::from_secs(u64::MAX),
            grace: Duration::from_secs(u64::MAX),
            ..validator()
        };
        assert!(huge.validate(&claims(), u64::MAX - 1).is_ok());
        assert!(unix_now() > 1_700_000_000);
    }
}
