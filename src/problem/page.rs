//! The HTML form of a denial: what happened, why (the stable reason and
//! the detail), and what to do about it. Self-contained: inline CSS, no
//! script, no fonts or images, readable on a phone. Every interpolated
//! string is escaped: the detail can quote a request path.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::RETRY_AFTER;

use crate::decision::{Denial, Hint, Reason};

const STYLE: &str = "\
:root{color-scheme:light dark}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}\
main{max-width:42rem;margin:0 auto;padding:2rem 1.25rem}\
.status{margin:0;font-size:.85rem;letter-spacing:.06em;text-transform:uppercase;opacity:.7}\
h1{margin:.2rem 0 1rem;font-size:1.6rem;line-height:1.25}\
h2{margin:0 0 .25rem;font-size:1rem}\
p{overflow-wrap:anywhere}\
.hint{margin:1.5rem 0;padding:.75rem 1rem;border-left:4px solid #b86e00;background:rgba(184,110,0,.09)}\
.hint p{margin:0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;font-size:.9rem}\
dt{opacity:.7}dd{margin:0;overflow-wrap:anywhere}\
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}\
footer{margin-top:2rem;font-size:.8rem;opacity:.65}";

/// The page for `denial`.
pub fn render(denial: &Denial) -> String {
    let status = denial.status.as_u16();
    let title = denial.reason.title();
    let mut out = String::with_capacity(2048 + denial.detail.len());
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n",
    );
    let _ = writeln!(out, "<title>{status} {}</title>", Escaped(title));
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>\n<main>");
    let _ = writeln!(out, "<p class=\"status\">Error {status}</p>");
    let _ = writeln!(out, "<h1>{}</h1>", Escaped(title));
    let _ = writeln!(out, "<p>{}</p>", Escaped(&sentence(&denial.detail)));
    let _ = writeln!(
        out,
        "<section class=\"hint\">\n<h2>What to do</h2>\n<p>{}</p>\n</section>",
        hint(denial)
    );
    out.push_str("<dl>\n");
    let _ = writeln!(
        out,
        "<dt>Reason</dt><dd><code>{}</code></dd>",
        Escaped(denial.reason.as_str())
    );
    if let Some(route) = &denial.route {
        let _ = writeln!(
            out,
            "<dt>Route</dt><dd><code>{}</code></dd>",
            Escaped(route)
        );
    }
    let _ = writeln!(out, "<dt>Status</dt><dd>{status}</dd>");
    out.push_str("</dl>\n");
    let _ = writeln!(
        out,
        "<footer>Answered by licensegate, which stands in front of the application. \
         API clients get this answer as <code>application/problem+json</code> \
         (type <code>{}</code>).</footer>",
        Escaped(&super::type_uri(denial.reason))
    );
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// What to do, as HTML (every interpolated value escaped).
fn hint(denial: &Denial) -> String {
    let retry = retry_after(denial);
    let again = |what: &str| match &retry {
        Some(wait) => format!("{what} Try again in {wait}."),
        None => format!("{what} Try again later."),
    };
    let deployment = matches!(denial.hint, Hint::DeploymentLicense);
    let upstream_local = matches!(denial.hint, Hint::Upstream { local: true });
    match denial.reason {
        Reason::LicenseMissing => match &denial.hint {
            Hint::LicenseHeader(name) if name == http::header::AUTHORIZATION => {
                "Send the license with the request, in the <code>Authorization</code> header: \
                 <code>Authorization: Bearer &lt;license token&gt;</code>."
                    .to_owned()
            }
            Hint::LicenseHeader(name) => format!(
                "Send the license with the request, in the <code>{}</code> header.",
                Escaped(name.as_str())
            ),
            _ => "The deployment license is missing: this installation has no license in \
                  force. Its operator needs to install the license file (or fix the license \
                  refresh); every licensed request is refused until then."
                .to_owned(),
        },
        Reason::LicenseMalformed
        | Reason::LicenseSignatureInvalid
        | Reason::LicenseKeyUnknown
        | Reason::LicenseAlgorithmRejected
        | Reason::LicenseIssuerMismatch
        | Reason::LicenseAudienceMismatch => {
            if deployment {
                "The deployment license was not accepted (the detail says why). Its operator \
                 needs to install a valid license from the vendor."
                    .to_owned()
            } else {
                "The license sent with the request was not accepted (the detail says why). \
                 Send the token exactly as the vendor issued it, for this service."
                    .to_owned()
            }
        }
        Reason::LicenseExpired => {
            if deployment {
                "The deployment license has expired. Its operator needs to install a renewed \
                 license from the vendor."
                    .to_owned()
            } else {
                "The license has expired. Renew it with the vendor and send the new token."
                    .to_owned()
            }
        }
        Reason::LicenseRevoked => {
            if deployment {
                "The vendor has revoked the deployment license. Its operator needs to install \
                 another license from the vendor."
                    .to_owned()
            } else {
                "The vendor has revoked this license. Contact the vendor for a license that is \
                 in force, and send its token."
                    .to_owned()
            }
        }
        Reason::LicenseNotYetValid => "The license is not valid yet. Wait until its start \
                                       date, or check that this machine's clock is right."
            .to_owned(),
        Reason::EnvironmentNotLicensed => "The license does not cover this environment \
             (cluster, namespace, region or service account). Ask the vendor for a license \
             that includes it."
            .to_owned(),
        Reason::FeatureNotLicensed => match &denial.hint {
            Hint::MissingFeature {
                feature,
                license,
                plan,
            } if !plan.is_empty() => format!(
                "This needs the feature <code>{f}</code>, which license <code>{l}</code> does \
                 not include: its plan, <code>{p}</code>, lacks it. Upgrade the plan, or ask \
                 the vendor to add <code>{f}</code> to the license.",
                f = Escaped(feature),
                l = Escaped(license),
                p = Escaped(plan)
            ),
            Hint::MissingFeature {
                feature, license, ..
            } => format!(
                "This needs the feature <code>{f}</code>, which license <code>{l}</code> does \
                 not include. Ask the vendor to add <code>{f}</code> to the license.",
                f = Escaped(feature),
                l = Escaped(license)
            ),
            _ => "The license does not include a feature this route needs. Ask the vendor to \
                  add it."
                .to_owned(),
        },
        Reason::RateLimited => again("Too many requests in a short time."),
        Reason::QuotaExceeded => match &retry {
            Some(wait) => format!("The quota for this period is used up. It resets in {wait}."),
            None => "The quota for this period is used up.".to_owned(),
        },
        Reason::SeatLimitReached => {
            again("Every seat of the license is in use; a seat frees when its holder goes idle.")
        }
        Reason::SeatIdentityMissing => "This route counts seats per user: send the identity \
                                        the detail names with the request."
            .to_owned(),
        Reason::ConcurrencyLimited => again("Too many requests are in progress at once."),
        Reason::LicenseVerificationThrottled => again(
            "Too many licenses that failed verification came from this address. \
             Send a valid license.",
        ),
        Reason::LimitStoreUnavailable => {
            again("The usage counters cannot be reached for the moment.")
        }
        Reason::RouteDenied => {
            "This route is closed by the policy; no license opens it.".to_owned()
        }
        Reason::RouteNotFound => "Nothing is served at this address. Check the URL.".to_owned(),
        Reason::UpgradeNotAllowed => "This route does not accept WebSocket connections.".to_owned(),
        Reason::UserTokenMissing => "This needs you to be signed in: send the token your \
             organisation's sign-in gave you (<code>Authorization: Bearer &lt;token&gt;</code>, \
             or the session cookie), then try again."
            .to_owned(),
        Reason::UserTokenInvalid if retry.is_some() => {
            again("Too many sign-in tokens that failed verification came from this address.")
        }
        Reason::UserTokenInvalid => "Your sign-in token was not accepted (the detail says \
             why: expired, for another application, or not from your organisation's sign-in). \
             Sign in again and retry."
            .to_owned(),
        Reason::UserKeysUnavailable => again(
            "Sign-ins cannot be checked for the moment: the keys of the organisation's \
             identity provider are not loaded yet.",
        ),
        Reason::RoleMissing => "Your account does not have a role this needs (the detail \
             names it). Ask your organisation's administrator to grant it."
            .to_owned(),
        Reason::RoleNotLicensed => "Your account has the role this needs, but your \
             organisation's license does not include it. Ask the vendor to add the role to \
             the license or plan."
            .to_owned(),
        Reason::BadRequest | Reason::BadRequestPath => "The request was refused as sent (the \
             detail says why). Check the URL: encoded slashes, backslashes, <code>;</code> and \
             malformed escapes are not accepted."
            .to_owned(),
        Reason::UpstreamUnavailable if upstream_local => "The application behind licensegate \
             is down or not listening. Start it (or check the address and port it listens on), \
             then reload this page."
            .to_owned(),
        Reason::UpstreamUnavailable => {
            "The service behind this gateway is unavailable. Try again in a moment.".to_owned()
        }
        Reason::UpstreamTimeout if upstream_local => "The application behind licensegate is \
             slow or stuck: it did not answer in the time allowed \
             (<code>timeouts.upstream_response</code>). Check it, then reload this page."
            .to_owned(),
        Reason::UpstreamTimeout => {
            "The service behind this gateway is slow to answer. Try again in a moment.".to_owned()
        }
        Reason::UpstreamOverloaded => again("The service is busy."),
        Reason::InstanceLimitReached => again(
            "The license allows a number of copies of this service to run at once, and that \
             many others are running. This copy serves as soon as one of them stops; to run \
             more at once, the license needs a higher instance limit.",
        ),
        // Never denials; a page for them would be a bug, not a crash.
        Reason::Allowed | Reason::CorsPreflight => String::new(),
    }
}

/// A detail (lower-case, as problem details are) as a sentence on a page.
fn sentence(detail: &str) -> std::borrow::Cow<'_, str> {
    match detail.chars().next() {
        Some(first) if first.is_ascii_lowercase() => {
            let mut text = String::with_capacity(detail.len() + 1);
            text.push(first.to_ascii_uppercase());
            text.push_str(&detail[1..]);
            if !text.ends_with(['.', '!', '?']) {
                text.push('.');
            }
            std::borrow::Cow::Owned(text)
        }
        _ => std::borrow::Cow::Borrowed(detail),
    }
}

/// The denial's `Retry-After` (delta-seconds, as licensegate sends it),
/// for a person: "30s", "4m 10s".
fn retry_after(denial: &Denial) -> Option<String> {
    let seconds: u64 = denial
        .headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(humantime::format_duration(Duration::from_secs(seconds.max(1))).to_string())
}

/// Text escaped for HTML element content and quoted attribute values.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}
