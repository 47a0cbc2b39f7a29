//! Everything under `deploy/` checked for real: the Kubernetes manifests
//! (and their kustomize builds) against the OpenAPI schemas, the sidecar
//! they describe started with the same settings and files, the alert rules
//! with promtool, and the dashboard and alerts against the metrics the
//! binary actually exports.

mod common;
mod k8s;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use licensegate::inject::sidecar;

/// Metrics that `deploy/` (dashboard panels, alert rules) may name before
/// licensegate exports them (none now). When one lands,
/// `deploy_names_only_metrics_licensegate_exports_or_plans` fails until it is
/// removed from this list.
const PLANNED_METRICS: [&str; 0] = [];

fn deploy() -> PathBuf {
    k8s::repo().join("deploy")
}

/// Every file under `dir` whose name ends with one of `extensions`, sorted.
fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if extensions
                .iter()
                .any(|e| path.to_str().unwrap().ends_with(e))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn is_kubernetes_object(document: &Value) -> bool {
    document.get("apiVersion").is_some()
        && document
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|kind| kind != "Kustomization")
}

/// Directories with a kustomization.yaml under deploy/.
fn kustomizations() -> Vec<PathBuf> {
    files(&deploy(), &["kustomization.yaml"])
        .into_iter()
        .map(|f| f.parent().unwrap().to_owned())
        .collect()
}

fn one(path: &str, kind: &str) -> Value {
    k8s::read_yaml(&deploy().join(path))
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {path}"))
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let mut objects = Vec::new();
    for file in files(&deploy(), &[".yaml", ".yml"]) {
        objects.extend(
            k8s::read_yaml(&file)
                .into_iter()
                .filter(is_kubernetes_object),
        );
    }
    assert!(objects.len() >= 15, "found only {} objects", objects.len());
    let policies: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        policies,
        BTreeSet::from(["licensegate-injector", "shop-api"]),
        "the workload's and the injector's NetworkPolicies are validated"
    );

    // What `kubectl apply -k` would send, patches and generators applied.
    match k8s::kubectl() {
        Some(kubectl) => {
            for dir in kustomizations() {
                let output = Command::new(&kubectl)
                    .arg("kustomize")
                    .arg(&dir)
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "kubectl kustomize {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
                let built = k8s::yaml_documents(&String::from_utf8(output.stdout).unwrap());
                assert!(!built.is_empty(), "{} builds nothing", dir.display());
                // Whatever installs pods installs the policy that fences them.
                if built.iter().any(|o| o["kind"] == "Deployment") {
                    assert!(
                        built.iter().any(|o| o["kind"] == "NetworkPolicy"),
                        "{} installs pods without a NetworkPolicy",
                        dir.display()
                    );
                }
                objects.extend(built);
            }
        }
        None => eprintln!("kustomize builds not checked"),
    }
    k8s::validate(&objects, "the manifests under deploy/");
}

#[test]
fn kustomizations_reference_existing_files_and_every_manifest() {
    let mut referenced = BTreeSet::new();
    for dir in kustomizations() {
        let kustomization = &k8s::read_yaml(&dir.join("kustomization.yaml"))[0];
        let mut entries: Vec<&str> = kustomization["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.as_str().unwrap())
            .collect();
        for generator in kustomization["configMapGenerator"]
            .as_array()
            .into_iter()
            .flatten()
        {
            entries.extend(
                generator["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap()),
            );
        }
        assert!(!entries.is_empty(), "{} lists nothing", dir.display());
        for entry in entries {
            let path = dir
                .join(entry)
                .canonicalize()
                .unwrap_or_else(|_| panic!("{}: `{entry}` does not exist", dir.display()));
            if path.is_dir() {
                assert!(
                    path.join("kustomization.yaml").is_file(),
                    "{}: `{entry}` is a directory without a kustomization",
                    dir.display()
                );
            }
            referenced.insert(path);
        }
    }
    for dir in ["kubernetes", "prometheus", "grafana"] {
        for file in files(&deploy().join(dir), &[".yaml", ".json"]) {
            let name = file.file_name().unwrap().to_str().unwrap();
            // Kustomizations, and the plain Prometheus rules and their tests.
            if ["kustomization.yaml", "alerts.yaml", "alerts.test.yaml"].contains(&name) {
                continue;
            }
            assert!(
                referenced.contains(&file.canonicalize().unwrap()),
                "{} is in no kustomization",
                file.display()
            );
        }
    }
}

/// The sidecar's container, volumes and pod metadata as the manifest has
/// them, and as `inject patch` makes them from the manifest without them.
fn manifest_and_injected(path: &str, mode: &str) -> (Value, Value) {
    let manifest = one(path, "Deployment");
    let mut bare = manifest.clone();
    let template = &mut bare["spec"]["template"];
    for list in ["initContainers", "containers"] {
        if let Some(containers) = template["spec"].get_mut(list).and_then(Value::as_array_mut) {
            containers.retain(|c| c["name"] != sidecar::CONTAINER_NAME);
            if containers.is_empty() {
                template["spec"].as_object_mut().unwrap().remove(list);
            }
        }
    }
    template["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .retain(|v| !v["name"].as_str().unwrap().starts_with("licensegate-"));
    for key in [
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
        "kubectl.kubernetes.io/default-container",
    ] {
        template["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(key);
    }
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(sidecar::SIDECAR_LABEL);
    let input = serde_yaml::to_string(&bare).unwrap();
    let (status, output, stderr) = k8s::licensegate(
        &[
            "inject",
            "patch",
            "--sidecar-mode",
            mode,
            "--image",
            "registry.example.com/licensegate:0.1.0",
        ],
        &input,
    );
    assert!(status.success(), "{stderr}");
    let mut injected = k8s::yaml_documents(&output).remove(0);
    // The injector also stamps its version; the manifest is hand-written.
    injected["spec"]["template"]["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(sidecar::INJECTED);
    (manifest, injected)
}

#[test]
fn the_sidecar_manifests_are_what_inject_adds() {
    for (path, mode) in [
        ("kubernetes/native/deployment.yaml", "native"),
        ("kubernetes/classic/deployment.yaml", "container"),
    ] {
        let (manifest, injected) = manifest_and_injected(path, mode);
        assert!(
            manifest == injected,
            "{path} differs from `inject patch --sidecar-mode {mode}` output:\nmanifest: {manifest:#}\ninjected: {injected:#}"
        );
    }
}

/// Start the sidecar exactly as `deploy/kubernetes/native` describes it:
/// its args and environment (Downward API values filled in as the kubelet
/// would), the ConfigMap's config.yaml and a Secret laid out as mounted.
fn start_manifest_sidecar(
    root: &Path,
    upstream: std::net::SocketAddr,
    namespace: &str,
) -> k8s::Running {
    let deployment = one("kubernetes/native/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"];
    let sidecar = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == sidecar::CONTAINER_NAME)
        .unwrap()
        .clone();
    let relocate = |path: &str| {
        path.replace(
            "/etc/licensegate",
            &format!("{}/etc/licensegate", root.display()),
        )
        .replace(
            "/var/lib/licensegate",
            &format!("{}/var/lib/licensegate", root.display()),
        )
    };
    for mount in sidecar["volumeMounts"].as_array().unwrap() {
        std::fs::create_dir_all(relocate(mount["mountPath"].as_str().unwrap())).unwrap();
    }
    // Every key of the ConfigMap is a file in its mount, as the kubelet lays it out.
    let configmap = one("kubernetes/base/configmap.yaml", "ConfigMap");
    for (key, value) in configmap["data"].as_object().unwrap() {
        std::fs::write(
            relocate(&format!("{}/{key}", sidecar::CONFIG_DIR)),
            relocate(value.as_str().unwrap()),
        )
        .unwrap();
    }

    let mut env = Vec::new();
    for variable in sidecar["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap().to_owned();
        let value = match variable.get("value").and_then(Value::as_str) {
            Some(_) if name == "LICENSEGATE_LISTEN" || name == "LICENSEGATE_ADMIN" => {
                "127.0.0.1:0".to_owned()
            }
            Some(_) if name == "LICENSEGATE_UPSTREAM" => format!("http://{upstream}"),
            Some(value) => relocate(value),
            None => match variable["valueFrom"]["fieldRef"]["fieldPath"]
                .as_str()
                .unwrap()
            {
                "metadata.namespace" => namespace.to_owned(),
                "metadata.name" => "shop-api-7d9c6b5f4-x7k2p".to_owned(),
                "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                "spec.nodeName" => "node-1".to_owned(),
                other => panic!("unexpected fieldRef {other}"),
            },
        };
        env.push((name, value));
    }
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    k8s::Running::start(&args, &env, "licensegate listening: ")
}

/// A vendor key and a license bound to namespace `shop` and service account
/// `shop-api`, written as the Secret's keys.
fn write_license_secret(root: &Path) {
    let secret = one("kubernetes/base/secret.yaml", "Secret");
    let keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["keys.json", "license.jwt"]));
    let dir = root.join("etc/licensegate/license");
    std::fs::create_dir_all(&dir).unwrap();
    let vendor = tempfile::tempdir().unwrap();
    let private = vendor.path().join("vendor.key");
    let public = vendor.path().join("vendor.pem");
    let claims = common::write_file(
        vendor.path(),
        "claims.yaml",
        "sub: lic-0042\nlic:\n  plan: pro\n  env: {namespaces: [shop], service_accounts: [shop-api]}\n",
    );
    let jwks = dir.join("keys.json");
    let (status, _, stderr) = k8s::licensegate(
        &[
            "license",
            "keygen",
            "--kid",
            "vendor-1",
            "--private",
            private.to_str().unwrap(),
            "--public",
            public.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
        ],
        "",
    );
    assert!(status.success(), "{stderr}");
    let (status, token, stderr) = k8s::licensegate(
        &[
            "license",
            "issue",
            "--key",
            private.to_str().unwrap(),
            "--kid",
            "vendor-1",
            "--claims",
            claims.to_str().unwrap(),
            "--ttl",
            "1h",
        ],
        "",
    );
    assert!(status.success(), "{stderr}");
    std::fs::write(dir.join("license.jwt"), token.trim()).unwrap();
}

async fn as_user(url: &str, user: &str) -> (http::response::Parts, bytes::Bytes) {
    common::send(
        http::Request::get(url)
            .header("x-user", user)
            .body(common::empty())
            .unwrap(),
    )
    .await
}

fn addresses(announced: &str) -> (String, String) {
    let field = |key: &str| {
        announced
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap()
            .to_owned()
    };
    (field("proxy="), field("admin="))
}

#[tokio::test]
async fn the_sidecar_runs_as_the_manifests_configure_it() {
    let upstream = common::echo_upstream().await;
    let root = tempfile::tempdir().unwrap();
    write_license_secret(root.path());
    let sidecar = start_manifest_sidecar(root.path(), upstream, "shop");
    let (proxy, admin) = addresses(&sidecar.announced);

    // What the startup probe waits for, then traffic through the proxy.
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (parts, body) = common::get(&format!("http://{admin}/readyz")).await;
        if parts.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never ready: {}\n{}",
            String::from_utf8_lossy(&body),
            sidecar.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (parts, _) = common::get(&format!("http://{proxy}/orders")).await;
    assert_eq!(parts.status, 200, "{}", sidecar.logs());
    // The ConfigMap's policy is in force: seats need an identity.
    let (parts, body) = common::get(&format!("http://{proxy}/headers")).await;
    assert_eq!(parts.status, 403);
    assert!(String::from_utf8_lossy(&body).contains("seat_identity_missing"));
    // What the app receives: the license's facts, never a client's copy.
    let (parts, body) = common::send(
        http::Request::get(format!("http://{proxy}/headers"))
            .header("x-user", "alice")
            .header("x-license-id", "forged")
            .body(common::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let received: licensegate::demo::EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(received.headers["x-license-id"], ["lic-0042"]);
    // The app's readiness probe, sent where the kubelet sends it (the proxy
    // port), reaches the app on a public route.
    let deployment = one("kubernetes/native/deployment.yaml", "Deployment");
    let app = containers(&deployment["spec"]["template"]["spec"])
        .find(|c| c["name"] == "app")
        .unwrap();
    let probe = app["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    let (parts, body) = common::get(&format!("http://{proxy}{probe}")).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let received: licensegate::demo::EchoReport = serde_json::from_slice(&body).unwrap();
    assert_eq!(received.path, probe);
    assert!(
        !received.headers.keys().any(|h| h.starts_with("x-license-")),
        "a public route carries no entitlement headers: {:?}",
        received.headers
    );
    let (parts, _) = common::get(&format!("http://{proxy}/env")).await;
    assert_eq!(parts.status, 403, "the deny route never reaches the app");
    // The Downward API values reached the license's environment binding.
    let (_, status) = common::get(&format!("http://{admin}/license")).await;
    let status: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["environment"]["namespace"], "shop");
    assert_eq!(status["environment"]["service_account"], "shop-api");
    assert_eq!(status["state"], "valid", "{status:#}");

    // The same pod in another namespace is not licensed.
    let elsewhere = tempfile::tempdir().unwrap();
    write_license_secret(elsewhere.path());
    let other = start_manifest_sidecar(elsewhere.path(), upstream, "books");
    let (proxy, _) = addresses(&other.announced);
    let (parts, body) = common::get(&format!("http://{proxy}/orders")).await;
    assert_eq!(parts.status, 403);
    assert!(String::from_utf8_lossy(&body).contains("environment_not_licensed"));
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = k8s::promtool() else {
        return;
    };
    let dir = deploy().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_prometheus_rule_carries_the_alert_rules_file() {
    let rules = &k8s::read_yaml(&deploy().join("prometheus/alerts.yaml"))[0];
    let resource = one("prometheus/prometheusrule.yaml", "PrometheusRule");
    assert_eq!(resource["spec"]["groups"], rules["groups"]);
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    for alert in [
        "LicensegateLicenseExpiringSoon",
        "LicensegateLicenseInGrace",
        "LicensegateLicenseInvalid",
        "LicensegateDenialSpike",
        "LicensegateStoreFallbackActive",
        "LicensegateLicenseReloadFailing",
        "LicensegatePolicyReloadFailing",
        "LicensegateMeteringBacklog",
        "LicensegateMeteringDropped",
        "LicensegateMeteringDeadLetters",
    ] {
        assert!(alerts.contains(alert), "{alert} missing");
    }
}

/// `licensegate_…` names in a text, with histogram sample suffixes kept.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("licensegate_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression of the dashboard (panel targets and variables).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_owned());
        }
    }
    queries
}

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/licensegate.json")).unwrap(),
    )
    .unwrap()
}

/// Metric names on a Prometheus text page: sample names (histograms as
/// `_bucket`, `_sum`, `_count`) and family names.
fn exported_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if !line.starts_with('#') => line.split(['{', ' ']).next(),
            None => None,
        })
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn deploy_names_only_metrics_licensegate_exports_or_plans() {
    // The sidecar as deployed, with traffic through every kind of route, so
    // that labelled series (decisions, seats, quotas, shadow denials) exist.
    let upstream = common::echo_upstream().await;
    let root = tempfile::tempdir().unwrap();
    write_license_secret(root.path());
    let sidecar = start_manifest_sidecar(root.path(), upstream, "shop");
    let (proxy, admin) = addresses(&sidecar.announced);
    for path in ["/headers", "/hostname", "/env", "/status/200", "/orders"] {
        as_user(&format!("http://{proxy}{path}"), "alice").await;
    }
    // Seat and quota gauges are refreshed every few seconds.
    let deadline = std::time::Instant::now() + common::WAIT;
    let exported = loop {
        let (_, page) = common::get(&format!("http://{admin}/metrics")).await;
        let page = String::from_utf8(page.to_vec()).unwrap();
        let exported = exported_names(&page);
        if exported.contains("licensegate_seats_in_use")
            && exported.contains("licensegate_quota_used")
        {
            break exported;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no seat or quota series:\n{page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        exported.contains("licensegate_shadow_denials_total"),
        "{exported:?}"
    );
    // Metering's families exist once metering is configured, which the
    // deployed sidecar is not: take them from where metering registers
    // them, with one sink so that its labelled series exist.
    let metering = licensegate::metrics::Registry::new();
    let _ = licensegate::metering::metrics::MeteringMetrics::new(&metering).sink("billing");
    let metering = String::from_utf8(metering.render()).unwrap();
    // The same for users' families, with one issuer.
    let users = licensegate::metrics::Registry::new();
    let _ = licensegate::user::UserMetrics::new(&users).keys("https://idp.test");
    let _ = licensegate::user::source::JwksMetrics::new(&users).issuer("https://idp.test");
    let users = String::from_utf8(users.render()).unwrap();
    let exported: BTreeSet<String> = exported
        .into_iter()
        .chain(exported_names(&metering))
        .chain(exported_names(&users))
        .collect();

    let alerts = std::fs::read_to_string(deploy().join("prometheus/alerts.yaml")).unwrap();
    let dashboard_names: BTreeSet<String> = dashboard_queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    let used: BTreeSet<String> = dashboard_names
        .iter()
        .cloned()
        .chain(metric_names(&alerts))
        .collect();
    let family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_owned()
    };
    for name in &used {
        assert!(
            exported.contains(name) || PLANNED_METRICS.contains(&family(name).as_str()),
            "deploy/ names `{name}`, which licensegate does not export (and PLANNED_METRICS does not list)"
        );
    }
    for planned in PLANNED_METRICS {
        assert!(
            !exported.contains(planned) && !exported.contains(&format!("{planned}_bucket")),
            "`{planned}` is exported now: remove it from PLANNED_METRICS"
        );
        assert!(
            used.iter().any(|name| family(name) == planned),
            "`{planned}` is in PLANNED_METRICS but deploy/ does not use it"
        );
    }
    // The dashboard covers what the issue asks for with today's metrics.
    for name in [
        "licensegate_requests_total",
        "licensegate_request_duration_seconds_bucket",
        "licensegate_license_expiry_timestamp_seconds",
        "licensegate_license_state",
        "licensegate_build_info",
        "licensegate_metering_backlog_records",
        "licensegate_metering_oldest_unexported_seconds",
        "licensegate_metering_exported_total",
        "licensegate_metering_sink_errors_total",
    ] {
        assert!(
            dashboard_names.contains(name),
            "the dashboard does not use {name}"
        );
    }
}

#[test]
fn the_dashboard_is_a_well_formed_grafana_dashboard() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "licensegate");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "pod"]);
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains(r#"namespace=~"$namespace", pod=~"$pod""#),
                "{title}: `{expr}` ignores the namespace and pod selection"
            );
        }
    }
}

#[test]
fn monitoring_points_at_the_sidecar_admin_port() {
    let deployment = one("kubernetes/native/deployment.yaml", "Deployment");
    let template = &deployment["spec"]["template"];
    let sidecar = &template["spec"]["initContainers"][0];
    let admin = sidecar["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == sidecar::ADMIN_PORT_NAME)
        .unwrap();
    let monitor = one("prometheus/podmonitor.yaml", "PodMonitor");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"],
        sidecar::ADMIN_PORT_NAME
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        json!({sidecar::SIDECAR_LABEL: "true"})
    );
    assert_eq!(
        template["metadata"]["labels"][sidecar::SIDECAR_LABEL],
        "true"
    );
    assert_eq!(
        template["metadata"]["annotations"]["prometheus.io/port"],
        admin["containerPort"].to_string()
    );
    // The Service sends clients to the proxy, never to the app.
    let service = one("kubernetes/base/service.yaml", "Service");
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        sidecar::PROXY_PORT_NAME
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn the_webhook_configuration_reaches_the_injector_and_spares_system_namespaces() {
    let config = one(
        "kubernetes/injector/mutatingwebhookconfiguration.yaml",
        "MutatingWebhookConfiguration",
    );
    let service = one("kubernetes/injector/service.yaml", "Service");
    let deployment = one("kubernetes/injector/deployment.yaml", "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["inject", "serve"]);
    let arg = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .unwrap_or_else(|| panic!("no {flag}"))
    };
    let port = &container["ports"][0];
    assert_eq!(
        arg("--listen"),
        format!("0.0.0.0:{}", port["containerPort"])
    );
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    // The serving certificate comes from the Secret cert-manager writes.
    let mount = &container["volumeMounts"][0];
    assert!(arg("--tls-cert").starts_with(mount["mountPath"].as_str().unwrap()));
    let volume = &deployment["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    let certificate =
        k8s::read_yaml(&deploy().join("kubernetes/injector-cert-manager/certificates.yaml"))
            .into_iter()
            .find(|d| d["kind"] == "Certificate" && d["metadata"]["name"] == "licensegate-injector")
            .unwrap();
    assert_eq!(
        certificate["spec"]["secretName"],
        volume["secret"]["secretName"]
    );
    let name = service["metadata"]["name"].as_str().unwrap();
    let namespace = service["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!(licensegate::inject::certs::service_names(name, namespace))
    );

    let webhooks = config["webhooks"].as_array().unwrap();
    let paths: BTreeSet<&str> = webhooks
        .iter()
        .map(|w| w["clientConfig"]["service"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, BTreeSet::from(["/inject/opt-in", "/inject/opt-out"]));
    for webhook in webhooks {
        let target = &webhook["clientConfig"]["service"];
        assert_eq!(target["name"], name);
        assert_eq!(target["namespace"], namespace);
        assert_eq!(target["port"], service["spec"]["ports"][0]["port"]);
        assert_eq!(webhook["sideEffects"], "None");
        assert!(webhook["timeoutSeconds"].as_u64().unwrap() <= 10);
        assert_eq!(
            webhook["rules"],
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}])
        );
        // Namespace-wide opt-in must not let a pod start uninjected; the
        // cluster-wide per-pod path must not block pods when the injector is down.
        let expected = if target["path"] == "/inject/opt-out" {
            "Fail"
        } else {
            "Ignore"
        };
        assert_eq!(webhook["failurePolicy"], expected);
        let excluded = webhook["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
            .expect("system namespaces excluded by name");
        for system in ["kube-system", namespace] {
            assert!(excluded["values"]
                .as_array()
                .unwrap()
                .contains(&json!(system)));
        }
    }
}

/// A container port as a NetworkPolicy may name it: by name or number.
struct Port<'a> {
    name: Option<&'a str>,
    number: u64,
}

impl<'a> Port<'a> {
    /// The port of `container` called `name`.
    fn named(container: &'a Value, name: &'a str) -> Port<'a> {
        let port = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{} has no port {name}", container["name"]));
        Port {
            name: Some(name),
            number: port["containerPort"].as_u64().unwrap(),
        }
    }

    /// A port the pod does not declare (what an app on the pod IP opens).
    fn undeclared(number: u64) -> Port<'static> {
        Port { name: None, number }
    }
}

/// A label selector (`matchLabels`, `matchExpressions`) against `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |key: &str| labels.get(key).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| label(key) == value.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap();
            let among = |v: &str| {
                e["values"]
                    .as_array()
                    .is_some_and(|values| values.iter().any(|x| x == v))
            };
            match e["operator"].as_str().unwrap() {
                "In" => label(key).is_some_and(among),
                "NotIn" => !label(key).is_some_and(among),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        });
    by_labels && by_expressions
}

/// Whether `policy` lets a pod in `namespace` open a TCP connection to
/// `port` of the pods it selects, read the way a network plugin enforces
/// it. Where the answer depends on something unknown here (an `ipBlock`,
/// the source pod's labels), it says yes: a fence is only as good as its
/// widest gap.
fn admits(policy: &Value, namespace: &str, port: &Port<'_>) -> bool {
    let types = &policy["spec"]["policyTypes"];
    let isolated = types.is_null() || types.as_array().unwrap().iter().any(|t| t == "Ingress");
    if !isolated {
        return true;
    }
    let namespace_labels = json!({"kubernetes.io/metadata.name": namespace});
    let rules = policy["spec"]["ingress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rules.iter().any(|rule| {
        let ports = rule["ports"].as_array().filter(|p| !p.is_empty());
        let port_ok = ports.is_none_or(|ports| {
            ports.iter().any(|p| {
                let tcp = p["protocol"].as_str().unwrap_or("TCP") == "TCP";
                let matches = match &p["port"] {
                    Value::Null => true,
                    Value::String(name) => port.name == Some(name.as_str()),
                    number => {
                        let low = number.as_u64().unwrap();
                        let high = p["endPort"].as_u64().unwrap_or(low);
                        (low..=high).contains(&port.number)
                    }
                };
                tcp && matches
            })
        });
        let peers = rule["from"].as_array().filter(|f| !f.is_empty());
        let source_ok = peers.is_none_or(|peers| {
            peers.iter().any(|peer| {
                if peer.get("ipBlock").is_some() {
                    return true;
                }
                match peer.get("namespaceSelector") {
                    Some(selector) => selects(selector, &namespace_labels),
                    None => policy["metadata"]["namespace"] == namespace,
                }
            })
        });
        port_ok && source_ok
    })
}

fn containers(pod_spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|list| pod_spec[list].as_array())
        .flatten()
}

/// The value of `-name=V`, `--name=V` or `-name V` in `args`.
fn flag<'a>(args: &'a [Value], name: &str) -> Option<&'a str> {
    let args: Vec<&str> = args.iter().map(|a| a.as_str().unwrap()).collect();
    args.iter().enumerate().find_map(|(i, arg)| {
        let bare = arg.trim_start_matches('-');
        if bare.len() == arg.len() {
            return None;
        }
        match bare.split_once('=') {
            Some((key, value)) if key == name => Some(value),
            None if bare == name => args.get(i + 1).copied(),
            _ => None,
        }
    })
}

#[test]
fn the_workload_is_reachable_only_through_the_proxy() {
    let policy = one("kubernetes/base/networkpolicy.yaml", "NetworkPolicy");
    let monitoring = one("prometheus/podmonitor.yaml", "PodMonitor")["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "kubernetes/native/deployment.yaml",
        "kubernetes/classic/deployment.yaml",
    ] {
        let deployment = one(path, "Deployment");
        let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
        let pod = &deployment["spec"]["template"];
        let spec = &pod["spec"];
        let sidecar = containers(spec)
            .find(|c| c["name"] == sidecar::CONTAINER_NAME)
            .unwrap();
        let proxy = Port::named(sidecar, sidecar::PROXY_PORT_NAME);
        let admin = Port::named(sidecar, sidecar::ADMIN_PORT_NAME);

        // No container but the sidecar declares a port, and none on the node.
        assert_ne!(spec["hostNetwork"], true, "{path}");
        for container in containers(spec) {
            for port in container["ports"].as_array().into_iter().flatten() {
                assert!(
                    container["name"] == sidecar::CONTAINER_NAME
                        && [proxy.name, admin.name].contains(&port["name"].as_str()),
                    "{path}: container {} declares {port}",
                    container["name"]
                );
                assert!(port.get("hostPort").is_none(), "{path}: {port}");
            }
        }

        // The app listens on the pod's loopback, where the sidecar forwards.
        let app = containers(spec).find(|c| c["name"] == "app").unwrap();
        let args = app["args"].as_array().unwrap();
        assert_eq!(flag(args, "host"), Some("127.0.0.1"), "{path}: {args:?}");
        let app_port = flag(args, "port").unwrap();
        let upstream = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "LICENSEGATE_UPSTREAM")
            .unwrap()["value"]
            .clone();
        assert_eq!(upstream, format!("http://127.0.0.1:{app_port}"), "{path}");
        assert_eq!(
            pod["metadata"]["annotations"][sidecar::UPSTREAM_PORT],
            app_port,
            "{path}: inject finds the port by its annotation"
        );
        // The kubelet cannot reach the loopback: the app is probed through the proxy.
        assert_eq!(
            app["readinessProbe"]["httpGet"]["port"], proxy.number,
            "{path}"
        );

        // The policy fences these pods: anyone reaches the proxy, only
        // Prometheus the admin port, nobody anything else.
        assert_eq!(policy["metadata"]["namespace"], namespace);
        assert!(
            selects(&policy["spec"]["podSelector"], &pod["metadata"]["labels"]),
            "{path}: the NetworkPolicy does not select the workload's pods"
        );
        let app_port = Port::undeclared(app_port.parse().unwrap());
        for source in [namespace, "default", "kube-system", monitoring.as_str()] {
            assert!(admits(&policy, source, &proxy), "{source} → proxy");
            assert_eq!(
                admits(&policy, source, &admin),
                source == monitoring,
                "{source} → admin"
            );
            for port in [&app_port, &Port::undeclared(8081), &Port::undeclared(1)] {
                assert!(
                    !admits(&policy, source, port),
                    "{source} → port {} is admitted",
                    port.number
                );
            }
        }
    }
}

#[test]
fn the_injector_takes_only_the_api_servers_calls() {
    let policy = one("kubernetes/injector/networkpolicy.yaml", "NetworkPolicy");
    let deployment = one("kubernetes/injector/deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        policy["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    assert!(selects(
        &policy["spec"]["podSelector"],
        &pod["metadata"]["labels"]
    ));
    let injector = &pod["spec"]["containers"][0];
    assert_eq!(injector["ports"].as_array().unwrap().len(), 1);
    let webhook = Port::named(injector, "https");
    // The API server is no pod: it comes from wherever the control plane is.
    for source in ["kube-system", "default", "licensegate-system", "shop"] {
        assert!(admits(&policy, source, &webhook), "{source} → webhook");
        for port in [9901, 8080, 443] {
            assert!(
                !admits(&policy, source, &Port::undeclared(port)),
                "{source} → {port}"
            );
        }
    }
    // Nothing outbound: isolated for egress, with no rule allowing any.
    assert!(policy["spec"]["policyTypes"]
        .as_array()
        .unwrap()
        .contains(&json!("Egress")));
    assert!(policy["spec"]["egress"]
        .as_array()
        .is_none_or(|rules| rules.is_empty()));
}

#[test]
fn the_image_is_static_small_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(k8s::repo().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a run stage");
    assert!(stages[1].contains("distroless/static"), "{}", stages[1]);
    assert!(!dockerfile.contains(":latest"));
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("+crt-static"));
    let user = format!("USER {0}:{0}", sidecar::RUN_AS);
    assert!(dockerfile.contains(&user), "expected `{user}`");
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"{}\"]", sidecar::BINARY)));
    let ignore = std::fs::read_to_string(k8s::repo().join(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "*"),
        "the context is an allow-list"
    );

    // Every container in the manifests runs as that user, or another non-root one.
    for file in files(&deploy().join("kubernetes"), &["deployment.yaml"]) {
        let deployment = &k8s::read_yaml(&file)[0];
        let spec = &deployment["spec"]["template"]["spec"];
        for container in ["initContainers", "containers"]
            .iter()
            .filter_map(|l| spec[*l].as_array())
            .flatten()
        {
            let security = &container["securityContext"];
            let what = format!("{}: {}", file.display(), container["name"]);
            assert_eq!(security["runAsNonRoot"], true, "{what}");
            assert_ne!(security["runAsUser"], 0, "{what}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{what}");
            assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
            assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{what}");
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{what}"
            );
        }
    }
}
