//! `--only`: the document's sections that were not run keep their text (and
//! their rows of the targets table) from the document already written.

/// The section (`--only` name) whose run writes each `## ` block; blocks in
/// the order the report renders them.
const BLOCKS: &[(&str, &str)] = &[
    ("## 1.", "connect"),
    ("## 2.", "events"),
    ("## 3.", "reload"),
    // Start times and RSS come from the connect path's agent.
    ("## 4.", "connect"),
    ("## 5.", "dns"),
    ("## 6.", "metadata"),
    ("## Targets", "targets"),
    ("## Where the remaining gap", "connect"),
    ("## Notes", "notes"),
];

/// Rows and notes about DNS (metadata) start with this; the rest belong to
/// sections 1–4.
const DNS_ROW: &str = "| DNS";
const DNS_NOTE: &str = "- DNS";
const MD_ROW: &str = "| Metadata";
const MD_NOTE: &str = "- Metadata";
/// The note a partial run leaves (replaced by the next partial run).
pub(crate) const PARTIAL: &str = "Partial run";

/// `(heading prefix, text)` of each block; the header's prefix is "".
fn blocks(doc: &str) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = vec![("", String::new())];
    for line in doc.split_inclusive('\n') {
        if line.starts_with("## ")
            && let Some((p, _)) = BLOCKS.iter().find(|(p, _)| line.starts_with(p))
        {
            out.push((p, String::new()));
        }
        out.last_mut().expect("header").1.push_str(line);
    }
    out
}

fn find<'a>(b: &'a [(&'static str, String)], prefix: &str) -> Option<&'a String> {
    b.iter().find(|(p, _)| *p == prefix).map(|(_, t)| t)
}

/// Lines of `block` starting with `start` for which `keep` holds.
fn lines_where(block: Option<&String>, start: &str, keep: impl Fn(&str) -> bool) -> String {
    block
        .map(|t| {
            t.split_inclusive('\n')
                .filter(|l| l.starts_with(start) && keep(l))
                .collect()
        })
        .unwrap_or_default()
}

/// The document after a run of the sections `ran`: their blocks from `new`,
/// the others' from `old`.
pub(crate) fn merge(old: &str, new: &str, ran: &[String]) -> String {
    let ran = |s: &str| ran.iter().any(|r| r == s);
    let others_ran = ran("connect") || ran("events") || ran("reload");
    let (old, new) = (blocks(old), blocks(new));
    let mut doc = find(&old, "").unwrap_or_else(|| &new[0].1).clone();
    for (prefix, owner) in BLOCKS {
        let (o, n) = (find(&old, prefix), find(&new, prefix));
        let text = match *owner {
            "targets" => {
                // The table's head from this run; each row from the run of its section.
                let Some(t) = n.or(o) else { continue };
                let mut head = String::new();
                for l in t.split_inclusive('\n') {
                    head.push_str(l);
                    if l.starts_with("|---") {
                        break;
                    }
                }
                let pick = |mine: bool| if mine { n } else { o };
                let row = |l: &str| {
                    !l.starts_with("| target") && !l.starts_with(DNS_ROW) && !l.starts_with(MD_ROW)
                };
                // Rows of a section this run did not measure (connect,
                // events and reload share the table) read NaN or inf:
                // those keep the row already written for that target.
                let unmeasured = |l: &str| l.contains("NaN") || l.contains("inf×");
                let target = |l: &str| l.split('|').nth(1).map(str::trim).map(str::to_string);
                let old_rows = lines_where(o, "| ", row);
                let rest: String = lines_where(pick(others_ran), "| ", row)
                    .split_inclusive('\n')
                    .map(|l| {
                        let kept = unmeasured(l)
                            .then(|| {
                                old_rows
                                    .split_inclusive('\n')
                                    .find(|o| target(o) == target(l))
                            })
                            .flatten();
                        kept.unwrap_or(l).to_string()
                    })
                    .collect();
                let dns = lines_where(pick(ran("dns")), DNS_ROW, |_| true);
                let md = lines_where(pick(ran("metadata")), MD_ROW, |_| true);
                format!("{head}{rest}{dns}{md}\n")
            }
            "notes" => {
                let keep_old = |l: &str| {
                    !l.contains(PARTIAL)
                        && if l.starts_with(DNS_NOTE) {
                            !ran("dns")
                        } else if l.starts_with(MD_NOTE) {
                            !ran("metadata")
                        } else {
                            !others_ran
                        }
                };
                let lines = lines_where(o, "- ", keep_old) + &lines_where(n, "- ", |_| true);
                if lines.is_empty() {
                    continue;
                }
                format!("## Notes from the run\n\n{lines}")
            }
            s if ran(s) => match n {
                Some(t) => t.clone(),
                None => continue,
            },
            _ => match o.or(n) {
                Some(t) => t.clone(),
                None => continue,
            },
        };
        if !doc.ends_with("\n\n") {
            doc.push('\n');
        }
        doc.push_str(&text);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "# t\n\nold header\n\n## 1. Connect\n\nold one\n\n## 4. Footprint\n\nold four\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | 1.0 | met |\n\n## Notes from the run\n\n- old connect note\n";
    const NEW: &str = "# t\n\nnew header\n\n## 1. Connect\n\nn/a\n\n## 4. Footprint\n\nn/a\n\n## 5. DNS names\n\nnew five\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | NaN | **missed** |\n| DNS rate | 0.8 | **missed** |\n\n## Notes from the run\n\n- DNS: a note\n- Partial run: dns\n";

    #[test]
    fn a_dns_run_keeps_the_other_sections_and_their_targets() {
        let m = merge(OLD, NEW, &["dns".into()]);
        assert_eq!(
            m,
            "# t\n\nold header\n\n## 1. Connect\n\nold one\n\n## 4. Footprint\n\nold four\n\n## 5. DNS names\n\nnew five\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | 1.0 | met |\n| DNS rate | 0.8 | **missed** |\n\n## Notes from the run\n\n- old connect note\n- DNS: a note\n- Partial run: dns\n"
        );
        // Run again: the DNS block, rows and notes are replaced, not repeated.
        assert_eq!(merge(&m, NEW, &["dns".into()]), m);
    }

    #[test]
    fn an_events_run_keeps_the_rows_it_did_not_measure() {
        let old = "# t\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | 1.0 | met |\n| nft | 7.2× | met |\n| events | 150000/s | met |\n";
        let new = "# t\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | allow NaN | **missed** |\n| nft | inf× | met |\n| events | 140000/s | met |\n| store | 0.85× | **missed** |\n";
        let m = merge(old, new, &["events".into()]);
        assert!(
            m.contains("| TCP | 1.0 | met |\n| nft | 7.2× | met |\n| events | 140000/s | met |\n| store | 0.85× | **missed** |\n"),
            "{m}"
        );
    }

    #[test]
    fn a_connect_run_keeps_the_dns_section() {
        let m = merge(NEW, OLD, &["connect".into()]);
        assert!(m.contains("old one") && m.contains("new five") && m.contains("old four"));
        assert!(m.contains("| TCP | 1.0 | met |\n| DNS rate | 0.8"));
        assert!(!m.contains("Partial run") && m.contains("- DNS: a note\n- old connect note"));
    }

    const MD: &str = "# t\n\nmd header\n\n## 1. Connect\n\nn/a\n\n## 6. Metadata requests\n\nnew six\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | NaN | **missed** |\n| Metadata p99 | +300 µs | met |\n\n## Notes from the run\n\n- Partial run: metadata\n";

    #[test]
    fn a_metadata_run_keeps_the_dns_section_and_its_targets() {
        let dns = merge(OLD, NEW, &["dns".into()]);
        let m = merge(&dns, MD, &["metadata".into()]);
        assert_eq!(
            m,
            "# t\n\nold header\n\n## 1. Connect\n\nold one\n\n## 4. Footprint\n\nold four\n\n## 5. DNS names\n\nnew five\n\n## 6. Metadata requests\n\nnew six\n\n## Targets\n\n| target | measured | |\n|---|---|---|\n| TCP | 1.0 | met |\n| DNS rate | 0.8 | **missed** |\n| Metadata p99 | +300 µs | met |\n\n## Notes from the run\n\n- old connect note\n- DNS: a note\n- Partial run: metadata\n"
        );
        assert_eq!(merge(&m, MD, &["metadata".into()]), m);
        // A later DNS run keeps the metadata section and row.
        let d = merge(&m, NEW, &["dns".into()]);
        assert!(
            d.contains("new six") && d.contains("| DNS rate | 0.8 | **missed** |\n| Metadata p99")
        );
    }
}
