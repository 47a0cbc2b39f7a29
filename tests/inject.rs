//! Sidecar injection for real: `licensegate inject serve` over TLS with a
//! certificate from `licensegate inject certs`, answering AdmissionReview
//! fixtures; `inject patch` on workload YAML; `inject wait` against a
//! running sidecar. Every injected pod is the result of applying the
//! returned JSON Patch, and is validated against the Kubernetes schemas.

mod common;
mod k8s;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use k8s::Running;

/// The name the API server uses for the webhook Service.
const SERVER_NAME: &str = "licensegate-injector.licensegate-system.svc";

fn fixture(name: &str) -> PathBuf {
    k8s::repo().join("tests/fixtures/inject").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// `licensegate inject certs` into `dir`.
fn make_certs(dir: &Path, force: bool) -> String {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["inject", "certs", "--out-dir", dir];
    if force {
        args.push("--force");
    }
    let (status, stdout, stderr) = k8s::licensegate(&args, "");
    assert!(status.success(), "{stderr}");
    stdout.trim().to_owned()
}

/// `inject serve` on an ephemeral loopback port with `dir`'s tls.crt and tls.key.
fn serve_args(dir: &Path) -> Vec<String> {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    vec![
        "inject".into(),
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        path("tls.crt"),
        "--tls-key".into(),
        path("tls.key"),
    ]
}

/// A running `licensegate inject serve` with its own CA.
struct Webhook {
    process: Running,
    addr: std::net::SocketAddr,
    certs: tempfile::TempDir,
}

impl Webhook {
    fn start(extra: &[&str]) -> Webhook {
        let certs = tempfile::tempdir().unwrap();
        let bundle = make_certs(certs.path(), false);
        // The printed caBundle is the CA certificate, base64.
        let ca = base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap();
        assert_eq!(ca, std::fs::read(certs.path().join("ca.crt")).unwrap());
        let mut args = serve_args(certs.path());
        args.extend(["--reload-interval", "100ms"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Running::start(&args, &[], "licensegate inject listening: webhook=");
        let addr = process.announced.parse().unwrap();
        Webhook {
            process,
            addr,
            certs,
        }
    }

    fn client_config(&self, alpn: &[u8]) -> rustls::ClientConfig {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(self.certs.path().join("ca.crt"))
                .unwrap()
        {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        config
    }

    async fn tls(
        &self,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(alpn)));
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        connector.connect(name, tcp).await
    }

    /// One HTTP/1.1 request over a fresh TLS connection.
    async fn request(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let tls = self.tls(b"http/1.1").await.expect("TLS handshake");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", SERVER_NAME)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = tokio::time::timeout(common::WAIT, sender.send_request(request))
            .await
            .expect("an answer in time")
            .unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    async fn review(&self, path: &str, body: Vec<u8>) -> Response {
        let (status, body) = self.request("POST", path, body).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        Response::parse(&body)
    }
}

/// The `response` of an AdmissionReview answer, decoded.
#[derive(Debug)]
struct Response {
    uid: String,
    allowed: bool,
    patch: Option<json_patch::Patch>,
    warnings: Vec<String>,
    message: Option<String>,
}

impl Response {
    fn parse(body: &[u8]) -> Response {
        let review: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        let response = &review["response"];
        let patch = response.get("patch").map(|patch| {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch.as_str().unwrap())
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        });
        Response {
            uid: response["uid"].as_str().unwrap().to_owned(),
            allowed: response["allowed"].as_bool().unwrap(),
            patch,
            warnings: response
                .get("warnings")
                .and_then(Value::as_array)
                .map(|w| w.iter().map(|w| w.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default(),
            message: response
                .pointer("/status/message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }
}

fn review_object(name: &str) -> (String, Value) {
    let review: Value = serde_json::from_slice(&fixture_bytes(name)).unwrap();
    (
        review["request"]["uid"].as_str().unwrap().to_owned(),
        review["request"]["object"].clone(),
    )
}

/// A review of `pod` (as the API server would send it).
fn review_of(pod: &Value) -> Vec<u8> {
    let mut review: Value = serde_json::from_slice(&fixture_bytes("review-plain.json")).unwrap();
    review["request"]["object"] = pod.clone();
    serde_json::to_vec(&review).unwrap()
}

fn apply(pod: &Value, patch: &json_patch::Patch) -> Value {
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, patch).expect("the patch applies to the pod it was made for");
    pod
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry `{name}` in {pod:#}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e.get("value").unwrap_or(&e["valueFrom"]))
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[tokio::test]
async fn the_webhook_injects_an_opted_in_pod_into_a_valid_pod_with_a_native_sidecar() {
    let webhook = Webhook::start(&[]);
    let (uid, pod) = review_object("review-opted-in.json");
    let response = webhook
        .review("/inject/opt-in", fixture_bytes("review-opted-in.json"))
        .await;
    assert_eq!(response.uid, uid);
    assert!(response.allowed);
    assert!(response.warnings.is_empty(), "{:?}", response.warnings);
    let injected = apply(&pod, response.patch.as_ref().expect("a patch"));

    let sidecar = container(&injected, "initContainers", "licensegate");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], "lg-admin");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    assert_eq!(
        env(sidecar, "LICENSEGATE_UPSTREAM"),
        "http://127.0.0.1:3000"
    );
    assert_eq!(
        env(sidecar, "POD_SERVICE_ACCOUNT")["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    let security = &sidecar["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    // The app, its token volume and its annotations are untouched.
    assert_eq!(injected["spec"]["containers"], pod["spec"]["containers"]);
    assert_eq!(injected["spec"]["volumes"][0], pod["spec"]["volumes"][0]);
    assert_eq!(
        injected["metadata"]["annotations"]["licensegate.io/inject"],
        "enabled"
    );
    assert_eq!(
        injected["metadata"]["labels"]["licensegate.io/sidecar"],
        "true"
    );
    webhook
        .process
        .wait_for_log("shop/shop-api-7d9c6b5f4-: injected");

    k8s::validate(&[injected], "the injected pod");
}

/// The API server may truncate admission warnings longer than this.
const MAX_WARNING_CHARS: usize = 256;

#[tokio::test]
async fn the_webhook_warns_of_ports_that_reach_the_app_around_the_sidecar() {
    let webhook = Webhook::start(&[]);
    let around = "the workload is reachable there around the sidecar unless it binds 127.0.0.1 or a NetworkPolicy admits only port";

    // The app declares its port on the pod IP: injected, with a warning.
    let exposed = webhook
        .review("/inject/opt-out", fixture_bytes("review-plain.json"))
        .await;
    assert!(exposed.allowed && exposed.patch.is_some());
    assert_eq!(
        exposed.warnings,
        [format!(
            "licensegate: container `app` exposes port 3000/TCP: {around} 8080"
        )]
    );

    // Every container that declares a port is named, with the proxy port
    // the pod actually gets.
    let (_, mut pod) = review_object("review-plain.json");
    pod["metadata"]["annotations"] = serde_json::json!({"licensegate.io/proxy-port": "8443"});
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "metrics",
            "image": "registry.example.com/exporter:1.0",
            "ports": [{"containerPort": 9100, "protocol": "TCP"}, {"containerPort": 9125, "protocol": "UDP"}],
        }));
    let two = webhook.review("/inject/opt-out", review_of(&pod)).await;
    assert!(two.allowed && two.patch.is_some());
    assert_eq!(
        two.warnings,
        [
            format!("licensegate: container `app` exposes port 3000/TCP: {around} 8443"),
            format!(
                "licensegate: container `metrics` exposes ports 9100/TCP, 9125/UDP: {around} 8443"
            ),
        ]
    );
    for warning in exposed.warnings.iter().chain(&two.warnings) {
        assert!(warning.len() <= MAX_WARNING_CHARS, "{warning}");
    }

    // The app on 127.0.0.1 with its port in an annotation: nothing to say.
    let loopback = webhook
        .review("/inject/opt-in", fixture_bytes("review-opted-in.json"))
        .await;
    assert!(loopback.allowed && loopback.patch.is_some());
    assert!(loopback.warnings.is_empty(), "{:?}", loopback.warnings);
}

#[tokio::test]
async fn an_injected_pod_is_left_alone_on_both_paths() {
    let webhook = Webhook::start(&[]);
    let (_, pod) = review_object("review-opted-in.json");
    let first = webhook
        .review("/inject/opt-in", fixture_bytes("review-opted-in.json"))
        .await;
    let injected = apply(&pod, first.patch.as_ref().unwrap());
    for path in ["/inject/opt-in", "/inject/opt-out"] {
        let again = webhook.review(path, review_of(&injected)).await;
        assert!(again.allowed);
        assert!(again.patch.is_none(), "{path}: {:?}", again.patch);
    }
}

#[tokio::test]
async fn namespaces_opt_in_and_pods_opt_out() {
    let webhook = Webhook::start(&[]);
    // No annotation: injected on the namespace (opt-out) path only.
    let plain = webhook
        .review("/inject/opt-out", fixture_bytes("review-plain.json"))
        .await;
    assert!(plain.allowed && plain.patch.is_some());
    let plain = webhook
        .review("/inject/opt-in", fixture_bytes("review-plain.json"))
        .await;
    assert!(plain.allowed && plain.patch.is_none());
    // Annotated disabled: never.
    for path in ["/inject/opt-in", "/inject/opt-out"] {
        let disabled = webhook
            .review(path, fixture_bytes("review-disabled.json"))
            .await;
        assert!(disabled.allowed && disabled.patch.is_none(), "{path}");
    }
}

#[tokio::test]
async fn annotations_override_port_config_secret_image_resources_and_mode() {
    let webhook = Webhook::start(&[]);
    let (_, pod) = review_object("review-overrides.json");
    let response = webhook
        .review("/inject/opt-in", fixture_bytes("review-overrides.json"))
        .await;
    let injected = apply(&pod, response.patch.as_ref().unwrap());
    // sidecar-mode: container → the first regular container.
    assert!(injected["spec"].get("initContainers").is_none());
    assert_eq!(injected["spec"]["containers"][0]["name"], "licensegate");
    let sidecar = container(&injected, "containers", "licensegate");
    assert_eq!(sidecar["image"], "registry.example.com/licensegate:0.2.0");
    assert_eq!(env(sidecar, "LICENSEGATE_LISTEN"), "0.0.0.0:8443");
    assert_eq!(env(sidecar, "LICENSEGATE_ADMIN"), "0.0.0.0:9911");
    assert_eq!(
        env(sidecar, "LICENSEGATE_UPSTREAM"),
        "http://127.0.0.1:3000"
    );
    assert_eq!(sidecar["ports"][0]["containerPort"], 8443);
    assert_eq!(
        sidecar["resources"],
        serde_json::json!({"requests": {"cpu": "100m", "memory": "64Mi"},
                           "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    assert_eq!(
        sidecar["lifecycle"]["postStart"]["exec"]["command"],
        serde_json::json!([
            "/licensegate",
            "inject",
            "wait",
            "--admin",
            "127.0.0.1:9911",
            "--timeout",
            "120s"
        ])
    );
    let volume = |name: &str| {
        injected["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        volume("licensegate-config")["configMap"]["name"],
        "shop-licensegate"
    );
    assert_eq!(
        volume("licensegate-license")["secret"]["secretName"],
        "shop-license"
    );
    assert_eq!(
        injected["metadata"]["annotations"]["prometheus.io/port"],
        "9911"
    );
    assert_eq!(
        injected["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "app"
    );

    k8s::validate(&[injected], "the pod with overrides");
}

#[tokio::test]
async fn a_bad_annotation_is_refused_with_its_name_or_admitted_with_a_warning() {
    let fail = Webhook::start(&[]);
    let response = fail
        .review(
            "/inject/opt-in",
            fixture_bytes("review-bad-annotation.json"),
        )
        .await;
    assert!(!response.allowed);
    assert!(response.patch.is_none());
    let message = response.message.unwrap();
    assert!(
        message.contains("licensegate.io/upstream-port"),
        "{message}"
    );
    assert!(message.contains("`http` is not a port"), "{message}");

    let ignore = Webhook::start(&["--failure-policy", "Ignore"]);
    let response = ignore
        .review(
            "/inject/opt-in",
            fixture_bytes("review-bad-annotation.json"),
        )
        .await;
    assert!(response.allowed);
    assert!(response.patch.is_none());
    assert!(
        response.warnings[0].contains("licensegate.io/upstream-port"),
        "{:?}",
        response.warnings
    );
}

#[tokio::test]
async fn odd_requests_get_clear_answers_and_the_webhook_keeps_serving() {
    let webhook = Webhook::start(&[]);
    for (fixture, expected) in [
        ("review-truncated.json", "not JSON"),
        ("review-v1beta1.json", "admission.k8s.io/v1beta1"),
    ] {
        let (status, body) = webhook
            .request("POST", "/inject/opt-in", fixture_bytes(fixture))
            .await;
        assert_eq!(status, 400, "{fixture}");
        assert!(
            String::from_utf8_lossy(&body).contains(expected),
            "{fixture}: {body:?}"
        );
    }
    // Not a pod: allowed untouched, with a warning pointing at the rules.
    let deployment = webhook
        .review("/inject/opt-out", fixture_bytes("review-deployment.json"))
        .await;
    assert!(deployment.allowed && deployment.patch.is_none());
    assert!(deployment.warnings[0].contains("only handles Pods"));
    // Bodies are bounded.
    let (status, _) = webhook
        .request("POST", "/inject/opt-in", vec![b' '; 5 << 20])
        .await;
    assert_eq!(status, 413);
    assert_eq!(webhook.request("GET", "/healthz", Vec::new()).await.0, 200);
    assert_eq!(webhook.request("GET", "/readyz", Vec::new()).await.0, 200);
    assert_eq!(
        webhook.request("GET", "/inject/opt-in", Vec::new()).await.0,
        405
    );
    assert_eq!(webhook.request("POST", "/mutate", Vec::new()).await.0, 404);
    // A client that connects and says nothing is cut off; others are served.
    let idle = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let response = webhook
        .review("/inject/opt-in", fixture_bytes("review-opted-in.json"))
        .await;
    assert!(response.patch.is_some());
    drop(idle);
}

#[tokio::test]
async fn the_webhook_speaks_http2() {
    let webhook = Webhook::start(&[]);
    let tls = webhook.tls(b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("https://{SERVER_NAME}/inject/opt-in"))
        .body(Full::new(Bytes::from(fixture_bytes(
            "review-opted-in.json",
        ))))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(Response::parse(&body).patch.is_some());
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let webhook = Webhook::start(&[]);
    let old_ca = std::fs::read(webhook.certs.path().join("ca.crt")).unwrap();
    make_certs(webhook.certs.path(), true);
    assert_ne!(
        old_ca,
        std::fs::read(webhook.certs.path().join("ca.crt")).unwrap()
    );
    // The client now trusts only the new CA.
    let deadline = Instant::now() + common::WAIT;
    while webhook.tls(b"http/1.1").await.is_err() {
        assert!(Instant::now() < deadline, "{}", webhook.process.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    webhook.process.wait_for_log("webhook certificate reloaded");
}

#[tokio::test]
async fn sigterm_stops_the_webhook_cleanly() {
    let mut webhook = Webhook::start(&[]);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &webhook.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(webhook.process.wait_exit().code(), Some(0));
}

#[test]
fn the_webhook_refuses_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    common::write_file(dir.path(), "tls.crt", "not a certificate\n");
    common::write_file(dir.path(), "tls.key", "not a key\n");
    let args = serve_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, stderr) = k8s::licensegate(&args, "");
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("webhook certificate"), "{stderr}");
}

#[test]
fn certs_refuse_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), false);
    let (status, _, stderr) = k8s::licensegate(
        &["inject", "certs", "--out-dir", dir.path().to_str().unwrap()],
        "",
    );
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--force"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn patch_injects_every_workload_kind_idempotently_into_valid_yaml() {
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let (status, output, notes) = k8s::licensegate(&["inject", "patch"], &input);
    assert!(status.success(), "{notes}");
    let before = k8s::yaml_documents(&input);
    let after = k8s::yaml_documents(&output);
    assert_eq!(before.len(), after.len());
    for (kind, name, template) in [
        ("Pod", "debug", ""),
        ("Deployment", "shop-api", "/spec/template"),
        ("StatefulSet", "ledger", "/spec/template"),
        ("DaemonSet", "edge", "/spec/template"),
        ("Job", "report", "/spec/template"),
        ("CronJob", "nightly", "/spec/jobTemplate/spec/template"),
    ] {
        assert!(
            notes.contains(&format!("{}/{name} injected", kind.to_lowercase())),
            "{notes}"
        );
        let resource = after
            .iter()
            .find(|r| r["kind"] == kind && r["metadata"]["name"] == name)
            .unwrap();
        let pod = resource.pointer(template).unwrap();
        let list = if name == "nightly" {
            "containers"
        } else {
            "initContainers"
        };
        container(pod, list, "licensegate");
    }
    // Existing init containers and volumes are kept, the sidecar appended.
    let deployment = &after[1]["spec"]["template"];
    assert_eq!(deployment["spec"]["initContainers"][0]["name"], "migrate");
    assert_eq!(
        deployment["spec"]["initContainers"][1]["name"],
        "licensegate"
    );
    assert_eq!(deployment["spec"]["volumes"][0]["name"], "cache");
    let ledger = container(
        &after[2]["spec"]["template"],
        "initContainers",
        "licensegate",
    );
    assert_eq!(env(ledger, "LICENSEGATE_UPSTREAM"), "http://127.0.0.1:5432");
    assert_eq!(env(ledger, "LICENSEGATE_LISTEN"), "0.0.0.0:8081");
    // The classic sidecar in a CronJob comes with advice.
    assert!(
        notes.contains("cronjob/nightly: warning: a classic sidecar"),
        "{notes}"
    );
    // Opted out, and not workloads: unchanged.
    for index in [6, 7, 8] {
        assert_eq!(before[index], after[index], "document {index}");
    }

    let (status, again, _) = k8s::licensegate(&["inject", "patch"], &output);
    assert!(status.success());
    assert_eq!(again, output, "injecting injected YAML changes nothing");

    k8s::validate(&after, "inject patch output");
}

#[test]
fn patch_warns_of_ports_that_reach_the_app_around_the_sidecar() {
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let (status, output, notes) = k8s::licensegate(&["inject", "patch"], &input);
    assert!(status.success(), "{notes}");
    assert!(!output.is_empty(), "a warning does not stop the output");
    let around = "the workload is reachable there around the sidecar unless it binds 127.0.0.1 or a NetworkPolicy admits only port";
    let mut warned: Vec<&str> = notes.lines().filter(|l| l.contains(around)).collect();
    warned.sort_unstable();
    assert_eq!(
        warned,
        [
            format!("daemonset/edge: warning: container `edge` exposes port 9000/TCP: {around} 8080"),
            format!("deployment/shop-api: warning: container `app` exposes port 3000/TCP: {around} 8080"),
            format!("pod/debug: warning: container `app` exposes port 3000/TCP: {around} 8080"),
            format!("statefulset/ledger: warning: container `ledger` exposes port 5432/TCP: {around} 8081"),
        ],
        "{notes}"
    );
    // Workloads that declare no port (their upstream port is annotated) get none.
    for quiet in ["job/report", "cronjob/nightly"] {
        assert!(
            !notes.contains(&format!("{quiet}: warning: container")),
            "{notes}"
        );
    }
}

#[test]
fn patch_writes_nothing_when_a_workload_cannot_be_injected() {
    let input = std::fs::read_to_string(fixture("workloads.yaml"))
        .unwrap()
        .replace(
            "licensegate.io/proxy-port: \"8081\"",
            "licensegate.io/proxy-port: \"5432\"",
        );
    let (status, output, stderr) = k8s::licensegate(&["inject", "patch"], &input);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(output.is_empty());
    assert!(stderr.contains("statefulset/ledger:"), "{stderr}");

    let (status, output, stderr) =
        k8s::licensegate(&["inject", "patch"], "kind: Pod\nspec: [unclosed\n");
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(output.is_empty());
    assert!(stderr.contains("document 1"), "{stderr}");
}

#[tokio::test]
async fn wait_returns_once_the_sidecar_is_ready() {
    let proxy = common::Proxy::run(&format!("http://{}", common::echo_upstream().await), &[]);
    let admin = proxy.admin.to_string();
    let (status, _, stderr) = tokio::task::spawn_blocking(move || {
        k8s::licensegate(
            &["inject", "wait", "--admin", &admin, "--timeout", "10s"],
            "",
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "{stderr}");

    let closed = common::closed_port().to_string();
    let started = Instant::now();
    let (status, _, stderr) = k8s::licensegate(
        &["inject", "wait", "--admin", &closed, "--timeout", "500ms"],
        "",
    );
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not ready within 500ms"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
