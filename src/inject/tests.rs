use serde_json::{json, Value};

use super::review::{FailurePolicy, Injector};
use super::sidecar::*;

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shop-1", "namespace": "shop", "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 3000}]}]}
    })
}

fn inject(pod: &Value, scope: Scope) -> Value {
    let mut pod = pod.clone();
    match plan(&pod, scope, &Defaults::default()).unwrap() {
        Plan::Inject { patch, .. } => apply(&mut pod, &patch).unwrap(),
        Plan::Skip(reason) => panic!("skipped: {reason}"),
    }
    pod
}

fn sidecar(pod: &Value) -> &Value {
    pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == CONTAINER_NAME))
        .expect("a licensegate init container")
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| &e["value"])
        .unwrap_or(&Value::Null)
}

fn error(pod: &Value) -> String {
    plan(pod, Scope::OptOut, &Defaults::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_native_sidecar_is_appended_with_its_volumes_label_and_annotations() {
    let injected = inject(&pod(json!({INJECT: "enabled"})), Scope::OptIn);
    let sidecar = sidecar(&injected);
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        env(sidecar, "LICENSEGATE_UPSTREAM"),
        "http://127.0.0.1:3000"
    );
    assert_eq!(env(sidecar, "LICENSEGATE_LISTEN"), "0.0.0.0:8080");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(injected["spec"]["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(injected["metadata"]["labels"][SIDECAR_LABEL], "true");
    assert_eq!(
        injected["metadata"]["annotations"][INJECTED],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        injected["metadata"]["annotations"]["prometheus.io/port"],
        "9901"
    );
    assert_eq!(injected["spec"]["containers"].as_array().unwrap().len(), 1);
    // Readiness carries the instance slot, and the pod's name is the
    // replica's name among the holders (a restarted container keeps it).
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    let pod_name = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .expect("POD_NAME is set");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = inject(&pod(json!({})), Scope::OptOut);
    assert!(matches!(
        plan(&once, Scope::OptOut, &Defaults::default()),
        Ok(Plan::Skip(_))
    ));
    // A hand-written sidecar counts too.
    let mut manual = pod(json!({}));
    manual["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "licensegate", "image": "x"}));
    assert!(matches!(
        plan(&manual, Scope::OptOut, &Defaults::default()),
        Ok(Plan::Skip(_))
    ));
}

#[test]
fn scope_and_annotation_decide() {
    let defaults = Defaults::default();
    let skip = |p: &Value, s| matches!(plan(p, s, &defaults), Ok(Plan::Skip(_)));
    assert!(skip(&pod(json!({})), Scope::OptIn));
    assert!(!skip(&pod(json!({})), Scope::OptOut));
    assert!(skip(&pod(json!({INJECT: "disabled"})), Scope::OptOut));
    assert!(!skip(&pod(json!({INJECT: "enabled"})), Scope::OptIn));
    assert!(error(&pod(json!({INJECT: "yes"}))).contains("neither enabled nor disabled"));
}

#[test]
fn missing_or_null_parents_are_created() {
    // A pod template without metadata, and one whose annotations are null.
    let mut bare = pod(json!({}));
    bare.as_object_mut().unwrap().remove("metadata");
    let injected = inject(&bare, Scope::OptOut);
    assert_eq!(injected["metadata"]["labels"][SIDECAR_LABEL], "true");
    let injected = inject(&pod(Value::Null), Scope::OptOut);
    assert_eq!(
        injected["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
}

#[test]
fn existing_arrays_and_annotations_are_extended_not_replaced() {
    let mut p = pod(json!({"prometheus.io/scrape": "false", "team": "shop"}));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let injected = inject(&p, Scope::OptOut);
    let init = injected["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "migrate");
    assert_eq!(init[1]["name"], CONTAINER_NAME);
    assert_eq!(injected["spec"]["volumes"][0]["name"], "data");
    let annotations = &injected["metadata"]["annotations"];
    assert_eq!(annotations["team"], "shop");
    assert_eq!(
        annotations["prometheus.io/scrape"], "false",
        "the app's own scrape settings win"
    );
    assert!(annotations.get("prometheus.io/port").is_none());
}

#[test]
fn the_patch_escapes_annotation_keys() {
    let Plan::Inject { patch, .. } =
        plan(&pod(json!({})), Scope::OptOut, &Defaults::default()).unwrap()
    else {
        panic!("not injected")
    };
    let text = serde_json::to_string(&patch).unwrap();
    assert!(
        text.contains("/metadata/annotations/licensegate.io~1injected"),
        "{text}"
    );
}

#[test]
fn a_classic_sidecar_comes_first_and_waits_in_post_start() {
    let p = pod(json!({SIDECAR_MODE: "container", INJECT: "enabled"}));
    let injected = inject(&p, Scope::OptIn);
    let containers = injected["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers[0]["name"], CONTAINER_NAME);
    assert_eq!(containers[1]["name"], "app");
    assert!(containers[0].get("restartPolicy").is_none());
    let hook = &containers[0]["lifecycle"]["postStart"]["exec"]["command"];
    assert_eq!(hook[0], BINARY);
    assert_eq!(hook[2], "wait");
    assert_eq!(
        injected["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "app"
    );
}

#[test]
fn annotations_override_the_defaults() {
    let injected = inject(
        &pod(json!({
            UPSTREAM_PORT: "5000", PROXY_PORT: "8443", ADMIN_PORT: "9000",
            CONFIG: "shop-lg", LICENSE_SECRET: "shop-license", IMAGE: "example.test/lg:2",
            CPU_REQUEST: "100m", MEMORY_LIMIT: "256Mi",
        })),
        Scope::OptOut,
    );
    let sidecar = sidecar(&injected);
    assert_eq!(
        env(sidecar, "LICENSEGATE_UPSTREAM"),
        "http://127.0.0.1:5000"
    );
    assert_eq!(env(sidecar, "LICENSEGATE_LISTEN"), "0.0.0.0:8443");
    assert_eq!(env(sidecar, "LICENSEGATE_ADMIN"), "0.0.0.0:9000");
    assert_eq!(sidecar["image"], "example.test/lg:2");
    assert_eq!(sidecar["resources"]["requests"]["cpu"], "100m");
    assert_eq!(sidecar["resources"]["limits"]["memory"], "256Mi");
    let volumes = &injected["spec"]["volumes"];
    assert_eq!(volumes[0]["configMap"]["name"], "shop-lg");
    assert_eq!(volumes[1]["secret"]["secretName"], "shop-license");
}

#[test]
fn bad_annotations_and_clashes_are_named() {
    assert!(error(&pod(json!({UPSTREAM_PORT: "http"}))).contains(UPSTREAM_PORT));
    assert!(error(&pod(json!({UPSTREAM_PORT: "0"}))).contains("not a port"));
    assert!(error(&pod(json!({UPSTREAM_PORT: "8080"}))).contains(PROXY_PORT));
    assert!(error(&pod(json!({PROXY_PORT: "3000"}))).contains("also the sidecar's proxy port"));
    let mut metrics_port = pod(json!({}));
    metrics_port["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 3000}, {"containerPort": 9901}]);
    assert!(error(&metrics_port).contains("declares port 9901"));
    assert!(error(&pod(json!({CONFIG: "Not_A_Name"}))).contains(CONFIG));
    assert!(error(&pod(json!({CPU_LIMIT: "lots"}))).contains(CPU_LIMIT));
    assert!(error(&pod(json!({IMAGE: "has space"}))).contains(IMAGE));
    assert!(error(&pod(json!({SIDECAR_MODE: "both"}))).contains(SIDECAR_MODE));
    assert!(error(&pod(json!({UPSTREAM_PORT: 3000}))).contains("quote it"));
    let mut portless = pod(json!({}));
    portless["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("ports");
    assert!(error(&portless).contains(UPSTREAM_PORT));
    let mut host = pod(json!({}));
    host["spec"]["hostNetwork"] = json!(true);
    assert!(error(&host).contains("hostNetwork"));
    let mut clash = pod(json!({}));
    clash["spec"]["volumes"] = json!([{"name": LICENSE_VOLUME, "emptyDir": {}}]);
    assert!(error(&clash).contains(LICENSE_VOLUME));
}

#[test]
fn odd_shapes_are_errors_not_panics() {
    // With a port, so that each case fails on its own oddity.
    let port = json!({"annotations": {UPSTREAM_PORT: "3000"}});
    for (odd, expected) in [
        (json!(null), "the pod is not a JSON object"),
        (json!([]), "the pod is not a JSON object"),
        (json!("pod"), "the pod is not a JSON object"),
        (
            json!({"metadata": 7, "spec": {"containers": [{}]}}),
            "metadata is not an object",
        ),
        (
            json!({"metadata": {"annotations": []}, "spec": {"containers": [{}]}}),
            "metadata.annotations is not an object",
        ),
        (json!({"spec": null}), "spec is missing or not an object"),
        (
            json!({"spec": {"containers": {}}}),
            "spec.containers is missing or empty",
        ),
        (
            json!({"spec": {"containers": []}}),
            "spec.containers is missing or empty",
        ),
        (
            json!({"metadata": port, "spec": {"containers": [{}, 7]}}),
            "spec.containers[1] is not an object",
        ),
        (
            json!({"metadata": port, "spec": {"containers": [{}], "initContainers": "x"}}),
            "spec.initContainers is not a list",
        ),
        (
            json!({"metadata": port, "spec": {"containers": [{}], "volumes": 3}}),
            "spec.volumes is not a list",
        ),
        (
            json!({"spec": {"containers": [{"ports": [{"containerPort": -1}]}]}}),
            "spec.containers[0].ports[0].containerPort: -1 is not a port (1 to 65535)",
        ),
        (
            json!({"spec": {"containers": [{"ports": [{"containerPort": 99999}]}]}}),
            "spec.containers[0].ports[0].containerPort: 99999 is not a port (1 to 65535)",
        ),
        (
            json!({"spec": {"containers": [{"ports": [{"containerPort": "http"}]}]}}),
            "spec.containers[0].ports[0].containerPort: \"http\" is not a port (1 to 65535)",
        ),
    ] {
        let error = error(&odd);
        assert!(error.starts_with(expected), "{odd}: {error}");
    }
}

/// The warnings `plan` gives for `pod`, which it injects.
fn warnings(pod: &Value) -> Vec<String> {
    match plan(pod, Scope::OptOut, &Defaults::default()).unwrap() {
        Plan::Inject { warnings, .. } => warnings,
        Plan::Skip(reason) => panic!("skipped: {reason}"),
    }
}

/// A pod whose app listens on loopback only: no containerPort, the
/// upstream port from its annotation.
fn loopback_pod(annotations: Value) -> Value {
    let mut pod = pod(annotations);
    pod["metadata"]["annotations"][UPSTREAM_PORT] = json!("3000");
    pod["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("ports");
    pod
}

#[test]
fn unknown_licensegate_annotations_are_warned_about() {
    assert_eq!(
        warnings(&loopback_pod(
            json!({"licensegate.io/upstrem-port": "3000"})
        )),
        ["unknown annotation licensegate.io/upstrem-port ignored"]
    );
}

#[test]
fn every_container_that_declares_a_port_is_warned_about_once() {
    assert!(warnings(&loopback_pod(json!({}))).is_empty());

    let mut pod = pod(json!({}));
    pod["spec"]["containers"][0]["ports"] = json!([
        {"containerPort": 3000},
        {"containerPort": 3001, "protocol": "UDP"},
    ]);
    pod["spec"]["containers"].as_array_mut().unwrap().push(
        json!({"name": "exporter", "image": "exporter:1", "ports": [{"containerPort": 9100}]}),
    );
    // A native sidecar serves beside the app; a plain init container has
    // finished before anything is served.
    pod["spec"]["initContainers"] = json!([
        {"name": "mesh", "image": "mesh:1", "restartPolicy": "Always", "ports": [{"containerPort": 15001}]},
        {"name": "migrate", "image": "migrate:1", "ports": [{"containerPort": 5000}]},
    ]);
    let warnings = warnings(&pod);
    let tail = "the workload is reachable there around the sidecar unless it binds 127.0.0.1 or a NetworkPolicy admits only port 8080";
    assert_eq!(
        warnings,
        [
            format!("container `app` exposes ports 3000/TCP, 3001/UDP: {tail}"),
            format!("container `exporter` exposes port 9100/TCP: {tail}"),
            format!("container `mesh` exposes port 15001/TCP: {tail}"),
        ]
    );
}

#[test]
fn quantities_follow_kubernetes() {
    for good in [
        "1", "0.5", "250m", "64Mi", "1Gi", "2e3", "1E+2", ".5", "100k",
    ] {
        assert!(check_quantity("q", good).is_ok(), "{good}");
    }
    for bad in ["", "m", "1.2.3", "-1", "1 Gi", "1gb", "1e", "lots", "1MiB"] {
        assert!(check_quantity("q", bad).is_err(), "{bad}");
    }
}

fn review(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-4b2a-8f5f-1c1b6f8a6d10",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "object": object,
        }
    }))
    .unwrap()
}

fn injector(failure_policy: FailurePolicy) -> Injector {
    Injector {
        defaults: Defaults::default(),
        failure_policy,
    }
}

#[test]
fn reviews_echo_the_uid_and_carry_a_base64_json_patch() {
    let answer = injector(FailurePolicy::Fail)
        .review(&review(pod(json!({}))), Scope::OptOut)
        .unwrap();
    let response = &answer.review["response"];
    assert_eq!(response["uid"], "0df28fbd-5f5f-4b2a-8f5f-1c1b6f8a6d10");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    use base64::Engine;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    assert!(!patch.0.is_empty());
}

#[test]
fn the_failure_policy_decides_between_denial_and_warning() {
    let bad = review(pod(json!({UPSTREAM_PORT: "x"})));
    let denied = injector(FailurePolicy::Fail)
        .review(&bad, Scope::OptOut)
        .unwrap();
    assert_eq!(denied.review["response"]["allowed"], false);
    assert_eq!(denied.review["response"]["status"]["code"], 400);
    let admitted = injector(FailurePolicy::Ignore)
        .review(&bad, Scope::OptOut)
        .unwrap();
    assert_eq!(admitted.review["response"]["allowed"], true);
    assert!(admitted.review["response"].get("patch").is_none());
    assert!(admitted.review["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains(UPSTREAM_PORT));
}

#[test]
fn malformed_reviews_are_rejected_without_panicking() {
    let injector = injector(FailurePolicy::Fail);
    for body in [
        &b""[..],
        b"{",
        b"[]",
        b"null",
        b"{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\"}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{}}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":7}}",
    ] {
        assert!(
            injector.review(body, Scope::OptOut).is_err(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // With a uid, odd requests get an answer.
    let odd = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":[1,2]}}"#;
    let answer = injector.review(odd, Scope::OptOut).unwrap();
    assert_eq!(answer.review["response"]["allowed"], false);
    assert_eq!(answer.review["response"]["uid"], "u");
}

#[test]
fn serving_certificates_name_the_service() {
    let cert =
        super::certs::generate("licensegate-injector", "licensegate-system", &[], 30).unwrap();
    assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(cert.key_pem.contains("PRIVATE KEY"));
    assert!(cert
        .dns_names
        .contains(&"licensegate-injector.licensegate-system.svc".to_owned()));
    assert!(super::certs::generate("Bad_Name", "ns", &[], 30).is_err());
    assert!(super::certs::generate("svc", "ns", &[], 0).is_err());
    assert!(super::certs::generate("svc", "ns", &[], super::certs::MAX_DAYS + 1).is_err());
    assert!(super::certs::generate("svc", "ns", &[], super::certs::MAX_DAYS).is_ok());
}

#[test]
fn calendar_dates_from_day_counts() {
    use super::certs::civil_from_days;
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(364), (1970, 12, 31));
    assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(47_541), (2100, 3, 1));
}

#[test]
fn the_default_memory_limit_sizes_the_connection_limit() {
    use crate::bytesize::ByteSize;
    use crate::proxy::settings::{BudgetSource, Http1Engine, MemoryBudget, BASE_RESERVE};
    // The sidecar is given no connection limit: licensegate derives one
    // from the cgroup limit its container gets, so the defaults must afford
    // the full ceiling with the relay and thousands with hyper, and the
    // request must cover the process at idle.
    let injected = inject(&pod(json!({})), Scope::OptOut);
    let sidecar = sidecar(&injected);
    let bytes = |quantity: &Value| ByteSize::parse(quantity.as_str().unwrap()).unwrap().0;
    let budget = MemoryBudget {
        bytes: bytes(&sidecar["resources"]["limits"]["memory"]),
        source: BudgetSource::Cgroup(crate::cgroup::V2_MEMORY_MAX),
    };
    assert_eq!(budget.connections(Http1Engine::Relay), 10_000);
    assert!(budget.connections(Http1Engine::Hyper) >= 2_000);
    assert!(bytes(&sidecar["resources"]["requests"]["memory"]) >= BASE_RESERVE);
    let env = sidecar["env"].to_string();
    assert!(
        !env.contains("MAX_CONNECTIONS") && !env.contains("MEMORY"),
        "{env}"
    );
}
