//! The policy file as written. Every struct denies unknown fields, so a typo
//! is an error with its file, line and column rather than a silently ignored
//! rule. Meaning (cross-references, patterns, precedence) is checked when the
//! file is compiled, in [`super::compile`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::config::HumanDuration;

/// One policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `enforce` (default) or `shadow` for every route without its own mode.
    pub mode: Option<ModeSetting>,
    /// What happens to a request no route matches (default `deny`).
    pub unmatched: Option<AccessSetting>,
    /// How paths are compared.
    pub paths: Option<PathsSetting>,
    /// Plan name → what the plan includes.
    #[serde(default)]
    pub plans: BTreeMap<String, PlanSpec>,
    /// Limit name → definition; routes refer to limits by name.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitSpec>,
    /// Routes; see the README for precedence.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    Enforce,
    Shadow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessSetting {
    /// No license needed.
    Public,
    /// A valid license (and the route's features) needed.
    Licensed,
    /// Always refused.
    Deny,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSetting {
    /// `sensitive` (default, as RFC 3986 says) or `insensitive` (for
    /// upstreams that serve `/API/Export` like `/api/export`).
    pub case: Option<CaseSetting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseSetting {
    Sensitive,
    Insensitive,
}

/// What a plan includes; a license naming the plan gets these unless its
/// own `lic.features` / `lic.limits` / `lic.seats` say more.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    pub seats: Option<u64>,
}

/// A limit: exactly one of `rate`, `quota`, `seats`, `concurrency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub rate: Option<RateSpec>,
    pub quota: Option<QuotaSpec>,
    pub seats: Option<SeatsSpec>,
    pub concurrency: Option<ConcurrencySpec>,
}

/// `limit: 20` or `limit: lic.limits.NAME` (or `lic.seats` for seats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmountSpec {
    Fixed(u64),
    /// A path into the license claims, checked when compiled.
    License(String),
}

impl<'de> Deserialize<'de> for AmountSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a whole number or `lic.limits.NAME` (or `lic.seats`)",
            )
        })? {
            Raw::Number(n) => Ok(AmountSpec::Fixed(n)),
            Raw::Text(text) => Ok(AmountSpec::License(text)),
        }
    }
}

/// `default: 20` or `default: unlimited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultSpec {
    Amount(u64),
    Unlimited,
}

impl<'de> Deserialize<'de> for DefaultSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let error = || serde::de::Error::custom("expected a whole number or `unlimited`");
        match Raw::deserialize(deserializer).map_err(|_| error())? {
            Raw::Number(n) => Ok(DefaultSpec::Amount(n)),
            Raw::Text(text) if text == "unlimited" => Ok(DefaultSpec::Unlimited),
            Raw::Text(_) => Err(error()),
        }
    }
}

/// One key part or a list of them.
#[derive(Clone, Debug)]
pub struct KeySpec(pub Vec<String>);

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a key (`license`, `claim:NAME`, `header:NAME`, `client_ip`, `route`) or a list of keys",
            )
        })? {
            Raw::One(one) => Ok(KeySpec(vec![one])),
            Raw::Many(many) => Ok(KeySpec(many)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub limit: AmountSpec,
    pub default: Option<DefaultSpec>,
    /// The window the limit is counted over, e.g. `1m`.
    pub per: HumanDuration,
    /// Requests allowed at once after a quiet spell (default: `limit`).
    pub burst: Option<u64>,
    pub key: Option<KeySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    pub limit: AmountSpec,
    pub default: Option<DefaultSpec>,
    /// Calendar period (UTC): `hour`, `day` or `month`.
    pub period: Option<PeriodSetting>,
    /// Or a rolling window, e.g. `24h`.
    pub rolling: Option<HumanDuration>,
    pub key: Option<KeySpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodSetting {
    Hour,
    Day,
    Month,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeatsSpec {
    /// Default `lic.seats`.
    pub limit: Option<AmountSpec>,
    pub default: Option<DefaultSpec>,
    /// Who holds a seat, e.g. `header:x-user`.
    pub identity: String,
    /// A seat is freed after this long without a request (default 30m).
    pub idle: Option<HumanDuration>,
    /// Whose seats: default `license`.
    pub key: Option<KeySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    pub limit: AmountSpec,
    pub default: Option<DefaultSpec>,
    pub key: Option<KeySpec>,
}

/// A route: what it matches and what it requires.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Shown in denials, logs and the `route` metric label (default: the
    /// methods and path).
    pub name: Option<String>,
    /// `/exact`, `*` (one segment), `{name}` (one segment, named), `**` (any
    /// suffix, last only).
    pub path: String,
    /// Any method when absent.
    pub methods: Option<Vec<String>>,
    /// `api.example.com` or `*.example.com`; any host when absent.
    pub host: Option<String>,
    /// Header name → condition.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderConditionSpec>,
    /// `licensed` (default), `public` or `deny`.
    pub access: Option<AccessSetting>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub limits: Vec<LimitUseSpec>,
    pub mode: Option<ModeSetting>,
}

/// `x-tier: gold` (equals), `{present: true}`, `{prefix: "v2"}`.
#[derive(Debug)]
pub enum HeaderConditionSpec {
    Equals(String),
    Present(bool),
    Prefix(String),
}

impl<'de> Deserialize<'de> for HeaderConditionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            present: Option<bool>,
            prefix: Option<String>,
            equals: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Detailed(Detailed),
        }
        let error = || {
            serde::de::Error::custom(
                "expected a value to equal, or one of {present: true|false}, {prefix: TEXT}, {equals: TEXT}",
            )
        };
        match Raw::deserialize(deserializer).map_err(|_| error())? {
            Raw::Text(text) => Ok(HeaderConditionSpec::Equals(text)),
            Raw::Detailed(d) => match (d.present, d.prefix, d.equals) {
                (Some(present), None, None) => Ok(HeaderConditionSpec::Present(present)),
                (None, Some(prefix), None) => Ok(HeaderConditionSpec::Prefix(prefix)),
                (None, None, Some(equals)) => Ok(HeaderConditionSpec::Equals(equals)),
                _ => Err(error()),
            },
        }
    }
}

/// `api_rate` or `{limit: api_calls, cost: 5}`.
#[derive(Debug)]
pub struct LimitUseSpec {
    pub limit: String,
    pub cost: u64,
}

impl<'de> Deserialize<'de> for LimitUseSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            limit: String,
            cost: Option<u64>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Detailed(Detailed),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a limit name or {limit: NAME, cost: N}")
        })? {
            Raw::Name(limit) => Ok(LimitUseSpec { limit, cost: 1 }),
            Raw::Detailed(d) => Ok(LimitUseSpec {
                limit: d.limit,
                cost: d.cost.unwrap_or(1),
            }),
        }
    }
}
