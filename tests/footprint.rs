//! The memory budget holds when the proxy is full: with `limits.memory` set
//! and `limits.max_connections` left to follow from it, as many idle
//! keep-alive clients as the derived limit admits fit in the budget, and
//! one more waits for a free slot instead of growing the process.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// A license-sized header value: what a client sends with every request.
fn license_value() -> String {
    format!("Bearer {}", "a".repeat(393))
}

async fn connect(addr: SocketAddr) -> KeepAlive {
    keep_alive(addr).await
}

/// One request with a license-sized header on `sender`'s connection.
async fn ask(sender: KeepAlive, path: &str) -> (KeepAlive, u16) {
    ask_on(sender, path, &[("x-license", &license_value())]).await
}

/// Fill a proxy of `engine` whose connection limit is derived from a
/// budget of `mib` MiB, and check its memory and its refusal to take one
/// more client.
async fn fill(engine: &str, mib: u64) {
    let budget: u64 = mib << 20;
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo_upstream().await;
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!(
            "upstream:\n  url: http://{upstream}\nhttp1: {engine}\nworkers: 1\nlimits:\n  memory: {mib}Mi\n"
        ),
    );
    let proxy = Proxy::with_config(&config);
    let line = proxy.wait_for_log("max_connections derived from the memory budget");
    let max_connections: usize = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("max_connections="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no max_connections in {line:?}"));
    assert!(
        (64..1_000).contains(&max_connections),
        "{mib}Mi should admit some hundreds of connections: {line}"
    );
    assert!(
        !proxy.logs().contains("more than the memory budget"),
        "{}",
        proxy.logs()
    );

    // Every slot held by an idle keep-alive client that was answered.
    let mut clients = Vec::with_capacity(max_connections);
    for i in 0..max_connections {
        let (sender, status) = ask(connect(proxy.addr).await, &format!("/client/{i}")).await;
        assert_eq!(status, 200, "client {i}");
        clients.push(sender);
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        metric(&page, "licensegate_connections_open"),
        Some(max_connections as f64)
    );
    let rss = proxy.rss_kib() * 1024;
    assert!(
        rss < budget,
        "{max_connections} idle clients ({engine}) hold {} KiB, over the {} KiB budget",
        rss / 1024,
        budget / 1024
    );

    // One more: the kernel completes its connection, the proxy does not
    // serve it while every slot is held; no answer within a second is the
    // assertion.
    let extra = connect(proxy.addr).await;
    let mut waiting = tokio::spawn(async move { ask(extra, "/extra").await.1 });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut waiting)
            .await
            .is_err(),
        "a client beyond the derived max_connections ({max_connections}) was served"
    );

    // One idle client leaves: its slot goes to the waiting one.
    drop(clients.pop());
    let status = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(status, 200, "served once a slot was free");
}

// Each engine's measured per-connection cost is what its derived limit
// uses: 30 MiB admits 768 relayed clients, 40 MiB 409 hyper ones.
#[tokio::test]
async fn a_relay_full_to_its_derived_limit_stays_within_its_memory_budget() {
    fill("relay", 30).await;
}

#[tokio::test]
async fn a_hyper_proxy_full_to_its_derived_limit_stays_within_its_memory_budget() {
    fill("hyper", 40).await;
}

#[tokio::test]
async fn a_connection_limit_the_budget_cannot_hold_is_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = echo_upstream().await;
    let config = write_file(
        dir.path(),
        "lg.yaml",
        &format!(
            "upstream:\n  url: http://{upstream}\nlimits:\n  memory: 64Mi\n  max_connections: 10000\n"
        ),
    );
    let proxy = Proxy::with_config(&config);
    let warning = proxy.wait_for_log("more than the memory budget");
    assert!(warning.contains("WARN"), "{warning}");
    for part in [
        "limits.max_connections 10000",
        "budget of 64MiB (limits.memory)",
    ] {
        assert!(warning.contains(part), "{part}: {warning}");
    }
    assert!(!proxy.logs().contains("derived from the memory budget"));
    // It is a warning: the proxy serves.
    let (parts, _) = get(&proxy.url("/")).await;
    assert_eq!(parts.status, 200);
}
