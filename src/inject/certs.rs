//! `licensegate inject certs`: a private CA and the webhook's serving
//! certificate, for clusters without cert-manager. The CA's private key is
//! never written anywhere: renewing means running the command again and
//! updating the `caBundle`.

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// Longest validity `--days` accepts (a hundred years).
pub const MAX_DAYS: u32 = 36_500;

/// PEM text of the CA certificate, the serving certificate and its key.
#[derive(Debug)]
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// DNS names the serving certificate is valid for.
    pub dns_names: Vec<String>,
}

/// The names the API server may use for `service` in `namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Make a CA and a serving certificate for `service`.`namespace`.svc (and
/// `extra_names`), both valid from the start of yesterday (UTC, slack for
/// clock skew) until `days` days from today.
pub fn generate(
    service: &str,
    namespace: &str,
    extra_names: &[String],
    days: u32,
) -> Result<ServingCert, String> {
    for (what, label) in [("service", service), ("namespace", namespace)] {
        if !is_dns_label(label) {
            return Err(format!(
                "--{what}: `{label}` is not a DNS label (lower-case letters, digits and '-', at most 63)"
            ));
        }
    }
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(format!("--days: 1 to {MAX_DAYS}"));
    }
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?
        .as_secs()
        / 86_400;
    let date = |day: u64| {
        let (year, month, day) = civil_from_days(day);
        date_time_ymd(year, month, day)
    };
    let not_before = date(today - 1);
    let not_after = date(today + u64::from(days));
    let error = |what: &str, e: rcgen::Error| format!("cannot make the {what}: {e}");

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name =
        distinguished_name(&format!("licensegate injector CA ({service}.{namespace})"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| error("CA key", e))?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| error("CA", e))?;

    let mut dns_names = service_names(service, namespace);
    dns_names.extend(extra_names.iter().cloned());
    let mut params =
        CertificateParams::new(dns_names.clone()).map_err(|e| error("serving certificate", e))?;
    params.distinguished_name = distinguished_name(&format!("{service}.{namespace}.svc"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| error("serving key", e))?;
    let cert = params
        .signed_by(&key, &ca)
        .map_err(|e| error("serving certificate", e))?;
    Ok(ServingCert {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        dns_names,
    })
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(super) fn civil_from_days(days: u64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    // Years stay in four digits: today plus at most MAX_DAYS.
    (year as i32, month as u8, day as u8)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}
