//! The one duration syntax of the product (CONTRACT section 4): a whole
//! number and a unit, `500ms`, `5s`, `15m`, `1h`, `30d`, used by the policy
//! (`spec.dns.minTTL`, elevation limits) and the CLI alike.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The units, longest spelling first so `ms` is not read as `m`.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// A duration written in the product's syntax; keeps millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(Duration);

impl Span {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// From whole milliseconds.
    pub const fn from_millis(ms: u64) -> Span {
        Span(Duration::from_millis(ms))
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Span, String> {
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(digits_end);
        let hint = "write a whole number and one unit: `500ms`, `5s`, `15m`, `1h` or `30d`";
        if number.is_empty() {
            return Err(format!("`{s}` is not a duration: {hint}"));
        }
        let Some(&(_, per)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!("`{s}` is not a duration: {hint}"));
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("`{s}` is too large a duration"))?;
        let ms = n
            .checked_mul(per)
            .ok_or_else(|| format!("`{s}` is too large a duration"))?;
        Ok(Span::from_millis(ms))
    }
}

impl fmt::Display for Span {
    /// The largest unit that writes the value exactly (`90s` → `90s`,
    /// `3600s` → `1h`), so a canonical form does not depend on spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        let (unit, per) = UNITS
            .iter()
            .rev()
            .find(|(_, per)| ms.is_multiple_of(*per) && (ms > 0 || *per == 1_000))
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{unit}", ms / per)
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("500ms", 500),
            ("0s", 0),
            ("5s", 5_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("30d", 2_592_000_000),
        ];
        for (s, ms) in cases {
            assert_eq!(s.parse::<Span>(), Ok(Span::from_millis(ms)), "{s}");
        }
    }

    #[test]
    fn refuses_other_spellings() {
        for s in [
            "", "5", "s", "1.5s", "-1s", "5 s", "5sec", "1h30m", "5S", "1w", " 5s",
        ] {
            let e = s.parse::<Span>().expect_err(s);
            assert!(e.contains("not a duration"), "{s:?}: {e}");
        }
        let e = "99999999999999999999d".parse::<Span>().expect_err("huge");
        assert!(e.contains("too large"), "{e}");
        let e = "999999999999999999d".parse::<Span>().expect_err("overflow");
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        let cases = [
            (0, "0s"),
            (500, "500ms"),
            (1_500, "1500ms"),
            (90_000, "90s"),
            (3_600_000, "1h"),
            (86_400_000, "1d"),
        ];
        for (ms, s) in cases {
            let span = Span::from_millis(ms);
            assert_eq!(span.to_string(), s);
            assert_eq!(s.parse::<Span>(), Ok(span));
        }
    }
}
