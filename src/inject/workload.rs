//! `licensegate inject patch`: Kubernetes YAML in, the same resources with
//! the sidecar added to every pod template out, like `linkerd inject`.
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
//! CronJobs are injected (also inside a `List`); anything else passes
//! through unchanged. Keys come out sorted and comments are dropped, as with
//! any tool that reads YAML into objects.

use serde::Deserialize;
use serde_json::Value;

use super::sidecar::{apply, plan, Defaults, Plan, Scope};

/// The injected documents and one line per resource for the user.
#[derive(Debug)]
pub struct Injected {
    pub yaml: String,
    /// `deployment/shop injected`, `service/shop: not a workload, unchanged`, warnings.
    pub notes: Vec<String>,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The input is not YAML (or not objects with string keys).
    #[error("{0}")]
    Input(String),
    /// One line per resource that asked for the sidecar and cannot have it.
    #[error("{}", .0.join("\n"))]
    Inject(Vec<String>),
}

/// Inject every workload in `input` (one or many YAML documents).
pub fn inject_yaml(input: &str, defaults: &Defaults) -> Result<Injected, PatchError> {
    let mut documents = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = Value::deserialize(document).map_err(|error| {
            let place = error
                .location()
                .map(|l| format!("line {}, column {}: ", l.line(), l.column()))
                .unwrap_or_default();
            PatchError::Input(format!(
                "document {}: {place}not Kubernetes YAML: {error}",
                index + 1
            ))
        })?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for document in &mut documents {
        inject_resource(document, defaults, &mut notes, &mut errors);
    }
    if !errors.is_empty() {
        return Err(PatchError::Inject(errors));
    }
    let mut yaml = String::new();
    for document in &documents {
        if !yaml.is_empty() {
            yaml.push_str("---\n");
        }
        let text = serde_yaml::to_string(document)
            .map_err(|e| PatchError::Input(format!("cannot write YAML: {e}")))?;
        yaml.push_str(&text);
    }
    Ok(Injected { yaml, notes })
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn inject_resource(
    resource: &mut Value,
    defaults: &Defaults,
    notes: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    let kind = resource
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if kind == "List" {
        if let Some(items) = resource.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_resource(item, defaults, notes, errors);
            }
        }
        return;
    }
    let name = resource
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let label = if kind.is_empty() {
        format!("<no kind>/{name}")
    } else {
        format!("{}/{name}", kind.to_ascii_lowercase())
    };
    let Some(path) = template_path(&kind) else {
        notes.push(format!("{label}: not a workload, unchanged"));
        return;
    };
    let Some(template) = resource.pointer_mut(path) else {
        errors.push(format!("{label}: no pod template at {path}"));
        return;
    };
    match plan(template, Scope::OptOut, defaults) {
        Ok(Plan::Skip(reason)) => notes.push(format!("{label}: skipped, {reason}")),
        Ok(Plan::Inject { patch, warnings }) => match apply(template, &patch) {
            Ok(()) => {
                notes.push(format!("{label} injected"));
                notes.extend(warnings.iter().map(|w| format!("{label}: warning: {w}")));
            }
            Err(error) => errors.push(format!("{label}: {error}")),
        },
        Err(error) => errors.push(format!("{label}: {error}")),
    }
}
