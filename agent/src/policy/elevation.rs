//! Whether a time-boxed tier elevation may be granted under a policy
//! (`spec.elevation`), and the one-sentence refusal when it may not. The
//! grant store asks this when a grant is made and again when a new policy
//! comes into force.

use std::time::Duration;

use super::model::{Elevation, Policy};
use crate::duration::Span;

impl Policy {
    /// The `maxDuration` of the elevation from tier `from` to tier `to`
    /// (indexes into `tiers`) when a grant of `duration` fits it; otherwise
    /// why not, in one sentence naming the policy and what it allows.
    pub fn elevation_allowed(
        &self,
        from: usize,
        to: usize,
        duration: Duration,
    ) -> Result<Span, String> {
        let (a, b) = (self.tier_label(from), self.tier_label(to));
        if from == to {
            return Err(format!(
                "the workload is already in tier `{a}`; an elevation moves it to another tier"
            ));
        }
        let Some(e) = self.elevation.iter().find(|e| e.from == from && e.to == to) else {
            return Err(format!(
                "no elevation from `{a}` to `{b}` in policy {}: {}",
                self.name,
                self.allowed_elevations()
            ));
        };
        let asked = span_up(duration);
        if asked == Span::default() {
            return Err("a grant of 0s would end as it starts; ask for a positive duration".into());
        }
        if duration > e.max_duration.get() {
            return Err(format!(
                "{asked} exceeds the maximum of {} for {a}→{b} in policy {}",
                e.max_duration, self.name
            ));
        }
        Ok(e.max_duration)
    }

    /// `a→b (max 1h)`: one elevation as operators read it.
    pub fn describe_elevation(&self, e: &Elevation) -> String {
        format!(
            "{}→{} (max {})",
            self.tier_label(e.from),
            self.tier_label(e.to),
            e.max_duration
        )
    }

    /// `allowed are a→b (max 1h), b→c (max 10m)`, or that none are.
    fn allowed_elevations(&self) -> String {
        if self.elevation.is_empty() {
            return "it allows no elevation (spec.elevation is empty)".into();
        }
        let all: Vec<String> = self
            .elevation
            .iter()
            .map(|e| self.describe_elevation(e))
            .collect();
        format!("allowed are {}", all.join(", "))
    }

    /// A tier's name; an index out of range (a caller's bug) still gives a
    /// readable message rather than a panic.
    fn tier_label(&self, i: usize) -> String {
        self.tiers
            .get(i)
            .map_or_else(|| format!("#{i}"), |t| t.name.clone())
    }
}

/// `d` in whole milliseconds, rounded up so that a duration just over a
/// limit never prints as the limit itself.
fn span_up(d: Duration) -> Span {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    Span::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::duration::Span;
    use crate::policy::testing::with_spec;

    const SPEC: &str = "spec:
  defaultTier: a
  tiers: [{name: a}, {name: b}, {name: c}]
  elevation:
    - {from: a, to: b, maxDuration: 1h}
    - {from: b, to: c, maxDuration: 10m}
";

    fn mins(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn a_listed_elevation_within_its_maximum_is_allowed() {
        let p = with_spec(SPEC);
        assert_eq!(
            p.elevation_allowed(0, 1, mins(60)),
            Ok(Span::from_millis(3_600_000))
        );
        assert_eq!(
            p.elevation_allowed(1, 2, mins(1)),
            Ok(Span::from_millis(600_000))
        );
    }

    #[test]
    fn refusals_say_why_in_one_sentence() {
        let p = with_spec(SPEC);
        let cases = [
            (
                (0, 2, mins(5)),
                "no elevation from `a` to `c` in policy p: allowed are a→b (max 1h), b→c (max 10m)",
            ),
            (
                (1, 0, mins(5)),
                "no elevation from `b` to `a` in policy p: allowed are a→b (max 1h), b→c (max 10m)",
            ),
            (
                (1, 2, mins(15)),
                "15m exceeds the maximum of 10m for b→c in policy p",
            ),
            (
                (1, 2, mins(10) + Duration::from_micros(1)),
                "600001ms exceeds the maximum of 10m for b→c in policy p",
            ),
            (
                (0, 1, Duration::ZERO),
                "a grant of 0s would end as it starts",
            ),
            ((0, 0, mins(1)), "the workload is already in tier `a`"),
            ((0, 9, mins(1)), "no elevation from `a` to `#9`"),
        ];
        for ((from, to, d), want) in cases {
            let got = p.elevation_allowed(from, to, d).expect_err(want);
            assert!(got.starts_with(want), "{from}→{to} {d:?}: {got}");
        }
    }

    #[test]
    fn a_policy_without_elevations_says_so() {
        let p = with_spec("spec:\n  defaultTier: a\n  tiers: [{name: a}, {name: b}]\n");
        assert_eq!(
            p.elevation_allowed(0, 1, mins(1)),
            Err("no elevation from `a` to `b` in policy p: it allows no elevation (spec.elevation is empty)".into())
        );
    }
}
