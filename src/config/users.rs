//! The `users:` section: the customer's identity providers, mapped onto
//! [`UserSettings`].

use std::time::Duration;

use serde::Deserialize;

use super::path::{ExistingFile, FileInDir};
use super::{ConfigError, FileFailedVerifications, HeaderNameSetting, MaxConnections};
use crate::duration::HumanDuration;
use crate::license::{LicenseSettings, LicenseSource};
use crate::user::settings::JwksFetchSettings;
use crate::user::{
    ClaimPath, IssuerSettings, JwksSource, TokenLocation, UserAlgorithm, UserForwarding,
    UserSettings,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUsers {
    /// `bearer` (default), `header:NAME` or `cookie:NAME`.
    pub token: Option<String>,
    pub issuers: Vec<FileIssuer>,
    pub leeway: Option<HumanDuration>,
    pub cache_capacity: Option<MaxConnections>,
    pub state_file: Option<FileInDir>,
    #[serde(default)]
    pub forward: FileUserForward,
    pub failed_verifications: Option<FileFailedVerifications>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUserForward {
    pub id: Option<HeaderNameSetting>,
    pub roles: Option<HeaderNameSetting>,
    pub token: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIssuer {
    pub issuer: String,
    /// One accepted audience, or use `audiences`.
    pub audience: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_file: Option<FileInDir>,
    pub jwks_url: Option<String>,
    pub ca: Option<ExistingFile>,
    #[serde(default)]
    pub allow_http: bool,
    pub timeout: Option<HumanDuration>,
    pub refresh: Option<HumanDuration>,
    pub min_refresh: Option<HumanDuration>,
    pub min_backoff: Option<HumanDuration>,
    pub max_backoff: Option<HumanDuration>,
    pub algorithms: Option<Vec<String>>,
    pub subject_claim: Option<String>,
    pub roles_claim: Option<String>,
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

impl FileUsers {
    /// The settings, checked against the license's: the user token must
    /// not travel in the header per-request licenses come in, or one
    /// header would carry two tokens for two readers.
    pub fn resolve(self, license: Option<&LicenseSettings>) -> Result<UserSettings, ConfigError> {
        let token = match self.token.as_deref().map(str::trim) {
            None | Some("bearer") => TokenLocation::Bearer,
            Some(text) => {
                if let Some(name) = text.strip_prefix("header:") {
                    let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        invalid("users.token", format!("`{name}` is not a header name"))
                    })?;
                    if name == http::header::COOKIE {
                        return Err(invalid("users.token", "use `cookie:NAME` for a cookie"));
                    }
                    TokenLocation::Header(name)
                } else if let Some(name) = text.strip_prefix("cookie:") {
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
                    {
                        return Err(invalid(
                            "users.token",
                            format!("`{name}` is not a cookie name"),
                        ));
                    }
                    TokenLocation::Cookie(name.to_owned())
                } else {
                    return Err(invalid(
                        "users.token",
                        format!("`{text}`: expected `bearer` (Authorization: Bearer), `header:NAME` or `cookie:NAME`"),
                    ));
                }
            }
        };
        if let Some(LicenseSource::Header(name)) = license.map(|l| &l.source) {
            if name == token.header() {
                return Err(invalid(
                    "users.token",
                    format!(
                        "the user token would travel in `{name}`, the header per-request licenses come in (`license.header`): send one of them elsewhere, e.g. `license.header: x-license` or `users.token: cookie:session`"
                    ),
                ));
            }
        }
        if self.issuers.is_empty() {
            return Err(invalid(
                "users.issuers",
                "name at least one identity provider: `issuer`, `audience` and `jwks_url` or `jwks_file`",
            ));
        }
        let mut issuers = Vec::with_capacity(self.issuers.len());
        for (i, file) in self.issuers.into_iter().enumerate() {
            let issuer = file
                .resolve()
                .map_err(|message| invalid("users.issuers", format!("#{i}: {message}")))?;
            if issuers
                .iter()
                .any(|other: &IssuerSettings| other.issuer == issuer.issuer)
            {
                return Err(invalid(
                    "users.issuers",
                    format!("#{i}: issuer `{}` is listed twice", issuer.issuer),
                ));
            }
            issuers.push(issuer);
        }
        let defaults = UserForwarding::default();
        let forward = UserForwarding {
            id: self.forward.id.map_or(defaults.id, |h| h.0),
            roles: self.forward.roles.map_or(defaults.roles, |h| h.0),
            token: self.forward.token.unwrap_or(defaults.token),
        };
        if forward.id == forward.roles {
            return Err(invalid(
                "users.forward",
                "`id` and `roles` need two different headers",
            ));
        }
        Ok(UserSettings {
            issuers,
            token,
            leeway: self.leeway.map_or(Duration::from_secs(60), |d| d.0),
            cache_capacity: self.cache_capacity.map_or(10_000, |c| c.0),
            forward,
            state_file: self.state_file.map(|f| f.0),
            failed_verifications: self
                .failed_verifications
                .map(FileFailedVerifications::resolve)
                .unwrap_or_default(),
        })
    }
}

impl FileIssuer {
    fn resolve(self) -> Result<IssuerSettings, String> {
        if self.issuer.trim().is_empty() {
            return Err("`issuer` is empty: give the exact `iss` its tokens carry".into());
        }
        let mut audiences = self.audiences;
        audiences.extend(self.audience);
        if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
            return Err(format!(
                "`{}` needs `audience` (or `audiences`): the client id tokens for this application carry in `aud`, so a token minted for another application is refused",
                self.issuer
            ));
        }
        let fetch_only = [
            ("ca", self.ca.is_some()),
            ("allow_http", self.allow_http),
            ("timeout", self.timeout.is_some()),
            ("refresh", self.refresh.is_some()),
            ("min_refresh", self.min_refresh.is_some()),
            ("min_backoff", self.min_backoff.is_some()),
            ("max_backoff", self.max_backoff.is_some()),
        ];
        let jwks = match (self.jwks_file, self.jwks_url) {
            (Some(file), None) => {
                if let Some((name, _)) = fetch_only.iter().find(|(_, set)| *set) {
                    return Err(format!("`{name}` is only used with `jwks_url`"));
                }
                JwksSource::File(file.0)
            }
            (None, Some(url)) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| format!("`jwks_url` `{url}` is not a URL: {e}"))?;
                let mut fetch = JwksFetchSettings::new(uri);
                fetch.ca = self.ca.map(|c| c.0);
                fetch.allow_http = self.allow_http;
                let set = |value: Option<HumanDuration>, default: Duration| value.map_or(default, |d| d.0);
                fetch.timeout = set(self.timeout, fetch.timeout);
                fetch.refresh = set(self.refresh, fetch.refresh);
                fetch.min_refresh = set(self.min_refresh, fetch.min_refresh);
                fetch.min_backoff = set(self.min_backoff, fetch.min_backoff);
                fetch.max_backoff = set(self.max_backoff, fetch.max_backoff);
                for (name, value) in [
                    ("timeout", fetch.timeout),
                    ("refresh", fetch.refresh),
                    ("min_refresh", fetch.min_refresh),
                    ("min_backoff", fetch.min_backoff),
                ] {
                    if value.is_zero() {
                        return Err(format!("`{name}` must be longer than zero"));
                    }
                }
                if fetch.min_refresh > fetch.refresh {
                    return Err(format!(
                        "`min_refresh` ({}) is longer than `refresh` ({})",
                        humantime::format_duration(fetch.min_refresh),
                        humantime::format_duration(fetch.refresh)
                    ));
                }
                if fetch.max_backoff < fetch.min_backoff {
                    return Err("`max_backoff` is shorter than `min_backoff`".into());
                }
                JwksSource::Url(fetch)
            }
            (Some(_), Some(_)) => return Err("give `jwks_url` or `jwks_file`, not both".into()),
            (None, None) => {
                return Err(format!(
                    "`{}` needs `jwks_url` (the provider's JWKS, e.g. …/protocol/openid-connect/certs or …/.well-known/jwks.json) or `jwks_file`",
                    self.issuer
                ))
            }
        };
        let algorithms = match self.algorithms {
            None => UserAlgorithm::ALL.to_vec(),
            Some(names) if names.is_empty() => return Err("`algorithms` is empty".into()),
            Some(names) => names
                .iter()
                .map(|name| {
                    UserAlgorithm::from_jose(name).ok_or_else(|| {
                        format!("algorithm `{name}` is not accepted: use RS256, ES256 or EdDSA")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let path = |setting: &str, text: &str| {
            ClaimPath::parse(text).ok_or_else(|| {
                format!(
                    "`{setting}` `{text}` is not a claim path (e.g. `email`, `realm_access.roles`)"
                )
            })
        };
        Ok(IssuerSettings {
            issuer: self.issuer,
            audiences,
            jwks,
            algorithms,
            subject_claim: match self.subject_claim {
                Some(text) => path("subject_claim", &text)?,
                None => ClaimPath::sub(),
            },
            roles_claim: self
                .roles_claim
                .map(|text| path("roles_claim", &text))
                .transpose()?,
        })
    }
}
