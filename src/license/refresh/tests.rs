use bytes::Bytes;
use http::header::LOCATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use super::*;
use crate::tls::testing::{certificate, full, Body, TlsServer};

const TOKEN: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJsaWMtMSJ9.c2lnbmF0dXJl";
const API_KEY: &str = "secret-api-key";

/// Bound on any single await in these tests: a failure, never a pacing.
const BOUND: Duration = Duration::from_secs(20);

// ---- timing -------------------------------------------------------------

#[test]
fn next_delay_is_the_fraction_point_of_the_lifetime() {
    // Issued at 1000, expires at 2000: half-life at 1500.
    assert_eq!(next_delay(1000, 1000, 2000, 0.5), Duration::from_secs(500));
    assert_eq!(next_delay(1200, 1000, 2000, 0.5), Duration::from_secs(300));
    assert_eq!(next_delay(1000, 1000, 2000, 0.8), Duration::from_secs(800));
    assert_eq!(next_delay(1000, 1000, 2000, 1.0), Duration::from_secs(1000));
    // Due, or past expiry: fetch now.
    assert_eq!(next_delay(1500, 1000, 2000, 0.5), Duration::ZERO);
    assert_eq!(next_delay(1999, 1000, 2000, 0.5), Duration::ZERO);
    assert_eq!(next_delay(2000, 1000, 2000, 0.5), Duration::ZERO);
    assert_eq!(next_delay(u64::MAX, 1000, 2000, 0.5), Duration::ZERO);
}

#[test]
fn next_delay_rounds_up_and_stays_within_the_lifetime() {
    // A one-second lifetime still waits a second, not zero.
    assert_eq!(next_delay(1000, 1000, 1001, 0.5), Duration::from_secs(1));
    // The local clock behind the issuer's: never later than expiry.
    assert_eq!(next_delay(500, 1000, 2000, 0.5), Duration::from_secs(1000));
    assert!(next_delay(0, 1000, 2000, 1.0) <= Duration::from_secs(2000));
    // Nonsense inputs neither panic nor exceed the time left.
    assert_eq!(next_delay(1000, 5000, 2000, 0.5), Duration::from_secs(1000));
    assert_eq!(
        next_delay(1000, 1000, 2000, f64::NAN),
        Duration::from_secs(500)
    );
    assert_eq!(next_delay(1000, 1000, 2000, 7.0), Duration::from_secs(1000));
    assert_eq!(next_delay(1000, 1000, 2000, -1.0), Duration::ZERO);
    assert_eq!(
        next_delay(0, 0, u64::MAX, 1.0),
        Duration::from_secs(u64::MAX)
    );
}

#[test]
fn backoff_ceiling_doubles_from_min_to_max_with_jitter_bounds() {
    let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
    for (failures, low, high) in [
        (0, 1_000, 2_000),
        (1, 2_000, 4_000),
        (2, 4_000, 8_000),
        (7, 128_000, 256_000),
        (8, 150_000, 300_000),
        (60, 150_000, 300_000),
        (u32::MAX, 150_000, 300_000),
    ] {
        for random in [0, 1, 12_345, u64::MAX / 2, u64::MAX] {
            let delay = backoff_delay(min, max, failures, random);
            assert!(
                (Duration::from_millis(low)..=Duration::from_millis(high)).contains(&delay),
                "failures {failures}, random {random}: {delay:?}"
            );
        }
        assert_eq!(
            backoff_delay(min, max, failures, 0),
            Duration::from_millis(low)
        );
    }
    // max < 2 × min, and extreme durations: still within [min, max].
    let d = backoff_delay(Duration::from_secs(3), Duration::from_secs(4), 0, u64::MAX);
    assert!((Duration::from_secs(3)..=Duration::from_secs(4)).contains(&d));
    let d = backoff_delay(Duration::from_secs(1), Duration::MAX, 200, u64::MAX);
    assert!(d >= Duration::from_secs(1));
}

#[test]
fn backoff_jitters_resets_and_never_returns_zero() {
    let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
    assert!(
        backoff.next_delay() >= Duration::from_millis(1),
        "min is clamped"
    );

    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
    assert_eq!(backoff.failures(), 40);
    assert!(delays
        .iter()
        .all(|d| (Duration::from_secs(1)..=Duration::from_secs(300)).contains(d)));
    assert!(delays[39] >= Duration::from_secs(150), "reached the cap");
    backoff.reset();
    assert!(
        backoff.next_delay() <= Duration::from_secs(2),
        "back to the start"
    );

    // Jitter: a range of 128 s drawn many times gives more than one value.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..7 {
            backoff.next_delay();
        }
        seen.insert(backoff.next_delay());
    }
    assert!(seen.len() > 1, "{seen:?}");
}

fn settings() -> RefreshSettings {
    RefreshSettings::new("https://licenses.example/token".parse().unwrap())
}

#[test]
fn expired_token_refreshes_at_once_then_backs_off_on_failure() {
    let expired = Lifetime {
        issued: 1000,
        expires: 2000,
    };
    let mut schedule = Schedule::new(&settings(), Some(expired));
    assert_eq!(schedule.first_delay(5000), Duration::ZERO);
    let first = schedule.on_failure(5000);
    assert!((Duration::from_secs(1)..=Duration::from_secs(2)).contains(&first));
    let second = schedule.on_failure(5002);
    assert!((Duration::from_secs(2)..=Duration::from_secs(4)).contains(&second));
    assert_eq!(schedule.failures(), 2);
    assert_eq!(
        Schedule::new(&settings(), None).first_delay(5000),
        Duration::ZERO,
        "no token in force: fetch at once"
    );
}

#[test]
fn success_resets_the_backoff_and_waits_for_the_refresh_point() {
    let mut schedule = Schedule::new(&settings(), None);
    schedule.on_failure(0);
    schedule.on_failure(0);
    let fresh = Lifetime {
        issued: 10_000,
        expires: 13_600,
    };
    assert_eq!(
        schedule.on_success(10_000, fresh),
        Duration::from_secs(1800)
    );
    assert_eq!(schedule.failures(), 0);
    assert_eq!(schedule.first_delay(10_000), Duration::from_secs(1800));
}

#[test]
fn a_stale_token_from_the_server_does_not_spin() {
    let mut schedule = Schedule::new(&settings(), None);
    let stale = Lifetime {
        issued: 1000,
        expires: 2000,
    };
    let mut previous = Duration::ZERO;
    for round in 0..10 {
        let delay = schedule.on_success(1900, stale);
        assert!(delay >= Duration::from_secs(1), "round {round}: {delay:?}");
        assert!(delay >= previous / 2, "keeps backing off");
        previous = delay;
    }
    assert_eq!(schedule.failures(), 10);
    // Even a zero-length lifetime.
    let delay = schedule.on_success(
        1000,
        Lifetime {
            issued: 1000,
            expires: 1000,
        },
    );
    assert!(delay >= Duration::from_secs(1));
}

#[test]
fn failures_retry_before_the_token_in_force_expires() {
    let settings = RefreshSettings {
        max_backoff: Duration::from_secs(3600),
        ..settings()
    };
    let in_force = Lifetime {
        issued: 0,
        expires: 1000,
    };
    let mut schedule = Schedule::new(&settings, Some(in_force));
    for _ in 0..12 {
        schedule.on_failure(500);
    }
    // The backoff alone would be 30–60 min; 100 s are left.
    assert_eq!(schedule.on_failure(900), Duration::from_secs(50));
    // Close to expiry: never below min_backoff.
    assert_eq!(schedule.on_failure(999), Duration::from_secs(1));
    // After expiry the full backoff applies again.
    assert!(schedule.on_failure(1000) >= Duration::from_secs(1800));
}

#[test]
fn lifetime_prefers_iat_then_nbf_then_fetch_time() {
    use crate::license::{Audience, LicenseClaims, NumericDate};
    let mut claims = Claims {
        iss: None,
        sub: "lic".into(),
        aud: Audience::default(),
        exp: NumericDate(5000),
        nbf: Some(NumericDate(1500)),
        iat: Some(NumericDate(1000)),
        jti: None,
        lic: LicenseClaims::default(),
    };
    let lifetime = |c: &Claims| Lifetime::of(c, 3000);
    assert_eq!(lifetime(&claims).issued, 1000);
    claims.iat = None;
    assert_eq!(lifetime(&claims).issued, 1500);
    claims.nbf = None;
    assert_eq!(lifetime(&claims).issued, 3000);
    claims.exp = NumericDate(2000);
    assert_eq!(
        lifetime(&claims),
        Lifetime {
            issued: 2000,
            expires: 2000
        }
    );
}

// ---- settings -----------------------------------------------------------

fn config_error(settings: &RefreshSettings) -> String {
    match Fetcher::new(settings) {
        Ok(_) => panic!("accepted {settings:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn settings_are_checked() {
    let with_url = |url: &str, allow_http: bool| RefreshSettings {
        allow_http,
        ..RefreshSettings::new(url.parse().unwrap())
    };
    let error = config_error(&with_url("http://licenses.example/t", false));
    assert!(error.starts_with("license.refresh.url:"), "{error}");
    assert!(error.contains("must be https://"), "{error}");
    let error = config_error(&with_url("http://licenses.example/t", true));
    assert!(error.contains("only to a loopback address"), "{error}");
    assert!(config_error(&with_url("ftp://127.0.0.1/t", true)).contains("https://"));
    assert!(config_error(&with_url("/token", false)).contains("not an absolute"));
    let error = config_error(&with_url("https://user:pw@licenses.example/t", false));
    assert!(error.contains("credentials"), "{error}");
    assert!(!error.contains("pw"), "{error}");

    for url in [
        "http://127.0.0.1:9/t",
        "http://[::1]:9/t",
        "http://localhost:9/t",
    ] {
        Fetcher::new(&with_url(url, true)).unwrap();
    }

    let bad = [
        RefreshSettings {
            timeout: Duration::ZERO,
            ..settings()
        },
        RefreshSettings {
            min_backoff: Duration::ZERO,
            ..settings()
        },
        RefreshSettings {
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            ..settings()
        },
        RefreshSettings {
            refresh_at_fraction: 0.0,
            ..settings()
        },
        RefreshSettings {
            refresh_at_fraction: 1.5,
            ..settings()
        },
        RefreshSettings {
            refresh_at_fraction: f64::NAN,
            ..settings()
        },
    ];
    for (settings, setting) in bad.iter().zip([
        "timeout",
        "backoff",
        "backoff",
        "refresh_at_fraction",
        "refresh_at_fraction",
        "refresh_at_fraction",
    ]) {
        let error = config_error(settings);
        assert!(
            error.starts_with(&format!("license.refresh.{setting}:")),
            "{error}"
        );
    }

    let error = config_error(&RefreshSettings {
        ca: Some("/nonexistent/ca.pem".into()),
        ..settings()
    });
    assert!(error.starts_with("license.refresh.ca:"), "{error}");
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}

#[test]
fn urls_in_errors_and_debug_hide_queries_and_header_values() {
    let mut settings = RefreshSettings::new(
        "https://licenses.example/token?api_key=hunter2"
            .parse()
            .unwrap(),
    );
    settings.headers.push((
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static(API_KEY),
    ));
    assert_eq!(shown_url(&settings.url), "https://licenses.example/token?…");
    let debug = format!("{settings:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains(API_KEY),
        "{debug}"
    );
    assert!(debug.contains("x-api-key"), "{debug}");
}

// ---- response bodies ----------------------------------------------------

#[test]
fn token_is_taken_from_text_or_json() {
    let ok = |ct: Option<&str>, body: &str| extract_token(ct, body.as_bytes()).unwrap();
    assert_eq!(ok(Some("text/plain"), &format!("\n {TOKEN} \r\n")), TOKEN);
    assert_eq!(ok(None, TOKEN), TOKEN);
    assert_eq!(ok(Some("application/jwt"), TOKEN), TOKEN);
    let json = format!(r#"{{"token": "{TOKEN}", "expires_in": 3600}}"#);
    assert_eq!(ok(Some("application/json"), &json), TOKEN);
    assert_eq!(ok(Some("Application/JSON; charset=utf-8"), &json), TOKEN);
    assert_eq!(ok(Some("application/vnd.license+json"), &json), TOKEN);
    // JSON served as text is still recognised: no token starts with `{`.
    assert_eq!(ok(Some("text/plain"), &json), TOKEN);
    let license = format!(r#"{{"license": "{TOKEN}"}}"#);
    assert_eq!(ok(Some("application/json"), &license), TOKEN);
}

#[test]
fn hostile_or_wrong_bodies_are_errors_not_panics() {
    let err = |ct: Option<&str>, body: &[u8]| extract_token(ct, body).unwrap_err();
    assert!(err(None, b"").contains("empty"));
    assert!(err(None, b" \n ").contains("empty"));
    assert!(err(None, b"\xff\xfe").contains("not UTF-8"));
    let html = err(Some("text/html"), b"<html>\x1b[31mlogin</html>");
    assert!(html.contains("not a compact license token"), "{html}");
    assert!(
        html.contains("text/html") && html.contains("\\u{1b}"),
        "{html}"
    );
    assert!(err(None, b"a.b").contains("not a compact"));
    assert!(err(None, b"a.b.c.d").contains("not a compact"));
    assert!(err(None, b"a..c").contains("not a compact"));
    assert!(err(None, b"a.b.c d").contains("not a compact"));
    let json = Some("application/json");
    assert!(err(json, b"{\"token\": 5}").contains("`token` in the JSON response is not a string"));
    assert!(err(json, b"[\"x\"]").contains("no string `token`"));
    assert!(err(json, b"{}").contains("no string `token`"));
    assert!(err(json, b"{\"token\": ").contains("not valid JSON"));
    let deep = "[".repeat(10_000);
    assert!(err(json, deep.as_bytes()).contains("not valid JSON"));
    let long = format!("{}.b.c", "a".repeat(MAX_TOKEN_BYTES));
    assert!(err(None, long.as_bytes()).contains("more than"));
    assert_eq!(printable(b"line\nforged", 100), "line\\nforged");
    assert_eq!(printable("ééé".as_bytes(), 2), "éé…");
}

// ---- against a local HTTPS server --------------------------------------

async fn route(request: Request<Incoming>) -> Response<Body> {
    let authorised =
        request.headers().get("x-api-key").map(|v| v.as_bytes()) == Some(API_KEY.as_bytes());
    match request.uri().path() {
        "/token" => full(200, "application/jwt", format!("{TOKEN}\n")),
        "/json" => full(200, "application/json", format!(r#"{{"token":"{TOKEN}"}}"#)),
        "/keyed" if authorised => full(200, "text/plain", TOKEN),
        "/keyed" => full(401, "text/plain", "invalid API key\n"),
        "/error" => full(500, "text/plain", "boom"),
        "/redirect" => Response::builder()
            .status(302)
            .header(LOCATION, "https://elsewhere.example/token")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
        "/html" => full(200, "text/html", "<html>maintenance</html>"),
        "/big-declared" => full(200, "text/plain", vec![b'a'; MAX_RESPONSE_BYTES + 1]),
        "/big-chunked" => {
            // No length up front: the limit must cut the stream off.
            let chunks = (0..64).map(|_| Ok(Frame::data(Bytes::from(vec![b'a'; 1024]))));
            let body = StreamBody::new(futures_util::stream::iter(chunks));
            Response::new(body.boxed())
        }
        "/hang" => std::future::pending().await,
        _ => full(404, "text/plain", ""),
    }
}

struct Server {
    tls: TlsServer,
}

impl Server {
    async fn start() -> Server {
        Server {
            tls: TlsServer::start(route).await,
        }
    }

    fn settings(&self, path: &str) -> RefreshSettings {
        RefreshSettings {
            ca: Some(self.tls.ca.clone()),
            ..RefreshSettings::new(self.tls.url(path).parse().unwrap())
        }
    }

    fn fetcher(&self, path: &str) -> Fetcher {
        Fetcher::new(&self.settings(path)).unwrap()
    }
}

async fn fetch(fetcher: &Fetcher) -> Result<String, FetchError> {
    tokio::time::timeout(BOUND, fetcher.fetch())
        .await
        .expect("the fetch's own timeout should have fired")
}

#[tokio::test]
async fn fetches_a_token_as_text_or_json_over_verified_tls() {
    let server = Server::start().await;
    assert_eq!(fetch(&server.fetcher("/token")).await.unwrap(), TOKEN);
    assert_eq!(fetch(&server.fetcher("/json")).await.unwrap(), TOKEN);

    // Configured headers are sent.
    let mut keyed = server.settings("/keyed");
    keyed.headers.push((
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static(API_KEY),
    ));
    assert_eq!(fetch(&Fetcher::new(&keyed).unwrap()).await.unwrap(), TOKEN);
    let error = fetch(&server.fetcher("/keyed")).await.unwrap_err();
    assert!(matches!(
        error.kind,
        FetchErrorKind::Status {
            status: StatusCode::UNAUTHORIZED,
            ..
        }
    ));
    assert!(error.to_string().ends_with(": invalid API key"), "{error}");
}

#[tokio::test]
async fn error_statuses_name_the_url_and_status() {
    let server = Server::start().await;
    let error = fetch(&server.fetcher("/error")).await.unwrap_err();
    let text = error.to_string();
    assert_eq!(
        text,
        format!(
            "license refresh from https://{}/error: HTTP status 500 Internal Server Error: boom",
            server.tls.addr
        )
    );

    let error = fetch(&server.fetcher("/redirect")).await.unwrap_err();
    assert!(
        error.to_string().contains(
            "302 Found: redirects are not followed (location: https://elsewhere.example/token)"
        ),
        "{error}"
    );

    let error = fetch(&server.fetcher("/html")).await.unwrap_err();
    assert!(matches!(error.kind, FetchErrorKind::Response(_)), "{error}");
    assert!(
        error.to_string().contains("not a compact license token"),
        "{error}"
    );
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_naming_the_url() {
    let server = Server::start().await;
    let settings = RefreshSettings {
        timeout: Duration::from_millis(300),
        ..server.settings("/hang")
    };
    let error = fetch(&Fetcher::new(&settings).unwrap()).await.unwrap_err();
    assert!(
        matches!(error.kind, FetchErrorKind::Timeout(t) if t == Duration::from_millis(300)),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "license refresh from https://{}/hang: no complete response within 300ms",
            server.tls.addr
        )
    );
}

#[tokio::test]
async fn an_untrusted_certificate_fails() {
    let server = Server::start().await;
    let other = tempfile::tempdir().unwrap();
    let (_, other_ca) = certificate(other.path(), "other.pem");
    let settings = RefreshSettings {
        ca: Some(other_ca),
        ..server.settings("/token")
    };
    let error = fetch(&Fetcher::new(&settings).unwrap()).await.unwrap_err();
    assert!(matches!(error.kind, FetchErrorKind::Request(_)), "{error}");
    let text = error.to_string();
    assert!(text.contains(&server.tls.addr.to_string()), "{text}");
    assert!(text.contains("certificate"), "{text}");
}

#[tokio::test]
async fn oversized_bodies_are_rejected() {
    let server = Server::start().await;
    for path in ["/big-declared", "/big-chunked"] {
        let error = fetch(&server.fetcher(path)).await.unwrap_err();
        assert!(
            matches!(error.kind, FetchErrorKind::TooLarge { limit } if limit == MAX_RESPONSE_BYTES),
            "{path}: {error}"
        );
    }
}

#[tokio::test]
async fn refused_connections_are_request_errors() {
    // A port that was just free: nothing listens there now.
    let addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let settings = RefreshSettings {
        allow_http: true,
        ..RefreshSettings::new(format!("http://{addr}/token").parse().unwrap())
    };
    let error = fetch(&Fetcher::new(&settings).unwrap()).await.unwrap_err();
    assert!(matches!(error.kind, FetchErrorKind::Request(_)), "{error}");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[tokio::test]
async fn the_loop_fetches_at_once_and_hands_the_token_to_accept() {
    let server = Server::start().await;
    let fetcher = server.fetcher("/token");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = run_refresh_loop(
        &fetcher,
        None,
        || 10_000,
        move |token: String| {
            let _ = tx.send(token);
            Ok::<_, String>(Lifetime {
                issued: 10_000,
                expires: 13_600,
            })
        },
        |_| {},
    );
    tokio::select! {
        () = driver => unreachable!("the loop runs for ever"),
        token = rx.recv() => assert_eq!(token.as_deref(), Some(TOKEN)),
        () = tokio::time::sleep(BOUND) => panic!("no token within {BOUND:?}"),
    }
}

#[test]
fn the_loop_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let fetcher = Fetcher::new(&RefreshSettings {
        allow_http: true,
        ..RefreshSettings::new("http://127.0.0.1:9/token".parse().unwrap())
    })
    .unwrap();
    let driver = run_refresh_loop(
        &fetcher,
        None,
        || 0,
        |_| Err::<Lifetime, String>("no".into()),
        |_| {},
    );
    assert_send(&driver);
}
