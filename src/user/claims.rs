//! Reading a verified user token's claims, by the issuer's rules.
//!
//! Runs only after the signature verified. The whole payload is checked for
//! repeated members first (at any depth: `{"roles":[], "roles":["admin"]}`
//! must not mean one thing here and another to the workload), then read as
//! a JSON value, because the subject and roles live at paths the
//! configuration names. A user token is read once and then cached, so the
//! extra pass costs nothing on the request path.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::settings::{ClaimPath, IssuerSettings};
use super::{UserError, VerifiedUser};
use crate::license::json::from_slice_strict;
use crate::license::{quote, Audience, NumericDate};

/// The user that `payload` describes, if it is a token of `issuer`
/// (`issuer_index` in the settings), signed by key `kid`.
pub(crate) fn read(
    payload: &[u8],
    issuer_index: usize,
    issuer: &IssuerSettings,
    kid: &str,
) -> Result<VerifiedUser, UserError> {
    let claims: Map<String, Value> =
        from_slice_strict(payload).map_err(|e| malformed(format!("claims: {e}")))?;

    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == issuer.issuer => {}
        Some(Value::String(iss)) => {
            return Err(UserError::IssuerMismatch(format!(
                "`iss` is {}, but key `{kid}` belongs to `{}`",
                quote(iss),
                issuer.issuer
            )))
        }
        None => {
            return Err(UserError::IssuerMismatch(format!(
                "no `iss`; key `{kid}` belongs to `{}`",
                issuer.issuer
            )))
        }
        Some(_) => return Err(malformed("`iss` is not a string".into())),
    }

    let audience = match claims.get("aud") {
        Some(value) => {
            Audience::deserialize(value).map_err(|e| malformed(format!("`aud`: {e}")))?
        }
        None => Audience::default(),
    };
    if !issuer.audiences.iter().any(|a| audience.contains(a)) {
        let found = match audience.0.as_slice() {
            [] => "absent".to_owned(),
            values => values
                .iter()
                .map(|a| quote(a))
                .collect::<Vec<_>>()
                .join(", "),
        };
        return Err(UserError::AudienceMismatch(format!(
            "`aud` is {found}; expected one of {}",
            issuer
                .audiences
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let exp = date(&claims, "exp")?
        .ok_or_else(|| malformed("no `exp`: user tokens must expire".into()))?;
    let nbf = date(&claims, "nbf")?;
    date(&claims, "iat")?;

    let subject = match walk(&claims, &issuer.subject_claim) {
        Ok(Some(Value::String(subject))) if !subject.is_empty() => subject.as_str().into(),
        Ok(Some(Value::String(_))) => {
            return Err(UserError::SubjectMissing(format!(
                "claim `{}` is empty",
                issuer.subject_claim
            )))
        }
        Ok(Some(_)) => {
            return Err(UserError::SubjectMissing(format!(
                "claim `{}` is not a string",
                issuer.subject_claim
            )))
        }
        Ok(None) | Err(_) => {
            return Err(UserError::SubjectMissing(format!(
                "no claim `{}`",
                issuer.subject_claim
            )))
        }
    };

    let roles = match &issuer.roles_claim {
        None => Box::default(),
        Some(path) => roles(&claims, path)?,
    };

    Ok(VerifiedUser::new(
        issuer_index,
        subject,
        roles.into_vec(),
        exp.0,
        nbf.map(|n| n.0),
        kid.into(),
    ))
}

fn malformed(detail: String) -> UserError {
    UserError::Malformed(detail)
}

/// An optional NumericDate claim: whole seconds, as the license's.
fn date(claims: &Map<String, Value>, name: &str) -> Result<Option<NumericDate>, UserError> {
    claims
        .get(name)
        .map(|value| {
            NumericDate::deserialize(value).map_err(|e| malformed(format!("`{name}`: {e}")))
        })
        .transpose()
}

/// The value at `path`: `Ok(None)` when a member on the way is absent,
/// `Err` with the path walked so far when a member on the way is not an
/// object.
fn walk<'c>(claims: &'c Map<String, Value>, path: &ClaimPath) -> Result<Option<&'c Value>, String> {
    let (last, parents) = path
        .segments()
        .split_last()
        .expect("a claim path has a segment");
    let mut object = claims;
    for (depth, segment) in parents.iter().enumerate() {
        match object.get(&**segment) {
            None => return Ok(None),
            Some(Value::Object(inner)) => object = inner,
            Some(_) => return Err(path.segments()[..=depth].join(".")),
        }
    }
    Ok(object.get(&**last))
}

/// Roles: an array of strings, or one space-separated string (the OAuth
/// `scope` form). Sorted, without duplicates or empty names.
fn roles(claims: &Map<String, Value>, path: &ClaimPath) -> Result<Box<[Box<str>]>, UserError> {
    let value = match walk(claims, path) {
        Ok(value) => value,
        Err(parent) => {
            return Err(malformed(format!(
                "roles claim `{path}`: `{parent}` is not an object"
            )))
        }
    };
    let mut roles: Vec<Box<str>> = match value {
        None => return Ok(Box::default()),
        Some(Value::String(list)) => list.split_ascii_whitespace().map(Into::into).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(role) => Ok(role.as_str().into()),
                _ => Err(malformed(format!(
                    "roles claim `{path}` holds a {}; expected strings",
                    kind(item)
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(malformed(format!(
                "roles claim `{path}` is a {}; expected an array of strings or a space-separated string",
                kind(other)
            )))
        }
    };
    roles.retain(|role| !role.is_empty());
    roles.sort_unstable();
    roles.dedup();
    Ok(roles.into_boxed_slice())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
