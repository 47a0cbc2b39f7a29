//! The injection rules: which pods get the sidecar, what the sidecar looks
//! like, and the JSON Patch (RFC 6902) that adds it to a pod or pod template.
//!
//! Everything here works on `serde_json::Value`s as Kubernetes sends them and
//! never panics on odd input: a shape it cannot work with is an
//! [`InjectError`] naming the field.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{json, Map, Value};

/// Pod annotation: `enabled` or `disabled`.
pub const INJECT: &str = "licensegate.io/inject";
/// Added to injected pods, with the injector's version; marks them done.
pub const INJECTED: &str = "licensegate.io/injected";
/// Pod label added with the sidecar; the `PodMonitor` selects on it.
pub const SIDECAR_LABEL: &str = "licensegate.io/sidecar";
/// Per-pod overrides.
pub const UPSTREAM_PORT: &str = "licensegate.io/upstream-port";
pub const PROXY_PORT: &str = "licensegate.io/proxy-port";
pub const ADMIN_PORT: &str = "licensegate.io/admin-port";
pub const CONFIG: &str = "licensegate.io/config";
pub const LICENSE_SECRET: &str = "licensegate.io/license-secret";
pub const IMAGE: &str = "licensegate.io/image";
pub const CPU_REQUEST: &str = "licensegate.io/cpu-request";
pub const CPU_LIMIT: &str = "licensegate.io/cpu-limit";
pub const MEMORY_REQUEST: &str = "licensegate.io/memory-request";
pub const MEMORY_LIMIT: &str = "licensegate.io/memory-limit";
pub const SIDECAR_MODE: &str = "licensegate.io/sidecar-mode";

/// Every `licensegate.io/` annotation the injector reads or writes; others
/// are reported as likely typos.
const KNOWN_ANNOTATIONS: [&str; 14] = [
    INJECT,
    INJECTED,
    UPSTREAM_PORT,
    PROXY_PORT,
    ADMIN_PORT,
    CONFIG,
    LICENSE_SECRET,
    IMAGE,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    SIDECAR_MODE,
    SIDECAR_LABEL,
];

/// The sidecar container's name.
pub const CONTAINER_NAME: &str = "licensegate";
/// Port names (at most 15 characters, as Kubernetes requires).
pub const PROXY_PORT_NAME: &str = "lg-proxy";
pub const ADMIN_PORT_NAME: &str = "lg-admin";
/// Where the sidecar finds its files: the ConfigMap (`config.yaml` and any
/// policy files), the Secret (`license.jwt`, `keys.json`) and a writable
/// directory for `license.state_file`.
pub const CONFIG_DIR: &str = "/etc/licensegate/config";
pub const CONFIG_FILE: &str = "/etc/licensegate/config/config.yaml";
pub const LICENSE_DIR: &str = "/etc/licensegate/license";
pub const STATE_DIR: &str = "/var/lib/licensegate";
pub const CONFIG_VOLUME: &str = "licensegate-config";
pub const LICENSE_VOLUME: &str = "licensegate-license";
pub const STATE_VOLUME: &str = "licensegate-state";
/// The image's non-root user (distroless `nonroot`).
pub const RUN_AS: u32 = 65532;
/// The binary's path inside the image, for the classic sidecar's hook.
pub const BINARY: &str = "/licensegate";
/// Seconds the sidecar keeps serving after termination starts, so endpoints
/// are withdrawn before its listener closes.
pub const PRE_STOP_SECONDS: u32 = 5;

pub const DEFAULT_IMAGE: &str = concat!(
    "registry.example.com/licensegate:",
    env!("CARGO_PKG_VERSION")
);

/// How the sidecar runs beside the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes ≥ 1.29):
    /// started and ready before the app, stopped after it, and it does not
    /// keep a Job from completing.
    Native,
    /// The first regular container, holding the app back with a `postStart`
    /// hook until it is ready (older clusters).
    Container,
}

impl std::str::FromStr for SidecarMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "native" => Ok(SidecarMode::Native),
            "container" => Ok(SidecarMode::Container),
            other => Err(format!(
                "`{other}` is not a sidecar mode; expected native or container"
            )),
        }
    }
}

/// Container resources; `None` leaves the field out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// 128Mi holds the default 10,000 idle client connections with the relay;
/// the sidecar derives its `limits.max_connections` from this limit (read
/// from its cgroup), so a lower limit means fewer connections, not an OOM
/// kill. 32Mi covers the process at idle.
impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_request: Some("50m".into()),
            cpu_limit: Some("1".into()),
            memory_request: Some("32Mi".into()),
            memory_limit: Some("128Mi".into()),
        }
    }
}

/// What a pod gets unless its annotations say otherwise.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub image: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// ConfigMap with `config.yaml` (and policy files).
    pub config_map: String,
    /// Secret with `license.jwt` and the public keys.
    pub license_secret: String,
    pub resources: Resources,
    pub mode: SidecarMode,
    /// `LICENSEGATE_CLUSTER` / `LICENSEGATE_REGION` for the sidecar, which the
    /// Downward API cannot provide.
    pub cluster: Option<String>,
    pub region: Option<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: DEFAULT_IMAGE.into(),
            proxy_port: 8080,
            admin_port: 9901,
            config_map: "licensegate".into(),
            license_secret: "licensegate-license".into(),
            resources: Resources::default(),
            mode: SidecarMode::Native,
            cluster: None,
            region: None,
        }
    }
}

impl Defaults {
    /// Check values that came from flags the way annotations are checked.
    pub fn validate(&self) -> Result<(), InjectError> {
        check_image("--image", &self.image)?;
        check_name("--config-map", &self.config_map)?;
        check_name("--license-secret", &self.license_secret)?;
        for (flag, value) in [
            ("--cpu-request", &self.resources.cpu_request),
            ("--cpu-limit", &self.resources.cpu_limit),
            ("--memory-request", &self.resources.memory_request),
            ("--memory-limit", &self.resources.memory_limit),
        ] {
            if let Some(value) = value {
                check_quantity(flag, value)?;
            }
        }
        if self.proxy_port == 0 || self.admin_port == 0 {
            return Err(InjectError("ports must be 1 to 65535".into()));
        }
        if self.proxy_port == self.admin_port {
            return Err(InjectError(format!(
                "--proxy-port and --admin-port are both {}",
                self.proxy_port
            )));
        }
        Ok(())
    }
}

/// When a pod without an `licensegate.io/inject` annotation gets the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Only pods annotated `licensegate.io/inject: enabled`.
    OptIn,
    /// Every pod except those annotated `licensegate.io/inject: disabled`
    /// (its namespace opted in, or `inject patch` was asked to).
    OptOut,
}

/// Why a pod cannot be injected, naming the annotation or field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(pub String);

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Leave the pod as it is; the reason is for logs.
    Skip(String),
    /// Apply `patch` to the pod (or pod template).
    Inject {
        patch: Vec<PatchOperation>,
        /// Things the user should know (typos, classic sidecars in Jobs,
        /// ports that reach the app around the sidecar).
        warnings: Vec<String>,
    },
}

/// Decide about one pod (or pod template: `metadata` and `spec`).
pub fn plan(pod: &Value, scope: Scope, defaults: &Defaults) -> Result<Plan, InjectError> {
    let pod = pod
        .as_object()
        .ok_or_else(|| InjectError("the pod is not a JSON object".into()))?;
    let metadata = match pod.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(metadata)) => Some(metadata),
        Some(_) => return Err(InjectError("metadata is not an object".into())),
    };
    let annotations = licensegate_annotations(metadata)?;
    let spec = pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| InjectError("spec is missing or not an object".into()))?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|containers| !containers.is_empty())
        .ok_or_else(|| InjectError("spec.containers is missing or empty".into()))?;
    // The API server admits none of these, but `inject patch` reads any
    // YAML, and a JSON Patch `add` would quietly replace a non-list.
    if let Some(index) = containers.iter().position(|c| !c.is_object()) {
        return Err(InjectError(format!(
            "spec.containers[{index}] is not an object"
        )));
    }
    for key in ["initContainers", "volumes"] {
        if !matches!(spec.get(key), None | Some(Value::Null | Value::Array(_))) {
            return Err(InjectError(format!("spec.{key} is not a list")));
        }
    }

    match annotations.get(INJECT).copied() {
        Some("enabled") => {}
        Some("disabled") => return Ok(Plan::Skip(format!("annotated {INJECT}: disabled"))),
        None if scope == Scope::OptIn => {
            return Ok(Plan::Skip(format!("not annotated {INJECT}: enabled")))
        }
        None => {}
        Some(other) => {
            return Err(InjectError(format!(
                "annotation {INJECT}: `{other}` is neither enabled nor disabled"
            )))
        }
    }
    if annotations.contains_key(INJECTED) || has_container(spec, CONTAINER_NAME) {
        return Ok(Plan::Skip(format!(
            "already has a `{CONTAINER_NAME}` container"
        )));
    }
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Err(InjectError(format!(
            "cannot inject into a hostNetwork pod: the sidecar's ports would be the node's; annotate it {INJECT}: disabled"
        )));
    }

    let mut warnings: Vec<String> = annotations
        .keys()
        .filter(|key| !KNOWN_ANNOTATIONS.contains(key))
        .map(|key| format!("unknown annotation {key} ignored"))
        .collect();
    let settings = Settings::resolve(&annotations, defaults, spec, containers)?;
    if settings.mode == SidecarMode::Container
        && matches!(
            spec.get("restartPolicy").and_then(Value::as_str),
            Some("Never" | "OnFailure")
        )
    {
        warnings.push(format!(
            "a classic sidecar keeps running after the app exits: have the app POST http://127.0.0.1:{}/shutdown when done, or use {SIDECAR_MODE}: native",
            settings.admin_port
        ));
    }
    warnings.extend(bypass_warnings(spec, settings.proxy_port));
    check_volumes(spec)?;

    let mut patch = PatchBuilder::new(pod);
    let mut new_annotations = vec![(INJECTED.to_owned(), Value::from(env!("CARGO_PKG_VERSION")))];
    let existing = all_annotations(metadata);
    if !existing.contains("prometheus.io/scrape") {
        new_annotations.push(("prometheus.io/scrape".into(), "true".into()));
        new_annotations.push((
            "prometheus.io/port".into(),
            settings.admin_port.to_string().into(),
        ));
        new_annotations.push(("prometheus.io/path".into(), "/metrics".into()));
    }
    if settings.mode == SidecarMode::Container
        && !existing.contains("kubectl.kubernetes.io/default-container")
    {
        // The sidecar comes first; keep `kubectl logs/exec` on the app.
        if let Some(app) = containers[0].get("name").and_then(Value::as_str) {
            new_annotations.push(("kubectl.kubernetes.io/default-container".into(), app.into()));
        }
    }
    patch.add_entries(&["metadata", "annotations"], new_annotations);
    patch.add_entries(
        &["metadata", "labels"],
        vec![(SIDECAR_LABEL.to_owned(), "true".into())],
    );
    let sidecar = settings.container(defaults);
    match settings.mode {
        SidecarMode::Native => patch.add_items(&["spec", "initContainers"], vec![sidecar], false),
        SidecarMode::Container => patch.add_items(&["spec", "containers"], vec![sidecar], true),
    }
    patch.add_items(&["spec", "volumes"], settings.volumes(), false);
    Ok(Plan::Inject {
        patch: patch.ops,
        warnings,
    })
}

/// Apply a patch from [`plan`] to the pod or template it was made for.
pub fn apply(pod: &mut Value, patch: &[PatchOperation]) -> Result<(), InjectError> {
    json_patch::patch(pod, patch).map_err(|e| InjectError(format!("cannot apply the patch: {e}")))
}

/// The sidecar settings for one pod: defaults, then its annotations.
#[derive(Debug)]
struct Settings {
    image: String,
    proxy_port: u16,
    admin_port: u16,
    upstream_port: u16,
    config_map: String,
    license_secret: String,
    resources: Resources,
    mode: SidecarMode,
}

impl Settings {
    fn resolve(
        annotations: &BTreeMap<&str, &str>,
        defaults: &Defaults,
        spec: &Map<String, Value>,
        containers: &[Value],
    ) -> Result<Settings, InjectError> {
        let get = |key: &str| annotations.get(key).copied();
        let port = |key: &str, default: u16| get(key).map_or(Ok(default), |v| parse_port(key, v));
        let proxy_port = port(PROXY_PORT, defaults.proxy_port)?;
        let admin_port = port(ADMIN_PORT, defaults.admin_port)?;
        let upstream_port = match get(UPSTREAM_PORT) {
            Some(value) => parse_port(UPSTREAM_PORT, value)?,
            None => first_container_port(&containers[0])?.ok_or_else(|| {
                InjectError(format!(
                    "no upstream port: the first container declares no containerPort; set {UPSTREAM_PORT}"
                ))
            })?,
        };
        if proxy_port == admin_port {
            return Err(InjectError(format!(
                "the proxy and admin ports are both {proxy_port}; set {PROXY_PORT} or {ADMIN_PORT}"
            )));
        }
        if upstream_port == proxy_port || upstream_port == admin_port {
            return Err(InjectError(format!(
                "the app's port {upstream_port} is also the sidecar's {} port; set {}",
                if upstream_port == proxy_port {
                    "proxy"
                } else {
                    "admin"
                },
                if upstream_port == proxy_port {
                    PROXY_PORT
                } else {
                    ADMIN_PORT
                },
            )));
        }
        for declared in declared_ports(spec) {
            let (port, container) = (declared.port, declared.container);
            if port == proxy_port || port == admin_port {
                let (what, key) = if port == proxy_port {
                    ("proxy", PROXY_PORT)
                } else {
                    ("admin", ADMIN_PORT)
                };
                return Err(InjectError(format!(
                    "container `{container}` declares port {port}, the sidecar's {what} port; set {key} to a free port"
                )));
            }
        }

        let text = |key: &str, default: &str| get(key).unwrap_or(default).to_owned();
        let image = text(IMAGE, &defaults.image);
        check_image(IMAGE, &image)?;
        let config_map = text(CONFIG, &defaults.config_map);
        check_name(CONFIG, &config_map)?;
        let license_secret = text(LICENSE_SECRET, &defaults.license_secret);
        check_name(LICENSE_SECRET, &license_secret)?;
        let quantity = |key: &str, default: &Option<String>| match get(key) {
            Some(value) => check_quantity(key, value).map(|()| Some(value.to_owned())),
            None => Ok(default.clone()),
        };
        let resources = Resources {
            cpu_request: quantity(CPU_REQUEST, &defaults.resources.cpu_request)?,
            cpu_limit: quantity(CPU_LIMIT, &defaults.resources.cpu_limit)?,
            memory_request: quantity(MEMORY_REQUEST, &defaults.resources.memory_request)?,
            memory_limit: quantity(MEMORY_LIMIT, &defaults.resources.memory_limit)?,
        };
        let mode = match get(SIDECAR_MODE) {
            Some(value) => value
                .parse()
                .map_err(|e| InjectError(format!("annotation {SIDECAR_MODE}: {e}")))?,
            None => defaults.mode,
        };
        Ok(Settings {
            image,
            proxy_port,
            admin_port,
            upstream_port,
            config_map,
            license_secret,
            resources,
            mode,
        })
    }

    fn container(&self, defaults: &Defaults) -> Value {
        let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
        let mut env = vec![
            json!({"name": "LICENSEGATE_CONFIG", "value": CONFIG_FILE}),
            json!({"name": "LICENSEGATE_LISTEN", "value": format!("0.0.0.0:{}", self.proxy_port)}),
            json!({"name": "LICENSEGATE_ADMIN", "value": format!("0.0.0.0:{}", self.admin_port)}),
            json!({"name": "LICENSEGATE_UPSTREAM", "value": format!("http://127.0.0.1:{}", self.upstream_port)}),
            field("POD_NAMESPACE", "metadata.namespace"),
            field("POD_NAME", "metadata.name"),
            field("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field("NODE_NAME", "spec.nodeName"),
        ];
        if let Some(cluster) = &defaults.cluster {
            env.push(json!({"name": "LICENSEGATE_CLUSTER", "value": cluster}));
        }
        if let Some(region) = &defaults.region {
            env.push(json!({"name": "LICENSEGATE_REGION", "value": region}));
        }
        let http_get = |path: &str| json!({"path": path, "port": ADMIN_PORT_NAME});
        let mut container = json!({
            "name": CONTAINER_NAME,
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["run"],
            "env": env,
            "ports": [
                {"name": PROXY_PORT_NAME, "containerPort": self.proxy_port, "protocol": "TCP"},
                {"name": ADMIN_PORT_NAME, "containerPort": self.admin_port, "protocol": "TCP"},
            ],
            // Ready means listening with a valid license loaded: the app
            // starts only then.
            "startupProbe": {"httpGet": http_get("/readyz"), "periodSeconds": 1, "failureThreshold": 120},
            "readinessProbe": {"httpGet": http_get("/readyz"), "periodSeconds": 5, "failureThreshold": 2},
            "livenessProbe": {"httpGet": http_get("/healthz"), "periodSeconds": 10, "failureThreshold": 3},
            "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
            "resources": self.resources_json(),
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": [
                {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true},
                {"name": LICENSE_VOLUME, "mountPath": LICENSE_DIR, "readOnly": true},
                {"name": STATE_VOLUME, "mountPath": STATE_DIR},
            ],
            "terminationMessagePolicy": "FallbackToLogsOnError",
        });
        match self.mode {
            SidecarMode::Native => container["restartPolicy"] = json!("Always"),
            SidecarMode::Container => {
                container["lifecycle"]["postStart"] = json!({"exec": {"command": [
                    BINARY, "inject", "wait",
                    "--admin", format!("127.0.0.1:{}", self.admin_port),
                    "--timeout", "120s",
                ]}});
            }
        }
        container
    }

    fn resources_json(&self) -> Value {
        let pick = |cpu: &Option<String>, memory: &Option<String>| {
            let mut map = Map::new();
            if let Some(cpu) = cpu {
                map.insert("cpu".into(), cpu.clone().into());
            }
            if let Some(memory) = memory {
                map.insert("memory".into(), memory.clone().into());
            }
            map
        };
        let mut resources = Map::new();
        let requests = pick(&self.resources.cpu_request, &self.resources.memory_request);
        if !requests.is_empty() {
            resources.insert("requests".into(), requests.into());
        }
        let limits = pick(&self.resources.cpu_limit, &self.resources.memory_limit);
        if !limits.is_empty() {
            resources.insert("limits".into(), limits.into());
        }
        resources.into()
    }

    fn volumes(&self) -> Vec<Value> {
        vec![
            json!({"name": CONFIG_VOLUME, "configMap": {"name": self.config_map}}),
            json!({"name": LICENSE_VOLUME, "secret": {"secretName": self.license_secret}}),
            json!({"name": STATE_VOLUME, "emptyDir": {"sizeLimit": "16Mi"}}),
        ]
    }
}

/// JSON Patch `add` operations, each checked against the pod it is for so
/// that missing parents are created rather than assumed.
struct PatchBuilder<'a> {
    pod: &'a Map<String, Value>,
    ops: Vec<PatchOperation>,
}

impl<'a> PatchBuilder<'a> {
    fn new(pod: &'a Map<String, Value>) -> Self {
        PatchBuilder {
            pod,
            ops: Vec::new(),
        }
    }

    fn add(&mut self, tokens: &[&str], value: Value) {
        self.ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        }));
    }

    /// Add `entries` to the object at `path`, creating it (and its parents)
    /// when absent or null.
    fn add_entries(&mut self, path: &[&str], entries: Vec<(String, Value)>) {
        if entries.is_empty() {
            return;
        }
        let mut node = self.pod;
        let mut depth = 0;
        for key in path {
            match node.get(*key) {
                Some(Value::Object(child)) => {
                    node = child;
                    depth += 1;
                }
                _ => break,
            }
        }
        if depth == path.len() {
            for (key, value) in entries {
                let mut tokens = path.to_vec();
                tokens.push(&key);
                self.add(&tokens, value);
            }
        } else {
            let mut value = Value::Object(entries.into_iter().collect());
            for key in path[depth + 1..].iter().rev() {
                value = json!({ *key: value });
            }
            self.add(&path[..=depth], value);
        }
    }

    /// Add `items` to the array at `path` (whose parent exists), at the
    /// front or the back, creating the array when absent.
    fn add_items(&mut self, path: &[&str], items: Vec<Value>, front: bool) {
        let (last, parent) = path.split_last().expect("a non-empty path");
        let exists = parent
            .iter()
            .try_fold(self.pod, |node, key| node.get(*key)?.as_object())
            .and_then(|node| node.get(*last))
            .is_some_and(Value::is_array);
        if !exists {
            self.add(path, Value::Array(items));
            return;
        }
        for (index, item) in items.into_iter().enumerate() {
            let position = if front {
                index.to_string()
            } else {
                "-".to_owned()
            };
            let mut tokens = path.to_vec();
            tokens.push(&position);
            self.add(&tokens, item);
        }
    }
}

/// The pod's `licensegate.io/` annotations; their values must be strings.
fn licensegate_annotations(
    metadata: Option<&Map<String, Value>>,
) -> Result<BTreeMap<&str, &str>, InjectError> {
    let mut found = BTreeMap::new();
    let annotations = match metadata.and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => return Ok(found),
        Some(Value::Object(annotations)) => annotations,
        Some(_) => return Err(InjectError("metadata.annotations is not an object".into())),
    };
    for (key, value) in annotations {
        if !key.starts_with("licensegate.io/") {
            continue;
        }
        match value {
            Value::String(text) => {
                found.insert(key.as_str(), text.as_str());
            }
            other => {
                return Err(InjectError(format!(
                    "annotation {key}: values are strings, not {other}; quote it"
                )))
            }
        }
    }
    Ok(found)
}

fn all_annotations(metadata: Option<&Map<String, Value>>) -> BTreeSet<&str> {
    metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .map(|a| a.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Regular containers and init containers (which include native sidecars).
fn all_containers(spec: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|key| spec.get(key).and_then(Value::as_array))
        .flatten()
}

fn has_container(spec: &Map<String, Value>, name: &str) -> bool {
    all_containers(spec).any(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// A `containerPort` of one of the pod's containers.
struct DeclaredPort<'a> {
    container: &'a str,
    port: u16,
    /// `TCP` unless the port says otherwise, as Kubernetes defaults it.
    protocol: &'a str,
}

/// Ports declared by containers that run beside the sidecar: regular ones
/// and native sidecars (plain init containers finish before it serves).
fn declared_ports(spec: &Map<String, Value>) -> Vec<DeclaredPort<'_>> {
    let array = |key| {
        spec.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    let sidecars = array("initContainers")
        .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always"));
    array("containers")
        .chain(sidecars)
        .flat_map(|c| {
            let container = c.get("name").and_then(Value::as_str).unwrap_or("?");
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(move |p| {
                    Some(DeclaredPort {
                        container,
                        port: u16::try_from(p.get("containerPort")?.as_u64()?).ok()?,
                        protocol: p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
                    })
                })
        })
        .collect()
}

/// One warning per container that declares a port: every such port is a
/// way to the workload that skips the proxy, where a client may send its
/// own `x-license-*` headers. The pod spec cannot say what the app binds,
/// so a declared port is the signal; the cure is an app on 127.0.0.1 (with
/// `licensegate.io/upstream-port`) or a NetworkPolicy admitting only the
/// proxy port.
fn bypass_warnings(spec: &Map<String, Value>, proxy_port: u16) -> Vec<String> {
    let mut by_container: Vec<(&str, Vec<String>)> = Vec::new();
    for declared in declared_ports(spec) {
        let port = format!("{}/{}", declared.port, declared.protocol);
        match by_container
            .iter_mut()
            .find(|(c, _)| *c == declared.container)
        {
            Some((_, ports)) => ports.push(port),
            None => by_container.push((declared.container, vec![port])),
        }
    }
    by_container
        .into_iter()
        .map(|(container, ports)| {
            let noun = if ports.len() == 1 { "port" } else { "ports" };
            format!(
                "container `{container}` exposes {noun} {}: the workload is reachable there around the sidecar unless it binds 127.0.0.1 or a NetworkPolicy admits only port {proxy_port}",
                ports.join(", ")
            )
        })
        .collect()
}

/// The first container's first `containerPort`: `None` when it declares
/// none, an error when the one it declares is not a port.
fn first_container_port(container: &Value) -> Result<Option<u16>, InjectError> {
    let Some(declared) = container
        .get("ports")
        .and_then(Value::as_array)
        .and_then(|ports| ports.first())
        .and_then(|port| port.get("containerPort"))
    else {
        return Ok(None);
    };
    match declared.as_u64().and_then(|p| u16::try_from(p).ok()) {
        Some(port) if port != 0 => Ok(Some(port)),
        _ => Err(InjectError(format!(
            "spec.containers[0].ports[0].containerPort: {declared} is not a port (1 to 65535); \
             fix it or set {UPSTREAM_PORT}"
        ))),
    }
}

fn check_volumes(spec: &Map<String, Value>) -> Result<(), InjectError> {
    let names = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str));
    for name in names {
        if [CONFIG_VOLUME, LICENSE_VOLUME, STATE_VOLUME].contains(&name) {
            return Err(InjectError(format!(
                "the pod already has a volume named `{name}`; remove it or annotate the pod {INJECT}: disabled"
            )));
        }
    }
    Ok(())
}

fn parse_port(key: &str, value: &str) -> Result<u16, InjectError> {
    match value.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(InjectError(format!(
            "annotation {key}: `{value}` is not a port (1 to 65535)"
        ))),
    }
}

/// A DNS-1123 subdomain, the form of ConfigMap and Secret names.
fn check_name(key: &str, value: &str) -> Result<(), InjectError> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if value.len() <= 253 && value.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(InjectError(format!(
            "{key}: `{value}` is not a Kubernetes object name (lower-case letters, digits, '-' and '.')"
        )))
    }
}

fn check_image(key: &str, value: &str) -> Result<(), InjectError> {
    if value.is_empty()
        || value.len() > 4096
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(InjectError(format!(
            "{key}: `{value}` is not an image reference"
        )));
    }
    Ok(())
}

/// A Kubernetes resource quantity: a decimal number with an optional SI,
/// binary or exponent suffix (`250m`, `0.5`, `128Mi`, `1e3`).
pub fn check_quantity(key: &str, value: &str) -> Result<(), InjectError> {
    let digits_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| {
            !exp.is_empty() && exp.len() <= 3 && exp.bytes().all(|b| b.is_ascii_digit())
        });
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(InjectError(format!(
            "{key}: `{value}` is not a resource quantity (e.g. 100m, 0.5, 64Mi)"
        )))
    }
}
