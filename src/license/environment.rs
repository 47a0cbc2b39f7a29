//! Matching the deployment environment against a license's `lic.env`.

use super::claims::LicenseEnv;
use super::error::{quote, LicenseError};

/// Where this sidecar runs, as far as the runtime knows. A `None` dimension
/// is unknown (e.g. no downward-API variable was set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// Cluster name, matched against `lic.env.clusters`.
    pub cluster: Option<String>,
    /// Namespace, matched against `lic.env.namespaces`.
    pub namespace: Option<String>,
    /// Region, matched against `lic.env.regions`.
    pub region: Option<String>,
    /// Service account, matched against `lic.env.service_accounts`.
    pub service_account: Option<String>,
}

/// Whether a license's environment restrictions admit `runtime`.
///
/// A dimension the license does not list admits anything. A listed dimension
/// admits only an exact match, so when the runtime does not know its value
/// the license is not satisfied: an unknown namespace must not pass a
/// namespace-locked license.
pub fn admits(allowed: &LicenseEnv, runtime: &Environment) -> Result<(), LicenseError> {
    let dimensions = [
        ("cluster", &allowed.clusters, &runtime.cluster),
        ("namespace", &allowed.namespaces, &runtime.namespace),
        ("region", &allowed.regions, &runtime.region),
        (
            "service account",
            &allowed.service_accounts,
            &runtime.service_account,
        ),
    ];
    for (name, list, actual) in dimensions {
        let Some(list) = list else { continue };
        match actual {
            Some(actual) if list.iter().any(|v| v == actual) => {}
            Some(actual) => {
                return Err(LicenseError::EnvironmentNotLicensed(format!(
                    "{name} {} is not licensed; the license allows {}",
                    quote(actual),
                    describe(list)
                )))
            }
            None => {
                return Err(LicenseError::EnvironmentNotLicensed(format!(
                "the license is restricted by {name} ({}) but this deployment's {name} is unknown",
                describe(list)
            )))
            }
        }
    }
    Ok(())
}

/// "none", or the first few values quoted.
fn describe(list: &[String]) -> String {
    const SHOWN: usize = 5;
    if list.is_empty() {
        return "none".into();
    }
    let mut text = list
        .iter()
        .take(SHOWN)
        .map(|v| quote(v))
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        text.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[&str]) -> Option<Vec<String>> {
        Some(values.iter().map(|v| v.to_string()).collect())
    }

    fn runtime() -> Environment {
        Environment {
            cluster: Some("prod-eu".into()),
            namespace: Some("shop".into()),
            region: Some("eu-west-1".into()),
            service_account: None,
        }
    }

    #[test]
    fn absent_lists_admit_anything_even_unknown() {
        assert_eq!(admits(&LicenseEnv::default(), &runtime()), Ok(()));
        assert_eq!(
            admits(&LicenseEnv::default(), &Environment::default()),
            Ok(())
        );
    }

    #[test]
    fn listed_dimensions_need_an_exact_match() {
        let env = LicenseEnv {
            clusters: list(&["prod-eu", "prod-us"]),
            namespaces: list(&["shop"]),
            ..LicenseEnv::default()
        };
        assert_eq!(admits(&env, &runtime()), Ok(()));

        let mut other = runtime();
        other.namespace = Some("Shop".into());
        let err = admits(&env, &other).unwrap_err();
        assert_eq!(err.reason(), "environment_not_licensed");
        assert_eq!(
            err.detail(),
            "environment not licensed: namespace `Shop` is not licensed; the license allows `shop`"
        );
    }

    #[test]
    fn unknown_runtime_value_fails_a_listed_dimension() {
        let env = LicenseEnv {
            service_accounts: list(&["api"]),
            ..LicenseEnv::default()
        };
        let err = admits(&env, &runtime()).unwrap_err();
        assert!(err.detail().contains("service account is unknown"), "{err}");
    }

    #[test]
    fn empty_list_admits_nothing_and_long_lists_are_summarised() {
        let env = LicenseEnv {
            regions: list(&[]),
            ..LicenseEnv::default()
        };
        assert!(admits(&env, &runtime())
            .unwrap_err()
            .detail()
            .ends_with("allows none"));
        let env = LicenseEnv {
            regions: list(&["a", "b", "c", "d", "e", "f", "g"]),
            ..LicenseEnv::default()
        };
        assert!(admits(&env, &runtime())
            .unwrap_err()
            .detail()
            .ends_with("`e` and 2 more"));
    }
}
