//! Writing JSON by hand where a record's shape is fixed and rendering is
//! on the event path's hot loop (connection records, one per attempt):
//! keys and constant values are copied as prepared fragments, numbers are
//! formatted by `itoa`, and a string goes through serde_json's escaping only
//! when it has a byte that needs it. The output is byte for byte what
//! serde_json writes for the same value (compact form); the renderers that
//! use this are tested against a serde reference.

use serde::Serialize;

/// Appends a prepared fragment (keys, punctuation, constant values).
#[inline]
pub fn raw(out: &mut Vec<u8>, fragment: &str) {
    out.extend_from_slice(fragment.as_bytes());
}

/// Appends an unsigned integer.
#[inline]
pub fn num(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `true` or `false`.
#[inline]
pub fn boolean(out: &mut Vec<u8>, b: bool) {
    raw(out, if b { "true" } else { "false" });
}

/// Whether serde_json would escape a byte of `s`: control characters, the
/// quote and the backslash (everything else, non-ASCII included, is
/// written as it is). Branch-free over the bytes, so it vectorizes.
#[inline]
pub fn needs_escape(s: &str) -> bool {
    s.bytes().fold(false, |acc, b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends a JSON string.
#[inline]
pub fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        value(out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Appends a JSON string, or `null`.
#[inline]
pub fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => raw(out, "null"),
    }
}

/// Appends `,"key":"value"` when `s` is set (serde's `skip_serializing_if
/// = "Option::is_none"`); `field` is the prepared `,"key":`.
#[inline]
pub fn some_string(out: &mut Vec<u8>, field: &str, s: Option<&str>) {
    if let Some(s) = s {
        raw(out, field);
        string(out, s);
    }
}

/// Appends any value through serde_json (the parts that are rare or
/// nested deeply enough not to matter).
pub fn value<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("serializing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in [
            "",
            "plain",
            "spiffe://corp.example/ns/agents/sa/retriever",
            "quote \" inside",
            "back\\slash",
            "new\nline and tab\t",
            "\u{1}\u{1f}",
            "del \u{7f} stays",
            "ünïcödé ✓ 中文",
            "</script>",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        let mut out = Vec::new();
        opt_string(&mut out, None);
        num(&mut out, u64::MAX);
        boolean(&mut out, false);
        some_string(&mut out, ",\"k\":", None);
        some_string(&mut out, ",\"k\":", Some("v"));
        assert_eq!(out, b"null18446744073709551615false,\"k\":\"v\"");
    }
}
