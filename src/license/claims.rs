//! The claims a license token carries. The JSON Schema for issuers is
//! `policies/license-claims.schema.json`; a test keeps the two in step.
//!
//! Unknown members are ignored so issuers can add fields without breaking
//! older sidecars. Repeated members are rejected at every depth, in the same
//! single pass that builds the structs: the objects are read by hand with
//! `json::visit_members` instead of derived, because a derived struct skips
//! unknown members unseen and a separate duplicate-checking pass doubled the
//! parse time. `null` is never read as "absent": for `lic.env` lists
//! "absent" means "any", and a signed `null` must not quietly widen a
//! license.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::json;

/// The verified claims of a license token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// Who issued the license, checked against [`crate::license::Validator::issuer`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The license id; not empty.
    pub sub: String,
    /// Who the license is for, checked against [`crate::license::Validator::audience`].
    #[serde(skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    /// Expiry. Required: a license that never expires cannot be rotated away
    /// from a leaked signing key; issue far-future dates instead.
    pub exp: NumericDate,
    /// Not valid before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<NumericDate>,
    /// Issue time; informational only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<NumericDate>,
    /// Token id; informational.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// What is licensed.
    pub lic: LicenseClaims,
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;
        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JWT claims object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Claims, A::Error> {
                let (mut iss, mut sub, mut aud, mut exp) = (None, None, None, None);
                let (mut nbf, mut iat, mut jti, mut lic) = (None, None, None, None);
                json::visit_members(map, |key, map| {
                    match key {
                        "iss" => iss = Some(map.next_value()?),
                        "sub" => sub = Some(map.next_value::<NonEmpty>()?.0),
                        "aud" => aud = Some(map.next_value()?),
                        "exp" => exp = Some(map.next_value()?),
                        "nbf" => nbf = Some(map.next_value()?),
                        "iat" => iat = Some(map.next_value()?),
                        "jti" => jti = Some(map.next_value()?),
                        "lic" => lic = Some(map.next_value()?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Ok(Claims {
                    iss,
                    sub: sub.ok_or_else(|| de::Error::missing_field("sub"))?,
                    aud: aud.unwrap_or_default(),
                    exp: exp.ok_or_else(|| de::Error::missing_field("exp"))?,
                    nbf,
                    iat,
                    jti,
                    lic: lic.ok_or_else(|| de::Error::missing_field("lic"))?,
                })
            }
        }
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

/// The `lic` object: what the license grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LicenseClaims {
    /// Plan name, e.g. `enterprise`.
    pub plan: String,
    /// Enabled feature names.
    pub features: Vec<String>,
    /// Named numeric limits, e.g. `{"rps": 100}`.
    pub limits: BTreeMap<String, u64>,
    /// Licensed seats, if counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seats: Option<u32>,
    /// Where the workload may run.
    pub env: LicenseEnv,
    /// Customer display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The user roles licensed, if capped: a role outside them is refused
    /// however the customer's identity provider grants it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

impl LicenseClaims {
    /// Whether `feature` is listed.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

impl<'de> Deserialize<'de> for LicenseClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LicVisitor;
        impl<'de> Visitor<'de> for LicVisitor {
            type Value = LicenseClaims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the `lic` object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LicenseClaims, A::Error> {
                let mut plan = None;
                let mut lic = LicenseClaims::default();
                json::visit_members(map, |key, map| {
                    match key {
                        "plan" => plan = Some(map.next_value()?),
                        "features" => lic.features = map.next_value()?,
                        "limits" => lic.limits = map.next_value::<Limits>()?.0,
                        "seats" => lic.seats = Some(map.next_value()?),
                        "env" => lic.env = map.next_value()?,
                        "customer" => lic.customer = Some(map.next_value()?),
                        "roles" => lic.roles = Some(map.next_value()?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                lic.plan = plan.ok_or_else(|| de::Error::missing_field("plan"))?;
                Ok(lic)
            }
        }
        deserializer.deserialize_map(LicVisitor)
    }
}

/// Deployment restrictions. Each list, when present, names the only values
/// admitted on that dimension; an absent list admits any value; an empty
/// list admits none. Matching is exact and case-sensitive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LicenseEnv {
    /// Cluster names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// Kubernetes namespaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Cloud regions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<String>>,
    /// Service account names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for LicenseEnv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = LicenseEnv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the `lic.env` object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LicenseEnv, A::Error> {
                let mut env = LicenseEnv::default();
                json::visit_members(map, |key, map| {
                    match key {
                        "clusters" => env.clusters = Some(map.next_value()?),
                        "namespaces" => env.namespaces = Some(map.next_value()?),
                        "regions" => env.regions = Some(map.next_value()?),
                        "service_accounts" => env.service_accounts = Some(map.next_value()?),
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Ok(env)
            }
        }
        deserializer.deserialize_map(EnvVisitor)
    }
}

/// `lic.limits`: a map whose keys must be unique.
struct Limits(BTreeMap<String, u64>);

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitsVisitor;
        impl<'de> Visitor<'de> for LimitsVisitor {
            type Value = Limits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of non-negative integer limits")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Limits, A::Error> {
                let mut limits = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    let value = map.next_value::<u64>()?;
                    if limits.contains_key(&name) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key {}",
                            super::error::quote(&name)
                        )));
                    }
                    limits.insert(name, value);
                }
                Ok(Limits(limits))
            }
        }
        deserializer.deserialize_map(LimitsVisitor)
    }
}

/// A string that must not be empty.
struct NonEmpty(String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(text))
    }
}

/// Seconds since the Unix epoch, as a JWT NumericDate (RFC 7519 §2).
///
/// Only whole, non-negative seconds up to the end of year 9999 are accepted:
/// fractional dates are legal JWT but no issuer of ours needs them, and the
/// cap keeps all arithmetic far from overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NumericDate(pub u64);

impl NumericDate {
    /// 9999-12-31T23:59:59Z.
    pub const MAX: u64 = 253_402_300_799;
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DateVisitor;
        impl Visitor<'_> for DateVisitor {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate: whole seconds since 1970-01-01T00:00:00Z")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                if v <= NumericDate::MAX {
                    Ok(NumericDate(v))
                } else {
                    Err(E::custom(format_args!(
                        "NumericDate {v} is after year 9999"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format_args!("NumericDate {v} is before 1970"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                Err(E::custom(format_args!(
                    "NumericDate {v} is not a whole number of seconds"
                )))
            }
        }
        deserializer.deserialize_any(DateVisitor)
    }
}

/// The `aud` claim: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience(pub Vec<String>);

impl Audience {
    /// Whether `audience` is one of the values.
    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|a| a == audience)
    }

    /// True when the claim was absent (or an empty array).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Audience {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudienceVisitor;
        impl<'de> Visitor<'de> for AudienceVisitor {
            type Value = Audience;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<String>()? {
                    values.push(v);
                }
                Ok(Audience(values))
            }
        }
        deserializer.deserialize_any(AudienceVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Claims, String> {
        serde_json::from_slice(value.to_string().as_bytes()).map_err(|e| e.to_string())
    }

    fn minimal() -> serde_json::Value {
        json!({"sub": "lic-1", "exp": 2_000_000_000u64, "lic": {"plan": "pro"}})
    }

    #[test]
    fn minimal_claims_take_defaults() {
        let c = parse(minimal()).unwrap();
        assert_eq!(c.sub, "lic-1");
        assert_eq!(c.exp, NumericDate(2_000_000_000));
        assert!(c.aud.is_empty());
        assert_eq!(c.lic.plan, "pro");
        assert!(c.lic.features.is_empty() && c.lic.limits.is_empty());
        assert_eq!(c.lic.env, LicenseEnv::default());
    }

    #[test]
    fn full_claims_round_trip() {
        let value = json!({
            "iss": "https://licenses.example", "sub": "lic-1", "aud": ["a", "b"],
            "exp": 2_000_000_000u64, "nbf": 1_000, "iat": 1_000, "jti": "j-1",
            "lic": {
                "plan": "enterprise", "features": ["sso", "audit"],
                "limits": {"rps": 100, "tenants": 5}, "seats": 25,
                "env": {"clusters": ["prod-eu"], "namespaces": ["shop"],
                        "regions": ["eu-west-1"], "service_accounts": ["api"]},
                "customer": "ACME"
            },
            "x-vendor": {"anything": [1, 2]}
        });
        let c = parse(value.clone()).unwrap();
        assert!(c.aud.contains("b") && !c.aud.contains("c"));
        assert!(c.lic.has_feature("sso"));
        assert_eq!(c.lic.limits["tenants"], 5);
        assert_eq!(c.lic.seats, Some(25));
        assert_eq!(
            c.lic.env.regions.as_deref(),
            Some(&["eu-west-1".to_owned()][..])
        );
        // Serialising drops only the unknown member.
        let mut expected = value;
        expected.as_object_mut().unwrap().remove("x-vendor");
        assert_eq!(serde_json::to_value(&c).unwrap(), expected);
    }

    #[test]
    fn audience_accepts_string_or_array_only() {
        let mut v = minimal();
        v["aud"] = json!("only");
        assert_eq!(parse(v.clone()).unwrap().aud, Audience(vec!["only".into()]));
        v["aud"] = json!(7);
        assert!(parse(v.clone())
            .unwrap_err()
            .contains("a string or an array"));
        v["aud"] = json!(["ok", 7]);
        assert!(parse(v).is_err());
    }

    #[test]
    fn numeric_dates_must_be_whole_non_negative_seconds() {
        for (exp, needle) in [
            (json!(1.5), "not a whole number"),
            (json!(2e9), "not a whole number"),
            (json!(-1), "before 1970"),
            (json!(NumericDate::MAX + 1), "after year 9999"),
            (json!(u64::MAX), "after year 9999"),
            (json!("2000000000"), "NumericDate"),
            (json!(null), "NumericDate"),
        ] {
            let mut v = minimal();
            v["exp"] = exp.clone();
            let err = parse(v).unwrap_err();
            assert!(err.contains(needle), "{exp}: {err}");
        }
    }

    #[test]
    fn required_members_and_types() {
        for field in ["sub", "exp", "lic"] {
            let mut v = minimal();
            v.as_object_mut().unwrap().remove(field);
            let err = parse(v).unwrap_err();
            assert!(err.contains(&format!("missing field `{field}`")), "{err}");
        }
        let mut v = minimal();
        v["lic"] = json!({"features": []});
        assert!(parse(v).unwrap_err().contains("missing field `plan`"));
        let mut v = minimal();
        v["lic"]["limits"] = json!({"rps": -1});
        assert!(parse(v).is_err());
        let mut v = minimal();
        v["lic"]["seats"] = json!(1u64 << 33);
        assert!(parse(v).is_err());
    }

    #[test]
    fn rejects_non_objects_and_trailing_data() {
        for text in ["[]", "null", "\"x\"", "1"] {
            assert!(serde_json::from_str::<Claims>(text).is_err(), "{text}");
        }
        let ok = minimal().to_string();
        assert!(serde_json::from_str::<Claims>(&ok).is_ok());
        assert!(serde_json::from_str::<Claims>(&format!("{ok} {{}}")).is_err());
        let err = parse(json!({"sub": "", "exp": 1, "lic": {"plan": "p"}})).unwrap_err();
        assert!(err.contains("must not be empty"), "{err}");
    }

    #[test]
    fn null_never_means_absent() {
        for path in [
            &["iss"][..],
            &["nbf"],
            &["lic", "seats"],
            &["lic", "customer"],
            &["lic", "env", "clusters"],
        ] {
            let mut v = minimal();
            v["lic"]["env"] = json!({});
            let mut at = &mut v;
            for key in &path[..path.len() - 1] {
                at = &mut at[*key];
            }
            at[path[path.len() - 1]] = json!(null);
            assert!(parse(v).is_err(), "{path:?}");
        }
    }

    #[test]
    fn duplicate_members_are_rejected_in_lic_and_limits() {
        for text in [
            r#"{"sub":"a","exp":1,"lic":{"plan":"a","plan":"b"}}"#,
            r#"{"sub":"a","exp":1,"lic":{"plan":"a","limits":{"rps":1,"rps":1000}}}"#,
            r#"{"sub":"a","exp":1,"lic":{"plan":"a","env":{"regions":[],"regions":["x"]}}}"#,
            r#"{"sub":"a","exp":1,"x":1,"x":2,"lic":{"plan":"a"}}"#,
            r#"{"sub":"a","exp":1,"x":{"y":[{"z":1,"z":1}]},"lic":{"plan":"a"}}"#,
            r#"{"sub":"a","exp":1,"lic":{"plan":"a","x-ext":{"k":1,"k":2}}}"#,
            r#"{"sub":"a","exp":1,"lic":{"plan":"a","env":{"other":0,"other":1}}}"#,
            r#"{"sub":"a","exp":1,"exp":2,"lic":{"plan":"a"}}"#,
            r#"{"lic":{"plan":"a"},"sub":"a","exp":1,"lic":{"plan":"b"}}"#,
            r#"{"sub":"a","s\u0075b":"b","exp":1,"lic":{"plan":"a"}}"#,
        ] {
            let err = serde_json::from_str::<Claims>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("duplicate key"), "{text}: {err}");
        }
    }
}
