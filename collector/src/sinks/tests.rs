//! Tests of the sinks: spec parsing, syslog frames, and each sink writing and failing.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::file::FileSink;
use super::spec::percent_decode;
use super::stdout::WriterSink;
use super::syslog::SyslogTlsSink;
use super::syslog_frame::{encode_frame, push_timestamp};
use super::*;

const T: u64 = 1_795_507_200_123; // 2026-11-24T08:00:00.123Z

fn rec<'a>(json: &'a str, severity: Severity, kind: &'a str, agent: &'a str) -> Record<'a> {
    Record {
        json: json.as_bytes(),
        time_ms: T,
        severity,
        kind,
        agent,
    }
}

/// Connection records of these JSON objects, as one batch.
fn connections(jsons: &[String]) -> Vec<Record<'_>> {
    jsons
        .iter()
        .map(|j| rec(j, Severity::Info, "connection", "n"))
        .collect()
}

/// Writes one record, which must fail; returns the error message.
fn failed_write(sink: &mut dyn Sink) -> String {
    sink.write_batch(&[rec("{}", Severity::Info, "connection", "n")])
        .unwrap_err()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tiergate-sinks-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn file_sink(spec: &str) -> FileSink {
    FileSink::parse(spec, spec.strip_prefix("file:").unwrap()).unwrap()
}

fn err(spec: &str) -> String {
    match parse_sink(spec) {
        Ok(sink) => panic!("{spec} parsed as {}", sink.name()),
        Err(e) => e.to_string(),
    }
}

// ---- syslog frames

#[test]
fn frame_is_byte_exact() {
    let json =
        r#"{"class_uid":4001,"unmapped":{"tiergate":{"kind":"connection","verdict":"deny"}}}"#;
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        &rec(json, Severity::Info, "connection", "node-1"),
        "tiergate",
    );
    // 63 header bytes + 81 JSON bytes.
    let expected = r#"144 <134>1 2026-11-24T08:00:00.123Z node-1 tiergate - connection - {"class_uid":4001,"unmapped":{"tiergate":{"kind":"connection","verdict":"deny"}}}"#;
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn frame_counts_octets_not_characters() {
    let json = r#"{"name":"é€😀"}"#; // 11 ASCII + 2 + 3 + 4 bytes
    assert_eq!(json.len(), 20);
    let mut out = Vec::new();
    encode_frame(&mut out, &rec(json, Severity::Error, "policy", "n"), "tg");
    let expected = "68 <131>1 2026-11-24T08:00:00.123Z n tg - policy - {\"name\":\"é€😀\"}";
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn frames_concatenate_and_pri_follows_severity() {
    let mut out = Vec::new();
    for (severity, kind) in [
        (Severity::Info, "connection"),
        (Severity::Warning, "socket"),
        (Severity::Error, "loss"),
    ] {
        encode_frame(&mut out, &rec("{}", severity, kind, "node-1"), "tiergate");
    }
    let text = String::from_utf8(out).unwrap();
    let mut rest = text.as_str();
    let mut got = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(' ').unwrap();
        let len: usize = len.parse().unwrap();
        got.push(&tail[..len]);
        rest = &tail[len..];
    }
    assert_eq!(
        got,
        [
            "<134>1 2026-11-24T08:00:00.123Z node-1 tiergate - connection - {}",
            "<132>1 2026-11-24T08:00:00.123Z node-1 tiergate - socket - {}",
            "<131>1 2026-11-24T08:00:00.123Z node-1 tiergate - loss - {}",
        ]
    );
}

#[test]
fn header_fields_are_sanitized() {
    let mut out = Vec::new();
    let long = "x".repeat(300);
    encode_frame(
        &mut out,
        &rec("{}", Severity::Info, "", "nöde 1"),
        "tiergate",
    );
    encode_frame(
        &mut out,
        &rec("{}", Severity::Info, &long, &long),
        "tiergate",
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("56 <134>1 2026-11-24T08:00:00.123Z n_de_1 tiergate - - - {}"),
        "{text}"
    );
    let x255 = "x".repeat(255);
    let x32 = "x".repeat(32);
    assert!(
        text.ends_with(&format!("T08:00:00.123Z {x255} tiergate - {x32} - {{}}")),
        "{text}"
    );
}

#[test]
fn timestamps() {
    let ts = |ms| {
        let mut s = String::new();
        push_timestamp(&mut s, ms);
        s
    };
    assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(ts(T), "2026-11-24T08:00:00.123Z");
    assert_eq!(ts(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(ts(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
    assert_eq!(ts(4_102_444_800_000), "2100-01-01T00:00:00.000Z");
    assert_eq!(ts(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    assert_eq!(ts(253_402_300_800_000), "-");
    assert_eq!(ts(u64::MAX), "-");
}

// ---- parsing

#[test]
fn parses_specs() {
    assert_eq!(parse_sink("stdout").unwrap().name(), "stdout");
    assert_eq!(parse_sink("-").unwrap().name(), "stdout");
    let dir = scratch("parse");
    let ca = write_ca(&dir);
    let path = dir.join("e.jsonl");
    let f = file_sink(&format!("file:{}?max-bytes=1000&keep=3", path.display()));
    assert_eq!(
        (f.max_bytes, f.keep, f.name.clone()),
        (1000, 3, format!("file:{}", path.display()))
    );
    let f = file_sink(&format!("file://{}", path.display()));
    assert_eq!(
        (f.max_bytes, f.keep, f.path.clone()),
        (DEFAULT_MAX_BYTES, DEFAULT_KEEP, path.clone())
    );

    let s = SyslogTlsSink::parse(
        "x",
        &format!("siem.example:1514?ca={}&app-name=tg", ca.display()),
    )
    .unwrap();
    assert_eq!(
        (s.name.as_str(), s.port, s.app_name.as_str()),
        ("syslog+tls://siem.example:1514", 1514, "tg")
    );
    let s = SyslogTlsSink::parse("x", &format!("[::1]?ca={}", ca.display())).unwrap();
    assert_eq!(
        (s.name.as_str(), s.host.as_str()),
        ("syslog+tls://[::1]:6514", "::1")
    );
    let s = SyslogTlsSink::parse(
        "x",
        &format!(
            "10.0.0.1:6514/?ca={}",
            ca.to_str().unwrap().replace('/', "%2F")
        ),
    )
    .unwrap();
    assert_eq!(
        (s.name.as_str(), s.ca.clone()),
        ("syslog+tls://10.0.0.1:6514", ca.clone())
    );
    assert!(parse_sink(&format!("syslog+tls://localhost:6514?ca={}", ca.display())).is_ok());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rejects_bad_specs_precisely() {
    let dir = scratch("bad");
    let ca = write_ca(&dir);
    let ca = ca.display().to_string();
    let key = dir.join("key.pem");
    fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBieXRlcw==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let key = key.display().to_string();

    let e = err("kafka://broker:9092");
    assert!(
        e.starts_with("--sink kafka://broker:9092: unknown sink; valid sinks: stdout, file:PATH"),
        "{e}"
    );
    assert!(e.contains("syslog+tls://HOST[:PORT]?ca=PATH"), "{e}");
    let e = err("syslog://siem:514");
    assert!(e.contains("unsupported scheme syslog://"), "{e}");
    let e = err("file:/tmp/x?max-bytes=1&rotate=2");
    assert_eq!(
        e,
        r#"--sink file:/tmp/x?max-bytes=1&rotate=2: unknown option "rotate"; valid options: max-bytes, keep"#
    );
    let e = err("file:/tmp/x?max-bytes=10M");
    assert_eq!(
        e,
        "--sink file:/tmp/x?max-bytes=10M: max-bytes=10M: expected a number of bytes"
    );
    let e = err("file:/tmp/x?keep=1&keep=2");
    assert!(e.ends_with("option keep given twice"), "{e}");
    let e = err("file:/tmp/x?keep=");
    assert!(e.ends_with("option keep needs a value (keep=...)"), "{e}");
    let e = err("file:/tmp/x?keep=%+1");
    assert!(e.ends_with("option keep: invalid percent-encoding"), "{e}");
    assert_eq!(percent_decode("a%20b%2Fc%c3%A9"), Some("a b/cé".to_owned()));
    assert_eq!(percent_decode("%4"), None);
    let e = err("file:");
    assert!(e.contains("missing path"), "{e}");
    let e = err("file://relative/x");
    assert!(e.contains("absolute path"), "{e}");
    let e = err("syslog+tls://siem:6514");
    assert!(
        e.starts_with("--sink syslog+tls://siem:6514: missing ca=PATH"),
        "{e}"
    );
    let e = err(&format!("syslog+tls://siem:6514?ca={ca}&verify=no"));
    assert!(
        e.ends_with(r#"unknown option "verify"; valid options: ca, cert, key, app-name"#),
        "{e}"
    );
    let e = err(&format!("syslog+tls://siem:99999?ca={ca}"));
    assert!(e.ends_with(r#"invalid port "99999""#), "{e}");
    let e = err(&format!("syslog+tls://::1:6514?ca={ca}"));
    assert!(e.contains("IPv6 addresses go in brackets"), "{e}");
    let e = err(&format!("syslog+tls://admin:hunter2@siem:6514?ca={ca}"));
    assert!(!e.contains("hunter2") && !e.contains("admin"), "{e}");
    assert!(
        e.contains("credentials in the address are not supported"),
        "{e}"
    );
    let e = err(&format!("syslog+tls://siem?ca={ca}&app-name=tier gate"));
    assert!(e.contains("app-name=tier gate: RFC 5424 allows"), "{e}");
    let e = err(&format!("syslog+tls://siem?ca={ca}&cert={ca}"));
    assert!(e.ends_with("cert= and key= go together"), "{e}");
    let e = err("syslog+tls://siem?ca=/nonexistent/ca.pem");
    assert_eq!(
        e,
        "--sink syslog+tls://siem:6514: cannot read CA file /nonexistent/ca.pem: No such file or directory (os error 2)"
    );
    let e = err(&format!("syslog+tls://siem?ca={key}"));
    assert!(
        e.ends_with(&format!("CA file {key}: no CERTIFICATE found")),
        "{e}"
    );
    // A key that is not what it claims: the message names the file, not its contents.
    let e = err(&format!("syslog+tls://siem?ca={ca}&cert={ca}&key={key}"));
    assert!(e.contains(&format!("with key {key}")), "{e}");
    assert!(!e.contains("c2VjcmV0") && !e.contains("secret"), "{e}");
    let e = err(&format!("syslog+tls://siem?ca={ca}&cert={ca}&key={ca}"));
    assert!(
        e.contains(&format!("client key {ca}: no private key found")),
        "{e}"
    );
    fs::remove_dir_all(dir).unwrap();
}

// ---- stdout

struct Broken;
impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn stdout_writes_lines() {
    let mut sink = WriterSink {
        name: "stdout".to_owned(),
        out: Vec::new(),
        buf: Vec::new(),
    };
    sink.write_batch(&[
        rec("{\"a\":1}", Severity::Info, "connection", "n"),
        rec("{\"b\":2}", Severity::Error, "loss", "n"),
    ])
    .unwrap();
    sink.write_batch(&[]).unwrap();
    sink.write_batch(&[rec("{\"c\":3}", Severity::Info, "policy", "n")])
        .unwrap();
    assert_eq!(sink.out, b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");

    let mut broken = WriterSink {
        name: "stdout".to_owned(),
        out: Broken,
        buf: Vec::new(),
    };
    assert_eq!(
        failed_write(&mut broken),
        "--sink stdout: cannot write: broken pipe"
    );
    // The real one.
    parse_sink("stdout").unwrap().write_batch(&[]).unwrap();
}

// ---- file

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn numbered_json(i: usize) -> String {
    format!("{{\"seq\":{i:04}}}") // 12 bytes, 13 with the newline
}

#[test]
fn file_appends_lines_and_fsyncs_each_batch() {
    let dir = scratch("append");
    let path = dir.join("events.jsonl");
    let spec = format!("file:{}", path.display());
    let mut sink = file_sink(&spec);
    assert_eq!(sink.dir_syncs, 1, "creating the file fsyncs its directory");
    sink.write_batch(&[
        rec("{\"a\":1}", Severity::Info, "connection", "n"),
        rec("{\"é\":\"€\"}", Severity::Info, "connection", "n"),
    ])
    .unwrap();
    sink.write_batch(&[]).unwrap();
    sink.write_batch(&[rec("{\"b\":2}", Severity::Warning, "socket", "n")])
        .unwrap();
    assert_eq!(sink.syncs, 2, "one fsync per non-empty batch");
    drop(sink);
    // A new sink (collector restart) appends.
    let mut sink = file_sink(&spec);
    assert_eq!(
        sink.dir_syncs, 0,
        "opening an existing file needs no directory fsync"
    );
    sink.write_batch(&[rec("{\"c\":3}", Severity::Info, "policy", "n")])
        .unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "{\"a\":1}\n{\"é\":\"€\"}\n{\"b\":2}\n{\"c\":3}\n"
    );
    assert_eq!(sink.syncs, 1);
    assert_eq!(sink.rotations, 0);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_terminates_a_torn_last_line() {
    let dir = scratch("torn");
    let path = dir.join("events.jsonl");
    fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
    let mut sink = file_sink(&format!("file:{}", path.display()));
    sink.write_batch(&[rec("{\"c\":3}", Severity::Info, "connection", "n")])
        .unwrap();
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "{\"a\":1}\n{\"b\":\n{\"c\":3}\n"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_rotation_keeps_exactly_keep_files_in_order() {
    let dir = scratch("rotate");
    let path = dir.join("events.jsonl");
    // 13-byte lines, 3 per file (39 <= 40 < 52).
    let mut sink = file_sink(&format!("file:{}?max-bytes=40&keep=3", path.display()));
    let all: Vec<String> = (0..20).map(numbered_json).collect();
    // Batches of 1, 2, 3, 4, 5, 5 records: rotation happens inside batches too.
    let mut start = 0;
    for size in [1, 2, 3, 4, 5, 5] {
        sink.write_batch(&connections(&all[start..start + size]))
            .unwrap();
        start += size;
    }
    assert_eq!(start, 20);
    // Files of 3 records: 0-2, 3-5, 6-8, 9-11, 12-14, 15-17, then 18-19 current.
    assert_eq!(lines(&path), all[18..20]);
    assert_eq!(lines(&dir.join("events.jsonl.1")), all[15..18]);
    assert_eq!(lines(&dir.join("events.jsonl.2")), all[12..15]);
    assert_eq!(lines(&dir.join("events.jsonl.3")), all[9..12]);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "events.jsonl",
            "events.jsonl.1",
            "events.jsonl.2",
            "events.jsonl.3"
        ]
    );
    for name in &names {
        assert!(fs::metadata(dir.join(name)).unwrap().len() <= 40, "{name}");
    }
    assert_eq!(sink.rotations, 6);
    // One directory fsync at creation and one per rotation. One file
    // fsync per batch, plus one before each rotation inside a batch
    // (records 9, 12 and 18; those at 3, 6 and 15 start a batch, after
    // the previous batch's fsync).
    assert_eq!(sink.dir_syncs, 7);
    assert_eq!(sink.syncs, 6 + 3);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_rotation_edge_cases() {
    let dir = scratch("rotate-edge");
    let path = dir.join("events.jsonl");
    // A line longer than max-bytes gets a file of its own.
    let mut sink = file_sink(&format!("file:{}?max-bytes=20&keep=2", path.display()));
    let long = format!("{{\"x\":\"{}\"}}", "y".repeat(30));
    sink.write_batch(&[
        rec("{\"a\":1}", Severity::Info, "connection", "n"),
        rec(&long, Severity::Info, "connection", "n"),
        rec("{\"b\":2}", Severity::Info, "connection", "n"),
    ])
    .unwrap();
    assert_eq!(lines(&dir.join("events.jsonl.2")), ["{\"a\":1}"]);
    assert_eq!(lines(&dir.join("events.jsonl.1")), [long.as_str()]);
    assert_eq!(lines(&path), ["{\"b\":2}"]);
    drop(sink);
    // keep=0 drops the full file; max-bytes=0 never rotates.
    let mut sink = file_sink(&format!("file:{}?max-bytes=20&keep=0", path.display()));
    sink.write_batch(&[
        rec("{\"c\":3}", Severity::Info, "connection", "n"),
        rec("{\"d\":4}", Severity::Info, "connection", "n"),
    ])
    .unwrap();
    assert_eq!(lines(&path), ["{\"d\":4}"]);
    assert_eq!(
        lines(&dir.join("events.jsonl.1")),
        [long.as_str()],
        "keep=0 leaves numbered files alone"
    );
    drop(sink);
    let mut sink = file_sink(&format!("file:{}?max-bytes=0", path.display()));
    sink.write_batch(&[
        rec(&long, Severity::Info, "connection", "n"),
        rec(&long, Severity::Info, "connection", "n"),
    ])
    .unwrap();
    assert_eq!(lines(&path).len(), 3);
    assert_eq!(sink.rotations, 0);
    fs::remove_dir_all(dir).unwrap();
}

/// Runs `f` where directory permissions apply: as root, on a thread whose
/// filesystem uid/gid are `nobody` (which drops CAP_DAC_OVERRIDE for
/// that thread), with `dir` owned by `nobody`.
fn without_root<R: Send + 'static>(dir: &Path, f: impl FnOnce() -> R + Send + 'static) -> R {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    std::thread::spawn(move || {
        if root {
            // SAFETY: setfsuid/setfsgid change only this thread's
            // filesystem ids; the thread ends with the closure.
            unsafe {
                libc::setfsgid(65534);
                libc::setfsuid(65534);
            }
        }
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn file_read_only_directory_fails_with_the_path_and_recovers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("readonly");
    let ro = dir.join("logs");
    fs::create_dir(&ro).unwrap();
    let path = ro.join("events.jsonl");
    let all: Vec<String> = (0..6).map(numbered_json).collect();
    let (remaining, first_error, second_error) = without_root(&ro, {
        let (ro, path, all) = (ro.clone(), path.clone(), all.clone());
        move || {
            let set_mode =
                |mode| fs::set_permissions(&ro, fs::Permissions::from_mode(mode)).unwrap();
            let spec = format!("file:{}?max-bytes=40&keep=2", path.display());
            let batch = |r: std::ops::Range<usize>| -> Vec<Record<'_>> { connections(&all[r]) };
            // Cannot even create the file.
            set_mode(0o555);
            let first_error = parse_sink(&spec).err().map(|e| e.to_string());
            set_mode(0o755);
            let mut sink = file_sink(&spec);
            sink.write_batch(&batch(0..2)).unwrap();
            // Rotation (renames) needs a writable directory.
            set_mode(0o555);
            let second_error = sink.write_batch(&batch(2..4)).err().map(|e| e.to_string());
            let still_failing = sink.write_batch(&batch(2..4)).is_err();
            set_mode(0o755);
            sink.write_batch(&batch(2..4)).unwrap();
            sink.write_batch(&batch(4..6)).unwrap();
            (still_failing, first_error, second_error)
        }
    });
    assert!(
        remaining,
        "the sink kept failing while the directory was read-only"
    );
    let first_error = first_error.expect("creating a file in a read-only directory failed");
    assert_eq!(
        first_error,
        format!(
            "--sink file:{}: cannot open {}: Permission denied (os error 13)",
            path.display(),
            path.display()
        )
    );
    let second_error = second_error.expect("rotating in a read-only directory failed");
    assert_eq!(
        second_error,
        format!(
            "--sink file:{p}: cannot rotate: cannot rename {p} to {p}.1: Permission denied (os error 13)",
            p = path.display()
        )
    );
    // Records 0-2 filled the first file (record 2 was written before the
    // failed rotation and again on retry: a duplicate, no loss).
    assert_eq!(lines(&ro.join("events.jsonl.2")), all[0..3]);
    assert_eq!(lines(&ro.join("events.jsonl.1")), all[2..5]);
    assert_eq!(lines(&path), all[5..6]);
    fs::remove_dir_all(dir).unwrap();
}

/// The fsync is real: a FIFO takes the write but cannot be fsynced.
#[test]
fn file_fsync_failure_fails_the_batch() {
    let dir = scratch("fifo");
    let path = dir.join("events.fifo");
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let mut sink = file_sink(&format!("file:{}", path.display()));
    assert_eq!(
        failed_write(&mut sink),
        format!(
            "--sink file:{p}: cannot fsync {p}: Invalid argument (os error 22)",
            p = path.display()
        )
    );
    assert_eq!(sink.syncs, 0);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_write_failure_fails_the_batch() {
    let mut sink = file_sink("file:/dev/full");
    assert_eq!(
        failed_write(&mut sink),
        "--sink file:/dev/full: cannot write to /dev/full: No space left on device (os error 28)"
    );
    assert!(sink.file.is_none(), "reopened on the next batch");
    assert!(
        sink.write_batch(&[rec("{}", Severity::Info, "connection", "n")])
            .is_err()
    );
}

#[test]
fn file_open_errors_name_the_path() {
    let dir = scratch("openerr");
    let missing = dir.join("no-such-dir").join("events.jsonl");
    let e = err(&format!("file:{}", missing.display()));
    assert_eq!(
        e,
        format!(
            "--sink file:{m}: cannot open {m}: No such file or directory (os error 2)",
            m = missing.display()
        )
    );
    let e = err(&format!("file:{}", dir.display()));
    assert!(e.ends_with("Is a directory (os error 21)"), "{e}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn syslog_connect_error_is_clear() {
    let dir = scratch("refused");
    let ca = write_ca(&dir);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = parse_sink(&format!(
        "syslog+tls://127.0.0.1:{port}?ca={}",
        ca.display()
    ))
    .unwrap();
    assert_eq!(
        failed_write(&mut *sink),
        format!(
            "--sink syslog+tls://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}: Connection refused (os error 111)"
        )
    );
    assert!(
        sink.write_batch(&[]).is_ok(),
        "an empty batch needs no connection"
    );
    fs::remove_dir_all(dir).unwrap();
}

/// Writes a self-signed CA certificate to `dir/ca.pem`.
fn write_ca(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let path = dir.join("ca.pem");
    fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}
