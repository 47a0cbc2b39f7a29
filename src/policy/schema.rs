//! The policy file as written. Every struct denies unknown fields and every
//! mapping refuses a key given twice, so a typo or a copy-paste slip is an
//! error with its file, line and column rather than a silently ignored (or
//! silently replaced) rule. Meaning (cross-references, patterns, precedence)
//! is checked when the file is compiled, in [`super::compile`].
//!
//! Values that can be written in more than one shape (a number or
//! `lic.limits.NAME`, a key or a list of keys, a header value or a
//! condition) are read by hand-written visitors rather than
//! `#[serde(untagged)]`: untagged enums buffer the value first, and an error
//! raised afterwards is located at the enclosing mapping. A visitor raises it
//! while the parser is at the value, and serde_norway attaches that position.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::duration::HumanDuration;

/// Visitor methods that refuse a kind of value with one custom message
/// (serde's default says `invalid type: …, expected …`).
macro_rules! refuse {
    ($message:expr; $($kind:ident),* $(,)?) => {
        $(refuse!(@method $message, $kind);)*
    };
    (@method $message:expr, bool) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
    };
    (@method $message:expr, i64) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
    };
    (@method $message:expr, u64) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
    };
    (@method $message:expr, f64) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
    };
    (@method $message:expr, str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
    };
    (@method $message:expr, unit) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom($message))
        }
    };
    (@method $message:expr, seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom($message))
        }
    };
    (@method $message:expr, map) => {
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom($message))
        }
    };
}

/// Flow collections (`[…]`, `{…}`) nested deeper than this are refused
/// before the document is parsed. The YAML scanner rescans every open level
/// at each token (libyaml's `stale_simple_keys`), so its time grows with the
/// square of the depth: 20,000 nested `{a: ` (80 KB) took 6 s in a debug
/// build. No policy needs more than a handful of levels.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The line and column (1-based) of the first `[` or `{` nested deeper than
/// [`MAX_FLOW_DEPTH`], in one linear pass. Quoted scalars and comments are
/// skipped; a bracket inside a plain scalar (`prefix: a[b`) is counted, which
/// can only overstate the depth, by the few such brackets a real file has.
pub fn check_flow_depth(text: &str) -> Result<(), (usize, usize)> {
    let mut depth = 0usize;
    let (mut line, mut column) = (1usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    // The byte before, at a line start a space: a comment starts after a
    // space, a quoted scalar after a space or an indicator (`it's` is plain).
    let mut before = b' ';
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        if b == b'\n' {
            (line, column) = (line + 1, 0);
            comment = false;
            before = b' ';
            continue;
        }
        // Columns count characters: skip UTF-8 continuation bytes.
        if b & 0xC0 != 0x80 {
            column += 1;
        }
        if comment {
            continue;
        }
        match quote {
            Some(b'"') => match b {
                // An escape: the next byte is never the closing quote.
                b'\\' if bytes.peek().is_some_and(|&next| next != b'\n') => {
                    bytes.next();
                    column += 1;
                }
                b'"' => quote = None,
                _ => {}
            },
            // In single quotes `''` is a quote, not the end.
            Some(_) if b == b'\'' => {
                if bytes.peek() == Some(&b'\'') {
                    bytes.next();
                    column += 1;
                } else {
                    quote = None;
                }
            }
            Some(_) => {}
            None => match b {
                b'#' if matches!(before, b' ' | b'\t') => comment = true,
                b'"' | b'\'' if matches!(before, b' ' | b'\t' | b'[' | b'{' | b',' | b':') => {
                    quote = Some(b);
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err((line, column));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        before = b;
    }
    Ok(())
}

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
    pub plans: UniqueMap<PlanSpec>,
    /// Limit name → definition; routes refer to limits by name.
    #[serde(default)]
    pub limits: UniqueMap<LimitSpec>,
    /// Meter name → what a served request adds to it; routes refer to
    /// meters by name.
    #[serde(default)]
    pub meters: UniqueMap<MeterSpec>,
    /// Routes; see the README for precedence.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// How many replicas may serve under one license at once.
    pub instances: Option<InstancesSpec>,
}

/// A mapping with text keys, each given at most once, in the order written.
/// A repeated key is an error located at the repetition (a plain map would
/// keep the last value and drop the first without a word).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniqueMap<V>(Vec<(String, V)>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(Vec::new())
    }
}

impl<V> UniqueMap<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in the order written.
    pub fn iter(&self) -> std::slice::Iter<'_, (String, V)> {
        self.0.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, (String, V)> {
        self.0.iter_mut()
    }
}

impl<'a, V> IntoIterator for &'a UniqueMap<V> {
    type Item = &'a (String, V);
    type IntoIter = std::slice::Iter<'a, (String, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                while let Some(key) = map.next_key_seed(NewKey { seen: &seen })? {
                    let value = map.next_value()?;
                    seen.insert(key.clone());
                    entries.push((key, value));
                }
                Ok(UniqueMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A mapping key not seen before in its mapping. The check is made while the
/// parser is at the key, so the error carries the key's position.
struct NewKey<'a> {
    seen: &'a HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for NewKey<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NewKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.seen.contains(key) {
            Err(E::custom(format_args!(
                "duplicate key `{key}` (already given above in this mapping)"
            )))
        } else {
            Ok(key.to_owned())
        }
    }
}

/// A required duration (`per: 1m`), read so that an error points at the
/// value rather than at the enclosing mapping.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<HumanDuration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

/// An optional duration (`idle: 30m`), like [`duration`].
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<HumanDuration>, D::Error> {
    struct OptionalDuration;

    impl<'de> Visitor<'de> for OptionalDuration {
        type Value = Option<HumanDuration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            DurationVisitor.expecting(f)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            duration(deserializer).map(Some)
        }
    }

    deserializer.deserialize_option(OptionalDuration)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as `250ms`, `10s` or `5m`")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanDuration, E> {
        text.parse().map_err(E::custom)
    }
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
    pub limits: UniqueMap<u64>,
    pub seats: Option<u64>,
    /// The user roles the plan includes; when a plan or license lists
    /// roles, a role outside them is refused even if the identity provider
    /// grants it (`role_not_licensed`).
    pub roles: Option<Vec<String>>,
}

/// A limit: exactly one of `rate`, `quota`, `seats`, `concurrency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub rate: Option<RateSpec>,
    pub quota: Option<QuotaSpec>,
    pub seats: Option<SeatsSpec>,
    pub concurrency: Option<ConcurrencySpec>,
    /// With a shared store: what to do when it cannot answer in time.
    pub on_store_error: Option<StoreErrorSetting>,
    /// Rates and quotas: state the budget (`RateLimit-Policy`, `RateLimit`)
    /// on allowed responses too. Default: when keyed by the license.
    pub headers: Option<bool>,
    /// Quotas: which requests use up units, `served` (default) or
    /// `attempted`.
    pub count: Option<CountSetting>,
    /// Quotas: a soft limit; requests pass up to this multiple of the
    /// limit (`1.25`: 125 %), the units past 100 % metered as overage.
    pub overage: Option<f64>,
    /// Quotas: percentages of the limit whose crossing is announced (default
    /// `[80, 100]`).
    pub thresholds: Option<Vec<u16>>,
}

/// `served`: a unit is taken when the request is decided (so concurrent
/// requests cannot overshoot) and given back unless the response is served
/// (below 500, body complete); `attempted`: every allowed request keeps its
/// unit, whatever came of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountSetting {
    Served,
    Attempted,
}

/// `fallback` (count locally, the limit divided by the replica count),
/// `allow` or `deny` (503 `limit_store_unavailable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreErrorSetting {
    Fallback,
    Allow,
    Deny,
}

/// `limit: 20` or `limit: lic.limits.NAME` (or `lic.seats` for seats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AmountSpec {
    Fixed(u64),
    /// A path into the license claims, checked when compiled.
    License(String),
}

const AMOUNT: &str = "expected a whole number or `lic.limits.NAME` (or `lic.seats` for seats)";

impl<'de> Deserialize<'de> for AmountSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmountVisitor;

        impl<'de> Visitor<'de> for AmountVisitor {
            type Value = AmountSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(AMOUNT)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<AmountSpec, E> {
                Ok(AmountSpec::Fixed(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<AmountSpec, E> {
                u64::try_from(n)
                    .map(AmountSpec::Fixed)
                    .map_err(|_| E::custom(AMOUNT))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<AmountSpec, E> {
                Ok(AmountSpec::License(text.to_owned()))
            }

            refuse!(AMOUNT; bool, f64, unit, seq, map);
        }

        deserializer.deserialize_any(AmountVisitor)
    }
}

/// `default: 20` or `default: unlimited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultSpec {
    Amount(u64),
    Unlimited,
}

const DEFAULT: &str = "expected a whole number or `unlimited`";

impl<'de> Deserialize<'de> for DefaultSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DefaultVisitor;

        impl<'de> Visitor<'de> for DefaultVisitor {
            type Value = DefaultSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DEFAULT)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DefaultSpec, E> {
                Ok(DefaultSpec::Amount(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DefaultSpec, E> {
                u64::try_from(n)
                    .map(DefaultSpec::Amount)
                    .map_err(|_| E::custom(DEFAULT))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<DefaultSpec, E> {
                match text {
                    "unlimited" => Ok(DefaultSpec::Unlimited),
                    _ => Err(E::custom(DEFAULT)),
                }
            }

            refuse!(DEFAULT; bool, f64, unit, seq, map);
        }

        deserializer.deserialize_any(DefaultVisitor)
    }
}

/// One key part or a list of them.
#[derive(Clone, Debug)]
pub struct KeySpec(pub Vec<String>);

const KEY: &str = "expected a key (`license`, `claim:NAME`, `header:NAME`, `client_ip`, `route`) or a list of keys";
const KEY_PART: &str =
    "expected a key (`license`, `claim:NAME`, `header:NAME`, `client_ip` or `route`)";

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeySpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(KEY)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<KeySpec, E> {
                Ok(KeySpec(vec![text.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeySpec, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<KeyPartText>()? {
                    parts.push(part.0);
                }
                Ok(KeySpec(parts))
            }

            refuse!(KEY; bool, i64, u64, f64, unit, map);
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

/// One element of a key list: text, refused at its own position otherwise.
struct KeyPartText(String);

impl<'de> Deserialize<'de> for KeyPartText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;

        impl<'de> Visitor<'de> for PartVisitor {
            type Value = KeyPartText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(KEY_PART)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<KeyPartText, E> {
                Ok(KeyPartText(text.to_owned()))
            }

            refuse!(KEY_PART; bool, i64, u64, f64, unit, seq, map);
        }

        deserializer.deserialize_any(PartVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub limit: AmountSpec,
    pub default: Option<DefaultSpec>,
    /// The window the limit is counted over, e.g. `1m`.
    #[serde(deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "optional_duration")]
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

/// The instance limit: how many replicas may serve under one license at
/// once, and what a replica past it does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesSpec {
    /// Default `lic.limits.instances`.
    pub limit: Option<AmountSpec>,
    /// For licenses and plans that do not set it (default: unlimited).
    pub default: Option<DefaultSpec>,
    /// Whose instances: default `license`, or `claim:customer` (every
    /// license of one customer shares the slots).
    pub key: Option<KeySpec>,
    /// What a replica without a slot does (default `not_ready`).
    pub on_limit: Option<OnLimitSetting>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimitSetting {
    /// `/readyz` answers 503: the orchestrator routes no traffic to it.
    NotReady,
    /// Ready, but licensed requests get 403 `instance_limit_reached`.
    Deny,
    /// Serves, and says so in metrics, logs and the decision header.
    Shadow,
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
    #[serde(default, deserialize_with = "optional_duration")]
    pub idle: Option<HumanDuration>,
    /// Whose seats: default `license`.
    pub key: Option<KeySpec>,
    /// A `header:NAME` identity is set by a proxy in front (single sign-on)
    /// that strips client copies: no warning that clients can type it.
    #[serde(default)]
    pub trust_header: bool,
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
    /// suffix, last only). A route has `path` or `grpc`.
    pub path: Option<String>,
    /// A gRPC method (or every method of a service), for `path`.
    pub grpc: Option<GrpcSpec>,
    /// Any method when absent.
    pub methods: Option<Vec<String>>,
    /// `api.example.com` or `*.example.com`; any host when absent.
    pub host: Option<String>,
    /// Header name → condition.
    #[serde(default)]
    pub headers: UniqueMap<HeaderConditionSpec>,
    /// `licensed` (default), `public` or `deny`.
    pub access: Option<AccessSetting>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub limits: Vec<LimitUseSpec>,
    /// The meters a served request feeds.
    #[serde(default)]
    pub meters: Vec<MeterUseSpec>,
    pub mode: Option<ModeSetting>,
    /// Whether a WebSocket upgrade (the only upgrade ever tunnelled) is
    /// allowed on this route; off by default.
    #[serde(default)]
    pub websocket: bool,
    /// What a CORS preflight to this route gets: `forward` (default: to
    /// the upstream, without a license check or limits) or `decide` (like
    /// any request).
    pub preflight: Option<PreflightSetting>,
    /// The user roles the route needs: a list (any of them), or
    /// `{any_of: [...], all_of: [...]}`.
    pub roles: Option<RolesSpec>,
}

/// `grpc: {service: shop.v1.Reports, method: Export}`: the path
/// `/shop.v1.Reports/Export`, POST; without `method`, every method of the
/// service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// The fully qualified service name, package included.
    pub service: String,
    pub method: Option<String>,
}

/// `[analyst, admin]` (any of them) or `{any_of: [...], all_of: [...]}`.
#[derive(Debug)]
pub enum RolesSpec {
    AnyOf(Vec<String>),
    Rule(RoleRuleSpec),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRuleSpec {
    #[serde(default)]
    pub any_of: Vec<String>,
    #[serde(default)]
    pub all_of: Vec<String>,
}

const ROLES: &str =
    "expected a list of roles (any of them), or {any_of: [ROLE, ...], all_of: [ROLE, ...]}";

impl<'de> Deserialize<'de> for RolesSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RolesVisitor;

        impl<'de> Visitor<'de> for RolesVisitor {
            type Value = RolesSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ROLES)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(RolesSpec::AnyOf)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RolesSpec::Rule)
            }

            refuse!(ROLES; bool, i64, u64, f64, str, unit);
        }

        deserializer.deserialize_any(RolesVisitor)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreflightSetting {
    Forward,
    Decide,
}

/// `x-tier: gold` (equals), `{present: true}`, `{prefix: "v2"}`.
#[derive(Debug)]
pub enum HeaderConditionSpec {
    Equals(String),
    /// An unquoted value YAML reads as a number or a boolean (`x-version:
    /// 2`), which is compared as text too. The text here is the value as
    /// parsed (`2.10` reads as `2.1`); [`super::compile`] replaces it with
    /// the text as written, read back from the document.
    EqualsScalar(String),
    Present(bool),
    Prefix(String),
}

const HEADER: &str =
    "expected a value to equal, or one of {present: true|false}, {prefix: TEXT}, {equals: TEXT}";

impl<'de> Deserialize<'de> for HeaderConditionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Present,
            Prefix,
            Equals,
        }

        struct ConditionVisitor;

        impl<'de> Visitor<'de> for ConditionVisitor {
            type Value = HeaderConditionSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(HEADER)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(HeaderConditionSpec::Equals(text.to_owned()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(HeaderConditionSpec::EqualsScalar(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(HeaderConditionSpec::EqualsScalar(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(HeaderConditionSpec::EqualsScalar(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(HeaderConditionSpec::EqualsScalar(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut condition = None;
                while let Some(field) = map.next_key::<Field>()? {
                    let next = match field {
                        Field::Present => HeaderConditionSpec::Present(map.next_value()?),
                        Field::Prefix => HeaderConditionSpec::Prefix(map.next_value()?),
                        Field::Equals => HeaderConditionSpec::Equals(map.next_value()?),
                    };
                    if condition.replace(next).is_some() {
                        return Err(de::Error::custom(HEADER));
                    }
                }
                condition.ok_or_else(|| de::Error::custom(HEADER))
            }

            refuse!(HEADER; unit, seq);
        }

        deserializer.deserialize_any(ConditionVisitor)
    }
}

/// `api_rate` or `{limit: api_calls, cost: 5}`.
#[derive(Debug)]
pub struct LimitUseSpec {
    pub limit: String,
    pub cost: u64,
}

const LIMIT_USE: &str = "expected a limit name or {limit: NAME, cost: N}";

impl<'de> Deserialize<'de> for LimitUseSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Limit,
            Cost,
        }

        struct UseVisitor;

        impl<'de> Visitor<'de> for UseVisitor {
            type Value = LimitUseSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(LIMIT_USE)
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                Ok(LimitUseSpec {
                    limit: name.to_owned(),
                    cost: 1,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut limit: Option<String> = None;
                let mut cost: Option<u64> = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Limit if limit.is_none() => limit = Some(map.next_value()?),
                        Field::Cost if cost.is_none() => cost = Some(map.next_value()?),
                        Field::Limit => return Err(de::Error::duplicate_field("limit")),
                        Field::Cost => return Err(de::Error::duplicate_field("cost")),
                    }
                }
                match limit {
                    Some(limit) => Ok(LimitUseSpec {
                        limit,
                        cost: cost.unwrap_or(1),
                    }),
                    None => Err(de::Error::custom(LIMIT_USE)),
                }
            }

            refuse!(LIMIT_USE; bool, i64, u64, f64, unit, seq);
        }

        deserializer.deserialize_any(UseVisitor)
    }
}

/// What a served request adds to a meter: `requests` (1, or the route's
/// `cost`), `request_bytes`, `response_bytes`, or `{header: NAME}` (a whole
/// number the workload sets on its response, removed before the client sees
/// it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeterSpec {
    Requests,
    RequestBytes,
    ResponseBytes,
    Header(String),
}

const METER: &str = "expected `requests`, `request_bytes`, `response_bytes` or {header: NAME}";

impl<'de> Deserialize<'de> for MeterSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Header,
        }

        struct MeterVisitor;

        impl<'de> Visitor<'de> for MeterVisitor {
            type Value = MeterSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(METER)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                match text {
                    "requests" => Ok(MeterSpec::Requests),
                    "request_bytes" => Ok(MeterSpec::RequestBytes),
                    "response_bytes" => Ok(MeterSpec::ResponseBytes),
                    other => Err(E::custom(format!("`{other}`: {METER}"))),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut header: Option<String> = None;
                while let Some(Field::Header) = map.next_key::<Field>()? {
                    if header.is_some() {
                        return Err(de::Error::duplicate_field("header"));
                    }
                    header = Some(map.next_value()?);
                }
                header
                    .map(MeterSpec::Header)
                    .ok_or_else(|| de::Error::custom(METER))
            }

            refuse!(METER; bool, i64, u64, f64, unit, seq);
        }

        deserializer.deserialize_any(MeterVisitor)
    }
}

/// `api_calls` or `{meter: api_calls, cost: 5}`.
#[derive(Debug)]
pub struct MeterUseSpec {
    pub meter: String,
    /// `None` when not written (1 for `requests` meters).
    pub cost: Option<u64>,
}

const METER_USE: &str = "expected a meter name or {meter: NAME, cost: N}";

impl<'de> Deserialize<'de> for MeterUseSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "lowercase")]
        enum Field {
            Meter,
            Cost,
        }

        struct UseVisitor;

        impl<'de> Visitor<'de> for UseVisitor {
            type Value = MeterUseSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(METER_USE)
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
                Ok(MeterUseSpec {
                    meter: name.to_owned(),
                    cost: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut meter: Option<String> = None;
                let mut cost: Option<u64> = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Meter if meter.is_none() => meter = Some(map.next_value()?),
                        Field::Cost if cost.is_none() => cost = Some(map.next_value()?),
                        Field::Meter => return Err(de::Error::duplicate_field("meter")),
                        Field::Cost => return Err(de::Error::duplicate_field("cost")),
                    }
                }
                match meter {
                    Some(meter) => Ok(MeterUseSpec { meter, cost }),
                    None => Err(de::Error::custom(METER_USE)),
                }
            }

            refuse!(METER_USE; bool, i64, u64, f64, unit, seq);
        }

        deserializer.deserialize_any(UseVisitor)
    }
}
