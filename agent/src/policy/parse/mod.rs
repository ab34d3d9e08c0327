//! Policy file parsing and validation.
//!
//! The YAML is loaded into a position-marked tree ([`super::yaml`], on
//! saphyr-parser; every node keeps its source position) and then walked by hand, so that every problem in the file is
//! reported at once, each as `FILE:LINE:COL: key.path: what is wrong and what
//! to write instead`. Positions are 1-based; the column points at the
//! offending key or value.
//!
//! The walk follows the document, one file per part: `document` (apiVersion,
//! kind, metadata) hands `spec` to `spec`, which reads its own keys and hands
//! its lists to `tiers` (each tier's `egress` list to `egress`) and
//! `bindings`, `spec.dns` to `dns` and `spec.elevation` to `elevation`; a tier's `metadata` goes to
//! `metadata`. `fields` holds the typed readers every part uses, `walker` the
//! error collection they all report to.

use std::path::Path;

use super::model::Policy;
use super::yaml::{self, Node};
use walker::Walker;

mod bindings;
mod dns;
mod document;
mod egress;
mod elevation;
mod errors;
mod fields;
mod metadata;
mod spec;
mod tiers;
mod walker;

pub use errors::{PolicyError, PolicyErrors};

/// Reads and validates the policy file at `path`. Unreadable files and
/// non-UTF-8 content are reported like any other error (at 1:1).
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    parse_str(&read(path)?, &path.display().to_string())
}

/// The policy file's text; an unreadable or non-UTF-8 file is an error at 1:1.
pub fn read(path: &Path) -> Result<String, PolicyErrors> {
    let whole_file = |message: String| PolicyErrors {
        errors: vec![PolicyError {
            file: path.display().to_string(),
            line: 1,
            column: 1,
            message,
        }],
    };
    let bytes =
        std::fs::read(path).map_err(|e| whole_file(format!("cannot read the policy file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        whole_file(format!(
            "the policy file is not valid UTF-8 (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parses and validates a policy from `src`; `file` names it in errors.
pub fn parse_str(src: &str, file: &str) -> Result<Policy, PolicyErrors> {
    parse_keeping_tree(src, file).0
}

/// [`parse_str`], also handing back the YAML tree, so a caller in a hurry
/// (a reload on its way to enforcement) can free it afterwards: freeing a
/// 10,000-rule tree takes a few milliseconds.
pub fn parse_keeping_tree<'s>(
    src: &'s str,
    file: &str,
) -> (Result<Policy, PolicyErrors>, Vec<Node<'s>>) {
    let mut w = Walker {
        file,
        errors: Vec::new(),
    };
    let docs = yaml::load(src);
    let policy = match &docs {
        Err(e) => {
            w.error(*e.marker(), format!("YAML syntax error: {}", e.info()));
            None
        }
        Ok(docs) => match docs.as_slice() {
            [] => {
                w.error_at(1, 1, "the file is empty; expected one TierPolicy document");
                None
            }
            [root] => w.policy(root),
            [_, second, ..] => {
                w.error(
                    second.start,
                    format!(
                        "the file holds {} YAML documents; a policy file holds exactly one",
                        docs.len()
                    ),
                );
                None
            }
        },
    };
    let tree = docs.unwrap_or_default();
    let result = match policy {
        Some(mut p) if w.errors.is_empty() => {
            p.version = p.compute_version();
            Ok(p)
        }
        _ => {
            let mut errors = w.errors;
            keep_inside(src, &mut errors);
            // Stable: errors at the same place keep their discovery order.
            errors.sort_by_key(|e| (e.line, e.column));
            if errors.is_empty() {
                // Unreachable in practice (every `None` path records an
                // error), but never hand back an empty error list.
                errors.push(PolicyError {
                    file: file.to_owned(),
                    line: 1,
                    column: 1,
                    message: "invalid policy".to_owned(),
                });
            }
            Err(PolicyErrors { errors })
        }
    };
    (result, tree)
}

/// Keeps every error's position inside the file: saphyr puts a document
/// cut short (a syntax error, or the empty node that ends it) on the line
/// after the last one, which no editor can jump to; such a position becomes
/// the end of the last line, and a column past a line's end that end.
fn keep_inside(src: &str, errors: &mut [PolicyError]) {
    let lines: Vec<&str> = src.split('\n').collect();
    for e in errors {
        let line = e.line.clamp(1, lines.len());
        let end = lines[line - 1].trim_end_matches('\r').chars().count() + 1;
        e.column = if line < e.line {
            end
        } else {
            e.column.clamp(1, end)
        };
        e.line = line;
    }
}

#[cfg(test)]
mod dns_tests;
#[cfg(test)]
mod elevation_tests;
#[cfg(test)]
mod tests;
