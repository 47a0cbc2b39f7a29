//! Config files through the real binary: relative paths in a file follow
//! the file, wherever the proxy is started from; flags stay relative to the
//! working directory; a missing path is a located configuration error.

mod common;

use std::path::Path;

use common::*;
use licensegate::license::issue::{sign, SigningKey};
use licensegate::license::validate::unix_now;
use licensegate::license::Algorithm;
use serde_json::{json, Value};

const POLICY: &str = "routes:\n  - {name: api, path: /api, access: licensed}\n";

/// `dir/conf/licensegate.yaml` naming its neighbours relatively: `keys/`,
/// `license/license.jwt`, `state/`, `policy.yaml`, `counters/`.
fn conf_with_neighbours(dir: &Path, upstream: std::net::SocketAddr) -> std::path::PathBuf {
    let conf = dir.join("conf");
    for sub in ["keys", "license", "state", "counters"] {
        std::fs::create_dir_all(conf.join(sub)).unwrap();
    }
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    write_file(&conf.join("keys"), "vendor.pem", &key.public_key_pem());
    let now = unix_now();
    let token = sign(
        &json!({"sub": "lic-rel", "iat": now, "nbf": now, "exp": now + 3600, "lic": {"plan": "pro"}}),
        &key,
        "vendor",
    );
    write_file(&conf.join("license"), "license.jwt", &token);
    write_file(&conf, "policy.yaml", POLICY);
    write_file(
        &conf,
        "licensegate.yaml",
        &format!(
            "upstream:\n  url: http://{upstream}\n\
             license:\n  keys: keys\n  file: license/license.jwt\n  state_file: ./state/state.json\n\
             policy:\n  paths: [policy.yaml]\n  counters_file: counters/counters.json\n"
        ),
    )
}

fn run_args(config: &str) -> Vec<&str> {
    vec![
        "run",
        "--config",
        config,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]
}

#[tokio::test]
async fn relative_paths_in_a_config_file_follow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let upstream = echo_upstream().await;
    let config = conf_with_neighbours(dir.path(), upstream);
    let conf = dir.path().join("conf");

    // Started from an unrelated directory, by absolute path and by a path
    // relative to the working directory.
    for (cwd, config) in [
        (elsewhere.path(), config.to_str().unwrap()),
        (dir.path(), "conf/licensegate.yaml"),
    ] {
        let proxy = Proxy::spawn_in(cwd, &run_args(config))
            .unwrap_or_else(|(status, stderr)| panic!("{status}: {stderr}"));
        proxy.wait_for_log("license=lic-rel");
        let (parts, _) = get(&proxy.url("/api")).await;
        assert_eq!(parts.status, 200, "the licensed route is served");
        let (parts, _) = get(&proxy.url("/other")).await;
        assert_eq!(parts.status, 404, "the policy is in force");
        let (_, body) = get(&proxy.admin_url("/license")).await;
        let status: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            status["keyring"]["path"],
            conf.join("keys").to_str().unwrap()
        );
        assert_eq!(
            status["path"],
            conf.join("license/license.jwt").to_str().unwrap()
        );
    }
}

#[tokio::test]
async fn paths_given_as_flags_stay_relative_to_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let config = conf_with_neighbours(dir.path(), echo_upstream().await);
    // A policy beside the config file with the same name as the flag's:
    // the flag must not pick it up.
    write_file(
        cwd.path(),
        "open.yaml",
        "routes:\n  - {name: other, path: /other, access: public}\n",
    );
    write_file(&dir.path().join("conf"), "open.yaml", POLICY);
    let mut args = run_args(config.to_str().unwrap());
    args.extend(["--policy", "open.yaml"]);
    let proxy = Proxy::spawn_in(cwd.path(), &args)
        .unwrap_or_else(|(status, stderr)| panic!("{status}: {stderr}"));
    let (parts, _) = get(&proxy.url("/other")).await;
    assert_eq!(
        parts.status, 200,
        "the policy named by the flag is in force"
    );
}

#[test]
fn a_missing_relative_path_is_a_located_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let upstream = closed_port();
    for (setting, yaml, missing) in [
        (
            "license.keys",
            "license:\n  keys: keys\n  source: header\n",
            "keys",
        ),
        (
            "policy.paths[0]",
            "policy:\n  paths: [policies]\n",
            "policies",
        ),
        (
            "license.state_file",
            "license:\n  keys: .\n  source: header\n  state_file: state/state.json\n",
            "state/state.json",
        ),
        (
            "tls.cert",
            "tls:\n  cert: tls/cert.pem\n  key: tls/key.pem\n",
            "tls/cert.pem",
        ),
    ] {
        let config = write_file(
            dir.path(),
            "licensegate.yaml",
            &format!("upstream:\n  url: http://{upstream}\n{yaml}"),
        );
        let Err((status, stderr)) =
            Proxy::spawn_in(elsewhere.path(), &run_args(config.to_str().unwrap()))
        else {
            panic!("started with {setting} missing");
        };
        assert_eq!(status.code(), Some(64), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("configuration error"))
            .unwrap_or_else(|| panic!("no configuration error: {stderr}"));
        // file:line:column: setting: the path as resolved: what is wrong
        let prefix = format!("licensegate: configuration error: {}:", config.display());
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line}"));
        let (position, rest) = rest.split_once(": ").unwrap();
        assert!(
            position
                .split(':')
                .all(|n| n.parse::<usize>().is_ok_and(|n| n > 0)),
            "{line}"
        );
        let resolved = dir.path().join(missing);
        let expected = if setting == "license.state_file" {
            format!(
                "{setting}: {}: its directory {}: no such file or directory",
                resolved.display(),
                dir.path().join("state").display()
            )
        } else {
            format!(
                "{setting}: {}: no such file or directory",
                resolved.display()
            )
        };
        assert_eq!(rest, expected, "{line}");
    }
}
