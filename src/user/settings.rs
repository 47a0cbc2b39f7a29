//! What a [`UserVerifier`](super::UserVerifier) is built from: the
//! customer's identity provider(s), where the token travels, and what the
//! workload is told. `config` maps the `users:` section onto these types.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::license::BudgetSettings;

/// How user tokens are found, checked and passed on.
#[derive(Clone, Debug)]
pub struct UserSettings {
    /// The identity providers whose tokens are accepted; at least one.
    pub issuers: Vec<IssuerSettings>,
    /// Where the token travels in a request.
    pub token: TokenLocation,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Verified tokens remembered.
    pub cache_capacity: usize,
    /// What the workload is told about the user.
    pub forward: UserForwarding,
    /// The last good JWKS of each fetched issuer, kept across restarts.
    pub state_file: Option<PathBuf>,
    /// Signature checks that may fail per client.
    pub failed_verifications: BudgetSettings,
}

/// One identity provider.
#[derive(Clone, Debug)]
pub struct IssuerSettings {
    /// The exact `iss` its tokens carry (e.g. `https://idp.example.com/realms/acme`).
    pub issuer: String,
    /// `aud` must contain one of these; at least one is required, so a
    /// token minted for another application of the same provider is refused.
    pub audiences: Vec<String>,
    /// Where its public keys come from.
    pub jwks: JwksSource,
    /// The algorithms its tokens may use (default: RS256, ES256, EdDSA).
    pub algorithms: Vec<UserAlgorithm>,
    /// The claim that names the user (default `sub`; e.g. `email`).
    pub subject_claim: ClaimPath,
    /// The claim that lists the user's roles, if any (`roles`, `groups`,
    /// `realm_access.roles`, `https://acme.example/roles`).
    pub roles_claim: Option<ClaimPath>,
}

/// Where an issuer's public keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A JWKS file, re-read when it changes.
    File(PathBuf),
    /// A JWKS URL, fetched on schedule and when a token names an unknown `kid`.
    Url(JwksFetchSettings),
}

/// How a JWKS URL is fetched.
#[derive(Clone, Debug)]
pub struct JwksFetchSettings {
    /// `https://` (plain `http://` only to loopback with `allow_http`).
    pub url: Uri,
    /// CA bundle to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Allow `http://` to a loopback address (tests, local IdPs).
    pub allow_http: bool,
    /// Connect and response timeout of one fetch.
    pub timeout: Duration,
    /// Fetched again after this long, or sooner if the response's
    /// `Cache-Control: max-age` says so (never sooner than `min_refresh`).
    pub refresh: Duration,
    /// The shortest time between two scheduled fetches, and between those
    /// a token with an unknown `kid` asks for: an attacker sending made-up
    /// kids cannot turn the sidecar into a load generator against the
    /// identity provider. (Retries after a failed fetch follow the back-off.)
    pub min_refresh: Duration,
    /// Back-off after a failed fetch, from `min_backoff` doubling to `max_backoff`.
    pub min_backoff: Duration,
    /// See `min_backoff`.
    pub max_backoff: Duration,
}

impl JwksFetchSettings {
    /// Defaults for `url`: 5 min refresh, 30 s apart at least, 10 s timeout,
    /// back-off 1 s to 5 min.
    pub fn new(url: Uri) -> JwksFetchSettings {
        JwksFetchSettings {
            url,
            ca: None,
            allow_http: false,
            timeout: Duration::from_secs(10),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(30),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// A signature algorithm a user token may use. RS256 is what most identity
/// providers sign with; all three are verified with `ring`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UserAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl UserAlgorithm {
    /// Every algorithm, the default allow-list.
    pub const ALL: [UserAlgorithm; 3] = [
        UserAlgorithm::RS256,
        UserAlgorithm::ES256,
        UserAlgorithm::EdDSA,
    ];

    /// The JOSE name.
    pub const fn as_str(self) -> &'static str {
        match self {
            UserAlgorithm::RS256 => "RS256",
            UserAlgorithm::ES256 => "ES256",
            UserAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// From the JOSE name (exact).
    pub fn from_jose(name: &str) -> Option<UserAlgorithm> {
        UserAlgorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == name)
    }
}

impl fmt::Display for UserAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claim, possibly nested: `email`, `realm_access.roles`. A name that
/// starts with `http://` or `https://` is one claim however many dots it
/// has: namespaced claims (Auth0's `https://acme.example/roles`) are URLs
/// and never nest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath(Box<[Box<str>]>);

impl ClaimPath {
    /// Parse a path; `None` when a segment is empty.
    pub fn parse(text: &str) -> Option<ClaimPath> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            return Some(ClaimPath(vec![text.into()].into_boxed_slice()));
        }
        let segments: Vec<Box<str>> = text.split('.').map(Into::into).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(ClaimPath(segments.into_boxed_slice()))
    }

    /// The object members to descend through, outermost first.
    pub fn segments(&self) -> &[Box<str>] {
        &self.0
    }

    /// The claim `sub`.
    pub fn sub() -> ClaimPath {
        ClaimPath(vec!["sub".into()].into_boxed_slice())
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(segment)?;
        }
        Ok(())
    }
}

/// Where the user token travels in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLocation {
    /// `Authorization: Bearer <token>` (the scheme is required).
    Bearer,
    /// This header, with or without a `Bearer ` prefix.
    Header(HeaderName),
    /// This cookie (browser sessions: oauth2-proxy, an SPA's BFF).
    Cookie(String),
}

impl TokenLocation {
    /// The header the token is read from (`Cookie` for a cookie).
    pub fn header(&self) -> &HeaderName {
        match self {
            TokenLocation::Bearer => &http::header::AUTHORIZATION,
            TokenLocation::Header(name) => name,
            TokenLocation::Cookie(_) => &http::header::COOKIE,
        }
    }

    /// The token bytes in `headers`, if there is one. A header present
    /// twice is read at its first value (a second one is never consulted:
    /// it would let a client put two tokens in front of two readers).
    pub fn find<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self {
            TokenLocation::Bearer => {
                let value = headers
                    .get(http::header::AUTHORIZATION)?
                    .as_bytes()
                    .trim_ascii();
                let scheme = value.get(..7)?;
                if !scheme.eq_ignore_ascii_case(b"bearer ") {
                    return None;
                }
                non_empty(value[7..].trim_ascii_start())
            }
            TokenLocation::Header(name) => {
                let value = headers.get(name)?.as_bytes().trim_ascii();
                let token = match value.get(..7) {
                    Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                        value[7..].trim_ascii_start()
                    }
                    _ => value,
                };
                non_empty(token)
            }
            TokenLocation::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
                .find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                    (key.trim_ascii() == name.as_bytes()).then(|| value[1..].trim_ascii())
                })
                .and_then(|value| {
                    // RFC 6265 allows a double-quoted value.
                    let value = value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(value);
                    non_empty(value)
                }),
        }
    }
}

impl TokenLocation {
    /// Remove the token from `headers` (the header, or the one cookie,
    /// keeping the others).
    pub fn remove(&self, headers: &mut HeaderMap) {
        let TokenLocation::Cookie(name) = self else {
            headers.remove(self.header());
            return;
        };
        let kept: Vec<HeaderValue> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| {
                let pairs: Vec<&[u8]> = value
                    .as_bytes()
                    .split(|&b| b == b';')
                    .map(<[u8]>::trim_ascii)
                    .filter(|pair| {
                        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
                        !pair.is_empty() && key.trim_ascii() != name.as_bytes()
                    })
                    .collect();
                (!pairs.is_empty())
                    .then(|| HeaderValue::from_bytes(&pairs.join(&b"; "[..])).ok())
                    .flatten()
            })
            .collect();
        headers.remove(http::header::COOKIE);
        for value in kept {
            headers.append(http::header::COOKIE, value);
        }
    }
}

fn non_empty(token: &[u8]) -> Option<&[u8]> {
    (!token.is_empty()).then_some(token)
}

/// What the workload is told about a verified user. Client-sent copies of
/// these headers are always removed.
#[derive(Clone, Debug)]
pub struct UserForwarding {
    /// The subject (default `x-user-id`).
    pub id: HeaderName,
    /// The roles, comma-separated (default `x-user-roles`).
    pub roles: HeaderName,
    /// Keep the user token on the forwarded request (default: kept; the
    /// workload may need it to call other services as the user).
    pub token: bool,
}

impl Default for UserForwarding {
    fn default() -> Self {
        UserForwarding {
            id: HeaderName::from_static("x-user-id"),
            roles: HeaderName::from_static("x-user-roles"),
            token: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn claim_paths_split_on_dots_except_urls() {
        assert_eq!(
            ClaimPath::parse("realm_access.roles")
                .unwrap()
                .segments()
                .len(),
            2
        );
        assert_eq!(
            ClaimPath::parse("https://acme.example/roles")
                .unwrap()
                .segments()
                .len(),
            1
        );
        assert_eq!(ClaimPath::parse(" email ").unwrap().to_string(), "email");
        for bad in ["", "a..b", ".a", "a."] {
            assert!(ClaimPath::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_found_where_configured() {
        let bearer = TokenLocation::Bearer;
        assert_eq!(
            bearer.find(&headers(&[("authorization", "Bearer abc")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            bearer.find(&headers(&[("authorization", "bearer  abc ")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            bearer.find(&headers(&[("authorization", "abc")])),
            None,
            "scheme required"
        );
        assert_eq!(
            bearer.find(&headers(&[(
                "authorization",
                "Basic YWxhZGRpbjpvcGVuc2VzYW1l"
            )])),
            None
        );
        assert_eq!(bearer.find(&headers(&[("authorization", "Bearer ")])), None);

        let header = TokenLocation::Header(HeaderName::from_static("x-user-token"));
        assert_eq!(
            header.find(&headers(&[("x-user-token", "abc")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            header.find(&headers(&[("x-user-token", "Bearer abc")])),
            Some(&b"abc"[..])
        );
        assert_eq!(
            header.find(&headers(&[
                ("x-user-token", "abc"),
                ("x-user-token", "def")
            ])),
            Some(&b"abc"[..])
        );

        let cookie = TokenLocation::Cookie("session".into());
        let found = |value: &str| {
            cookie
                .find(&headers(&[("cookie", value)]))
                .map(|t| t.to_vec())
        };
        assert_eq!(found("a=1; session=abc; b=2"), Some(b"abc".to_vec()));
        assert_eq!(found("session=\"abc\""), Some(b"abc".to_vec()));
        assert_eq!(found("xsession=abc"), None);
        assert_eq!(found("session="), None);
        assert_eq!(found("a=1"), None);
        let split = headers(&[("cookie", "a=1"), ("cookie", "session=abc")]);
        assert_eq!(
            cookie.find(&split),
            Some(&b"abc"[..]),
            "HTTP/2 splits cookies"
        );
    }
}
