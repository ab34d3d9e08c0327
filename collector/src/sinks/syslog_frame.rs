//! RFC 5424 messages in RFC 5425 octet-counted frames.

use super::Record;

/// Syslog facility local0.
const FACILITY_LOCAL0: u8 = 16;

/// Appends one octet-counted RFC 5425 frame, `LEN SP SYSLOG-MSG`, with
/// `SYSLOG-MSG` = `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - JSON`.
pub(super) fn encode_frame(out: &mut Vec<u8>, record: &Record<'_>, app_name: &str) {
    let pri = FACILITY_LOCAL0 * 8 + record.severity.syslog_code();
    let mut header = format!("<{pri}>1 ");
    push_timestamp(&mut header, record.time_ms);
    header.push(' ');
    push_field(&mut header, record.agent, 255);
    header.push(' ');
    header.push_str(app_name);
    header.push_str(" - ");
    push_field(&mut header, record.kind, 32);
    header.push_str(" - ");
    let len = header.len() + record.json.len();
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(record.json);
}

/// A header field: printable ASCII without spaces (others become `_`), at
/// most `max` characters, `-` (NILVALUE) when empty.
fn push_field(out: &mut String, value: &str, max: usize) {
    let start = out.len();
    out.extend(
        value
            .chars()
            .take(max)
            .map(|c| if c.is_ascii_graphic() { c } else { '_' }),
    );
    if out.len() == start {
        out.push('-');
    }
}

/// RFC 3339 UTC with milliseconds (`2026-11-24T08:00:00.123Z`); NILVALUE
/// past year 9999.
pub fn push_timestamp(out: &mut String, time_ms: u64) {
    let secs = time_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    if year > 9999 {
        out.push('-');
        return;
    }
    let s = secs % 86_400;
    out.push_str(&format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        time_ms % 1000
    ));
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
