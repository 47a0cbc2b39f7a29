//! Settings: a YAML file (`--config`) overridden by flags and `LICENSEGATE_*`
//! environment variables. Everything is parsed into typed values before any
//! port is bound; a bad value names the setting, the file, line and column.
//! Relative paths in the file are resolved against its directory (see
//! [`path`]); those given as flags or variables stay relative to the working
//! directory.
//!
//! Each subsystem owns the type of its settings ([`ProxySettings`],
//! [`LicenseSettings`], [`PolicySettings`], [`StoreSettings`],
//! [`LicenseHeaderNames`], [`MeteringSettings`]); this module holds only the file's shape (the
//! `File*` structs), the flags ([`Overrides`]), and the mapping of both onto
//! those types. It sits above every subsystem it configures, none of which
//! imports it.

pub mod error;
pub mod path;
pub mod users;

pub use error::ConfigError;
pub use path::{ExistingFile, ExistingPath, FileInDir};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::bytesize::ByteSize;
use crate::cgroup::MemoryLimit;
use crate::decision::LicenseHeaderNames;
use crate::duration::{HumanDuration, NonZeroDuration};
use crate::license::refresh::RefreshSettings;
use crate::license::revocation::source::{PollSettings, RevocationSettings, RevocationSource};
use crate::license::{BudgetSettings, Environment, LicenseSettings, LicenseSource};
use crate::limits::{StoreMode, StoreNodes, StoreSettings, DEFAULT_HEARTBEAT};
use crate::metering::{MeteringFile, MeteringSettings, MeteringSettingsError};
use crate::policy::{PolicySettings, WebSocketScope};
use crate::proxy::settings::{
    memory_needed, BudgetSource, ForwardedSettings, HeaderSettings, Limits, MemoryBudget,
    ProxySettings, Timeouts, Underscores, UpstreamProtocol, UpstreamSettings, UpstreamUrl,
    DEFAULT_UPSTREAM_MAX_CONNECTIONS, DERIVED_CONNECTIONS, MIN_HEADER_BYTES, PER_CONNECTION_BYTES,
};
use crate::tls::TlsFiles;
use crate::user::UserSettings;

/// Fully resolved, validated settings of `licensegate run`: each part is
/// the settings type of the subsystem it configures.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The listener, the upstream, and their timeouts and limits.
    pub proxy: ProxySettings,
    pub admin: SocketAddr,
    /// Runtime worker threads; 1 selects a single-threaded runtime.
    pub workers: usize,
    /// License enforcement; `None` runs a plain proxy.
    pub license: Option<LicenseSettings>,
    /// Routes, features and limits; `None` checks only the license (if any).
    pub policy: Option<PolicySettings>,
    /// Headers carrying the verified license to the upstream.
    pub upstream_headers: LicenseHeaderNames,
    /// A shared counter store (Redis); `None` counts in memory per replica.
    pub store: Option<StoreSettings>,
    /// Live metering of served requests; `None` records no usage.
    pub metering: Option<MeteringSettings>,
    /// Verified users from the customer's identity providers; `None`:
    /// routes cannot need roles nor count per user.
    pub users: Option<UserSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    #[serde(default)]
    pub mode: StoreMode,
    pub timeout: Option<HumanDuration>,
    pub replicas: Option<u32>,
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub lease: FileLease,
    pub heartbeat: Option<HumanDuration>,
    /// This replica's name (default: `$POD_NAME`, else `HOSTNAME-PID`).
    pub instance: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLease {
    pub max_slice: Option<u64>,
    pub period: Option<HumanDuration>,
}

/// A replica's name when the config gives none: the pod's (the injected
/// sidecar has `POD_NAME` from the downward API), which a restarted pod
/// keeps; else the host's with the process id, which tells apart several
/// replicas on one machine.
pub fn default_instance_name() -> String {
    if let Some(pod) = std::env::var("POD_NAME")
        .ok()
        .filter(|p| !p.trim().is_empty())
    {
        return pod.trim().to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "replica".to_owned());
    format!("{}-{}", host.trim(), std::process::id())
}

impl FileStore {
    fn resolve(self) -> Result<StoreSettings, ConfigError> {
        let invalid = |setting, message: String| ConfigError::Invalid { setting, message };
        let check_url = |setting, url: &str| {
            if url.starts_with("redis://") || url.starts_with("rediss://") {
                Ok(())
            } else {
                Err(invalid(
                    setting,
                    format!("`{url}`: expected redis://host:port (or rediss:// for TLS)"),
                ))
            }
        };
        let nodes = match (self.url, self.cluster) {
            (Some(url), None) => {
                check_url("store.url", &url)?;
                StoreNodes::Standalone(url)
            }
            (None, Some(urls)) if !urls.is_empty() => {
                for url in &urls {
                    check_url("store.cluster", url)?;
                }
                StoreNodes::Cluster(urls)
            }
            (None, Some(_)) => return Err(invalid("store.cluster", "an empty list".into())),
            (None, None) => {
                return Err(invalid(
                    "store",
                    "needs `url` (standalone Redis) or `cluster` (a list of node URLs)".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "store",
                    "`url` and `cluster` exclude each other".into(),
                ))
            }
        };
        let timeout = self.timeout.map_or(Duration::from_millis(5), |d| d.0);
        if timeout.is_zero() {
            return Err(invalid("store.timeout", "must be greater than zero".into()));
        }
        let replicas = self.replicas.unwrap_or(1);
        if replicas == 0 {
            return Err(invalid("store.replicas", "must be at least 1".into()));
        }
        let key_prefix = self.key_prefix.unwrap_or_else(|| "licensegate".into());
        if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "store.key_prefix",
                format!("`{key_prefix}`: not empty, without braces or spaces"),
            ));
        }
        let lease_max_slice = self.lease.max_slice.unwrap_or(100);
        if lease_max_slice == 0 {
            return Err(invalid(
                "store.lease.max_slice",
                "must be at least 1".into(),
            ));
        }
        let lease_period = self.lease.period.map_or(Duration::from_secs(1), |d| d.0);
        if lease_period.is_zero() {
            return Err(invalid(
                "store.lease.period",
                "must be greater than zero".into(),
            ));
        }
        let heartbeat = self.heartbeat.map_or(DEFAULT_HEARTBEAT, |d| d.0);
        if heartbeat < Duration::from_millis(100) {
            return Err(invalid("store.heartbeat", "must be at least 100ms".into()));
        }
        let instance = match self.instance {
            Some(name) => name,
            None => default_instance_name(),
        };
        if instance.is_empty() || instance.len() > 253 || instance.contains(char::is_whitespace) {
            return Err(invalid(
                "store.instance",
                format!("`{instance}`: not empty, at most 253 characters, without spaces"),
            ));
        }
        Ok(StoreSettings {
            nodes,
            mode: self.mode,
            timeout,
            replicas,
            key_prefix,
            lease_max_slice,
            lease_period,
            heartbeat,
            instance,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    #[serde(default)]
    pub paths: Vec<ExistingPath>,
    pub counters_file: Option<FileInDir>,
    pub persist_interval: Option<HumanDuration>,
    pub max_keys_per_limit: Option<MaxConnections>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamHeaders {
    pub id: Option<HeaderNameSetting>,
    pub plan: Option<HeaderNameSetting>,
    pub features: Option<HeaderNameSetting>,
}

/// `license.environment`: the workload identity licenses are bound to;
/// what is left out is read from the process environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEnvironment {
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLicense {
    pub keys: ExistingPath,
    #[serde(default)]
    pub source: FileLicenseSource,
    pub file: Option<FileInDir>,
    pub header: Option<HeaderNameSetting>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<HumanDuration>,
    pub grace: Option<HumanDuration>,
    #[serde(default)]
    pub environment: FileEnvironment,
    pub cache_capacity: Option<MaxConnections>,
    pub refresh: Option<FileRefresh>,
    pub state_file: Option<FileInDir>,
    #[serde(default)]
    pub forward_token: bool,
    pub failed_verifications: Option<FileFailedVerifications>,
    pub revocations: Option<FileRevocations>,
}

/// `license.revocations`: a signed revocation list from a file or a URL.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRevocations {
    pub file: Option<FileInDir>,
    pub url: Option<String>,
    pub interval: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub min_backoff: Option<HumanDuration>,
    pub max_backoff: Option<HumanDuration>,
    pub ca: Option<ExistingFile>,
    /// Plain http to a loopback address (a local agent; tests).
    #[serde(default)]
    pub allow_http: bool,
    pub state_file: Option<FileInDir>,
    pub max_age: Option<HumanDuration>,
}

impl FileRevocations {
    fn resolve(self) -> Result<RevocationSettings, ConfigError> {
        let invalid = |setting, message: String| ConfigError::Invalid { setting, message };
        let polling = [
            ("interval", self.interval.is_some()),
            ("timeout", self.timeout.is_some()),
            ("min_backoff", self.min_backoff.is_some()),
            ("max_backoff", self.max_backoff.is_some()),
            ("ca", self.ca.is_some()),
            ("allow_http", self.allow_http),
        ];
        let source = match (self.file, self.url) {
            (Some(file), None) => {
                if let Some((name, _)) = polling.iter().find(|(_, set)| *set) {
                    return Err(invalid(
                        "license.revocations",
                        format!("`{name}` is only used with `url`, not `file`"),
                    ));
                }
                RevocationSource::File(file.0)
            }
            (None, Some(url)) => {
                let uri: http::Uri = url.parse().map_err(|e| {
                    invalid(
                        "license.revocations.url",
                        format!("`{url}` is not a URL: {e}"),
                    )
                })?;
                let mut poll = PollSettings::new(uri);
                poll.allow_http = self.allow_http;
                poll.ca = self.ca.map(|ca| ca.0);
                for (value, slot) in [
                    (self.interval, &mut poll.interval),
                    (self.timeout, &mut poll.timeout),
                    (self.min_backoff, &mut poll.min_backoff),
                    (self.max_backoff, &mut poll.max_backoff),
                ] {
                    if let Some(value) = value {
                        *slot = value.0;
                    }
                }
                RevocationSource::Url(poll)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "license.revocations",
                    "takes `file` or `url`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "license.revocations",
                    "needs `file` (a mounted list) or `url` (polled)".into(),
                ))
            }
        };
        Ok(RevocationSettings {
            source,
            state_file: self.state_file.map(|f| f.0),
            max_age: self
                .max_age
                .map_or(RevocationSettings::DEFAULT_MAX_AGE, |d| d.0),
        })
    }
}

/// `license.failed_verifications`: a rate per client address, as a policy
/// `rate` is written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFailedVerifications {
    pub limit: Option<MaxConnections>,
    pub per: Option<NonZeroDuration>,
    pub burst: Option<MaxConnections>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileLicenseSource {
    #[default]
    File,
    Header,
    Refresh,
}

/// `license.refresh`: where and how often to fetch the deployment token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRefresh {
    pub url: String,
    pub ca: Option<ExistingFile>,
    pub timeout: Option<HumanDuration>,
    pub min_backoff: Option<HumanDuration>,
    pub max_backoff: Option<HumanDuration>,
    /// Fraction of a token's lifetime after which the next one is fetched.
    pub refresh_at: Option<f64>,
    /// Extra request headers, e.g. an API key.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Plain http to a loopback address (a local agent; tests).
    #[serde(default)]
    pub allow_http: bool,
}

impl FileRefresh {
    fn resolve(self) -> Result<RefreshSettings, ConfigError> {
        let invalid = |setting, message: String| ConfigError::Invalid { setting, message };
        let url: http::Uri = self.url.parse().map_err(|e| {
            invalid(
                "license.refresh.url",
                format!("`{}` is not a URL: {e}", self.url),
            )
        })?;
        let mut settings = RefreshSettings::new(url);
        settings.ca = self.ca.map(|ca| ca.0);
        settings.allow_http = self.allow_http;
        if let Some(timeout) = self.timeout {
            settings.timeout = timeout.0;
        }
        if let Some(min) = self.min_backoff {
            settings.min_backoff = min.0;
        }
        if let Some(max) = self.max_backoff {
            settings.max_backoff = max.0;
        }
        if let Some(fraction) = self.refresh_at {
            settings.refresh_at_fraction = fraction;
        }
        for (name, value) in self.headers {
            let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(
                    "license.refresh.headers",
                    format!("`{name}` is not a header name"),
                )
            })?;
            let value = http::HeaderValue::from_str(&value).map_err(|_| {
                invalid(
                    "license.refresh.headers",
                    format!("the value of `{name}` is not a valid header value"),
                )
            })?;
            settings.headers.push((header, value));
        }
        Ok(settings)
    }
}

/// An HTTP header name, checked when the file is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderNameSetting(pub http::HeaderName);

impl<'de> Deserialize<'de> for HeaderNameSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        http::HeaderName::from_bytes(text.as_bytes())
            .map(HeaderNameSetting)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a valid header name")))
    }
}

impl FileEnvironment {
    /// Fill gaps from the Kubernetes Downward API variables (`POD_NAMESPACE`,
    /// `POD_SERVICE_ACCOUNT`) and `LICENSEGATE_CLUSTER` / `LICENSEGATE_REGION`.
    pub fn with_process_env(self) -> Environment {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Environment {
            cluster: self.cluster.or_else(|| var("LICENSEGATE_CLUSTER")),
            region: self.region.or_else(|| var("LICENSEGATE_REGION")),
            namespace: self.namespace.or_else(|| var("POD_NAMESPACE")),
            service_account: self.service_account.or_else(|| var("POD_SERVICE_ACCOUNT")),
        }
    }
}

impl FileLicense {
    fn resolve(self) -> Result<LicenseSettings, ConfigError> {
        let source = match (self.source, self.file, self.header) {
            (FileLicenseSource::Refresh, None, None) => match self.refresh {
                Some(refresh) => LicenseSource::Refresh(refresh.resolve()?),
                None => {
                    return Err(ConfigError::Invalid {
                        setting: "license.refresh",
                        message: "required with `source: refresh`: at least `url`".into(),
                    })
                }
            },
            (FileLicenseSource::Refresh, _, _) => {
                return Err(ConfigError::Invalid {
                    setting: "license.source",
                    message: "`refresh` takes `license.refresh`, not `file` or `header`".into(),
                })
            }
            (FileLicenseSource::File, Some(file), None) => LicenseSource::File(file.0),
            (FileLicenseSource::File, None, _) => {
                return Err(ConfigError::Invalid {
                    setting: "license.file",
                    message: "required with `source: file`: the path of the license token (e.g. a Secret mount)".into(),
                })
            }
            (FileLicenseSource::File, Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "license.header",
                    message: "only used with `source: header`".into(),
                })
            }
            (FileLicenseSource::Header, None, header) => LicenseSource::Header(
                header.map_or(http::header::AUTHORIZATION, |h| h.0),
            ),
            (FileLicenseSource::Header, Some(_), _) => {
                return Err(ConfigError::Invalid {
                    setting: "license.file",
                    message: "only used with `source: file`".into(),
                })
            }
        };
        if !matches!(source, LicenseSource::Header(_)) {
            let only_for_header = |setting| ConfigError::Invalid {
                setting,
                message: "only used with `source: header` (tokens sent with each request)".into(),
            };
            if self.forward_token {
                return Err(only_for_header("license.forward_token"));
            }
            if self.failed_verifications.is_some() {
                return Err(only_for_header("license.failed_verifications"));
            }
        }
        Ok(LicenseSettings {
            keys: self.keys.0,
            source,
            issuer: self.issuer,
            audience: self.audience,
            leeway: self.leeway.map_or(Duration::from_secs(60), |d| d.0),
            grace: self.grace.map_or(Duration::ZERO, |d| d.0),
            environment: self.environment.with_process_env(),
            cache_capacity: self.cache_capacity.map_or(10_000, |c| c.0),
            state_file: self.state_file.map(|f| f.0),
            forward_token: self.forward_token,
            failed_verifications: self
                .failed_verifications
                .map(FileFailedVerifications::resolve)
                .unwrap_or_default(),
            revocations: self.revocations.map(FileRevocations::resolve).transpose()?,
        })
    }
}

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

impl FileFailedVerifications {
    fn resolve(self) -> BudgetSettings {
        let defaults = BudgetSettings::default();
        BudgetSettings {
            limit: self.limit.map_or(defaults.limit, |n| n.0 as u64),
            per: self.per.map_or(defaults.per, |d| d.0),
            burst: self.burst.map_or(defaults.burst, |n| n.0 as u64),
            ..defaults
        }
    }
}

/// The YAML file as written; every field optional so flags can fill gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub workers: Option<Workers>,
    pub upstream: Option<FileUpstream>,
    pub tls: Option<FileTls>,
    #[serde(default)]
    pub forwarded: FileForwarded,
    #[serde(default)]
    pub headers: FileHeaders,
    #[serde(default)]
    pub timeouts: FileTimeouts,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub http1: crate::proxy::settings::Http1Engine,
    pub license: Option<FileLicense>,
    pub policy: Option<FilePolicy>,
    #[serde(default)]
    pub upstream_headers: FileUpstreamHeaders,
    pub store: Option<FileStore>,
    /// Metering's own file shape; relative paths in it follow the file.
    pub metering: Option<MeteringFile>,
    pub users: Option<users::FileUsers>,
    /// The directory of the file, which `metering`'s relative paths follow
    /// (set by [`FileConfig::parse`]; the working directory otherwise).
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

/// A worker count of at least one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workers(pub usize);

impl FromStr for Workers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Workers(n)),
            _ => Err(format!(
                "`{text}` is not a worker count; expected a whole number from 1 to 1024"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        n.to_string().parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub url: Option<UpstreamUrl>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    pub ca: Option<ExistingFile>,
    pub max_connections: Option<MaxConnections>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert: ExistingFile,
    pub key: ExistingFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileForwarded {
    #[serde(default)]
    pub trust_incoming: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaders {
    #[serde(default)]
    pub underscores: Underscores,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub request_header: Option<HumanDuration>,
    pub upstream_connect: Option<HumanDuration>,
    pub upstream_response: Option<HumanDuration>,
    pub upstream_idle: Option<HumanDuration>,
    pub upstream_queue: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
    pub drain: Option<HumanDuration>,
    pub tunnel_idle: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_header_bytes: Option<HeaderBytes>,
    pub max_connections: Option<MaxConnections>,
    pub max_concurrent_streams: Option<MaxStreams>,
    pub max_stream_resets: Option<MaxStreams>,
    pub memory: Option<MemorySize>,
}

/// `limits.memory`: a byte size no smaller than the process needs at idle
/// with the fewest connections a derived limit allows.
#[derive(Clone, Copy, Debug)]
pub struct MemorySize(pub u64);

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ByteSize(bytes) = ByteSize::deserialize(deserializer)?;
        let least = memory_needed(*DERIVED_CONNECTIONS.start(), PER_CONNECTION_BYTES);
        if bytes < least {
            return Err(serde::de::Error::custom(format!(
                "{} is too small; expected at least {} (the process at idle plus {} connections), e.g. `128Mi`",
                ByteSize(bytes),
                ByteSize(least),
                DERIVED_CONNECTIONS.start()
            )));
        }
        Ok(MemorySize(bytes))
    }
}

/// A per-connection HTTP/2 stream count from 1 to 10,000.
#[derive(Clone, Copy, Debug)]
pub struct MaxStreams(pub u32);

impl<'de> Deserialize<'de> for MaxStreams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        if (1..=10_000).contains(&n) {
            Ok(MaxStreams(n as u32))
        } else {
            Err(serde::de::Error::custom(format!(
                "{n} is out of range; expected 1 to 10000 streams"
            )))
        }
    }
}

/// A header budget of at least 8 KiB and at most 1 MiB.
#[derive(Clone, Copy, Debug)]
pub struct HeaderBytes(pub usize);

impl<'de> Deserialize<'de> for HeaderBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        if (MIN_HEADER_BYTES as u64..=1 << 20).contains(&n) {
            Ok(HeaderBytes(n as usize))
        } else {
            Err(serde::de::Error::custom(format!(
                "{n} is out of range; expected {MIN_HEADER_BYTES} to 1048576 bytes"
            )))
        }
    }
}

/// A connection limit of at least one.
#[derive(Clone, Copy, Debug)]
pub struct MaxConnections(pub usize);

impl<'de> Deserialize<'de> for MaxConnections {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        if n >= 1 && n <= u32::MAX as u64 {
            Ok(MaxConnections(n as usize))
        } else {
            Err(serde::de::Error::custom(format!(
                "{n} is out of range; expected at least 1"
            )))
        }
    }
}

/// Values given as flags or `LICENSEGATE_*` variables; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub workers: Option<Workers>,
    pub upstream: Option<UpstreamUrl>,
    pub upstream_protocol: Option<UpstreamProtocol>,
    pub upstream_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub trust_forwarded: Option<bool>,
    /// Policy files or directories; replace `policy.paths` when given.
    pub policy: Vec<PathBuf>,
}

impl FileConfig {
    /// Read and parse a config file, keeping its position in errors.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(path, &text)
    }

    /// Parse the text of the config file `path`; its relative paths are
    /// resolved against the file's directory and checked.
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        let dir = path::base_dir(path);
        let mut file: FileConfig =
            path::with_base_dir(dir.clone(), || crate::yaml::parse(path, text))?;
        // What metering checks after parsing is placed here, while the text
        // is at hand.
        if let Some(metering) = &file.metering {
            if let Err(error) = metering.clone().resolve(&dir) {
                return Err(located(path, text, &error).into());
            }
        }
        file.dir = Some(dir);
        Ok(file)
    }
}

/// `error` at the line and column of its setting in `text`, or of the
/// nearest enclosing one written there (a missing field: its section).
fn located(path: &Path, text: &str, error: &MeteringSettingsError) -> crate::yaml::YamlError {
    use crate::policy::locate::{locate, Step};
    let mut steps = Vec::new();
    for part in error.setting.split('.') {
        let (key, indexes) = part.split_once('[').unwrap_or((part, ""));
        steps.push(Step::key(key));
        for index in indexes.split('[') {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(index));
            }
        }
    }
    let message = error.to_string();
    (1..=steps.len())
        .rev()
        .find_map(|n| locate(text, &steps[..n]))
        .map_or_else(
            || crate::yaml::YamlError::Unplaced {
                path: path.to_owned(),
                message: message.clone(),
            },
            |(line, column)| crate::yaml::YamlError::At {
                path: path.to_owned(),
                line,
                column,
                message: message.clone(),
            },
        )
}

impl Settings {
    /// Merge a parsed file (if any) with overrides; check what a single field
    /// cannot check on its own. Without `limits.memory`, the container's
    /// cgroup memory limit is the budget.
    pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<Settings, ConfigError> {
        Settings::resolve_with(file, overrides, crate::cgroup::memory_limit)
    }

    /// [`Settings::resolve`] with `cgroup` telling the container's memory
    /// limit (asked only when `limits.memory` is not set).
    pub fn resolve_with(
        file: FileConfig,
        overrides: Overrides,
        cgroup: impl FnOnce() -> Option<MemoryLimit>,
    ) -> Result<Settings, ConfigError> {
        let file_upstream = file.upstream.unwrap_or_default();
        let url = overrides
            .upstream
            .or(file_upstream.url)
            .ok_or(ConfigError::Invalid {
                setting: "upstream.url",
                message: "required: the workload's origin, e.g. http://127.0.0.1:3000 \
                      (config `upstream.url`, flag --upstream or LICENSEGATE_UPSTREAM)"
                    .into(),
            })?;
        let protocol = overrides
            .upstream_protocol
            .unwrap_or(file_upstream.protocol);
        let ca = overrides.upstream_ca.or(file_upstream.ca.map(|ca| ca.0));
        if ca.is_some() && !url.is_https() {
            return Err(ConfigError::Invalid {
                setting: "upstream.ca",
                message: format!("set, but the upstream `{url}` is not https"),
            });
        }

        let (cert, key) = match file.tls {
            Some(tls) => (Some(tls.cert.0), Some(tls.key.0)),
            None => (None, None),
        };
        let tls = match (overrides.tls_cert.or(cert), overrides.tls_key.or(key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    setting: "tls.key",
                    message: "a certificate is set but no private key (--tls-key)".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    setting: "tls.cert",
                    message: "a private key is set but no certificate (--tls-cert)".into(),
                })
            }
        };

        let defaults = Timeouts::default();
        let pick = |v: Option<HumanDuration>, d: Duration| v.map_or(d, |h| h.0);
        let timeouts = Timeouts {
            request_header: pick(file.timeouts.request_header, defaults.request_header),
            upstream_connect: pick(file.timeouts.upstream_connect, defaults.upstream_connect),
            upstream_response: pick(file.timeouts.upstream_response, defaults.upstream_response),
            upstream_idle: pick(file.timeouts.upstream_idle, defaults.upstream_idle),
            upstream_queue: pick(file.timeouts.upstream_queue, defaults.upstream_queue),
            idle: pick(file.timeouts.idle, defaults.idle),
            drain: pick(file.timeouts.drain, defaults.drain),
            tunnel_idle: pick(file.timeouts.tunnel_idle, defaults.tunnel_idle),
        };
        for (setting, value) in [
            ("timeouts.request_header", timeouts.request_header),
            ("timeouts.upstream_connect", timeouts.upstream_connect),
            ("timeouts.upstream_response", timeouts.upstream_response),
            ("timeouts.upstream_idle", timeouts.upstream_idle),
            ("timeouts.idle", timeouts.idle),
            ("timeouts.tunnel_idle", timeouts.tunnel_idle),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    setting,
                    message: "must be greater than zero".into(),
                });
            }
        }

        let limit_defaults = Limits::default();
        let memory = match file.limits.memory {
            Some(MemorySize(bytes)) => Some(MemoryBudget {
                bytes,
                source: BudgetSource::Config,
            }),
            None => cgroup().map(|limit| MemoryBudget {
                bytes: limit.bytes,
                source: BudgetSource::Cgroup(limit.file),
            }),
        };
        let (max_connections, max_connections_derived) = match (file.limits.max_connections, memory)
        {
            (Some(set), _) => (set.0, false),
            (None, Some(budget)) => (budget.connections(file.http1), true),
            (None, None) => (limit_defaults.max_connections, false),
        };
        let limits = Limits {
            max_header_bytes: file
                .limits
                .max_header_bytes
                .map_or(limit_defaults.max_header_bytes, |b| b.0),
            max_connections,
            memory,
            max_connections_derived,
            max_concurrent_streams: file
                .limits
                .max_concurrent_streams
                .map_or(limit_defaults.max_concurrent_streams, |s| s.0),
            max_stream_resets: file
                .limits
                .max_stream_resets
                .map_or(limit_defaults.max_stream_resets, |s| s.0),
        };

        let listen = overrides
            .listen
            .or(file.listen)
            .ok_or(ConfigError::Invalid {
                setting: "listen",
                message: "required: the inbound address, e.g. 0.0.0.0:8080 \
                      (config `listen`, flag --listen or LICENSEGATE_LISTEN)"
                    .into(),
            })?;
        let admin = overrides
            .admin
            .or(file.admin)
            .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default"));
        if admin == listen && listen.port() != 0 {
            return Err(ConfigError::Invalid {
                setting: "admin",
                message: format!("{admin} is also the proxy's listen address"),
            });
        }
        let workers = overrides
            .workers
            .or(file.workers)
            .map_or_else(default_workers, |w| w.0);
        let license = file.license.map(FileLicense::resolve).transpose()?;
        let file_policy = file.policy.unwrap_or_default();
        let paths = if overrides.policy.is_empty() {
            file_policy.paths.into_iter().map(|p| p.0).collect()
        } else {
            overrides.policy
        };
        let policy = if paths.is_empty() {
            if file_policy.counters_file.is_some() {
                return Err(ConfigError::Invalid {
                    setting: "policy.counters_file",
                    message: "set, but there are no `policy.paths`".into(),
                });
            }
            None
        } else {
            let persist_interval = file_policy
                .persist_interval
                .map_or(Duration::from_secs(10), |d| d.0);
            if persist_interval.is_zero() {
                return Err(ConfigError::Invalid {
                    setting: "policy.persist_interval",
                    message: "must be greater than zero".into(),
                });
            }
            Some(PolicySettings {
                paths,
                counters_file: file_policy.counters_file.map(|f| f.0),
                persist_interval,
                max_keys_per_limit: file_policy.max_keys_per_limit.map_or(100_000, |m| m.0),
                websocket: WebSocketScope::Routes,
            })
        };
        let users = file
            .users
            .map(|users| users.resolve(license.as_ref()))
            .transpose()?;
        let header_defaults = LicenseHeaderNames::default();
        let upstream_headers = LicenseHeaderNames {
            id: file.upstream_headers.id.map_or(header_defaults.id, |h| h.0),
            plan: file
                .upstream_headers
                .plan
                .map_or(header_defaults.plan, |h| h.0),
            features: file
                .upstream_headers
                .features
                .map_or(header_defaults.features, |h| h.0),
        };

        Ok(Settings {
            proxy: ProxySettings {
                listen,
                tls,
                upstream: UpstreamSettings {
                    url,
                    protocol,
                    ca,
                    max_connections: file_upstream
                        .max_connections
                        .map_or(DEFAULT_UPSTREAM_MAX_CONNECTIONS, |m| m.0),
                },
                forwarded: ForwardedSettings {
                    trust_incoming: overrides
                        .trust_forwarded
                        .unwrap_or(file.forwarded.trust_incoming),
                },
                headers: HeaderSettings {
                    underscores: file.headers.underscores,
                },
                timeouts,
                limits,
                http1: file.http1,
            },
            admin,
            workers,
            license,
            policy,
            upstream_headers,
            users,
            store: file.store.map(FileStore::resolve).transpose()?,
            metering: file
                .metering
                .map(|metering| {
                    metering
                        .resolve(file.dir.as_deref().unwrap_or(Path::new("")))
                        .map_err(|error| ConfigError::Invalid {
                            setting: "metering",
                            message: error.to_string(),
                        })
                })
                .transpose()?,
        })
    }
}

/// One worker per available core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("lg.yaml"), text)
    }

    #[test]
    fn unknown_field_is_reported_with_position() {
        let err = parse("listen: 127.0.0.1:8080\ntimeouts:\n  idel: 5s\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("lg.yaml:3:3: timeouts.idel: "), "{text}");
        assert!(text.contains("unknown field `idel`"), "{text}");
    }

    fn resolve_store(store: &str) -> Result<Settings, ConfigError> {
        let text = format!(
            "listen: 127.0.0.1:8080\nupstream: {{url: 'http://127.0.0.1:1'}}\nstore: {store}\n"
        );
        Settings::resolve(parse(&text)?, Overrides::default())
    }

    #[test]
    fn store_settings_are_checked() {
        let settings =
            resolve_store("{url: 'redis://127.0.0.1:6379', mode: leased, replicas: 3}").unwrap();
        let store = settings.store.unwrap();
        assert_eq!(
            store.nodes,
            StoreNodes::Standalone("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            (store.mode, store.replicas, store.timeout),
            (StoreMode::Leased, 3, Duration::from_millis(5))
        );
        assert_eq!(store.heartbeat, DEFAULT_HEARTBEAT);
        assert!(!store.instance.is_empty(), "a default replica name");
        let named = resolve_store("{url: 'redis://a:1', heartbeat: 500ms, instance: web-0}")
            .unwrap()
            .store
            .unwrap();
        assert_eq!(
            (named.heartbeat, named.instance.as_str()),
            (Duration::from_millis(500), "web-0")
        );
        for (bad, expected) in [
            ("{mode: accurate}", "store: needs `url`"),
            (
                "{url: 'redis://a:1', cluster: ['redis://b:1']}",
                "exclude each other",
            ),
            (
                "{url: 'http://a:1'}",
                "store.url: `http://a:1`: expected redis://",
            ),
            ("{cluster: []}", "store.cluster: an empty list"),
            (
                "{url: 'redis://a:1', replicas: 0}",
                "store.replicas: must be at least 1",
            ),
            (
                "{url: 'redis://a:1', timeout: 0s}",
                "store.timeout: must be greater than zero",
            ),
            (
                "{url: 'redis://a:1', key_prefix: 'a{b}'}",
                "store.key_prefix",
            ),
            (
                "{url: 'redis://a:1', heartbeat: 50ms}",
                "store.heartbeat: must be at least 100ms",
            ),
            (
                "{url: 'redis://a:1', instance: 'web 0'}",
                "store.instance: `web 0`: not empty",
            ),
        ] {
            let error = resolve_store(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{bad}: {error}");
        }
        let error = resolve_store("{url: 'redis://a:1', mode: fast}")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("lg.yaml:3:"), "{error}");
    }

    #[test]
    fn bad_duration_names_setting_and_position() {
        let err = parse("timeouts:\n  idle: soon\n").unwrap_err().to_string();
        assert!(err.starts_with("lg.yaml:2:3: timeouts.idle: "), "{err}");
        assert!(err.contains("timeouts.idle"), "{err}");
        assert!(err.contains("not a duration"), "{err}");
    }

    #[test]
    fn upstream_must_be_an_origin() {
        assert!("http://127.0.0.1:3000".parse::<UpstreamUrl>().is_ok());
        assert!("https://example.test".parse::<UpstreamUrl>().is_ok());
        assert!("ftp://x"
            .parse::<UpstreamUrl>()
            .unwrap_err()
            .contains("ftp"));
        assert!("http://x/api"
            .parse::<UpstreamUrl>()
            .unwrap_err()
            .contains("path"));
        assert!("127.0.0.1:3000".parse::<UpstreamUrl>().is_err());
    }

    #[test]
    fn flags_override_file() {
        let file = parse("listen: 127.0.0.1:1\nupstream:\n  url: http://127.0.0.1:2\n").unwrap();
        let settings = Settings::resolve(
            file,
            Overrides {
                listen: Some("127.0.0.1:3".parse().unwrap()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(settings.proxy.listen.port(), 3);
        assert_eq!(settings.proxy.upstream.url.authority.port_u16(), Some(2));
        assert_eq!(settings.admin, DEFAULT_ADMIN.parse().unwrap());
    }

    #[test]
    fn missing_upstream_is_named() {
        let err = Settings::resolve(
            parse("listen: 127.0.0.1:1\n").unwrap(),
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("upstream.url: required"), "{err}");
    }

    #[test]
    fn http2_and_upstream_bounds_have_defaults_and_ranges() {
        let base = "listen: 127.0.0.1:1\nupstream: {url: 'http://127.0.0.1:2'}\n";
        let settings = Settings::resolve(parse(base).unwrap(), Overrides::default()).unwrap();
        assert_eq!(settings.proxy.limits.max_concurrent_streams, 100);
        assert_eq!(settings.proxy.limits.max_stream_resets, 200);
        assert_eq!(settings.proxy.upstream.max_connections, 1024);
        assert_eq!(
            settings.proxy.timeouts.upstream_queue,
            Duration::from_secs(1)
        );

        let text = "listen: 127.0.0.1:1\n\
                    upstream: {url: 'http://127.0.0.1:2', max_connections: 8}\n\
                    timeouts: {upstream_queue: 0s}\n\
                    limits: {max_concurrent_streams: 10, max_stream_resets: 5}\n";
        let settings = Settings::resolve(parse(text).unwrap(), Overrides::default()).unwrap();
        assert_eq!(settings.proxy.upstream.max_connections, 8);
        assert_eq!(settings.proxy.timeouts.upstream_queue, Duration::ZERO);
        assert_eq!(settings.proxy.limits.max_concurrent_streams, 10);
        assert_eq!(settings.proxy.limits.max_stream_resets, 5);

        let error = parse("limits:\n  max_concurrent_streams: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("lg.yaml:2:3: limits.max_concurrent_streams: 0 is out of range"),
            "{error}"
        );
        let error = parse("upstream:\n  max_connections: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("lg.yaml:2:3: upstream.max_connections: 0 is out of range"),
            "{error}"
        );
    }

    #[test]
    fn max_connections_follows_the_memory_budget() {
        use crate::cgroup::{V1_MEMORY_LIMIT, V2_MEMORY_MAX};
        use crate::proxy::settings::Http1Engine;
        let base = "listen: 127.0.0.1:1\nupstream: {url: 'http://127.0.0.1:2'}\n";
        let resolve = |extra: &str, cgroup: Option<MemoryLimit>| {
            Settings::resolve_with(
                parse(&format!("{base}{extra}")).unwrap(),
                Overrides::default(),
                || cgroup,
            )
            .unwrap()
            .proxy
        };
        let cgroup = |bytes: u64, file| Some(MemoryLimit { bytes, file });

        // No budget anywhere: the default, nothing derived.
        let proxy = resolve("", None);
        assert_eq!(proxy.limits.max_connections, 10_000);
        assert_eq!(proxy.limits.memory, None);
        assert!(!proxy.limits.max_connections_derived);
        assert_eq!(proxy.limits.over_budget(proxy.http1), None);

        // The cgroup's limit: (64 MiB - 24 MiB) / 8 KiB.
        let proxy = resolve("", cgroup(64 << 20, V2_MEMORY_MAX));
        assert_eq!(proxy.limits.max_connections, 5_120);
        assert!(proxy.limits.max_connections_derived);
        assert_eq!(
            proxy.limits.memory,
            Some(MemoryBudget {
                bytes: 64 << 20,
                source: BudgetSource::Cgroup(V2_MEMORY_MAX)
            })
        );
        assert_eq!(proxy.limits.over_budget(proxy.http1), None);

        // limits.memory wins, and the cgroup is not even read; hyper's
        // connections cost more, so it affords fewer.
        let from_file = |extra: &str| {
            Settings::resolve_with(
                parse(&format!("{base}{extra}")).unwrap(),
                Overrides::default(),
                || panic!("the cgroup is read although limits.memory is set"),
            )
            .unwrap()
            .proxy
        };
        let proxy = from_file("limits: {memory: 40Mi}\n");
        assert_eq!(proxy.limits.max_connections, 2_048);
        assert_eq!(proxy.limits.memory.unwrap().source, BudgetSource::Config);
        let proxy = from_file("limits: {memory: 40Mi}\nhttp1: hyper\n");
        assert_eq!(proxy.http1, Http1Engine::Hyper);
        assert_eq!(proxy.limits.max_connections, 409);
        assert_eq!(proxy.limits.over_budget(proxy.http1), None);

        // Clamped: a large budget keeps the default ceiling, a small one
        // the floor (and is then over budget, which start-up reports).
        assert_eq!(
            from_file("limits: {memory: 8Gi}\n").limits.max_connections,
            10_000
        );
        let proxy = resolve("http1: hyper\n", cgroup(25 << 20, V1_MEMORY_LIMIT));
        assert_eq!(proxy.limits.max_connections, 64);
        assert_eq!(
            proxy
                .limits
                .over_budget(proxy.http1)
                .map(|(needed, _)| needed),
            Some((24 << 20) + 64 * (40 << 10))
        );

        // Set explicitly: kept as written, and measured against the budget.
        let proxy = resolve(
            "limits: {max_connections: 10000}\n",
            cgroup(64 << 20, V2_MEMORY_MAX),
        );
        assert_eq!(proxy.limits.max_connections, 10_000);
        assert!(!proxy.limits.max_connections_derived);
        let (needed, budget) = proxy.limits.over_budget(proxy.http1).unwrap();
        assert_eq!(needed, (24 << 20) + 10_000 * (8 << 10));
        assert_eq!(budget.bytes, 64 << 20);
        let proxy = from_file("limits: {max_connections: 200, memory: 40Mi}\n");
        assert_eq!(proxy.limits.max_connections, 200);
        assert_eq!(proxy.limits.over_budget(proxy.http1), None);
    }

    #[test]
    fn memory_sizes_are_checked_where_they_are_written() {
        for (memory, bytes) in [
            ("128Mi", 128 << 20),
            ("64MiB", 64 << 20),
            ("500M", 500_000_000),
            ("1Gi", 1 << 30),
            ("'134217728'", 128 << 20),
            ("134217728", 128 << 20),
        ] {
            let file = parse(&format!("limits:\n  memory: {memory}\n")).unwrap();
            assert_eq!(file.limits.memory.map(|m| m.0), Some(bytes), "{memory}");
        }
        for (memory, expected) in [
            (
                "12 parsecs",
                "lg.yaml:2:11: limits.memory: `parsecs` is not a size unit",
            ),
            (
                "128mi",
                "lg.yaml:2:11: limits.memory: `mi` is not a size unit",
            ),
            (
                "1.5Gi",
                "lg.yaml:2:11: limits.memory: `1.5Gi`: fractions are not supported",
            ),
            ("-5", "lg.yaml:2:11: limits.memory: -5 is negative"),
            (
                "16Mi",
                "lg.yaml:2:3: limits.memory: 16MiB is too small; expected at least 24.5MiB",
            ),
            (
                "[1]",
                "lg.yaml:2:11: limits.memory: invalid type: sequence, expected a size",
            ),
        ] {
            let error = parse(&format!("limits:\n  memory: {memory}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(expected), "{memory}: {error}");
        }
    }

    #[test]
    fn half_configured_tls_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pem"), "").unwrap();
        let file = FileConfig::parse(
            &dir.path().join("lg.yaml"),
            "listen: 127.0.0.1:1\nupstream: {url: 'http://127.0.0.1:2'}\ntls:\n  cert: a.pem\n",
        )
        .unwrap_err();
        assert!(file.to_string().contains("missing field `key`"), "{file}");
    }

    #[test]
    fn relative_paths_follow_the_config_file_and_missing_ones_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("lg.yaml");
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("tls.crt"), "").unwrap();
        std::fs::write(dir.path().join("tls.key"), "").unwrap();
        let text = "listen: 127.0.0.1:1\n\
                    upstream: {url: 'http://127.0.0.1:2'}\n\
                    tls: {cert: tls.crt, key: ./tls.key}\n\
                    license:\n  keys: keys\n  file: license.jwt\n  state_file: state.json\n\
                    policy:\n  paths: [policies]\n  counters_file: counters.json\n";
        let settings = Settings::resolve(
            FileConfig::parse(&config, text).unwrap(),
            Overrides::default(),
        )
        .unwrap();
        let at = |name: &str| dir.path().join(name);
        let tls = settings.proxy.tls.unwrap();
        assert_eq!((tls.cert, tls.key), (at("tls.crt"), at("./tls.key")));
        let license = settings.license.unwrap();
        assert_eq!(license.keys, at("keys"));
        assert!(matches!(license.source, LicenseSource::File(f) if f == at("license.jwt")));
        assert_eq!(license.state_file, Some(at("state.json")));
        let policy = settings.policy.unwrap();
        assert_eq!(policy.paths, [at("policies")]);
        assert_eq!(policy.counters_file, Some(at("counters.json")));

        // Flags stay relative to the working directory.
        let settings = Settings::resolve(
            FileConfig::parse(&config, text).unwrap(),
            Overrides {
                policy: vec![PathBuf::from("p.yaml")],
                tls_cert: Some(PathBuf::from("c.pem")),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(settings.policy.unwrap().paths, [PathBuf::from("p.yaml")]);
        assert_eq!(settings.proxy.tls.unwrap().cert, PathBuf::from("c.pem"));

        // A missing path: positioned, named, resolved.
        let error = FileConfig::parse(&config, "license:\n  keys: missing\n")
            .unwrap_err()
            .to_string();
        let expected = format!(
            "{}:2:3: license.keys: {}: no such file or directory",
            config.display(),
            at("missing").display()
        );
        assert_eq!(error, expected);
        let error = FileConfig::parse(&config, "policy:\n  paths: [policies, nope]\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "{}:2:10: policy.paths[1]: {}: no such file or directory",
                config.display(),
                at("nope").display()
            )),
            "{error}"
        );
        let error = FileConfig::parse(&config, "tls:\n  cert: keys\n  key: tls.key\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(&format!(
                "tls.cert: {}: is a directory; expected a file",
                at("keys").display()
            )),
            "{error}"
        );
    }

    #[test]
    fn metering_follows_the_file_and_its_errors_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("lg.yaml");
        let base = "listen: 127.0.0.1:1\nupstream: {url: 'http://127.0.0.1:2'}\n";
        let text = format!(
            "{base}metering:\n  source: licensegate/pod-0\n  window: 5s\n  journal: {{dir: journal}}\n  sinks:\n    - name: om\n      kind: cloudevents\n      url: https://collector.test/api/v1/events\n      ca: ca.pem\n"
        );
        let settings = Settings::resolve(
            FileConfig::parse(&config, &text).unwrap(),
            Overrides::default(),
        )
        .unwrap();
        let metering = settings.metering.unwrap();
        assert_eq!(metering.source, "licensegate/pod-0");
        assert_eq!(metering.window, Duration::from_secs(5));
        assert_eq!(metering.journal.dir, dir.path().join("journal"));
        let crate::metering::SinkTarget::CloudEvents(target) = &metering.sinks[0].target else {
            panic!("a cloudevents sink: {:?}", metering.sinks[0]);
        };
        assert_eq!(target.ca, Some(dir.path().join("ca.pem")));
        assert!(
            Settings::resolve(parse(base).unwrap(), Overrides::default())
                .unwrap()
                .metering
                .is_none()
        );

        let error = |metering: &str| {
            FileConfig::parse(
                Path::new("lg.yaml"),
                &format!("{base}metering:\n{metering}"),
            )
            .unwrap_err()
            .to_string()
        };
        for (metering, expected) in [
            (
                "  journal: {dir: j}\n  sinks:\n    - {name: om, kind: cloudevents, url: 'http://collector.test/x'}\n",
                "lg.yaml:6:42: metering.sinks[0].url: `http://collector.test/x` must be https://",
            ),
            // A missing field: at the section that lacks it.
            (
                "  journal: {dir: j}\n  sinks:\n    - {name: om, kind: cloudevents}\n",
                "lg.yaml:6:7: metering.sinks[0].url: required for this kind",
            ),
            (
                "  window: 2h\n  journal: {dir: j}\n  sinks: [{name: f, kind: jsonl, path: u.jsonl}]\n",
                "lg.yaml:4:11: metering.window: 2h is out of range; expected 10ms to 1h",
            ),
            (
                "  journal: {dir: j}\n  sinks: []\n",
                "lg.yaml:5:10: metering.sinks: at least one sink is required",
            ),
            (
                "  journal: {dir: j, max_bytes: 1KiB}\n  sinks: [{name: f, kind: jsonl, path: u.jsonl}]\n",
                "lg.yaml:4:32: metering.journal.max_bytes: 1024 must be at least twice segment_bytes",
            ),
            // What the parser finds is placed by the parser.
            (
                "  window: soon\n  journal: {dir: j}\n  sinks: []\n",
                "lg.yaml:4:3: metering.window: `soon` is not a duration",
            ),
            (
                "  journal: {dir: j}\n  sinks: [{name: f, kind: jsonl, pth: u.jsonl}]\n",
                "lg.yaml:5:34: metering.sinks[0].pth: unknown field `pth`",
            ),
        ] {
            let error = error(metering);
            assert!(error.starts_with(expected), "{metering}: {error}");
        }
    }

    fn resolve_license(license: &str) -> Result<LicenseSettings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.pem"), "").unwrap();
        let text = format!(
            "listen: 127.0.0.1:8080\nupstream: {{url: 'http://127.0.0.1:1'}}\nlicense:\n  keys: {}\n{license}",
            dir.path().join("k.pem").display()
        );
        Settings::resolve(parse(&text)?, Overrides::default()).map(|s| s.license.unwrap())
    }

    #[test]
    fn token_forwarding_and_the_verification_budget() {
        let defaults = resolve_license("  source: header\n").unwrap();
        assert!(!defaults.forward_token, "the token is removed by default");
        assert_eq!(defaults.failed_verifications, BudgetSettings::default());
        let set = resolve_license(
            "  source: header\n  forward_token: true\n  failed_verifications: {limit: 5, per: 1m, burst: 7}\n",
        )
        .unwrap();
        assert!(set.forward_token);
        let budget = set.failed_verifications;
        assert_eq!(
            (budget.limit, budget.per, budget.burst),
            (5, Duration::from_secs(60), 7)
        );

        for (bad, expected) in [
            (
                "  source: header\n  failed_verifications:\n    burst: 0\n",
                "lg.yaml:7:5: license.failed_verifications.burst: 0 is out of range; expected at least 1",
            ),
            (
                "  source: header\n  failed_verifications:\n    per: 0s\n",
                "lg.yaml:7:5: license.failed_verifications.per: must be greater than zero",
            ),
            (
                "  source: header\n  failed_verifications: {rate: 3}\n",
                "lg.yaml:6:26: license.failed_verifications.rate: unknown field `rate`",
            ),
            (
                "  file: l.jwt\n  forward_token: true\n",
                "license.forward_token: only used with `source: header`",
            ),
            (
                "  file: l.jwt\n  failed_verifications: {limit: 1}\n",
                "license.failed_verifications: only used with `source: header`",
            ),
        ] {
            let err = resolve_license(bad).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn revocation_sources_are_one_of_file_or_url() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list.jwt");
        std::fs::write(&list, "").unwrap();
        let file = format!(
            "  source: header\n  revocations: {{file: {}}}\n",
            list.display()
        );
        assert!(resolve_license(&file).is_ok());
        let url = "  source: header\n  revocations: {url: 'https://vendor.example/revocations', interval: 30s}\n";
        assert!(resolve_license(url).is_ok());
        for (bad, expected) in [
            (
                format!(
                    "  source: header\n  revocations: {{file: {}, url: 'https://v.example/r'}}\n",
                    list.display()
                ),
                "license.revocations: takes `file` or `url`, not both",
            ),
            (
                "  source: header\n  revocations: {max_age: 1h}\n".to_owned(),
                "license.revocations: needs `file`",
            ),
            (
                format!(
                    "  source: header\n  revocations: {{file: {}, interval: 5s}}\n",
                    list.display()
                ),
                "license.revocations: `interval` is only used with `url`",
            ),
            (
                "  source: header\n  revocations: {url: 'not a url at all'}\n".to_owned(),
                "license.revocations.url: `not a url at all` is not a URL",
            ),
        ] {
            let err = resolve_license(&bad).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{bad}: {err}");
        }
    }

    fn resolve_users(users: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), "{}").unwrap();
        let text = format!(
            "listen: 127.0.0.1:8080\nupstream: {{url: 'http://127.0.0.1:1'}}\nusers:\n{}",
            users.replace("JWKS", &dir.path().join("jwks.json").display().to_string())
        );
        Settings::resolve(parse(&text)?, Overrides::default())
    }

    #[test]
    fn user_settings_are_checked() {
        let issuer = "  issuers:\n    - {issuer: 'https://idp.test', audience: app, jwks_file: JWKS, roles_claim: realm_access.roles}\n";
        let users = resolve_users(issuer).unwrap().users.unwrap();
        assert_eq!(users.token, crate::user::TokenLocation::Bearer);
        assert_eq!(
            users.issuers[0]
                .roles_claim
                .as_ref()
                .unwrap()
                .segments()
                .len(),
            2
        );
        assert_eq!(users.issuers[0].algorithms.len(), 3);
        let cookie = resolve_users(&format!("  token: cookie:session\n{issuer}")).unwrap();
        assert_eq!(
            cookie.users.unwrap().token,
            crate::user::TokenLocation::Cookie("session".into())
        );
        for (bad, expected) in [
            ("  token: basic\n  issuers:\n    - {issuer: i, audience: a, jwks_file: JWKS}\n", "users.token: `basic`: expected `bearer`"),
            ("  token: 'cookie:a;b'\n  issuers:\n    - {issuer: i, audience: a, jwks_file: JWKS}\n", "users.token: `a;b` is not a cookie name"),
            ("  issuers: []\n", "users.issuers: name at least one identity provider"),
            (
                "  issuers:\n    - {issuer: 'https://idp.test', jwks_file: JWKS}\n",
                "users.issuers: #0: `https://idp.test` needs `audience`",
            ),
            (
                "  issuers:\n    - {issuer: 'https://idp.test', audience: a}\n",
                "users.issuers: #0: `https://idp.test` needs `jwks_url`",
            ),
            (
                "  issuers:\n    - {issuer: 'https://idp.test', audience: a, jwks_file: JWKS, refresh: 1m}\n",
                "users.issuers: #0: `refresh` is only used with `jwks_url`",
            ),
            (
                "  issuers:\n    - {issuer: 'https://idp.test', audience: a, jwks_url: 'https://idp.test/certs', min_refresh: 10m}\n",
                "users.issuers: #0: `min_refresh` (10m) is longer than `refresh` (5m)",
            ),
            (
                "  issuers:\n    - {issuer: 'https://idp.test', audience: a, jwks_file: JWKS, algorithms: [HS256]}\n",
                "users.issuers: #0: algorithm `HS256` is not accepted",
            ),
            (
                "  issuers:\n    - {issuer: 'https://idp.test', audience: a, jwks_file: JWKS, roles_claim: 'a..b'}\n",
                "users.issuers: #0: `roles_claim` `a..b` is not a claim path",
            ),
            (
                "  forward: {id: x-who, roles: x-who}\n  issuers:\n    - {issuer: 'https://idp.test', audience: a, jwks_file: JWKS}\n",
                "users.forward: `id` and `roles` need two different headers",
            ),
        ] {
            let err = resolve_users(bad).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{bad}: {err}");
        }
    }
}
