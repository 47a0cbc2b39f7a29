use std::time::Duration;

use http::header::{ACCEPT, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::oneshot;

use super::*;
use crate::tls::testing::{full, Body, TlsServer};

/// Bound on any single wait in these tests: a failure, never a pacing.
const BOUND: Duration = Duration::from_secs(20);

const ISSUER: &str = "https://idp.example/realms/acme";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A JWKS with `n` keys (what the trivial parser counts).
fn jwks(n: usize) -> String {
    let keys: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"kty": "OKP", "kid": format!("k{i}")}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// The number of keys, or where the JSON stops making sense.
fn count_keys(bytes: &[u8]) -> Result<usize, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    value
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::len)
        .ok_or_else(|| "no `keys` array".to_owned())
}

// ---- timing and headers, without a clock --------------------------------

#[test]
fn the_next_fetch_follows_max_age_within_min_refresh_and_refresh() {
    let (min, max) = (Duration::from_secs(30), Duration::from_secs(300));
    let at = |secs| refresh_delay(Some(Duration::from_secs(secs)), min, max);
    assert_eq!(refresh_delay(None, min, max), max);
    assert_eq!(at(120), Duration::from_secs(120));
    assert_eq!(at(0), min, "max-age=0 must not poll in a loop");
    assert_eq!(at(5), min);
    assert_eq!(at(86_400), max, "revoked keys are seen within `refresh`");
    assert_eq!(at(u64::MAX), max);
}

#[test]
fn max_age_is_read_from_cache_control() {
    let headers = |values: &[&str]| {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
        }
        map
    };
    let secs = |n| Some(Duration::from_secs(n));
    assert_eq!(max_age(&headers(&[])), None);
    assert_eq!(max_age(&headers(&["public, max-age=600"])), secs(600));
    assert_eq!(max_age(&headers(&["Max-Age = \"60\""])), secs(60));
    assert_eq!(
        max_age(&headers(&["max-age=600, must-revalidate", "max-age=30"])),
        secs(30)
    );
    assert_eq!(max_age(&headers(&["no-cache"])), secs(0));
    assert_eq!(max_age(&headers(&["public, no-store"])), secs(0));
    assert_eq!(
        max_age(&headers(&["s-maxage=600"])),
        None,
        "for shared caches"
    );
    for junk in [
        "max-age=",
        "max-age=-5",
        "max-age=1e3",
        "max-age",
        "max-age=ten",
    ] {
        assert_eq!(max_age(&headers(&[junk])), None, "{junk}");
    }
    assert_eq!(
        max_age(&headers(&["max-age=99999999999999999999999"])),
        secs(u64::MAX)
    );
}

#[test]
fn settings_are_checked() {
    let with = |url: &str, change: fn(&mut JwksFetchSettings)| {
        let mut settings = JwksFetchSettings::new(url.parse().unwrap());
        change(&mut settings);
        JwksFetcher::new(&settings)
    };
    let error = |url: &str, change: fn(&mut JwksFetchSettings)| match with(url, change) {
        Ok(fetcher) => panic!("accepted {fetcher:?}"),
        Err(error) => error.to_string(),
    };
    let https = "https://idp.example/jwks";
    let text = error("http://idp.example/jwks", |_| {});
    assert!(
        text.starts_with("jwks.url: ") && text.contains("must be https://"),
        "{text}"
    );
    let text = error("http://idp.example/jwks", |s| s.allow_http = true);
    assert!(text.contains("only to a loopback address"), "{text}");
    with("http://127.0.0.1:9/jwks", |s| s.allow_http = true).unwrap();
    let text = error(https, |s| s.timeout = Duration::ZERO);
    assert!(text.starts_with("jwks.timeout: "), "{text}");
    let text = error(https, |s| s.min_refresh = Duration::from_secs(600));
    assert_eq!(
        text,
        "jwks.min_refresh: need 0 < min_refresh (10m) <= refresh (5m)"
    );
    let text = error(https, |s| s.min_refresh = Duration::ZERO);
    assert!(text.starts_with("jwks.min_refresh: "), "{text}");
    let text = error(https, |s| s.max_backoff = ms(10));
    assert!(text.starts_with("jwks.backoff: "), "{text}");
    let text = error(https, |s| s.ca = Some("/nonexistent/ca.pem".into()));
    assert!(
        text.starts_with("jwks.ca: ") && text.contains("/nonexistent/ca.pem"),
        "{text}"
    );
}

// ---- a local identity provider ------------------------------------------

/// What the provider serves and what it saw.
#[derive(Default)]
struct Served {
    jwks: String,
    etag: Option<String>,
    cache_control: Option<String>,
    /// Answer this status (with a body saying so) instead of the JWKS.
    fail: Option<u16>,
    requests: Vec<Seen>,
}

/// One request the provider answered.
struct Seen {
    at: Instant,
    if_none_match: Option<String>,
    accept: Option<String>,
    failed: bool,
}

struct Idp {
    tls: TlsServer,
    served: Arc<Mutex<Served>>,
}

impl Idp {
    async fn start(initial: &str) -> Idp {
        let served = Arc::new(Mutex::new(Served {
            jwks: initial.to_owned(),
            ..Served::default()
        }));
        let shared = Arc::clone(&served);
        let tls = TlsServer::start(move |request: Request<Incoming>| {
            let answer = answer(&shared, &request);
            async move { answer }
        })
        .await;
        Idp { tls, served }
    }

    fn settings(&self) -> JwksFetchSettings {
        JwksFetchSettings {
            ca: Some(self.tls.ca.clone()),
            timeout: Duration::from_secs(5),
            ..JwksFetchSettings::new(self.tls.url("/realms/acme/certs?client=x").parse().unwrap())
        }
    }

    fn serve(&self, change: impl FnOnce(&mut Served)) {
        change(&mut self.served.lock());
    }

    fn fetches(&self) -> usize {
        self.served.lock().requests.len()
    }

    fn fetch_times(&self) -> Vec<Instant> {
        self.served.lock().requests.iter().map(|r| r.at).collect()
    }

    fn if_none_match(&self) -> Vec<Option<String>> {
        self.served
            .lock()
            .requests
            .iter()
            .map(|r| r.if_none_match.clone())
            .collect()
    }
}

fn answer(served: &Mutex<Served>, request: &Request<Incoming>) -> Response<Body> {
    let header = |name| {
        request
            .headers()
            .get(name)
            .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
    };
    let mut served = served.lock();
    let if_none_match = header(IF_NONE_MATCH);
    let failed = served.fail.is_some();
    served.requests.push(Seen {
        at: Instant::now(),
        if_none_match: if_none_match.clone(),
        accept: header(ACCEPT),
        failed,
    });
    if let Some(status) = served.fail {
        return full(status, "text/plain", format!("boom {status}\n"));
    }
    let not_modified = if_none_match.is_some() && if_none_match == served.etag;
    let mut response = if not_modified {
        full(304, "application/jwk-set+json", "")
    } else {
        full(200, "application/jwk-set+json", served.jwks.clone())
    };
    let headers = response.headers_mut();
    for (name, value) in [(ETAG, &served.etag), (CACHE_CONTROL, &served.cache_control)] {
        if let Some(value) = value {
            headers.insert(name, HeaderValue::from_str(value).unwrap());
        }
    }
    response
}

// ---- the loop against it ------------------------------------------------

/// One issuer's keys whose installs are recorded, on their own board and
/// registry.
struct Keys {
    keys: Arc<JwksKeys>,
    installed: Arc<Mutex<Vec<usize>>>,
    registry: Registry,
    board: JwksBoard,
}

impl Keys {
    fn new(location: &str) -> Keys {
        let registry = Registry::new();
        let board = JwksBoard::new(None);
        let metrics = JwksMetrics::new(&registry);
        let installed = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&installed);
        let keys = JwksKeys::new(
            ISSUER,
            count_keys,
            move |n| {
                let mut installed = into.lock();
                let changed = installed.last() != Some(&n);
                installed.push(n);
                changed
            },
            board.register(ISSUER, location),
            metrics.issuer(ISSUER),
        );
        Keys {
            keys: Arc::new(keys),
            installed,
            registry,
            board,
        }
    }

    fn installed(&self) -> Vec<usize> {
        self.installed.lock().clone()
    }

    fn status(&self) -> JwksStatusSnapshot {
        self.keys.status().snapshot()
    }

    fn fetches(&self, result: &str) -> u64 {
        let series = format!(
            "licensegate_user_jwks_fetches_total{{issuer=\"{ISSUER}\",result=\"{result}\"}} "
        );
        let page = String::from_utf8(self.registry.render()).unwrap();
        page.lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
    }

    fn last_success_metric(&self) -> u64 {
        let series =
            format!("licensegate_user_jwks_last_success_timestamp_seconds{{issuer=\"{ISSUER}\"}} ");
        let page = String::from_utf8(self.registry.render()).unwrap();
        page.lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
            .unwrap()
    }
}

/// A running [`run_jwks_loop`]; stopped on drop, or by `stop`.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    unknown_kid: Arc<Notify>,
}

impl Running {
    fn start(
        settings: &JwksFetchSettings,
        keys: &Keys,
        state: Option<Arc<JwksStateFile>>,
    ) -> Running {
        let fetcher = JwksFetcher::new(settings).unwrap();
        let keys = Arc::clone(&keys.keys);
        let unknown_kid = Arc::new(Notify::new());
        let notify = Arc::clone(&unknown_kid);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            run_jwks_loop(&fetcher, &keys, state.as_deref(), &notify, shutdown).await;
        });
        Running {
            stop: Some(stop),
            task,
            unknown_kid,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(BOUND, &mut self.task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll (every 10 ms, up to [`BOUND`]) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        tokio::time::sleep(ms(10)).await;
    }
}

/// Short timings: fetch again after 60 s unless a test says otherwise.
fn quick(idp: &Idp) -> JwksFetchSettings {
    JwksFetchSettings {
        refresh: Duration::from_secs(60),
        min_refresh: ms(100),
        min_backoff: ms(100),
        max_backoff: ms(400),
        ..idp.settings()
    }
}

#[tokio::test]
async fn fetches_at_start_and_puts_the_keys_in_force() {
    let idp = Idp::start(&jwks(2)).await;
    let keys = Keys::new("idp");
    assert!(!keys.keys.status().is_loaded());
    assert!(keys.board.readiness().unwrap_err().contains(ISSUER));
    let _running = Running::start(&quick(&idp), &keys, None);
    eventually("keys installed", || keys.installed() == [2]).await;
    assert_eq!(idp.fetches(), 1);
    let accept = idp.served.lock().requests[0].accept.clone();
    assert_eq!(
        accept.as_deref(),
        Some("application/jwk-set+json, application/json")
    );
    let status = keys.status();
    assert!(status.loaded, "{status:?}");
    assert_eq!(status.source, Some(JwksOrigin::Fetch));
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.last_success.unwrap() > 1_700_000_000);
    assert_eq!(keys.board.readiness(), Ok(()));
    assert_eq!(keys.fetches("changed"), 1);
    assert_eq!(keys.last_success_metric(), status.last_success.unwrap());
}

/// The gaps between the provider's first `n` fetches, once there are `n`.
async fn gaps(idp: &Idp, n: usize) -> Vec<Duration> {
    eventually(&format!("{n} fetches"), || idp.fetches() >= n).await;
    let times = idp.fetch_times();
    times.windows(2).take(n - 1).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn cache_control_max_age_schedules_the_next_fetch() {
    // max-age within bounds: a second later, not the 60 s refresh.
    let idp = Idp::start(&jwks(1)).await;
    idp.serve(|s| s.cache_control = Some("public, max-age=1".into()));
    let keys = Keys::new("idp");
    let running = Running::start(&quick(&idp), &keys, None);
    let gap = gaps(&idp, 2).await[0];
    assert!(gap >= ms(900), "{gap:?}");
    running.stop().await;

    // max-age beyond `refresh`: `refresh` wins.
    let idp = Idp::start(&jwks(1)).await;
    idp.serve(|s| s.cache_control = Some("max-age=3600".into()));
    let keys = Keys::new("idp");
    let settings = JwksFetchSettings {
        refresh: ms(500),
        ..quick(&idp)
    };
    let running = Running::start(&settings, &keys, None);
    for gap in gaps(&idp, 3).await {
        assert!(gap >= ms(400), "{gap:?}");
    }
    running.stop().await;

    // max-age=0: no faster than `min_refresh`.
    let idp = Idp::start(&jwks(1)).await;
    idp.serve(|s| s.cache_control = Some("max-age=0".into()));
    let keys = Keys::new("idp");
    let settings = JwksFetchSettings {
        min_refresh: ms(400),
        ..quick(&idp)
    };
    let _running = Running::start(&settings, &keys, None);
    for gap in gaps(&idp, 3).await {
        assert!(gap >= ms(300), "{gap:?}");
    }
    eventually("answers taken", || keys.fetches("unchanged") >= 2).await;
    assert_eq!(
        keys.installed(),
        [1],
        "the same document is not installed again"
    );
}

#[tokio::test]
async fn an_etag_makes_unchanged_keys_a_304() {
    let idp = Idp::start(&jwks(2)).await;
    idp.serve(|s| {
        s.etag = Some("\"v1\"".into());
        s.cache_control = Some("max-age=0".into());
    });
    let keys = Keys::new("idp");
    let _running = Running::start(&quick(&idp), &keys, None);
    eventually("two 304s", || keys.fetches("not_modified") >= 2).await;
    let sent = idp.if_none_match();
    assert_eq!(sent[0], None);
    assert_eq!(sent[1].as_deref(), Some("\"v1\""));
    assert_eq!(sent[2].as_deref(), Some("\"v1\""));
    assert_eq!(keys.installed(), [2], "a 304 keeps the keys in force");
    let status = keys.status();
    assert!(
        status.loaded && status.consecutive_failures == 0,
        "{status:?}"
    );

    // A new set with a new validator is fetched and put in force.
    idp.serve(|s| {
        s.jwks = jwks(3);
        s.etag = Some("\"v2\"".into());
    });
    eventually("new keys installed", || keys.installed() == [2, 3]).await;
    assert_eq!(keys.fetches("changed"), 2);
    eventually("the new validator is sent", || {
        idp.if_none_match().last().unwrap().as_deref() == Some("\"v2\"")
    })
    .await;
}

#[tokio::test]
async fn unknown_kids_fetch_at_most_once_per_min_refresh_window() {
    let idp = Idp::start(&jwks(1)).await;
    let keys = Keys::new("idp");
    let settings = JwksFetchSettings {
        refresh: Duration::from_secs(3600),
        min_refresh: Duration::from_secs(2),
        ..quick(&idp)
    };
    let running = Running::start(&settings, &keys, None);
    eventually("first fetch", || keys.installed() == [1]).await;
    idp.serve(|s| s.jwks = jwks(2));

    for _ in 0..50 {
        running.unknown_kid.notify_one();
    }
    eventually("a fetch for the unknown kid", || keys.installed() == [1, 2]).await;
    let times = idp.fetch_times();
    assert_eq!(times.len(), 2);
    // The second fetch waited for the window since the first to close.
    assert!(times[1] - times[0] >= ms(1500), "{:?}", times[1] - times[0]);

    // Fifty more tokens within the window that the last fetch opened: no
    // fetch for the rest of it, then exactly one.
    for _ in 0..50 {
        running.unknown_kid.notify_one();
    }
    let window_end = times[1] + ms(1000);
    while Instant::now() < window_end {
        assert_eq!(idp.fetches(), 2, "fetched again within min_refresh");
        tokio::time::sleep(ms(20)).await;
    }
    eventually("one more fetch", || idp.fetches() == 3).await;
    let times = idp.fetch_times();
    assert!(times[2] - times[1] >= ms(1500), "{:?}", times[2] - times[1]);
    let quiet_end = Instant::now() + ms(500);
    while Instant::now() < quiet_end {
        assert_eq!(idp.fetches(), 3, "one fetch answers every waiting token");
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn failures_back_off_and_keep_the_last_good_keys() {
    let idp = Idp::start(&jwks(2)).await;
    let keys = Keys::new("idp");
    let settings = JwksFetchSettings {
        refresh: ms(200),
        min_refresh: ms(100),
        ..quick(&idp)
    };
    let _running = Running::start(&settings, &keys, None);
    eventually("keys installed", || keys.installed() == [2]).await;
    idp.serve(|s| s.fail = Some(500));

    eventually("four failures", || keys.status().consecutive_failures >= 4).await;
    let status = keys.status();
    let error = status.last_error.clone().unwrap();
    assert!(
        error.starts_with(&format!(
            "JWKS fetch from https://{}/realms/acme/certs?…: HTTP status 500",
            idp.tls.addr
        )),
        "{error}"
    );
    assert!(error.ends_with(": boom 500"), "{error}");
    assert!(status.loaded, "the last good keys stay in force");
    assert_eq!(status.source, Some(JwksOrigin::Fetch));
    assert_eq!(keys.installed(), [2]);
    assert_eq!(keys.board.readiness(), Ok(()), "keys in force: still ready");
    assert!(keys.fetches("error") >= 4);

    // Back-off: 100–200 ms, then 200–400 ms (capped at 400 ms).
    let failing: Vec<Instant> = (idp.served.lock().requests.iter())
        .filter(|r| r.failed)
        .map(|r| r.at)
        .collect();
    let gaps: Vec<Duration> = failing.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= ms(80), "{gaps:?}");
    assert!(gaps[1..].iter().all(|gap| *gap >= ms(150)), "{gaps:?}");

    idp.serve(|s| {
        s.fail = None;
        s.jwks = jwks(3);
    });
    eventually("recovered", || keys.installed() == [2, 3]).await;
    let status = keys.status();
    assert_eq!((status.consecutive_failures, status.last_error), (0, None));
}

#[tokio::test]
async fn a_document_that_does_not_parse_keeps_the_last_good_keys() {
    let idp = Idp::start(&jwks(2)).await;
    let keys = Keys::new("idp");
    let settings = JwksFetchSettings {
        refresh: ms(150),
        min_refresh: ms(100),
        ..quick(&idp)
    };
    let _running = Running::start(&settings, &keys, None);
    eventually("keys installed", || keys.installed() == [2]).await;

    idp.serve(|s| s.jwks = "<html>\x1b[31mmaintenance</html>".into());
    eventually("refused", || keys.fetches("invalid") >= 2).await;
    let status = keys.status();
    let error = status.last_error.clone().unwrap();
    assert!(
        error.contains("refused: expected value at line 1 column 1"),
        "{error}"
    );
    assert!(
        error.contains("content type application/jwk-set+json"),
        "{error}"
    );
    assert!(error.contains("body starts `<html>\\u{1b}[31m"), "{error}");
    assert!(
        status.loaded && status.consecutive_failures >= 2,
        "{status:?}"
    );
    assert_eq!(keys.installed(), [2]);

    idp.serve(|s| s.jwks = jwks(4));
    eventually("good keys again", || keys.installed() == [2, 4]).await;
}

#[tokio::test]
async fn the_state_file_keeps_the_keys_for_a_start_while_the_idp_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks-state.json");
    let idp = Idp::start(&jwks(2)).await;
    idp.serve(|s| s.etag = Some("\"v1\"".into()));

    // First run: fetched, and written down.
    let keys = Keys::new("idp");
    let state = Arc::new(JwksStateFile::open(&path));
    let running = Running::start(&quick(&idp), &keys, Some(Arc::clone(&state)));
    eventually("state written", || path.exists()).await;
    running.stop().await;
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written["version"], 1);
    let entry = &written["issuers"][ISSUER];
    assert_eq!(entry["jwks"], jwks(2));
    assert_eq!(entry["etag"], "\"v1\"");
    let fetched_at = entry["fetched_at"].as_u64().unwrap();
    assert!(fetched_at > 1_700_000_000);

    // Second run, the provider unreachable: the state's keys are in force
    // as soon as the source is set up, before any fetch.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = JwksFetchSettings {
        url: format!("https://{closed}/realms/acme/certs")
            .parse()
            .unwrap(),
        ..quick(&idp)
    };
    let registry = Registry::new();
    let context = JwksContext::new(&registry, None, Some(&path));
    let installed = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&installed);
    let source = IssuerJwks::new(
        ISSUER,
        &JwksSource::Url(settings),
        &context,
        count_keys,
        move |n| {
            into.lock().push(n);
            true
        },
    )
    .unwrap();
    assert_eq!(*installed.lock(), [2]);
    let status = source.status().snapshot();
    assert_eq!(status.source, Some(JwksOrigin::State));
    assert_eq!(status.last_success, Some(fetched_at));
    assert_eq!(context.board.readiness(), Ok(()));

    let status_handle = source.status().clone();
    let task = tokio::spawn(source.run(Arc::new(Notify::new()), std::future::pending()));
    eventually("the fetch failed", || {
        status_handle.snapshot().consecutive_failures >= 1
    })
    .await;
    task.abort();
    let status = status_handle.snapshot();
    assert!(status.loaded, "{status:?}");
    assert_eq!(status.source, Some(JwksOrigin::State));
    assert!(status.last_error.unwrap().contains("request failed"));
    assert_eq!(*installed.lock(), [2]);
}

#[tokio::test]
async fn the_state_etag_is_sent_by_the_first_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let idp = Idp::start(&jwks(2)).await;
    idp.serve(|s| s.etag = Some("\"v1\"".into()));
    let state = JwksStateFile::open(&path);
    assert!(state
        .record(
            ISSUER,
            JwksStateEntry {
                jwks: jwks(2),
                fetched_at: 1_700_000_000,
                etag: Some("\"v1\"".into()),
            },
        )
        .unwrap());
    let keys = Keys::new("idp");
    let _running = Running::start(
        &quick(&idp),
        &keys,
        Some(Arc::new(JwksStateFile::open(&path))),
    );
    eventually("confirmed", || {
        keys.status().source == Some(JwksOrigin::Fetch)
    })
    .await;
    assert_eq!(idp.if_none_match(), [Some("\"v1\"".to_owned())]);
    assert_eq!(keys.installed(), [2]);
    assert_eq!(keys.fetches("not_modified"), 1);
}

#[tokio::test]
async fn a_state_file_that_could_not_be_written_is_written_by_a_later_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-yet/state.json");
    let idp = Idp::start(&jwks(1)).await;
    idp.serve(|s| s.cache_control = Some("max-age=0".into()));
    let keys = Keys::new("idp");
    let state = Arc::new(JwksStateFile::open(&path));
    let _running = Running::start(&quick(&idp), &keys, Some(state));
    // The save follows the install without a pause: it has failed by now.
    eventually("installed", || keys.installed() == [1]).await;
    assert!(!path.exists());

    std::fs::create_dir(dir.path().join("not-yet")).unwrap();
    eventually("written by an unchanged fetch", || path.exists()).await;
    assert_eq!(keys.installed(), [1]);
    assert_eq!(
        JwksStateFile::open(&path).entry(ISSUER).unwrap().jwks,
        jwks(1)
    );
}

#[tokio::test]
async fn a_corrupt_state_file_is_ignored_then_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    for corrupt in [
        "{\"version\": 1, \"issuers\": {",
        "[]",
        &format!("{{\"version\": 2, \"issuers\": {{\"{ISSUER}\": {{\"jwks\": \"{{}}\", \"fetched_at\": 1}}}}}}"),
        &format!("{{\"version\": 1, \"issuers\": {{\"{ISSUER}\": {{\"jwks\": 5, \"fetched_at\": 1}}}}}}"),
    ] {
        std::fs::write(&path, corrupt).unwrap();
        assert_eq!(JwksStateFile::open(&path).entry(ISSUER), None, "{corrupt}");
    }
    // A copy that no longer parses is not put in force either.
    std::fs::write(
        &path,
        format!("{{\"version\": 1, \"issuers\": {{\"{ISSUER}\": {{\"jwks\": \"{{\", \"fetched_at\": 1}}}}}}"),
    )
    .unwrap();
    let keys = Keys::new("idp");
    let state = Arc::new(JwksStateFile::open(&path));
    assert!(!keys.keys.restore(&state));
    assert_eq!(keys.installed(), Vec::<usize>::new());

    let idp = Idp::start(&jwks(3)).await;
    let _running = Running::start(&quick(&idp), &keys, Some(state));
    eventually("installed", || keys.installed() == [3]).await;
    eventually("state replaced", || {
        JwksStateFile::open(&path).entry(ISSUER).map(|e| e.jwks) == Some(jwks(3))
    })
    .await;
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written["version"], 1);
}

#[tokio::test]
async fn readiness_waits_for_every_issuer_and_status_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(1)).unwrap();
    let lifecycle = Arc::new(Lifecycle::new());
    let context = JwksContext::new(&Registry::new(), Some(Arc::clone(&lifecycle)), None);
    let from_file = IssuerJwks::new(
        "https://a.example",
        &JwksSource::File(file),
        &context,
        count_keys,
        |_| true,
    )
    .unwrap();
    assert!(from_file.status().is_loaded());
    assert!(lifecycle.is_ready());

    let idp = Idp::start(&jwks(2)).await;
    let settings = quick(&idp);
    let from_url = IssuerJwks::new(
        ISSUER,
        &JwksSource::Url(settings),
        &context,
        count_keys,
        |_| true,
    )
    .unwrap();
    assert!(!lifecycle.is_ready());
    let report = lifecycle.report();
    assert_eq!(
        report.checks[USER_KEYS_READY],
        format!("no keys for issuer {ISSUER} yet")
    );

    idp.serve(|s| s.fail = Some(503));
    let task = tokio::spawn(from_url.run(Arc::new(Notify::new()), std::future::pending()));
    eventually("the failure shows", || {
        lifecycle.report().checks[USER_KEYS_READY].contains("HTTP status 503")
    })
    .await;
    let shown = context.board.to_json();
    assert_eq!(shown[0]["source"], "file");
    assert_eq!(shown[0]["loaded"], true);
    assert_eq!(shown[1]["loaded"], false);
    assert_eq!(
        shown[1]["location"],
        format!("https://{}/realms/acme/certs?…", idp.tls.addr)
    );
    assert!(shown[1]["consecutive_failures"].as_u64().unwrap() >= 1);

    idp.serve(|s| s.fail = None);
    eventually("ready", || lifecycle.is_ready()).await;
    task.abort();
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start_and_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let context = || JwksContext::new(&Registry::new(), None, None);
    let setup = |context: &JwksContext| {
        IssuerJwks::new(
            ISSUER,
            &JwksSource::File(path.clone()),
            context,
            count_keys,
            |_| true,
        )
    };

    let error = setup(&context()).unwrap_err().to_string();
    assert_eq!(
        error,
        format!("jwks.file: {}: no such file", path.display())
    );
    std::fs::write(&path, "{\"keys\": [\n  {\"kid\": \"a\"},\n").unwrap();
    let error = setup(&context()).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("jwks.file: {}: ", path.display())),
        "{error}"
    );
    assert!(error.contains("line 3 column 0"), "{error}");

    std::fs::write(&path, jwks(2)).unwrap();
    let keys = Keys::new(&path.display().to_string());
    load_jwks_file(&path, &keys.keys).unwrap();
    assert_eq!(keys.installed(), [2]);
    assert_eq!(keys.status().source, Some(JwksOrigin::File));
    let watched = Arc::clone(&keys.keys);
    let watched_path = path.clone();
    let task = tokio::spawn(async move {
        run_jwks_file_loop(&watched_path, &watched, std::future::pending()).await;
    });

    // Each change is a new file renamed over the old one, as editors and
    // Kubernetes volume updates do.
    let replace = |text: String| {
        let temp = dir.path().join(".jwks.json.tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &path).unwrap();
    };
    replace(jwks(3));
    eventually("reloaded", || keys.installed() == [2, 3]).await;

    replace("{\"keys\": 7}".into());
    eventually("refused", || keys.fetches("invalid") == 1).await;
    let status = keys.status();
    assert_eq!(
        status.last_error.as_deref(),
        Some(format!("{}: no `keys` array", path.display()).as_str())
    );
    assert!(status.loaded);
    assert_eq!(keys.installed(), [2, 3], "the last good keys stay");

    replace(jwks(1));
    eventually("good again", || keys.installed() == [2, 3, 1]).await;
    assert_eq!(keys.status().consecutive_failures, 0);
    task.abort();
}

#[test]
fn issuers_share_one_state_file_and_keep_each_others_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let state = JwksStateFile::open(&path);
    let entry = |n| JwksStateEntry {
        jwks: jwks(n),
        fetched_at: 1_700_000_000 + n as u64,
        etag: None,
    };
    assert!(state.record("https://a.example", entry(1)).unwrap());
    assert!(state.record("https://b.example", entry(2)).unwrap());
    assert!(
        !state.record("https://a.example", entry(1)).unwrap(),
        "same JWKS: not rewritten"
    );
    let reopened = JwksStateFile::open(&path);
    assert_eq!(reopened.entry("https://a.example"), Some(entry(1)));
    assert_eq!(reopened.entry("https://b.example"), Some(entry(2)));
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written["version"], JWKS_STATE_VERSION);
    assert!(written["issuers"]["https://a.example"]
        .get("etag")
        .is_none());
}
