//! A scanner for records as agents write them.
//!
//! serde_json reads a struct by reading every key of every object it fills
//! and comparing it with the field names: for a record of about a kilobyte
//! that is most of the store's cost. This scanner reads the fields of
//! [`Rec`] straight from the line and only checks that the rest is JSON
//! (strings, numbers, literals, nesting), without reading keys it will not
//! use.
//!
//! It answers only where serde_json would answer the same, and declines
//! (`None`: serde_json reads the line) wherever it might not: a line that is
//! not UTF-8, an escaped key or wanted string, a wanted field of another
//! type than agents write (an array for a struct, a float for an integer,
//! a number out of range), a wanted field given twice, nesting deeper than
//! [`MAX_DEPTH`], anything that is not JSON. So a record is read the same
//! whichever reads it; the tests compare the two on mutated records.

use std::borrow::Cow;
use std::ops::Range;

use super::record::{
    ConnInfo, Device, Endpoint, Policy, Query, Rec, Rule, Text, Tiergate, Unmapped, Workload,
};
use super::shape::{DIGIT, LEAD, Shape, TEXT, int_value};

/// Nesting the scanner follows; serde_json's own limit is 128.
const MAX_DEPTH: usize = 64;

/// Reads a record as agents write it; `None`: leave it to serde_json.
pub(super) fn read(line: &[u8]) -> Option<Rec<'_>> {
    Scanner::new(line, std::str::from_utf8(line).ok()?, None)
        .read()
        .0
}

/// [`read`], and the line's [`Shape`] into `shape` (made anew; not valid
/// when the scanner declines the line).
pub(super) fn read_shaped<'a>(line: &'a [u8], shape: &mut Shape) -> Option<Rec<'a>> {
    shape.start(line.len());
    let text = std::str::from_utf8(line).ok()?;
    let (rec, back) = Scanner::new(line, text, Some(std::mem::take(shape))).read();
    *shape = back.expect("the scanner gives its shape back");
    shape.valid = rec.is_some();
    rec
}

struct Scanner<'a> {
    b: &'a [u8],
    /// The same bytes, known to be UTF-8.
    s: &'a str,
    i: usize,
    /// The shape being made, when asked for.
    shape: Option<Shape>,
}

/// Bytes that end the plain run of a JSON string: the closing quote, an
/// escape, or a control character (not allowed in a string).
static STOPS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

impl<'a> Scanner<'a> {
    /// A scanner of `line`, which is `text` (UTF-8).
    fn new(line: &'a [u8], text: &'a str, shape: Option<Shape>) -> Self {
        Scanner {
            b: line,
            s: text,
            i: 0,
            shape,
        }
    }

    /// The record, if the whole line is one; and the shape back.
    fn read(mut self) -> (Option<Rec<'a>>, Option<Shape>) {
        let rec = self.rec().filter(|_| {
            self.ws();
            self.i == self.b.len()
        });
        (rec, self.shape)
    }

    /// Marks how the bytes of `range` may differ in a line of this shape.
    fn mark(&mut self, range: Range<usize>, class: u8) {
        if let Some(shape) = &mut self.shape {
            shape.classes[range].fill(class);
        }
    }

    /// Marks the digits `range` of an integer part (no leading zero).
    fn mark_int(&mut self, range: Range<usize>) {
        if range.len() > 1 {
            self.mark(range.start..range.start + 1, LEAD);
            self.mark(range.start + 1..range.end, DIGIT);
        } else {
            self.mark(range, DIGIT);
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Moves to the next byte that ends a plain run of a string (a quote,
    /// a backslash or a control character), eight bytes at a time.
    fn find_stop(&mut self) -> Option<u8> {
        const ONES: u64 = u64::from_ne_bytes([1; 8]);
        const HIGH: u64 = ONES << 7;
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            // The lowest marked byte is the first that is below 0x20 or
            // equal to either (a lane borrows only above such a byte).
            let below = v.wrapping_sub(ONES * 0x20);
            let quote = (v ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES);
            let backslash = (v ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES);
            let marked = (below | quote | backslash) & !v & HIGH;
            if marked != 0 {
                self.i += (marked.trailing_zeros() / 8) as usize;
                return Some(self.b[self.i]);
            }
            self.i += 8;
        }
        let rest = &self.b[self.i..];
        let n = rest.iter().position(|&c| STOPS[c as usize])?;
        self.i += n;
        Some(rest[n])
    }

    /// A string without escapes, borrowed from the line.
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        if self.find_stop()? != b'"' {
            return None;
        }
        self.i += 1;
        // Both ends are next to an ASCII quote: char boundaries.
        self.s.get(start..self.i - 1)
    }

    /// Skips the rest of a string whose opening quote was taken.
    fn skip_str(&mut self) -> Option<()> {
        loop {
            let run = self.i;
            let stop = self.find_stop()?;
            self.mark(run..self.i, TEXT);
            self.i += 1;
            match stop {
                b'"' => return Some(()),
                b'\\' => match *self.b.get(self.i)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                    b'u' => {
                        let hex = self.b.get(self.i + 1..self.i + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.i += 5;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// Skips digits; where they were.
    fn digits(&mut self) -> Range<usize> {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        start..self.i
    }

    /// Skips a number, as JSON writes them.
    fn skip_number(&mut self) -> Option<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let int = self.digits();
        if int.is_empty() || (int.len() > 1 && self.b[int.start] == b'0') {
            return None;
        }
        self.mark_int(int);
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            let frac = self.digits();
            if frac.is_empty() {
                return None;
            }
            self.mark(frac, DIGIT);
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            let exp = self.digits();
            if exp.is_empty() {
                return None;
            }
            self.mark(exp, DIGIT);
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    /// Skips any value at nesting `depth`.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.skip_str()
            }
            open @ (b'{' | b'[') => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                if self.peek()? == close {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.eat(b'"')?;
                        self.skip_str()?;
                        self.eat(b':')?;
                    }
                    self.skip(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        c if c == close => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// `null` (None), or what `f` reads.
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        f(self).map(Some)
    }

    fn text(&mut self, slot: &mut Option<Text<'a>>) -> Option<()> {
        *slot = self.opt(|s| s.str().map(|v| Text(Cow::Borrowed(v))))?;
        Some(())
    }

    /// An unsigned integer that fits `T`, written as an integer.
    fn uint<T: TryFrom<u64>>(&mut self, slot: &mut Option<T>) -> Option<()> {
        *slot = match self.opt(Self::digits_value)? {
            Some((v, _)) => Some(T::try_from(v).ok()?),
            None => None,
        };
        Some(())
    }

    /// [`Self::uint`] for a value that may differ in a line of this shape
    /// (`time`, `count`): its digits are marked and `at` says where.
    fn value(
        &mut self,
        slot: &mut Option<u64>,
        at: fn(&mut Shape) -> &mut Option<Range<usize>>,
    ) -> Option<()> {
        *slot = match self.opt(Self::digits_value)? {
            Some((v, range)) => {
                self.mark_int(range.clone());
                if let Some(shape) = &mut self.shape {
                    *at(shape) = Some(range);
                }
                Some(v)
            }
            None => None,
        };
        Some(())
    }

    /// An integer of at most 19 digits (always a u64), not a float.
    fn digits_value(&mut self) -> Option<(u64, Range<usize>)> {
        let range = self.digits();
        let digits = &self.b[range.clone()];
        // A leading 0 is not JSON.
        if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.b.get(self.i) {
            return None;
        }
        Some((int_value(digits), range))
    }

    /// Reads field number `bit` of an object into `slot` with `read`.
    /// serde refuses a field given twice, so the scanner declines it.
    fn field<V>(
        &mut self,
        seen: &mut u32,
        bit: u32,
        slot: &mut Option<V>,
        read: impl FnOnce(&mut Self, &mut Option<V>) -> Option<()>,
    ) -> Option<()> {
        if *seen & (1 << bit) != 0 {
            return None;
        }
        *seen |= 1 << bit;
        read(self, slot)
    }

    /// `null` or an object at nesting `depth`, read into `slot` in place;
    /// `field` is given each key (the scanner at its value) and reads or
    /// skips the value.
    fn object<T: Default>(
        &mut self,
        depth: usize,
        slot: &mut Option<T>,
        mut field: impl FnMut(&mut Self, &mut T, &'a str, &mut u32) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null");
        }
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        let out = slot.insert(T::default());
        let mut seen = 0;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.str()?;
            self.eat(b':')?;
            field(self, out, key, &mut seen)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The record: an object (serde refuses null for a struct).
    fn rec(&mut self) -> Option<Rec<'a>> {
        let mut rec = None;
        self.object(0, &mut rec, |s, r: &mut Rec<'a>, key, seen| match key {
            "class_uid" => s.field(seen, 0, &mut r.class_uid, Self::uint),
            "time" => s.field(seen, 1, &mut r.time, |s, slot| {
                s.value(slot, |sh| &mut sh.time)
            }),
            "count" => s.field(seen, 2, &mut r.count, |s, slot| {
                s.value(slot, |sh| &mut sh.count)
            }),
            "connection_info" => s.field(seen, 3, &mut r.connection_info, |s, slot| {
                s.object(1, slot, |s, c: &mut ConnInfo<'a>, k, seen| match k {
                    "protocol_name" => s.field(seen, 0, &mut c.protocol_name, Self::text),
                    _ => s.skip(2),
                })
            }),
            "dst_endpoint" => s.field(seen, 4, &mut r.dst_endpoint, |s, slot| {
                s.object(1, slot, |s, e: &mut Endpoint<'a>, k, seen| match k {
                    "ip" => s.field(seen, 0, &mut e.ip, Self::text),
                    "port" => s.field(seen, 1, &mut e.port, Self::uint),
                    _ => s.skip(2),
                })
            }),
            "device" => s.field(seen, 5, &mut r.device, |s, slot| {
                s.object(1, slot, |s, d: &mut Device<'a>, k, seen| match k {
                    "hostname" => s.field(seen, 0, &mut d.hostname, Self::text),
                    _ => s.skip(2),
                })
            }),
            "query" => s.field(seen, 6, &mut r.query, |s, slot| {
                s.object(1, slot, |s, q: &mut Query<'a>, k, seen| match k {
                    "hostname" => s.field(seen, 0, &mut q.hostname, Self::text),
                    _ => s.skip(2),
                })
            }),
            "unmapped" => s.field(seen, 7, &mut r.unmapped, |s, slot| {
                s.object(1, slot, |s, u: &mut Unmapped<'a>, k, seen| match k {
                    "tiergate" => s.field(seen, 0, &mut u.tiergate, Self::tiergate),
                    _ => s.skip(2),
                })
            }),
            _ => s.skip(1),
        })?;
        rec
    }

    /// `unmapped.tiergate`, at nesting 2.
    fn tiergate(&mut self, slot: &mut Option<Tiergate<'a>>) -> Option<()> {
        const D: usize = 2;
        self.object(D, slot, |s, t: &mut Tiergate<'a>, k, seen| match k {
            "kind" => s.field(seen, 0, &mut t.kind, Self::text),
            "action" => s.field(seen, 1, &mut t.action, Self::text),
            "verdict" => s.field(seen, 2, &mut t.verdict, Self::text),
            "tier" => s.field(seen, 3, &mut t.tier, Self::text),
            "fqdn" => s.field(seen, 4, &mut t.fqdn, Self::text),
            "rule" => s.field(seen, 5, &mut t.rule, |s, slot| {
                s.object(D + 1, slot, |s, r: &mut Rule<'a>, k, seen| match k {
                    "uid" => s.field(seen, 0, &mut r.uid, Self::text),
                    _ => s.skip(D + 2),
                })
            }),
            "policy" => s.field(seen, 6, &mut t.policy, |s, slot| {
                s.object(D + 1, slot, |s, p: &mut Policy<'a>, k, seen| match k {
                    "name" => s.field(seen, 0, &mut p.name, Self::text),
                    "version" => s.field(seen, 1, &mut p.version, Self::text),
                    _ => s.skip(D + 2),
                })
            }),
            "workload" => s.field(seen, 7, &mut t.workload, |s, slot| {
                s.object(D + 1, slot, |s, w: &mut Workload<'a>, k, seen| match k {
                    "spiffe_id" => s.field(seen, 0, &mut w.spiffe_id, Self::text),
                    "namespace" => s.field(seen, 1, &mut w.namespace, Self::text),
                    "service_account" => s.field(seen, 2, &mut w.service_account, Self::text),
                    "systemd_unit" => s.field(seen, 3, &mut w.systemd_unit, Self::text),
                    "cgroup_path" => s.field(seen, 4, &mut w.cgroup_path, Self::text),
                    // A string (a pod's label); anything else to serde_json.
                    "owner" => s.field(seen, 5, &mut w.owner, |s, slot| {
                        *slot = s.opt(|s| s.str().map(|v| serde_json::Value::String(v.into())))?;
                        Some(())
                    }),
                    _ => s.skip(D + 2),
                })
            }),
            // Policy records' rules: left to serde_json (null aside).
            "rules" => s.field(seen, 8, &mut t.rules, |s, slot| {
                *slot = s.opt(|_| None)?;
                Some(())
            }),
            _ => s.skip(D + 1),
        })
    }
}

#[cfg(test)]
mod tests;
