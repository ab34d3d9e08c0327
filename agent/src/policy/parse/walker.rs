//! The walk's error collector: key paths, source positions and type-error wording.

use std::fmt;

use saphyr::{Marker, Scalar};

use super::errors::PolicyError;
use crate::policy::yaml::{Data, Node};

/// Collects errors while walking the node tree.
pub(super) struct Walker<'f> {
    pub(super) file: &'f str,
    pub(super) errors: Vec<PolicyError>,
}

/// A key path for messages (`spec.tiers[0].egress[3].cidrs`), rendered
/// only when a message is written: a 10,000-rule file has some 60,000 of
/// them and almost never an error.
#[derive(Clone, Copy)]
pub(super) enum KeyPath<'a> {
    /// The document itself (renders empty).
    Root,
    /// A literal path.
    At(&'a str),
    Key(&'a KeyPath<'a>, &'a str),
    Index(&'a KeyPath<'a>, usize),
}

impl<'a> KeyPath<'a> {
    pub(super) fn key(&'a self, key: &'a str) -> KeyPath<'a> {
        KeyPath::Key(self, key)
    }

    pub(super) fn index(&'a self, i: usize) -> KeyPath<'a> {
        KeyPath::Index(self, i)
    }

    fn is_root(&self) -> bool {
        matches!(self, KeyPath::Root)
    }
}

impl fmt::Display for KeyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPath::Root => Ok(()),
            KeyPath::At(s) => f.write_str(s),
            KeyPath::Key(parent, key) if parent.is_root() => f.write_str(key),
            KeyPath::Key(parent, key) => write!(f, "{parent}.{key}"),
            KeyPath::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// `path: message`, or just `message` at the top level.
fn at_path(path: KeyPath<'_>, message: &str) -> String {
    if path.is_root() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

/// "a string", "an integer", ... for type errors.
pub(super) fn kind(node: &Node<'_>) -> &'static str {
    match &node.data {
        Data::Mapping(_) => "a mapping",
        Data::Sequence(_) => "a list",
        Data::Value(Scalar::String(_)) => "a string",
        Data::Value(Scalar::Integer(_)) => "an integer",
        Data::Value(Scalar::FloatingPoint(_)) => "a number",
        Data::Value(Scalar::Boolean(_)) => "a boolean",
        Data::Value(Scalar::Null) => "nothing (null)",
        Data::Tagged(..) => "a tagged value",
        Data::BadValue => "an invalid value",
    }
}

/// A short rendering of a scalar for messages (`"x"`, `12`).
pub(super) fn show(node: &Node<'_>) -> String {
    match &node.data {
        Data::Value(Scalar::String(s)) => format!("{s:?}"),
        Data::Value(Scalar::Integer(i)) => format!("\"{i}\""),
        Data::Value(Scalar::FloatingPoint(f)) => format!("\"{f}\""),
        Data::Value(Scalar::Boolean(b)) => format!("\"{b}\""),
        _ => kind(node).to_owned(),
    }
}

impl Walker<'_> {
    pub(super) fn error(&mut self, at: Marker, message: String) {
        // saphyr lines are 1-based and columns 0-based.
        self.error_at(at.line().max(1), at.col() + 1, &message);
    }

    pub(super) fn error_at(&mut self, line: usize, column: usize, message: &str) {
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.to_owned(),
        });
    }

    pub(super) fn fail(&mut self, node: &Node<'_>, path: KeyPath<'_>, message: &str) {
        self.error(node.start, at_path(path, message));
    }

    pub(super) fn type_error(&mut self, node: &Node<'_>, path: KeyPath<'_>, expected: &str) {
        let hint = match &node.data {
            Data::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_) | Scalar::Boolean(_))
                if expected == "a string" =>
            {
                format!(" (quote it: {})", show(node))
            }
            Data::Tagged(..) => " (YAML tags are not supported)".to_owned(),
            _ => String::new(),
        };
        self.fail(
            node,
            path,
            &format!("expected {expected}, found {}{hint}", kind(node)),
        );
    }
}
