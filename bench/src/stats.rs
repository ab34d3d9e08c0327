//! Median, percentiles and min–max of a set of samples, as the report prints them.

pub(crate) struct Stats {
    pub(crate) v: Vec<f64>,
}

impl Stats {
    pub(crate) fn new(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        v.sort_by(|a, b| a.total_cmp(b));
        Stats { v }
    }
    pub(crate) fn median(&self) -> f64 {
        let n = self.v.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            self.v[n / 2]
        } else {
            (self.v[n / 2 - 1] + self.v[n / 2]) / 2.0
        }
    }
    /// The `p`-th percentile (nearest rank; `p` in 0..=100).
    pub(crate) fn pct(&self, p: f64) -> f64 {
        if self.v.is_empty() {
            return f64::NAN;
        }
        let rank = (p / 100.0 * self.v.len() as f64).ceil() as usize;
        self.v[rank.clamp(1, self.v.len()) - 1]
    }
    pub(crate) fn fmt(&self, scale: f64, prec: usize) -> String {
        if self.v.is_empty() {
            return "n/a".into();
        }
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median() / scale,
            self.v[0] / scale,
            self.v[self.v.len() - 1] / scale,
            p = prec
        )
    }
}
