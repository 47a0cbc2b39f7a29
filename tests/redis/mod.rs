//! Real `redis-server` processes for the shared-counter tests
//! (`tests/store.rs`): standalone servers and small clusters on free
//! loopback ports, with no persistence, killed on drop. Helpers stop one
//! (SIGKILL), restart it on the same port, pause it (SIGSTOP) and resume it
//! (SIGCONT), and run `redis-cli` against it.
//!
//! Missing `redis-server`/`redis-cli`, or a cluster that does not form,
//! skips a test with a loud message, or fails it when
//! `LICENSEGATE_REQUIRE_TOOLS=1` (as `.ci/run`, which installs them, sets).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
/// Upper bound for a server to start or a cluster to form.
const START: Duration = Duration::from_secs(20);

/// `redis-server` and `redis-cli`: `$LICENSEGATE_REDIS_SERVER` /
/// `$LICENSEGATE_REDIS_CLI`, else `PATH`.
fn find(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn server_bin() -> PathBuf {
    find("redis-server", "LICENSEGATE_REDIS_SERVER").expect("redis-server (checked by available())")
}

fn cli_bin() -> PathBuf {
    find("redis-cli", "LICENSEGATE_REDIS_CLI").expect("redis-cli (checked by available())")
}

/// Whether the Redis tools are installed. When they are not: panics under
/// `LICENSEGATE_REQUIRE_TOOLS=1`, else prints a loud SKIPPED banner.
pub fn available() -> bool {
    let missing: Vec<&str> = [
        ("redis-server", "LICENSEGATE_REDIS_SERVER"),
        ("redis-cli", "LICENSEGATE_REDIS_CLI"),
    ]
    .into_iter()
    .filter(|(name, var)| find(name, var).is_none())
    .map(|(name, _)| name)
    .collect();
    if missing.is_empty() {
        return true;
    }
    crate::common::skip(&format!(
        "{} not installed (apt-get install redis-server; or set LICENSEGATE_REDIS_SERVER / \
         LICENSEGATE_REDIS_CLI); .ci/run installs it",
        missing.join(" and ")
    ));
    false
}

/// A loopback port nothing listens on (at the moment of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server` process; killed on drop.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    /// Extra arguments (cluster settings), the same on every restart.
    extra: Vec<String>,
    /// Working directory (the cluster's node file lives here).
    dir: tempfile::TempDir,
    output: Arc<Mutex<Vec<String>>>,
    paused: bool,
}

impl Redis {
    /// A standalone server on a free port; `None` when Redis is not
    /// installed (and not required: see [`available`]).
    pub fn start() -> Option<Redis> {
        if !available() {
            return None;
        }
        Some(Redis::start_with(&[]).unwrap_or_else(|e| panic!("redis-server starts: {e}")))
    }

    /// A standalone server on `port` (which must be free).
    pub fn start_on(port: u16) -> Option<Redis> {
        if !available() {
            return None;
        }
        let mut redis = Redis::new(port, Vec::new());
        redis
            .launch()
            .unwrap_or_else(|e| panic!("redis-server starts on {port}: {e}"));
        Some(redis)
    }

    /// A server on a free port with `extra` arguments; retries a few ports
    /// in case another process took the one picked.
    fn start_with(extra: &[String]) -> Result<Redis, String> {
        let mut last = String::new();
        for _ in 0..5 {
            let mut redis = Redis::new(free_port(), extra.to_vec());
            match redis.launch() {
                Ok(()) => return Ok(redis),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn new(port: u16, extra: Vec<String>) -> Redis {
        Redis {
            child: None,
            port,
            extra,
            dir: tempfile::tempdir().unwrap(),
            output: Arc::new(Mutex::new(Vec::new())),
            paused: false,
        }
    }

    /// Start the process and wait for "Ready to accept connections".
    fn launch(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "redis-server already running");
        let port = self.port.to_string();
        let mut child = Command::new(server_bin())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                // For `DEBUG SLEEP` from redis-cli on loopback.
                "--enable-debug-command",
                "local",
            ])
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning redis-server: {e}"))?;
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = Arc::clone(&self.output);
            let tx = tx.clone();
            // Keep reading for the process's lifetime so it never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + START;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("Ready to accept connections") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    return Err(format!(
                        "redis-server on port {} did not become ready ({status}):\n{}",
                        self.port,
                        self.output()
                    ));
                }
            }
        }
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Everything the server wrote so far.
    pub fn output(&self) -> String {
        self.output.lock().join("\n")
    }

    /// SIGKILL the server and reap it (connections drop at once).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Kill the server if it runs, then start a fresh one (empty: nothing
    /// is persisted) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch()
            .unwrap_or_else(|e| panic!("redis-server restarts on {}: {e}", self.port));
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGSTOP: the server keeps its sockets (the kernel still accepts
    /// connections) but answers nothing.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(cli_bin());
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Run `redis-cli -p PORT ARGS...`; its stdout, trimmed. Panics when
    /// redis-cli fails or prints an error reply.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.cli_command(args).output().expect("redis-cli runs");
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("(error)"),
            "redis-cli {args:?}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// `redis-cli ARGS...` in the background (e.g. `DEBUG SLEEP 1`).
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.cli_command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli runs")
    }

    /// Every key on this server (SCAN, so also on a cluster node).
    pub fn keys(&self) -> Vec<String> {
        self.cli(&["--scan"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Seconds `key` still lives (-1: no expiry, -2: no such key).
    pub fn ttl(&self, key: &str) -> i64 {
        self.cli(&["TTL", key]).parse().expect("TTL is a number")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        self.kill();
    }
}

/// A Redis Cluster of masters without replicas, all on loopback.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    /// Start `masters` cluster-enabled servers and join them with
    /// `redis-cli --cluster create`. `Ok(None)` when Redis is not
    /// installed (and not required); `Err(why)` when no cluster could be
    /// formed here.
    pub fn start(masters: usize) -> Result<Option<Cluster>, String> {
        if !available() {
            return Ok(None);
        }
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let bus = free_port().to_string();
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                // The bus port defaults to port + 10000, which may be taken
                // or out of range; Redis 7 lets us pick a free one.
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "5000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(Redis::start_with(&extra)?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new(cli_bin())
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli --cluster create: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() || !text.contains("All 16384 slots covered") {
            return Err(format!(
                "redis-cli --cluster create failed ({}):\n{text}",
                output.status
            ));
        }
        // Every node must agree the cluster is up before it serves.
        let deadline = Instant::now() + START;
        for node in &nodes {
            loop {
                let info = node.cli(&["CLUSTER", "INFO"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "node {} never reported cluster_state:ok:\n{info}",
                        node.port()
                    ));
                }
                // Gossip has no completion signal to wait on; poll, bounded.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Some(Cluster { nodes }))
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }
}
