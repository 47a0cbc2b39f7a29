use std::path::{Path, PathBuf};

use super::{base_dir, with_base_dir, ExistingFile, ExistingPath, FileInDir};

fn parse<T: serde::de::DeserializeOwned>(base: &Path, text: &str) -> Result<T, String> {
    with_base_dir(base.to_owned(), || {
        serde_yaml::from_str::<T>(text).map_err(|e| e.to_string())
    })
}

#[test]
fn relative_paths_follow_the_base_and_absolute_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    let file: ExistingFile = parse(dir.path(), "cert.pem").unwrap();
    assert_eq!(file.0, dir.path().join("cert.pem"));
    let absolute = dir.path().join("cert.pem");
    let file: ExistingFile = parse(Path::new("/elsewhere"), absolute.to_str().unwrap()).unwrap();
    assert_eq!(file.0, absolute);
    let nested: ExistingPath = parse(dir.path(), ".").unwrap();
    assert_eq!(nested.0, dir.path().join("."));
}

#[test]
fn the_base_is_scoped_to_one_parse_on_one_thread() {
    let dir = tempfile::tempdir().unwrap();
    let inner = with_base_dir(dir.path().to_owned(), || {
        // Another thread parsing meanwhile has no base: relative to its
        // working directory.
        let other = std::thread::spawn(|| serde_yaml::from_str::<FileInDir>("x.json").unwrap());
        assert_eq!(other.join().unwrap().0, PathBuf::from("x.json"));
        serde_yaml::from_str::<FileInDir>("x.json").unwrap()
    });
    assert_eq!(inner.0, dir.path().join("x.json"));
    // After the parse, and after one that panicked, no base is left over.
    let _ = std::panic::catch_unwind(|| with_base_dir(PathBuf::from("/nowhere"), || panic!()));
    let after: FileInDir = serde_yaml::from_str("x.json").unwrap();
    assert_eq!(after.0, PathBuf::from("x.json"));
}

#[test]
fn each_kind_checks_what_its_settings_need() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("tls.crt"), "x").unwrap();
    let at = |name: &str| dir.path().join(name).display().to_string();

    // An existing file: not missing, not a directory.
    let error = parse::<ExistingFile>(dir.path(), "ca.pem").unwrap_err();
    assert!(
        error.starts_with(&format!("{}: no such file or directory", at("ca.pem"))),
        "{error}"
    );
    let error = parse::<ExistingFile>(dir.path(), "keys").unwrap_err();
    assert!(
        error.starts_with(&format!("{}: is a directory; expected a file", at("keys"))),
        "{error}"
    );

    // A file or a directory, but there.
    assert!(parse::<ExistingPath>(dir.path(), "keys").is_ok());
    assert!(parse::<ExistingPath>(dir.path(), "tls.crt").is_ok());
    let error = parse::<ExistingPath>(dir.path(), "policies").unwrap_err();
    assert!(
        error.starts_with(&format!("{}: no such file or directory", at("policies"))),
        "{error}"
    );

    // A file that may come later, in a directory that is there.
    assert!(parse::<FileInDir>(dir.path(), "state.json").is_ok());
    assert!(parse::<FileInDir>(dir.path(), "tls.crt").is_ok());
    let error = parse::<FileInDir>(dir.path(), "keys").unwrap_err();
    assert!(error.contains("is a directory; expected a file"), "{error}");
    let error = parse::<FileInDir>(dir.path(), "state/state.json").unwrap_err();
    assert!(
        error.starts_with(&format!(
            "{}: its directory {}: no such file or directory",
            at("state/state.json"),
            at("state")
        )),
        "{error}"
    );
    let error = parse::<FileInDir>(dir.path(), "tls.crt/state.json").unwrap_err();
    assert!(
        error.contains(&format!("{} is not a directory", at("tls.crt"))),
        "{error}"
    );

    let error = parse::<ExistingPath>(dir.path(), "''").unwrap_err();
    assert!(error.starts_with("an empty path"), "{error}");
}

#[test]
fn the_base_is_the_config_file_directory_made_absolute() {
    assert_eq!(
        base_dir(Path::new("/etc/licensegate/config.yaml")),
        PathBuf::from("/etc/licensegate")
    );
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(base_dir(Path::new("lg.yaml")), cwd);
    assert_eq!(base_dir(Path::new("conf/lg.yaml")), cwd.join("conf"));
}
