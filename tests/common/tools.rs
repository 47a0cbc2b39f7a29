//! External tools the tests drive (validators, servers, a browser): found
//! in `$ENV_VAR`, then where `.ci/run` installs them, then on `PATH`.
//! Missing, a test skips with a loud message, or fails when
//! `LICENSEGATE_REQUIRE_TOOLS=1` (as `.ci/run` sets) and `.ci/run` can
//! install it.

use std::io::Write;
use std::path::{Path, PathBuf};

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An executable: `$env_var`, then `candidates` under the repository,
/// then `PATH`.
pub fn tool(name: &str, env_var: &str, candidates: &[&str], install: &str) -> Option<PathBuf> {
    find_tool(name, env_var, candidates, install, true)
}

/// A tool that `.ci/run` cannot install (none of the package registries
/// carries it): used when present, skipped loudly when not.
pub fn optional_tool(name: &str, env_var: &str, why: &str) -> Option<PathBuf> {
    find_tool(name, env_var, &[], why, false)
}

/// An installed directory (e.g. a `node_modules`): `$env_var`, else
/// `candidate` under the repository; present when `ready` accepts it
/// (`Err` says what is wrong, e.g. a stale install).
pub fn installed_dir(
    name: &str,
    env_var: &str,
    candidate: &str,
    install: &str,
    ready: impl Fn(&Path) -> Result<(), String>,
) -> Option<PathBuf> {
    let dir = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(candidate));
    match ready(&dir) {
        Ok(()) => Some(dir),
        Err(why) => {
            missing(
                &format!(
                    "`{name}` is not installed in {} ({why}; {install}; or set {env_var}); \
                     .ci/run installs it",
                    dir.display()
                ),
                true,
            );
            None
        }
    }
}

fn find_tool(
    name: &str,
    env_var: &str,
    candidates: &[&str],
    install: &str,
    installable: bool,
) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    let found = candidates
        .iter()
        .map(|c| repo().join(c))
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let message = if installable {
            format!("`{name}` is not installed ({install}; or set {env_var}); .ci/run installs it")
        } else {
            format!("`{name}` is not installed ({install}; or set {env_var})")
        };
        missing(&message, installable);
    }
    found
}

fn missing(message: &str, installable: bool) {
    if installable && std::env::var("LICENSEGATE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{message}, and LICENSEGATE_REQUIRE_TOOLS=1 requires it");
    }
    // Straight to the process's stderr: the test harness captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "\n==================== SKIPPED ====================\n{message}\n=================================================\n"
    );
}
