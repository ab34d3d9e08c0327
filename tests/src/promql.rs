//! Metric names in PromQL expressions (Grafana panels, alert rules) and in a
//! Prometheus/OpenMetrics exposition, so a test can check that dashboards
//! and alerts name only series the binaries really export.

use std::collections::BTreeSet;

/// Words that are PromQL syntax, not metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
];
/// Keywords followed by a parenthesized list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names an expression selects. Grafana variables (`$x`,
/// `${x}`, `$__rate_interval`) are skipped; `label_values(EXPR, label)`
/// (a Grafana variable query) yields EXPR's names. Unbalanced brackets or
/// an unterminated string are errors.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let trimmed = expr.trim();
    if let Some(args) = trimmed
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match args.rsplit_once(',') {
            Some((inner, _label)) => metric_names(inner),
            None => Ok(BTreeSet::new()), // label_values(label): no metric
        };
    }
    let b: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut depth = 0i32;
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < b.len() {
        let c = b[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&b, i)?,
            '{' => i = skip_to(&b, i, '}')?,
            '[' => i = skip_to(&b, i, ']')?,
            '(' => {
                depth += 1;
                i += 1;
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced ')' at {i} in {expr:?}"));
                }
                i += 1;
            }
            '}' | ']' => return Err(format!("unbalanced '{c}' at {i} in {expr:?}")),
            '$' => {
                i += 1;
                if b.get(i) == Some(&'{') {
                    i = skip_to(&b, i, '}')?;
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < b.len() && (ident(b[i]) || b[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word: String = b[start..i].iter().collect();
                let mut j = i;
                while j < b.len() && b[j].is_whitespace() {
                    j += 1;
                }
                let next: String = b[j..].iter().take_while(|c| ident(**c)).collect();
                // `sum(...)`, and `sum by (x) (...)`: the aggregation's modifier first.
                let call = b.get(j) == Some(&'(') || next == "by" || next == "without";
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = skip_to(&b, j, ')')?;
                    }
                } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {expr:?}"));
    }
    Ok(names)
}

/// Index after the closing quote of the string starting at `i`.
fn skip_string(b: &[char], i: usize) -> Result<usize, String> {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == '\\' && q != '`' {
            j += 2;
            continue;
        }
        if b[j] == q {
            return Ok(j + 1);
        }
        j += 1;
    }
    Err(format!("unterminated string at {i}"))
}

/// Index after the `close` matching the opener at `i` (strings inside skipped).
fn skip_to(b: &[char], i: usize, close: char) -> Result<usize, String> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            '"' | '\'' | '`' => j = skip_string(b, j)?,
            c if c == close => return Ok(j + 1),
            _ => j += 1,
        }
    }
    Err(format!("no '{close}' closes '{}' at {i}", b[i]))
}

/// The series names an exposition makes queryable, as Prometheus stores
/// them: every sample's name, and for each `# TYPE` line the names of its
/// type (a counter `x` is `x_total`; a histogram `x_bucket`, `x_sum`,
/// `x_count`; ...) whether or not the family has samples yet.
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                // Prometheus' text format already names counters `x_total`.
                if *s == "_total" && name.ends_with("_total") {
                    names.insert(name.to_string());
                } else {
                    names.insert(format!("{name}{s}"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &str) -> Vec<String> {
        metric_names(e).unwrap().into_iter().collect()
    }

    #[test]
    fn selects_metrics_not_functions_labels_or_variables() {
        assert_eq!(
            names(
                r#"sum by (tier, verdict) (rate(tiergate_events_total{kind="connection", instance=~"$instance"}[$__rate_interval]))"#
            ),
            ["tiergate_events_total"]
        );
        assert_eq!(
            names(
                "sum(rate(a_total[5m])) by (x) / on (pod) group_left(node) b > 0 and c unless d offset 5m"
            ),
            ["a_total", "b", "c", "d"]
        );
        assert_eq!(
            names(r#"up{job="x", s="a}b"} == 0 or tiergate_ready == bool 0"#),
            ["tiergate_ready", "up"]
        );
        assert_eq!(
            names("histogram_quantile(0.99, sum by (le) (rate(lat_bucket[${__rate_interval}])))"),
            ["lat_bucket"]
        );
        assert_eq!(
            names("tiergate_spool_bytes > 8.05e8"),
            ["tiergate_spool_bytes"]
        );
        assert_eq!(
            names("label_values(tiergate_ready{x=\"a,b\"}, instance)"),
            ["tiergate_ready"]
        );
        assert!(names("label_values(instance)").is_empty());
        assert!(metric_names("sum(rate(x[5m])").is_err());
        assert!(metric_names("x{a=\"b}").is_err());
    }

    #[test]
    fn exported_names_by_type() {
        let text = "# HELP a A.\n# TYPE a counter\na_total 1\n# TYPE b gauge\n\
                    # TYPE c histogram\n# TYPE d counter\nd_total{x=\"y\"} 2\n# EOF\n";
        let n: Vec<String> = exported_names(text).into_iter().collect();
        assert_eq!(
            n,
            ["a_total", "b", "c_bucket", "c_count", "c_sum", "d_total"]
        );
    }
}
