//! `admission.k8s.io/v1` `AdmissionReview`s for Pods: decide with
//! [`plan`](super::sidecar::plan) and answer with a base64 JSON Patch.
//!
//! A body that is not a review at all is a [`BadReview`] (HTTP 400, so the
//! API server applies the webhook's `failurePolicy`). A review of something
//! other than a Pod being created is allowed untouched, with a warning. A pod
//! that asked for the sidecar and cannot have it (a bad annotation, a port
//! clash) is denied with a message naming the problem under
//! [`FailurePolicy::Fail`], or admitted uninjected with a warning under
//! [`FailurePolicy::Ignore`].

use base64::Engine;
use serde_json::{json, Value};

use super::sidecar::{plan, Defaults, Plan, Scope};

/// Largest review body read; the API server's own request limit is 3 MiB.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

const API_VERSION: &str = "admission.k8s.io/v1";

/// What the injector answers for a pod that asked for the sidecar and
/// cannot have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Deny the pod with a message naming the problem.
    Fail,
    /// Admit the pod without the sidecar, with a warning.
    Ignore,
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "fail" => Ok(FailurePolicy::Fail),
            "ignore" => Ok(FailurePolicy::Ignore),
            _ => Err(format!(
                "`{text}` is not a failure policy; expected Fail or Ignore"
            )),
        }
    }
}

/// A body that is not an `AdmissionReview` request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReview(pub String);

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    /// The `AdmissionReview` to send back.
    pub review: Value,
    /// One line for the log: which pod, what happened.
    pub summary: String,
    pub verdict: Verdict,
}

/// What happened to the pod, for logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Injected,
    /// Not a pod for the sidecar: opted out, already injected, not a CREATE.
    LeftAlone,
    /// The pod asked for the sidecar and could not have it.
    Failed,
}

/// Decides reviews with fixed defaults and failure policy.
#[derive(Debug, Clone)]
pub struct Injector {
    pub defaults: Defaults,
    pub failure_policy: FailurePolicy,
}

impl Injector {
    /// Answer one review body for `scope` (the webhook path it came on).
    pub fn review(&self, body: &[u8], scope: Scope) -> Result<Answer, BadReview> {
        let review: Value = serde_json::from_slice(body)
            .map_err(|e| BadReview(format!("the body is not JSON: {e}")))?;
        let api_version = review.get("apiVersion").and_then(Value::as_str);
        let kind = review.get("kind").and_then(Value::as_str);
        if api_version != Some(API_VERSION) || kind != Some("AdmissionReview") {
            return Err(BadReview(format!(
                "expected an {API_VERSION} AdmissionReview, got apiVersion {} kind {}",
                api_version.unwrap_or("(none)"),
                kind.unwrap_or("(none)")
            )));
        }
        let request = review
            .get("request")
            .filter(|r| r.is_object())
            .ok_or_else(|| BadReview("the AdmissionReview has no request".into()))?;
        let uid = request
            .get("uid")
            .and_then(Value::as_str)
            .filter(|uid| !uid.is_empty())
            .ok_or_else(|| BadReview("request.uid is missing".into()))?;

        let text = |pointer: &str| request.pointer(pointer).and_then(Value::as_str);
        let object = request.get("object");
        let namespace = text("/namespace")
            .or_else(|| object.and_then(|o| o.pointer("/metadata/namespace")?.as_str()))
            .unwrap_or("");
        let name = object
            .and_then(|o| {
                o.pointer("/metadata/name")
                    .or_else(|| o.pointer("/metadata/generateName"))
            })
            .and_then(Value::as_str)
            .or_else(|| text("/name"))
            .unwrap_or("");
        let pod = format!("pod {namespace}/{name}");

        let group = text("/kind/group").unwrap_or("");
        let kind = text("/kind/kind").unwrap_or("");
        let sub_resource = text("/subResource").unwrap_or("");
        if !group.is_empty() || kind != "Pod" || !sub_resource.is_empty() {
            let what = if sub_resource.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind} {sub_resource}")
            };
            return Ok(allow(
                uid,
                None,
                vec![format!(
                    "licensegate injector only handles Pods; `{what}` was left alone (check the webhook's rules)"
                )],
                format!("{what} {namespace}/{name}: not a pod, allowed"),
            ));
        }
        let operation = text("/operation").unwrap_or("");
        if operation != "CREATE" {
            return Ok(allow(
                uid,
                None,
                vec![format!(
                    "licensegate injector only handles CREATE; `{operation}` was left alone (check the webhook's rules)"
                )],
                format!("{pod}: {operation}, allowed"),
            ));
        }
        let Some(object) = object else {
            return Ok(self.cannot_inject(uid, &pod, "the review carries no object"));
        };
        match plan(object, scope, &self.defaults) {
            Ok(Plan::Skip(reason)) => Ok(allow(uid, None, Vec::new(), format!("{pod}: {reason}"))),
            Ok(Plan::Inject { patch, warnings }) => {
                let patch = serde_json::to_vec(&patch).expect("patches serialise");
                let warnings = warnings
                    .into_iter()
                    .map(|w| format!("licensegate: {w}"))
                    .collect();
                let mut answer = allow(uid, Some(&patch), warnings, format!("{pod}: injected"));
                answer.verdict = Verdict::Injected;
                Ok(answer)
            }
            Err(error) => Ok(self.cannot_inject(uid, &pod, &error.to_string())),
        }
    }

    fn cannot_inject(&self, uid: &str, pod: &str, why: &str) -> Answer {
        match self.failure_policy {
            FailurePolicy::Fail => {
                let message = format!("licensegate sidecar injection failed: {why}");
                Answer {
                    review: json!({
                        "apiVersion": API_VERSION,
                        "kind": "AdmissionReview",
                        "response": {
                            "uid": uid,
                            "allowed": false,
                            "status": {
                                "status": "Failure",
                                "reason": "BadRequest",
                                "code": 400,
                                "message": message,
                            },
                        },
                    }),
                    summary: format!("{pod}: denied, {why}"),
                    verdict: Verdict::Failed,
                }
            }
            FailurePolicy::Ignore => {
                let mut answer = allow(
                    uid,
                    None,
                    vec![format!("licensegate sidecar not injected: {why}")],
                    format!("{pod}: admitted without the sidecar (failure policy Ignore), {why}"),
                );
                answer.verdict = Verdict::Failed;
                answer
            }
        }
    }
}

fn allow(uid: &str, patch: Option<&[u8]>, warnings: Vec<String>, summary: String) -> Answer {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Answer {
        review: json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}),
        summary,
        verdict: Verdict::LeftAlone,
    }
}
