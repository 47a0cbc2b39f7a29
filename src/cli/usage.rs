//! `licensegate usage`: what licenses have used of their limits this period
//! and of their meters this month, as a running licensegate's admin port
//! (`GET /usage`) reports it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use http::{Method, StatusCode};

use super::admin_client::{detail, exchange, Failure};
use crate::config::DEFAULT_ADMIN;
use crate::decision::usage::{
    is_license_id, Entitlement, InstanceUsage, LicenseUsage, LimitUsage, UsageReport,
    MAX_LICENSE_ID,
};
use crate::exit;
use crate::process::build_runtime;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Admin address of the running licensegate.
    #[arg(long, env = "LICENSEGATE_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin: SocketAddr,
    /// One license id [default: every license with usage on that replica].
    #[arg(long, value_parser = license_id)]
    pub license: Option<String>,
    /// Print the admin port's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
}

fn license_id(text: &str) -> Result<String, String> {
    if is_license_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "not a license id: 1 to {MAX_LICENSE_ID} bytes, without control characters or braces"
        ))
    }
}

/// Run `licensegate usage`; returns the exit status.
pub fn run(args: UsageArgs) -> i32 {
    let runtime = match build_runtime(1) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("licensegate: cannot start the runtime: {error}");
            return exit::OS_ERROR;
        }
    };
    let admin = args.admin;
    let path = match &args.license {
        Some(id) => format!(
            "/usage?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("license", id)
                .finish()
        ),
        None => "/usage".to_owned(),
    };
    let answer = runtime.block_on(exchange(admin, Method::GET, &path, None));
    let body = match answer {
        Err(Failure::Connect(error)) => {
            eprintln!(
                "licensegate: nothing answers on {admin} ({error}); is licensegate running \
                 with its admin port there (--admin)?"
            );
            return exit::UNAVAILABLE;
        }
        Err(Failure::Exchange(error)) => {
            eprintln!("licensegate: talking to {admin}: {error}");
            return exit::UNAVAILABLE;
        }
        Ok((StatusCode::OK, body)) => body,
        Ok((StatusCode::NOT_FOUND, _)) => {
            eprintln!("licensegate: the licensegate on {admin} has no /usage (an older version?)");
            return exit::FAILURE;
        }
        Ok((status, body)) => {
            eprintln!("licensegate: usage refused ({status}): {}", detail(&body));
            return exit::FAILURE;
        }
    };
    let text = if args.json {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        match serde_json::from_slice::<UsageReport>(&body) {
            Ok(report) => render(&report, args.license.as_deref()),
            Err(error) => {
                eprintln!("licensegate: {admin} answered an unexpected body: {error}");
                return exit::FAILURE;
            }
        }
    };
    let mut stdout = std::io::stdout();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => exit::SUCCESS,
        Err(error) => {
            eprintln!("licensegate: cannot write the answer: {error}");
            exit::IO_ERROR
        }
    }
}

/// The report as tables: one per license (limits, then meters), then the
/// notes.
pub fn render(report: &UsageReport, asked: Option<&str>) -> String {
    let mut out = String::new();
    if report.licenses.is_empty() {
        match asked {
            Some(id) => {
                let _ = writeln!(
                    out,
                    "no usage of license `{id}` on this replica: nothing counted, and not seen \
                     since it started"
                );
            }
            None => out.push_str("no usage on this replica\n"),
        }
    }
    for (i, license) in report.licenses.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_license(&mut out, license, &report.time);
    }
    for note in &report.notes {
        let _ = writeln!(out, "\nnote: {note}");
    }
    out
}

fn render_license(out: &mut String, license: &LicenseUsage, now: &str) {
    let numbers = match license.entitlement {
        Entitlement::Deployment => "numbers from the deployment license",
        Entitlement::Recent => "numbers from a license this replica saw recently",
        Entitlement::Unknown => {
            "not seen by this replica since it started: numbers from the license unknown (?)"
        }
    };
    let plan = license
        .plan
        .as_deref()
        .map(|plan| format!("plan {plan}; "))
        .unwrap_or_default();
    let _ = writeln!(out, "license {} ({plan}{numbers})", license.license);
    if license.limits.is_empty() {
        out.push_str("  no limits apply\n");
    } else {
        let mut rows = vec![[
            "LIMIT",
            "KIND",
            "USED",
            "LIMIT",
            "REMAINING",
            "RESETS IN",
            "STORE",
        ]
        .map(str::to_owned)
        .to_vec()];
        for limit in &license.limits {
            rows.push(limit_row(limit, &license.license, now));
        }
        table(out, &rows, &[false, false, true, true, true, false, false]);
    }
    if let Some(instances) = &license.instances {
        render_instances(out, instances);
    }
    if !license.meters.is_empty() {
        let mut rows = vec![["METER", "USED", "SINCE"].map(str::to_owned).to_vec()];
        for meter in &license.meters {
            rows.push(vec![
                meter.meter.clone(),
                meter.used.to_string(),
                meter.since.clone(),
            ]);
        }
        out.push('\n');
        table(out, &rows, &[false, true, false]);
    }
}

/// The instance slots: how many are held, by whom, and where the replica
/// that answered stands.
fn render_instances(out: &mut String, instances: &InstanceUsage) {
    let counted = match instances.counted.as_str() {
        "local" => "no shared store: only this replica is counted",
        _ => "across the fleet, in the shared store",
    };
    let _ = writeln!(
        out,
        "\ninstances of {}: {} of {} held ({counted}; on_limit: {})",
        instances.holder,
        instances.holders.len(),
        instances.limit,
        instances.on_limit
    );
    let mut rows = vec![["HOLDER", "LEASE LEFT"].map(str::to_owned).to_vec()];
    for holder in &instances.holders {
        let mut name = holder.instance.clone();
        if holder.instance == instances.instance {
            name.push_str(" (this replica)");
        }
        let left = if holder.lease_left_ms >= 0 {
            format!("{:.1}s", holder.lease_left_ms as f64 / 1000.0)
        } else {
            "lapsed".to_owned()
        };
        rows.push(vec![name, left]);
    }
    if !instances.holders.is_empty() {
        table(out, &rows, &[false, true]);
    }
    if instances.state == "waiting" {
        let _ = writeln!(
            out,
            "  this replica ({}) waits for a slot",
            instances.instance
        );
    }
}

fn limit_row(limit: &LimitUsage, license: &str, now: &str) -> Vec<String> {
    // The key is named when it is not simply the license (a compound key,
    // a plan's pool, one counter for everyone).
    let name = match limit.key.as_str() {
        key if key == license => limit.name.clone(),
        "" => format!("{} (global)", limit.name),
        key => format!("{} ({key})", limit.name),
    };
    let unknown = || "?".to_owned();
    let used = limit.used.map_or_else(unknown, |n| n.to_string());
    let (number, remaining) = match (limit.limit_known, limit.limit) {
        (false, _) => (unknown(), unknown()),
        (true, None) => ("unlimited".to_owned(), "-".to_owned()),
        (true, Some(n)) => (
            n.to_string(),
            limit.remaining.map_or_else(unknown, |n| n.to_string()),
        ),
    };
    let resets = match &limit.reset {
        Some(reset) => resets_in(reset, now),
        None => "-".to_owned(),
    };
    vec![
        name,
        limit.kind.clone(),
        used,
        number,
        remaining,
        resets,
        limit.store.as_str().to_owned(),
    ]
}

/// From the answer's own time to `reset`, so the two clocks need not agree.
fn resets_in(reset: &str, now: &str) -> String {
    let (Ok(reset), Ok(now)) = (
        humantime::parse_rfc3339(reset),
        humantime::parse_rfc3339(now),
    ) else {
        return reset.to_owned();
    };
    // Whole seconds, rounded up: never sooner than it will be.
    match reset.duration_since(now) {
        Ok(left) if !left.is_zero() => {
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            humantime::format_duration(Duration::from_secs(secs)).to_string()
        }
        _ => "now".to_owned(),
    }
}

/// Columns padded to their widest cell, two spaces apart, indented.
fn table(out: &mut String, rows: &[Vec<String>], right: &[bool]) {
    let columns = right.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            line.push(' ');
            let pad = widths[c] - cell.chars().count();
            if right[c] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if c + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            if c + 1 < columns {
                line.push(' ');
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::usage::{MeterUsage, Store};

    fn quota(used: u64) -> LimitUsage {
        LimitUsage {
            name: "api_quota".into(),
            kind: "quota".into(),
            key: "lic-1".into(),
            used: Some(used),
            limit: Some(10),
            burst: None,
            limit_known: true,
            remaining: Some(10 - used),
            reset: Some("2026-01-02T00:00:00Z".into()),
            window_seconds: Some(86_400),
            store: Store::Memory,
        }
    }

    #[test]
    fn tables_line_up_and_say_what_is_unknown() {
        let report = UsageReport {
            time: "2026-01-01T17:29:59.250Z".into(),
            store: Store::Memory,
            licenses: vec![LicenseUsage {
                license: "lic-1".into(),
                plan: Some("pro".into()),
                entitlement: Entitlement::Recent,
                instances: None,
                limits: vec![
                    quota(3),
                    LimitUsage {
                        name: "per_user".into(),
                        kind: "concurrency".into(),
                        key: "lic-1/alice".into(),
                        used: Some(1),
                        limit: None,
                        limit_known: true,
                        remaining: None,
                        reset: None,
                        window_seconds: None,
                        ..quota(0)
                    },
                    LimitUsage {
                        name: "api_rate".into(),
                        kind: "rate".into(),
                        used: None,
                        limit: None,
                        limit_known: false,
                        remaining: None,
                        reset: Some("2026-01-01T17:29:59.250Z".into()),
                        ..quota(0)
                    },
                ],
                meters: vec![MeterUsage {
                    meter: "requests".into(),
                    used: 3,
                    since: "2026-01-01T00:00:00Z".into(),
                }],
            }],
            truncated: false,
            notes: vec!["a note".into()],
        };
        assert_eq!(
            render(&report, None),
            "license lic-1 (plan pro; numbers from a license this replica saw recently)\n\
             \x20 LIMIT                   KIND         USED      LIMIT  REMAINING  RESETS IN  STORE\n\
             \x20 api_quota               quota           3         10          7  6h 30m 1s  memory\n\
             \x20 per_user (lic-1/alice)  concurrency     1  unlimited          -  -          memory\n\
             \x20 api_rate                rate            ?          ?          ?  now        memory\n\
             \n\
             \x20 METER     USED  SINCE\n\
             \x20 requests     3  2026-01-01T00:00:00Z\n\
             \n\
             note: a note\n"
        );
    }

    #[test]
    fn an_empty_answer_says_what_was_asked() {
        let report = UsageReport {
            time: "2026-01-01T00:00:00Z".into(),
            store: Store::Shared,
            licenses: vec![],
            truncated: false,
            notes: vec![],
        };
        assert!(render(&report, Some("lic-9")).starts_with("no usage of license `lic-9`"));
        assert_eq!(render(&report, None), "no usage on this replica\n");
    }
}
