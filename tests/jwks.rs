//! The JWKS endpoint the user tests run against (`common::jwks`), checked
//! with the sidecar's own JWKS fetcher over real TLS: it serves the set,
//! swaps it, answers 304 to a current validator, fails on demand, and
//! refuses connections while stopped.

mod common;

use common::jwks::JwksServer;
use licensegate::remote::FetchErrorKind;
use licensegate::user::settings::JwksFetchSettings;
use licensegate::user::source::JwksFetcher;

const FIRST: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
const SECOND: &str = r#"{"keys":[]}"#;

#[tokio::test]
async fn the_jwks_server_serves_swaps_validates_fails_and_stops() {
    let server = JwksServer::start(FIRST).await;
    let fetcher = JwksFetcher::new(&JwksFetchSettings {
        ca: Some(server.ca_path().into()),
        ..JwksFetchSettings::new(server.url().parse().unwrap())
    })
    .unwrap();

    let first = fetcher.fetch(None).await.unwrap();
    assert_eq!(first.jwks.as_deref(), Some(FIRST.as_bytes()));
    let etag = first.etag.expect("an ETag");
    let again = fetcher.fetch(Some(&etag)).await.unwrap();
    assert_eq!(again.jwks, None, "304 for the current validator");
    assert_eq!(server.not_modified(), 1);

    server.set(SECOND);
    server.cache_control(Some("max-age=60"));
    let swapped = fetcher.fetch(Some(&etag)).await.unwrap();
    assert_eq!(swapped.jwks.as_deref(), Some(SECOND.as_bytes()));
    assert_ne!(swapped.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(swapped.max_age, Some(std::time::Duration::from_secs(60)));

    server.fail_with(Some(503));
    let error = fetcher.fetch(None).await.unwrap_err().to_string();
    assert!(
        error.contains("HTTP status 503") && error.contains("jwks failing with 503"),
        "{error}"
    );
    server.fail_with(None);

    server.stop().await;
    let error = fetcher.fetch(None).await.unwrap_err();
    assert!(matches!(error.kind, FetchErrorKind::Request(_)), "{error}");
    server.resume().await;
    let back = fetcher.fetch(None).await.unwrap();
    assert_eq!(back.jwks.as_deref(), Some(SECOND.as_bytes()));
    assert_eq!(server.fetches(), 5, "the refused fetch never reached it");
}
