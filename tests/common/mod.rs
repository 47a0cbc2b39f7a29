//! Test harness: the real `licensegate` binary on real loopback sockets, in
//! front of real HTTP upstreams started in-process.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::TcpListener;

pub mod collector;
pub mod jwks;
pub mod mount;
pub mod recording;
pub mod tools;
pub mod vendor;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Upper bound for any single wait in a test; reaching it is a failure.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A running `licensegate` process; killed on drop.
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    log_rx: mpsc::Receiver<String>,
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_rx: mpsc::Receiver<String>,
}

impl Proxy {
    /// `licensegate run` with an ephemeral proxy and admin port plus `args`.
    pub fn run(upstream: &str, args: &[&str]) -> Proxy {
        let mut all = vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--workers",
            "2",
        ];
        all.extend_from_slice(args);
        Proxy::spawn(&all).expect("licensegate starts")
    }

    /// `licensegate run --config FILE` (the file supplies the upstream).
    pub fn with_config(config: &Path) -> Proxy {
        Proxy::try_with_config(config, &[]).expect("licensegate starts")
    }

    /// `licensegate run --config FILE` on ephemeral ports, plus `extra`
    /// flags; the exit status and stderr when it does not start.
    pub fn try_with_config(config: &Path, extra: &[&str]) -> Result<Proxy, (ExitStatus, String)> {
        Proxy::try_with_config_env(config, extra, &[])
    }

    /// [`Proxy::try_with_config`] with `env` set.
    pub fn try_with_config_env(
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proxy, (ExitStatus, String)> {
        let mut args = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Proxy::spawn_with_env(Path::new("."), &args, env)
    }

    /// Start the binary and wait for its "listening" line. On early exit,
    /// returns the exit status and everything it wrote to stderr.
    pub fn spawn(args: &[&str]) -> Result<Proxy, (ExitStatus, String)> {
        Proxy::spawn_in(Path::new("."), args)
    }

    /// [`Proxy::spawn`] with `dir` as the working directory.
    pub fn spawn_in(dir: &Path, args: &[&str]) -> Result<Proxy, (ExitStatus, String)> {
        Proxy::spawn_with_env(dir, args, &[])
    }

    /// [`Proxy::spawn_in`] with `env` set. `POD_NAME` (a replica's default
    /// name) is not inherited: replicas started by one test on one machine
    /// would all take it.
    pub fn spawn_with_env(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proxy, (ExitStatus, String)> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_licensegate"))
            .args(args)
            .current_dir(dir)
            .env_remove("POD_NAME")
            .envs(env.iter().copied())
            .env("LICENSEGATE_LOG", "licensegate=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the licensegate binary runs");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (log_tx, log_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(line.clone());
                let _ = log_tx.send(line);
            }
        });

        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_sink = Arc::clone(&stdout_lines);
        // Keep reading after the announcement so the child never writes to a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                stdout_sink.lock().push(line.clone());
                let _ = line_tx.send(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            match line_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("licensegate listening: ") {
                        let mut proxy = None;
                        let mut admin = None;
                        for field in rest.split_whitespace() {
                            if let Some(v) = field.strip_prefix("proxy=") {
                                proxy = Some(v.parse().unwrap());
                            } else if let Some(v) = field.strip_prefix("admin=") {
                                admin = Some(v.parse().unwrap());
                            }
                        }
                        return Ok(Proxy {
                            child: Some(child),
                            addr: proxy.expect("proxy address announced"),
                            admin: admin.expect("admin address announced"),
                            logs,
                            log_rx,
                            stdout: stdout_lines,
                            stdout_rx: line_rx,
                        });
                    }
                }
                Err(_) => {
                    // stdout closed or timed out: the process failed to start.
                    let status = match child.try_wait().unwrap() {
                        Some(status) => status,
                        None => {
                            child.kill().unwrap();
                            child.wait().unwrap()
                        }
                    };
                    // Give the stderr reader the rest of the output.
                    let mut text = Vec::new();
                    while let Ok(line) = log_rx.recv_timeout(Duration::from_secs(2)) {
                        text.push(line);
                    }
                    return Err((status, text.join("\n")));
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Block until a stderr line contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        if let Some(line) = self.logs.lock().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .log_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?}; logs:\n{}", self.logs()),
            }
        }
    }

    /// Block until the process printed a stdout line starting with `prefix`;
    /// returns the rest of that line.
    pub fn wait_for_stdout(&self, prefix: &str) -> String {
        if let Some(line) = self
            .stdout
            .lock()
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
        {
            return line.to_owned();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .stdout_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_owned();
                    }
                }
                Err(_) => panic!("no stdout line starting with {prefix:?}"),
            }
        }
    }

    /// Block until at least `count` stderr lines contain `needle`.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) {
        let seen = || {
            self.logs
                .lock()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
        };
        let deadline = Instant::now() + WAIT;
        while seen() < count {
            match self
                .log_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(_) => {}
                Err(_) => panic!(
                    "fewer than {count} log lines containing {needle:?}; logs:\n{}",
                    self.logs()
                ),
            }
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().join("\n")
    }

    /// Wait for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("licensegate did not exit; logs:\n{}", self.logs());
            }
            // Polling a child's exit has no blocking-with-timeout form in std.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An HTTP/1.1 + HTTP/2 upstream answering with `handler`, on an ephemeral port.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    upstream_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

/// [`upstream`] on `listener` (e.g. bound to a port that was closed until
/// now).
pub fn upstream_on<F, Fut>(listener: TcpListener, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub struct TestCert {
    dir: tempfile::TempDir,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl TestCert {
    /// A self-signed certificate for 127.0.0.1, written as PEM files.
    pub fn new() -> TestCert {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "cert.pem", &certified.cert.pem());
        write_file(
            dir.path(),
            "key.pem",
            &certified.signing_key.serialize_pem(),
        );
        TestCert {
            dir,
            der: certified.cert.der().clone(),
        }
    }

    pub fn cert_path(&self) -> String {
        self.dir
            .path()
            .join("cert.pem")
            .to_str()
            .unwrap()
            .to_owned()
    }

    pub fn key_path(&self) -> String {
        self.dir.path().join("key.pem").to_str().unwrap().to_owned()
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A server config for this certificate, offering h2 and http/1.1.
    pub fn server_config(&self) -> rustls::ServerConfig {
        use rustls_pki_types::pem::PemObject;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(self.key_path()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![self.der.clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

/// An HTTPS (HTTP/1.1 + HTTP/2 by ALPN) upstream with `cert`, answering
/// with `handler`, on an ephemeral loopback port.
pub async fn tls_upstream<F, Fut>(cert: &TestCert, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// The echo upstream that ships with `licensegate demo`.
pub async fn echo_upstream() -> SocketAddr {
    let echo = licensegate::demo::EchoUpstream::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = echo.local_addr();
    tokio::spawn(echo.serve());
    addr
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Send a request and collect the whole response body.
pub async fn send(request: Request<Body>) -> (http::response::Parts, Bytes) {
    let response = tokio::time::timeout(WAIT, client().request(request))
        .await
        .expect("response within the test bound")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body completes").to_bytes();
    (parts, body)
}

/// One keep-alive HTTP/1.1 client connection of its own (not pooled), for
/// tests that count connections.
pub type KeepAlive = hyper::client::conn::http1::SendRequest<Body>;

/// Open a [`KeepAlive`] connection to `addr`; its connection task runs
/// until the sender is dropped.
pub async fn keep_alive(addr: SocketAddr) -> KeepAlive {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// One GET of `path` (host `app.test`, plus `headers`) on a keep-alive
/// connection; the status once the whole body has arrived.
pub async fn ask_on(
    mut sender: KeepAlive,
    path: &str,
    headers: &[(&str, &str)],
) -> (KeepAlive, u16) {
    let mut request = Request::get(path).header("host", "app.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    (sender, status)
}

pub async fn get(url: &str) -> (http::response::Parts, Bytes) {
    send(Request::get(url).body(empty()).unwrap()).await
}

/// One metric sample from a Prometheus text page, e.g.
/// `licensegate_requests_total{decision="allow",reason="allowed"}`.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub async fn metrics(proxy: &Proxy) -> String {
    let (parts, body) = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(parts.status, 200);
    String::from_utf8(body.to_vec()).unwrap()
}

/// Poll (every 25 ms, up to 5 s) until `done` holds: for state that no
/// event announces, such as a gauge going down after a close.
pub async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Skip the rest of a test that cannot run on this machine (a tool or a
/// network address it needs is missing), with a loud banner; under
/// `LICENSEGATE_REQUIRE_TOOLS=1` (as `.ci/run` sets) fail it instead, so a
/// CI run never passes on a test that did not run.
pub fn skip(why: &str) {
    if std::env::var("LICENSEGATE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{why}, and LICENSEGATE_REQUIRE_TOOLS=1 requires it");
    }
    // Straight to the process's stderr: the test harness captures eprintln!.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n==================== SKIPPED ====================\n{why}\n=================================================\n"
    );
}

pub fn write_file(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
