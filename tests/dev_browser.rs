//! `licensegate dev` in front of a real Vite dev server, seen from a real
//! Chromium: `tests/browser/driver.mjs` drives it through playwright-core
//! while this test runs Vite, the proxy and the plan switch. The page and
//! its hot-reload socket come through the proxy, an edit arrives as a hot
//! update, a plan switch reaches the page's next API call, a denied
//! navigation is the HTML page, and a stopped dev server is the 502 page.
//!
//! Tools: node, Chromium (Debian's `chromium`; nothing is downloaded) and
//! the pinned `tests/browser/package-lock.json` installed under
//! `target/ci-tools/browser`, as `.ci/run` does.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use common::tools::{installed_dir, repo, tool};
use common::*;
use serde_json::Value;

/// The driver bounds its own run at 50 s; this is the outer bound.
const DRIVER_LIMIT: Duration = Duration::from_secs(60);

/// `/api/reports/**` needs feature `reports`, which only plan `pro` has.
const POLICY: &str = "\
unmatched: licensed
plans:
  free: {features: []}
  pro: {features: [reports]}
routes:
  - {name: reports, path: /api/reports/**, features: [reports]}
";

/// What the driver reports, step by step, and which claim each step backs.
const STEPS: [(&str, &str); 7] = [
    (
        "page_loads",
        "(1) the page loads through the proxy without Authorization",
    ),
    (
        "hmr_through_proxy",
        "(2) the HMR WebSocket goes through the proxy",
    ),
    (
        "hot_update",
        "(2) an edit arrives as a hot update, without a reload",
    ),
    (
        "fetch_allowed_on_pro",
        "(3) the page's API call passes under `pro`",
    ),
    (
        "fetch_denied_on_free",
        "(3) after the switch to `free` it is a 403 problem+json",
    ),
    ("denied_page", "(3) a navigation there shows the HTML page"),
    (
        "upstream_down_page",
        "(4) with Vite stopped, a navigation shows the 502 page",
    ),
];

struct Tools {
    node: PathBuf,
    chromium: PathBuf,
    node_modules: PathBuf,
}

/// Every tool is looked up (and reported) before any is required.
fn tools() -> Option<Tools> {
    let node = tool(
        "node",
        "LICENSEGATE_NODE",
        &[],
        "apt-get install nodejs npm",
    );
    let chromium = tool(
        "chromium",
        "LICENSEGATE_CHROMIUM",
        &[],
        "apt-get install chromium",
    );
    let node_modules = installed_dir(
        "vite and playwright-core",
        "LICENSEGATE_BROWSER_MODULES",
        "target/ci-tools/browser/node_modules",
        "npm ci --ignore-scripts --prefix target/ci-tools/browser, with tests/browser/package.json \
         and package-lock.json copied there",
        installed_as_locked,
    );
    Some(Tools {
        node: node?,
        chromium: chromium?,
        node_modules: node_modules?,
    })
}

/// The packages in `node_modules` are the versions the lock pins.
fn installed_as_locked(node_modules: &Path) -> Result<(), String> {
    let lock = read_json(&repo().join("tests/browser/package-lock.json"))?;
    for name in ["vite", "playwright-core"] {
        let pinned = &lock["packages"][format!("node_modules/{name}")]["version"];
        let installed = read_json(&node_modules.join(name).join("package.json"))?;
        if installed["version"] != *pinned {
            return Err(format!(
                "{name} {} is installed, tests/browser/package-lock.json pins {pinned}",
                installed["version"]
            ));
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// === impl Spawned ===

/// A child process and every process it starts (Vite's esbuild,
/// Playwright's Chromium), killed together on drop, also when the test
/// panics. They stay in the test's process group, so Ctrl-C reaches them
/// too. What they write is kept for failure messages; stdout lines are
/// also handed over one by one.
struct Spawned {
    name: &'static str,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    output: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    fn start(name: &'static str, command: &mut Command) -> Spawned {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().push(format!("stderr: {line}"));
            }
        });
        Spawned {
            name,
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            output,
        }
    }

    fn output(&self) -> String {
        format!("--- {} ---\n{}", self.name, self.output.lock().join("\n"))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait (bounded) for the process to exit by itself.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}\n{}",
                self.name,
                self.output()
            );
            // Polling a child's exit has no blocking-with-timeout form in std.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the process and its descendants; return once it is reaped.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Stopped processes cannot fork: freeze the tree until no new
        // member appears, then kill all of it.
        let mut tree = Vec::new();
        for _ in 0..5 {
            let now = process_tree(child.id());
            if now == tree {
                break;
            }
            tree = now;
            signal("STOP", &tree);
        }
        signal("KILL", &tree);
        let _ = child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `root` and its descendants, from the parent links in /proc.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(found) = children.get(&tree[next]) {
            tree.extend(found);
        }
        next += 1;
    }
    tree.sort_unstable();
    tree
}

fn signal(name: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    // Some may have exited already; that is fine.
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

// === Vite ===

/// Vite on `port` serving `app`; returns once it answers `GET /`.
fn start_vite(tools: &Tools, app: &Path, port: u16) -> Spawned {
    let mut vite = Spawned::start(
        "vite",
        Command::new(&tools.node)
            .arg(tools.node_modules.join("vite/bin/vite.js"))
            .args(["--port", &port.to_string(), "--strictPort"])
            .args(["--host", "127.0.0.1"])
            .current_dir(app)
            .env("NO_COLOR", "1"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    while !answers_200(addr) {
        if let Some(status) = vite.exited() {
            panic!("vite exited ({status})\n{}", vite.output());
        }
        assert!(
            Instant::now() < deadline,
            "vite does not answer on {addr}\n{}",
            vite.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    vite
}

/// One blocking `GET /`: is the answer a 200?
fn answers_200(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

/// `licensegate dev switch --admin ADMIN --plan PLAN`, the real subcommand.
fn switch_plan(proxy: &Proxy, plan: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(["dev", "switch", "--admin", &proxy.admin.to_string()])
        .args(["--plan", plan])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dev switch: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("plan `{plan}`")), "{stdout}");
}

#[test]
fn a_browser_uses_a_vite_app_through_licensegate_dev() {
    let Some(tools) = tools() else {
        return;
    };
    // The driver rewrites src/message.js: it works on a copy, next to a
    // link to the installed packages (where its imports resolve).
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    copy_dir(&repo().join("tests/browser/app"), &app);
    let driver = dir.path().join("driver.mjs");
    std::fs::copy(repo().join("tests/browser/driver.mjs"), &driver).unwrap();
    std::os::unix::fs::symlink(&tools.node_modules, dir.path().join("node_modules")).unwrap();
    std::fs::create_dir(dir.path().join("policy")).unwrap();
    let policy = write_file(&dir.path().join("policy"), "plans.yaml", POLICY);

    let vite_port = closed_port().port();
    let mut vite = start_vite(&tools, &app, vite_port);
    let upstream = format!("http://127.0.0.1:{vite_port}");
    let proxy = Proxy::spawn(&[
        "dev",
        "--upstream",
        &upstream,
        "--policy",
        policy.to_str().unwrap(),
        "--plan",
        "pro",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])
    .unwrap_or_else(|(status, stderr)| {
        panic!("licensegate dev does not start ({status}): {stderr}")
    });

    let mut browser = Spawned::start(
        "driver",
        Command::new(&tools.node)
            .arg(&driver)
            .arg(proxy.url("/"))
            .arg(&app)
            .env("CHROMIUM", &tools.chromium),
    );
    let mut steps: BTreeMap<String, Value> = BTreeMap::new();
    let deadline = Instant::now() + DRIVER_LIMIT;
    let diagnostics = |browser: &Spawned, vite: &Spawned| {
        format!(
            "{}\n{}\n--- licensegate ---\n{}",
            browser.output(),
            vite.output(),
            proxy.logs()
        )
    };
    loop {
        let line = match browser
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the driver overran {DRIVER_LIMIT:?}\n{}",
                diagnostics(&browser, &vite)
            ),
        };
        let Ok(report) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(step) = report["step"].as_str() {
            steps.insert(step.to_owned(), report.clone());
        }
        if let Some(action) = report["await"].as_str() {
            match action {
                "plan_free" => switch_plan(&proxy, "free"),
                // Reaped before the driver goes on: its port is closed.
                "upstream_stopped" => vite.stop(),
                other => panic!("the driver awaits {other:?}, which this test does not know"),
            }
            browser.say(action);
        }
        if report["done"] == true {
            break;
        }
    }
    let status = browser.wait_exit(WAIT);
    let context = diagnostics(&browser, &vite);

    // Launching the browser, the hand-overs, the run's own bound.
    let known = |name: &str| STEPS.iter().any(|(step, _)| *step == name);
    if let Some((name, report)) = steps.iter().find(|(n, r)| !known(n) && r["ok"] != true) {
        panic!("the driver failed at `{name}`: {report}\n{context}");
    }
    for (step, claim) in STEPS {
        let report = steps
            .get(step)
            .unwrap_or_else(|| panic!("{claim}: the driver did not report `{step}`\n{context}"));
        assert_eq!(report["ok"], true, "{claim}: {report}\n{context}");
    }
    let through_proxy = format!("ws://{}/", proxy.addr);
    let seen = |step: &str, field: &str| steps[step][field].clone();
    assert_eq!(seen("page_loads", "authorization_headers"), 0);
    for (step, field) in [("hmr_through_proxy", "url"), ("hot_update", "update_over")] {
        let url = seen(step, field);
        assert!(
            url.as_str().unwrap().starts_with(&through_proxy),
            "{step}: {url} is not the proxy"
        );
    }
    assert_eq!(seen("fetch_allowed_on_pro", "status"), 200);
    assert_eq!(seen("fetch_denied_on_free", "status"), 403);
    assert_eq!(
        seen("fetch_denied_on_free", "reason"),
        "feature_not_licensed"
    );
    assert_eq!(
        seen("fetch_denied_on_free", "content_type"),
        "application/problem+json"
    );
    assert_eq!(seen("fetch_denied_on_free", "accept"), "*/*");
    assert_eq!(seen("denied_page", "status"), 403);
    let title = seen("denied_page", "title");
    assert!(
        title.as_str().unwrap().contains("Feature not licensed"),
        "{title}"
    );
    assert_eq!(seen("upstream_down_page", "status"), 502);
    let text = seen("upstream_down_page", "text");
    assert!(
        text.as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{vite_port} refused the connection")),
        "{text}"
    );
    for step in ["denied_page", "upstream_down_page"] {
        let content_type = seen(step, "content_type");
        assert!(
            content_type.as_str().unwrap().starts_with("text/html"),
            "{step}: {content_type}"
        );
    }
    assert!(status.success(), "the driver exited {status}\n{context}");
}
