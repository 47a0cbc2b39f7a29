//! Metering settings: the file shape ([`MeteringFile`], embedded by the
//! configuration as `metering:`) and the checked, resolved form
//! ([`MeteringSettings`]) that [`Metering::start`](super::Metering::start)
//! takes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Deserializer};

use crate::bytesize::ByteSize;

/// The Stripe meter events endpoint, the `url` of a `stripe` sink by default.
pub const STRIPE_URL: &str = "https://api.stripe.com/v1/billing/meter_events";

/// A setting that cannot be used: its dotted path (`metering.sinks[0].url`)
/// and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct MeteringSettingsError {
    pub setting: String,
    pub message: String,
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> MeteringSettingsError {
    MeteringSettingsError {
        setting: setting.into(),
        message: message.into(),
    }
}

// === The file shape ===

/// `metering:` as written in the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringFile {
    /// CloudEvents `source`; `licensegate/<hostname>` by default.
    pub source: Option<String>,
    /// How long usage is summed in memory before it is journalled.
    pub window: Option<FileDuration>,
    pub journal: FileJournal,
    pub sinks: Vec<FileSink>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJournal {
    pub dir: PathBuf,
    pub segment_bytes: Option<ByteSize>,
    pub max_bytes: Option<ByteSize>,
    #[serde(default)]
    pub fsync: Fsync,
    #[serde(default)]
    pub overflow: Overflow,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    pub name: String,
    pub kind: SinkKind,
    pub url: Option<String>,
    /// A PEM CA bundle to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Extra request headers, e.g. `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Most events per request.
    pub batch: Option<usize>,
    /// Bound on one request (or one write, for `jsonl`).
    pub timeout: Option<FileDuration>,
    /// `jsonl`: the file to append to, or `-` for standard output.
    pub path: Option<String>,
    /// Plain `http://`, to a loopback address only (a local agent; tests).
    #[serde(default)]
    pub allow_http: bool,
    pub min_backoff: Option<FileDuration>,
    pub max_backoff: Option<FileDuration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// CloudEvents 1.0 batches over HTTPS (OpenMeter's ingestion API).
    Cloudevents,
    /// Stripe Billing meter events, one form POST per event.
    Stripe,
    /// One structured CloudEvent JSON per line, to a file or stdout.
    Jsonl,
}

/// When the journal (and a `jsonl` sink's file) is forced to disk.
///
/// A process crash (`kill -9`, OOM) loses nothing already written, whatever
/// the policy: the kernel holds the pages. `fsync` only matters when the
/// machine itself goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// After every append: each flushed window and each event.
    Always,
    /// After each flushed window; an event written between two flushes is
    /// synced with the next. A power loss costs at most one window.
    #[default]
    Window,
    /// Never; the kernel writes back when it likes.
    Never,
}

/// What the journal does when it holds `max_bytes` that some sink has not
/// acknowledged (the sink has been failing for a long time).
///
/// The default is [`DropNewest`](Overflow::DropNewest): what is journalled
/// stays an unbroken prefix of the usage, in order, so everything billed up
/// to the outage is exact and the loss is one span at the end, counted by
/// `licensegate_metering_dropped_total{reason="journal_full"}`. Evicting the
/// oldest instead deletes records an exporter may be reading at that moment,
/// and leaves a gap in the middle of the billing period that is harder to
/// find and to reconcile. Pick `drop_oldest` when the billing system rejects
/// old usage anyway (Stripe takes meter events at most 35 days old) and the
/// newest usage matters more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    #[default]
    DropNewest,
    DropOldest,
}

/// A duration written the human way: `250ms`, `10s`, `5m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileDuration(pub Duration);

impl<'de> Deserialize<'de> for FileDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(FileDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); expected e.g. `250ms`, `10s`, `5m`"
                ))
            })
    }
}

// === The resolved settings ===

/// Checked metering settings, paths absolute.
#[derive(Clone, Debug)]
pub struct MeteringSettings {
    /// CloudEvents `source`: with the record's id, what a collector dedupes
    /// on. Each replica needs its own, stable across restarts (a StatefulSet
    /// pod name, not a Deployment's random one), since records journalled
    /// before a restart are sent after it.
    pub source: String,
    /// The aggregation window: usage is summed in memory for this long,
    /// then journalled. A `kill -9` loses at most the open window; a
    /// graceful stop loses nothing.
    pub window: Duration,
    pub journal: JournalSettings,
    pub sinks: Vec<SinkSettings>,
}

#[derive(Clone, Debug)]
pub struct JournalSettings {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Bound on all segments together; see [`Overflow`].
    pub max_bytes: u64,
    pub fsync: Fsync,
    pub overflow: Overflow,
}

impl JournalSettings {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

    /// `dir` with every default.
    pub fn new(dir: PathBuf) -> JournalSettings {
        JournalSettings {
            dir,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            fsync: Fsync::default(),
            overflow: Overflow::default(),
        }
    }
}

/// One export destination.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    /// Unique; names the cursor and dead-letter files and the metrics.
    pub name: String,
    pub target: SinkTarget,
    /// Most events per request (per write, for `jsonl`).
    pub batch: usize,
    pub timeout: Duration,
    /// Retry delays after a failure: from `min_backoff`, doubling (with
    /// jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl SinkSettings {
    pub const DEFAULT_BATCH: usize = 100;
    pub const MAX_BATCH: usize = 10_000;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(200);
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

    /// A sink named `name` sending to `target`, with every default.
    pub fn new(name: impl Into<String>, target: SinkTarget) -> SinkSettings {
        SinkSettings {
            name: name.into(),
            target,
            batch: Self::DEFAULT_BATCH,
            timeout: Self::DEFAULT_TIMEOUT,
            min_backoff: Self::DEFAULT_MIN_BACKOFF,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
        }
    }
}

#[derive(Clone, Debug)]
pub enum SinkTarget {
    CloudEvents(HttpTarget),
    Stripe(HttpTarget),
    Jsonl(JsonlTarget),
}

impl SinkTarget {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkTarget::CloudEvents(_) => "cloudevents",
            SinkTarget::Stripe(_) => "stripe",
            SinkTarget::Jsonl(_) => "jsonl",
        }
    }
}

/// An HTTPS endpoint.
#[derive(Clone)]
pub struct HttpTarget {
    pub url: Uri,
    /// Trust this PEM CA bundle instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Sent marked sensitive; never logged.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Plain `http://`, to a loopback address only.
    pub allow_http: bool,
}

impl HttpTarget {
    /// `url` with the system roots and no extra headers.
    pub fn new(url: Uri) -> HttpTarget {
        HttpTarget {
            url,
            ca: None,
            headers: Vec::new(),
            allow_http: false,
        }
    }
}

impl fmt::Debug for HttpTarget {
    // Header values are credentials: only their names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpTarget")
            .field("url", &shown_url(&self.url))
            .field("ca", &self.ca)
            .field("headers", &names)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonlTarget {
    Stdout,
    File(PathBuf),
}

impl MeteringSettings {
    /// Settings journalling in `dir` and exporting to `sinks`, with every
    /// other default.
    pub fn new(dir: PathBuf, sinks: Vec<SinkSettings>) -> MeteringSettings {
        MeteringSettings {
            source: default_source(),
            window: Self::DEFAULT_WINDOW,
            journal: JournalSettings::new(dir),
            sinks,
        }
    }

    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    /// A window up to an hour: longer would hold an hour of usage in memory
    /// only.
    pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

    /// Check what a single field cannot check on its own. `start` does this
    /// too; the configuration calls it to report errors before anything
    /// starts.
    pub fn validate(&self) -> Result<(), MeteringSettingsError> {
        if self.source.trim().is_empty() {
            return Err(invalid("metering.source", "must not be empty"));
        }
        if self.window < Duration::from_millis(10) || self.window > Self::MAX_WINDOW {
            return Err(invalid(
                "metering.window",
                format!(
                    "{} is out of range; expected 10ms to 1h",
                    humantime::format_duration(self.window)
                ),
            ));
        }
        let journal = &self.journal;
        if journal.segment_bytes < 4096 {
            return Err(invalid(
                "metering.journal.segment_bytes",
                format!(
                    "{} is too small; expected at least 4KiB",
                    journal.segment_bytes
                ),
            ));
        }
        if journal.max_bytes < journal.segment_bytes.saturating_mul(2) {
            return Err(invalid(
                "metering.journal.max_bytes",
                format!(
                    "{} must be at least twice segment_bytes ({})",
                    journal.max_bytes, journal.segment_bytes
                ),
            ));
        }
        if self.sinks.is_empty() {
            return Err(invalid(
                "metering.sinks",
                "at least one sink is required (e.g. `kind: jsonl` with a `path`)",
            ));
        }
        for (index, sink) in self.sinks.iter().enumerate() {
            let at = |field: &str| format!("metering.sinks[{index}].{field}");
            check_sink_name(&sink.name).map_err(|message| invalid(at("name"), message))?;
            if self.sinks[..index].iter().any(|s| s.name == sink.name) {
                return Err(invalid(
                    at("name"),
                    format!("`{}` names two sinks; names must be unique", sink.name),
                ));
            }
            if sink.batch == 0 || sink.batch > SinkSettings::MAX_BATCH {
                return Err(invalid(
                    at("batch"),
                    format!("{} is out of range; expected 1 to 10000", sink.batch),
                ));
            }
            if sink.timeout.is_zero() {
                return Err(invalid(at("timeout"), "must be greater than zero"));
            }
            if sink.min_backoff.is_zero() || sink.max_backoff < sink.min_backoff {
                return Err(invalid(
                    at("min_backoff"),
                    format!(
                        "need 0 < min_backoff ({:?}) <= max_backoff ({:?})",
                        sink.min_backoff, sink.max_backoff
                    ),
                ));
            }
            if let SinkTarget::CloudEvents(http) | SinkTarget::Stripe(http) = &sink.target {
                check_url(&http.url, http.allow_http).map_err(|m| invalid(at("url"), m))?;
            }
        }
        Ok(())
    }
}

fn check_sink_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a sink name; expected 1 to 64 of A-Z a-z 0-9 - _ . \
             (it names files), not starting with `.`"
        ))
    }
}

/// `https://`, or `http://` to a loopback address when allowed; no
/// credentials in the URL.
pub(crate) fn check_url(url: &Uri, allow_http: bool) -> Result<(), String> {
    crate::remote::check_url(url, allow_http).map(|_https| ())
}

pub(crate) use crate::remote::shown_url;

/// `licensegate/<hostname>`.
pub fn default_source() -> String {
    format!("licensegate/{}", hostname())
}

/// The kernel's host name (a pod's name in Kubernetes), else `$HOSTNAME`.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            let name = text.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown-host".to_owned())
}

impl MeteringFile {
    /// Check the file's settings and resolve relative paths against
    /// `config_dir` (the directory of the configuration file).
    pub fn resolve(self, config_dir: &Path) -> Result<MeteringSettings, MeteringSettingsError> {
        let absolute = |path: &Path| {
            if path.is_absolute() {
                path.to_owned()
            } else {
                config_dir.join(path)
            }
        };
        if self.journal.dir.as_os_str().is_empty() {
            return Err(invalid("metering.journal.dir", "must not be empty"));
        }
        let mut journal = JournalSettings::new(absolute(&self.journal.dir));
        if let Some(size) = self.journal.segment_bytes {
            journal.segment_bytes = size.0;
        }
        if let Some(size) = self.journal.max_bytes {
            journal.max_bytes = size.0;
        }
        journal.fsync = self.journal.fsync;
        journal.overflow = self.journal.overflow;

        let mut sinks = Vec::with_capacity(self.sinks.len());
        for (index, file) in self.sinks.into_iter().enumerate() {
            let at = |field: &str| format!("metering.sinks[{index}].{field}");
            let http = |url: Option<String>, default: Option<&str>| {
                let text =
                    match (url, default) {
                        (Some(url), _) => url,
                        (None, Some(default)) => default.to_owned(),
                        (None, None) => return Err(invalid(
                            at("url"),
                            "required for this kind, e.g. https://openmeter.cloud/api/v1/events",
                        )),
                    };
                let url: Uri = text
                    .parse()
                    .map_err(|e| invalid(at("url"), format!("`{text}` is not a URL: {e}")))?;
                let mut target = HttpTarget::new(url);
                target.ca = file.ca.as_deref().map(absolute);
                target.allow_http = file.allow_http;
                for (name, value) in &file.headers {
                    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        invalid(at("headers"), format!("`{name}` is not a header name"))
                    })?;
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        invalid(
                            at("headers"),
                            format!("the value of `{name}` is not a valid header value"),
                        )
                    })?;
                    target.headers.push((header, value));
                }
                if file.path.is_some() {
                    return Err(invalid(at("path"), "only a `jsonl` sink writes to a path"));
                }
                Ok(target)
            };
            let target =
                match file.kind {
                    SinkKind::Cloudevents => SinkTarget::CloudEvents(http(file.url.clone(), None)?),
                    SinkKind::Stripe => {
                        let target = http(file.url.clone(), Some(STRIPE_URL))?;
                        if !target
                            .headers
                            .iter()
                            .any(|(name, _)| *name == http::header::AUTHORIZATION)
                        {
                            return Err(invalid(
                                at("headers"),
                                "a `stripe` sink needs `Authorization: Bearer <secret key>`",
                            ));
                        }
                        SinkTarget::Stripe(target)
                    }
                    SinkKind::Jsonl => {
                        for (set, field) in [
                            (file.url.is_some(), "url"),
                            (file.ca.is_some(), "ca"),
                            (!file.headers.is_empty(), "headers"),
                            (file.allow_http, "allow_http"),
                        ] {
                            if set {
                                return Err(invalid(at(field), "not used by a `jsonl` sink"));
                            }
                        }
                        match file.path.as_deref() {
                            None | Some("") => return Err(invalid(
                                at("path"),
                                "required for a `jsonl` sink: a file, or `-` for standard output",
                            )),
                            Some("-") => SinkTarget::Jsonl(JsonlTarget::Stdout),
                            Some(path) => {
                                SinkTarget::Jsonl(JsonlTarget::File(absolute(Path::new(path))))
                            }
                        }
                    }
                };
            let mut sink = SinkSettings::new(file.name, target);
            if let Some(batch) = file.batch {
                sink.batch = batch;
            }
            if let Some(timeout) = file.timeout {
                sink.timeout = timeout.0;
            }
            if let Some(min) = file.min_backoff {
                sink.min_backoff = min.0;
            }
            if let Some(max) = file.max_backoff {
                sink.max_backoff = max.0;
            }
            sinks.push(sink);
        }

        let settings = MeteringSettings {
            source: self.source.unwrap_or_else(default_source),
            window: self
                .window
                .map_or(MeteringSettings::DEFAULT_WINDOW, |w| w.0),
            journal,
            sinks,
        };
        settings.validate()?;
        Ok(settings)
    }
}
