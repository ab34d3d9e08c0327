//! Policy file parsing and validation.
//!
//! The YAML is loaded into a position-marked tree ([`super::yaml`], on
//! saphyr-parser; every node keeps its source position) and then walked by hand, so that every problem in the file is
//! reported at once, each as `FILE:LINE:COL: key.path: what is wrong and what
//! to write instead`. Positions are 1-based; the column points at the
//! offending key or value.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use saphyr::{Marker, Scalar};
use thiserror::Error;

use super::glob::{Glob, SpiffePattern};
use super::model::{
    API_VERSION, Binding, DEFAULT_TRUST_DOMAIN, EgressRule, HOST_TIER_NAME, KIND, Match,
    MetadataAccess, Mode, Policy, Protocols, Tier, normalize_net,
};
use super::yaml::{self, Data, Node};

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// The file name as given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong, starting with the key path.
    pub message: String,
}

/// Every problem found in a policy file (never empty), in file order.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct PolicyErrors {
    errors: Vec<PolicyError>,
}

impl PolicyErrors {
    /// The problems, sorted by position.
    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }

    /// Takes the list.
    pub fn into_vec(self) -> Vec<PolicyError> {
        self.errors
    }
}

impl fmt::Display for PolicyErrors {
    /// One `FILE:LINE:COL: message` per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

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

/// The keys of one mapping, checked against the allowed set.
struct Fields<'a, 'y> {
    entries: Vec<(&'a str, &'a Node<'y>)>,
}

impl<'a, 'y> Fields<'a, 'y> {
    fn get(&self, key: &str) -> Option<&'a Node<'y>> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

/// Collects errors while walking the node tree.
struct Walker<'f> {
    file: &'f str,
    errors: Vec<PolicyError>,
}

/// A key path for messages (`spec.tiers[0].egress[3].cidrs`), rendered
/// only when a message is written: a 10,000-rule file has some 60,000 of
/// them and almost never an error.
#[derive(Clone, Copy)]
enum KeyPath<'a> {
    /// The document itself (renders empty).
    Root,
    /// A literal path.
    At(&'a str),
    Key(&'a KeyPath<'a>, &'a str),
    Index(&'a KeyPath<'a>, usize),
}

impl<'a> KeyPath<'a> {
    fn key(&'a self, key: &'a str) -> KeyPath<'a> {
        KeyPath::Key(self, key)
    }

    fn index(&'a self, i: usize) -> KeyPath<'a> {
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
fn kind(node: &Node<'_>) -> &'static str {
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
fn show(node: &Node<'_>) -> String {
    match &node.data {
        Data::Value(Scalar::String(s)) => format!("{s:?}"),
        Data::Value(Scalar::Integer(i)) => format!("\"{i}\""),
        Data::Value(Scalar::FloatingPoint(f)) => format!("\"{f}\""),
        Data::Value(Scalar::Boolean(b)) => format!("\"{b}\""),
        _ => kind(node).to_owned(),
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn is_tier_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

fn is_trust_domain(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'_')
        })
}

/// A port or `LO-HI` range, 1..=65535, digits only.
fn parse_port_text(s: &str) -> Option<Result<(u16, u16), (u16, u16)>> {
    fn one(s: &str) -> Option<u16> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse::<u16>().ok().filter(|p| *p != 0)
    }
    match s.split_once('-') {
        None => one(s).map(|p| Ok((p, p))),
        Some((lo, hi)) => {
            let (lo, hi) = (one(lo)?, one(hi)?);
            Some(if lo <= hi {
                Ok((lo, hi))
            } else {
                Err((lo, hi))
            })
        }
    }
}

/// A CIDR or a bare address (/32, /128), normalised; host bits are an error.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not a CIDR or IP address (expected e.g. 10.0.0.0/8, fd00::/64 or 192.0.2.1)"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{s} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(normalize_net(net))
}

const TOP_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_KEYS: &[&str] = &["name"];
const SPEC_KEYS: &[&str] = &["trustDomain", "mode", "defaultTier", "tiers", "bindings"];
const TIER_KEYS: &[&str] = &["name", "description", "mode", "metadata", "egress"];
const RULE_KEYS: &[&str] = &["cidrs", "ports", "protocols"];
const BINDING_KEYS: &[&str] = &["tier", "match"];
const MATCH_KEYS: &[&str] = &[
    "cgroupPath",
    "namespace",
    "serviceAccount",
    "podLabels",
    "container",
    "spiffeId",
];

/// Where a tier name was defined, to resolve references and report duplicates.
struct TierNames {
    by_name: HashMap<String, (usize, usize)>,
    in_order: Vec<String>,
}

impl TierNames {
    fn known(&self) -> String {
        if self.in_order.is_empty() {
            "none are defined".to_owned()
        } else {
            format!("known tiers: {}", self.in_order.join(", "))
        }
    }
}

impl Walker<'_> {
    fn error(&mut self, at: Marker, message: String) {
        // saphyr lines are 1-based and columns 0-based.
        self.error_at(at.line().max(1), at.col() + 1, &message);
    }

    fn error_at(&mut self, line: usize, column: usize, message: &str) {
        self.errors.push(PolicyError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.to_owned(),
        });
    }

    fn fail(&mut self, node: &Node<'_>, path: KeyPath<'_>, message: &str) {
        self.error(node.start, at_path(path, message));
    }

    fn type_error(&mut self, node: &Node<'_>, path: KeyPath<'_>, expected: &str) {
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

    /// Checks that `node` is a mapping whose keys are strings from `allowed`
    /// and that every `required` key is present.
    fn mapping<'a, 'y>(
        &mut self,
        node: &'a Node<'y>,
        path: KeyPath<'_>,
        allowed: &[&str],
        required: &[&str],
    ) -> Option<Fields<'a, 'y>> {
        let Data::Mapping(map) = &node.data else {
            self.type_error(node, path, "a mapping");
            return None;
        };
        let mut entries = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Data::Value(Scalar::String(key)) = &k.data else {
                self.fail(k, path, &format!("keys must be strings, found {}", kind(k)));
                continue;
            };
            if !allowed.contains(&key.as_ref()) {
                let near = allowed
                    .iter()
                    .filter(|a| edit_distance(&a.to_lowercase(), &key.to_lowercase()) <= 2)
                    .min_by_key(|a| edit_distance(a, key));
                let hint = near.map_or(String::new(), |n| format!("did you mean {n:?}? "));
                self.error(
                    k.start,
                    format!(
                        "{}: unknown key ({hint}allowed keys: {})",
                        path.key(key),
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            entries.push((key.as_ref(), v));
        }
        for r in required {
            if !map
                .iter()
                .any(|(k, _)| matches!(&k.data, Data::Value(Scalar::String(s)) if s == r))
            {
                self.error(node.start, format!("{}: missing required key", path.key(r)));
            }
        }
        Some(Fields { entries })
    }

    fn string<'a>(&mut self, node: &'a Node<'_>, path: KeyPath<'_>) -> Option<&'a str> {
        if let Data::Value(Scalar::String(s)) = &node.data {
            Some(s.as_ref())
        } else {
            self.type_error(node, path, "a string");
            None
        }
    }

    /// A non-empty string.
    fn name_string<'a>(&mut self, node: &'a Node<'_>, path: KeyPath<'_>) -> Option<&'a str> {
        let s = self.string(node, path)?;
        if s.is_empty() {
            self.fail(node, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn list<'a, 'y>(&mut self, node: &'a Node<'y>, path: KeyPath<'_>) -> Option<&'a [Node<'y>]> {
        if let Data::Sequence(items) = &node.data {
            Some(items.as_slice())
        } else {
            self.type_error(node, path, "a list");
            None
        }
    }

    /// A string among `options`; returns its index.
    fn one_of(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        what: &str,
        options: &[&str],
    ) -> Option<usize> {
        let s = self.string(node, path)?;
        let found = options.iter().position(|o| *o == s);
        if found.is_none() {
            self.fail(
                node,
                path,
                &format!("{s:?} is not {what} (expected {})", options.join(" or ")),
            );
        }
        found
    }

    fn policy(&mut self, root: &Node<'_>) -> Option<Policy> {
        if matches!(root.data, Data::Value(Scalar::Null) | Data::BadValue) {
            self.error(
                root.start,
                "the document is empty; expected a TierPolicy".to_owned(),
            );
            return None;
        }
        let f = self.mapping(root, KeyPath::Root, TOP_KEYS, TOP_KEYS)?;
        if let Some(n) = f.get("apiVersion")
            && let Some(v) = self.string(n, KeyPath::At("apiVersion"))
            && v != API_VERSION
        {
            self.fail(
                n,
                KeyPath::At("apiVersion"),
                &format!("{v:?} is not supported (expected {API_VERSION})"),
            );
        }
        if let Some(n) = f.get("kind")
            && let Some(v) = self.string(n, KeyPath::At("kind"))
            && v != KIND
        {
            self.fail(
                n,
                KeyPath::At("kind"),
                &format!("{v:?} is not supported (expected {KIND})"),
            );
        }
        let name = f.get("metadata").and_then(|n| self.metadata(n));
        let spec = f.get("spec").and_then(|n| self.spec(n));
        let (trust_domain, mode, default_tier, tiers, bindings) = spec?;
        Some(Policy {
            name: name?,
            trust_domain,
            mode,
            default_tier,
            tiers,
            bindings,
            version: String::new(),
        })
    }

    fn metadata(&mut self, node: &Node<'_>) -> Option<String> {
        let f = self.mapping(node, KeyPath::At("metadata"), METADATA_KEYS, METADATA_KEYS)?;
        let n = f.get("name")?;
        let name = self.string(n, KeyPath::At("metadata.name"))?;
        if !is_dns1123_subdomain(name) {
            self.fail(
                n,
                KeyPath::At("metadata.name"),
                &format!(
                    "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', \
                     starting and ending with a letter or digit, at most 253 characters)"
                ),
            );
            return None;
        }
        Some(name.to_owned())
    }

    #[allow(clippy::type_complexity)]
    fn spec(&mut self, node: &Node<'_>) -> Option<(String, Mode, usize, Vec<Tier>, Vec<Binding>)> {
        let f = self.mapping(
            node,
            KeyPath::At("spec"),
            SPEC_KEYS,
            &["defaultTier", "tiers"],
        )?;

        let trust_domain = match f.get("trustDomain") {
            None => Some(DEFAULT_TRUST_DOMAIN.to_owned()),
            Some(n) => self.string(n, KeyPath::At("spec.trustDomain")).and_then(|s| {
                if is_trust_domain(s) {
                    Some(s.to_owned())
                } else {
                    self.fail(
                        n,
                        KeyPath::At("spec.trustDomain"),
                        &format!(
                            "{s:?} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-' and '_' only, e.g. corp.example)"
                        ),
                    );
                    None
                }
            }),
        };

        let mode = match f.get("mode") {
            None => Some(Mode::Enforce),
            Some(n) => self.mode(n, KeyPath::At("spec.mode")),
        };

        let mut names = TierNames {
            by_name: HashMap::new(),
            in_order: Vec::new(),
        };
        let tiers = f.get("tiers").and_then(|n| self.tiers(n, &mut names));

        let default_tier = f.get("defaultTier").and_then(|n| {
            let s = self.string(n, KeyPath::At("spec.defaultTier"))?;
            let found = names.by_name.get(s).map(|(i, _)| *i);
            if found.is_none() {
                self.fail(
                    n,
                    KeyPath::At("spec.defaultTier"),
                    &format!("unknown tier {s:?} ({})", names.known()),
                );
            }
            found
        });

        let bindings = match f.get("bindings") {
            None => Some(Vec::new()),
            Some(n) => self
                .list(n, KeyPath::At("spec.bindings"))
                .and_then(|items| {
                    let mut out = Vec::with_capacity(items.len());
                    let mut ok = true;
                    for (i, item) in items.iter().enumerate() {
                        match self.binding(item, KeyPath::At("spec.bindings").index(i), &names) {
                            Some(b) => out.push(b),
                            None => ok = false,
                        }
                    }
                    ok.then_some(out)
                }),
        };

        Some((trust_domain?, mode?, default_tier?, tiers?, bindings?))
    }

    fn mode(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Mode> {
        self.one_of(node, path, "a mode", &["enforce", "audit"])
            .map(|i| if i == 0 { Mode::Enforce } else { Mode::Audit })
    }

    fn tiers(&mut self, node: &Node<'_>, names: &mut TierNames) -> Option<Vec<Tier>> {
        let items = self.list(node, KeyPath::At("spec.tiers"))?;
        if items.is_empty() {
            self.fail(
                node,
                KeyPath::At("spec.tiers"),
                "must list at least one tier",
            );
            return None;
        }
        let max = agent_common::MAX_TIERS as usize;
        if items.len() > max {
            self.fail(
                node,
                KeyPath::At("spec.tiers"),
                &format!("{} tiers, more than the limit of {max}", items.len()),
            );
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = items.len() <= max;
        for (i, item) in items.iter().enumerate() {
            match self.tier(item, KeyPath::At("spec.tiers").index(i), i, names) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn tier(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        index: usize,
        names: &mut TierNames,
    ) -> Option<Tier> {
        let f = self.mapping(node, path, TIER_KEYS, &["name"])?;
        let name = f.get("name").and_then(|n| {
            let p = path.key("name");
            let s = self.string(n, p)?;
            // Record even a malformed name, so references to it are not also
            // reported as unknown (one mistake, one message).
            if let Some((_, line)) = names.by_name.get(s) {
                let line = *line;
                self.fail(
                    n,
                    p,
                    &format!("duplicate tier name {s:?} (first defined at line {line}); tier names must be unique"),
                );
                return None;
            }
            names.by_name.insert(s.to_owned(), (index, n.start.line()));
            names.in_order.push(s.to_owned());
            if !is_tier_name(s) {
                self.fail(
                    n,
                    p,
                    &format!("{s:?} is not a valid tier name (1-63 characters: lowercase letters, digits and '-')"),
                );
                return None;
            }
            if s == HOST_TIER_NAME {
                self.fail(
                    n,
                    p,
                    "\"host\" is reserved (events use it for cgroups that are not enforced); choose another name",
                );
                return None;
            }
            Some(s.to_owned())
        });
        let description = match f.get("description") {
            None => Some(None),
            Some(n) => self
                .string(n, path.key("description"))
                .map(|s| Some(s.to_owned())),
        };
        let mode = match f.get("mode") {
            None => Some(None),
            Some(n) => self.mode(n, path.key("mode")).map(Some),
        };
        let metadata = match f.get("metadata") {
            None => Some(MetadataAccess::Deny),
            Some(n) => self
                .one_of(
                    n,
                    path.key("metadata"),
                    "a metadata access",
                    &["deny", "allow"],
                )
                .map(|i| {
                    if i == 0 {
                        MetadataAccess::Deny
                    } else {
                        MetadataAccess::Allow
                    }
                }),
        };
        let egress = match f.get("egress") {
            None => Some(Vec::new()),
            Some(n) => {
                let p = path.key("egress");
                self.list(n, p).and_then(|items| {
                    let mut out = Vec::with_capacity(items.len());
                    let mut ok = true;
                    for (i, item) in items.iter().enumerate() {
                        match self.rule(item, p.index(i)) {
                            Some(r) => out.push(r),
                            None => ok = false,
                        }
                    }
                    ok.then_some(out)
                })
            }
        };
        Some(Tier {
            name: name?,
            description: description?,
            mode: mode?,
            metadata: metadata?,
            egress: egress?,
        })
    }

    /// A list that must have at least one item.
    fn non_empty_list<'a, 'y>(
        &mut self,
        node: &'a Node<'y>,
        path: KeyPath<'_>,
        hint: &str,
    ) -> Option<&'a [Node<'y>]> {
        let items = self.list(node, path)?;
        if items.is_empty() {
            self.fail(node, path, &format!("must not be empty{hint}"));
            return None;
        }
        Some(items)
    }

    fn rule(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<EgressRule> {
        let f = self.mapping(node, path, RULE_KEYS, &["cidrs"])?;

        let cidrs = f.get("cidrs").and_then(|n| {
            let p = path.key("cidrs");
            let items = self.non_empty_list(n, p, "")?;
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let ip = p.index(i);
                match self.string(item, ip).map(parse_cidr) {
                    Some(Ok(net)) => out.push(net),
                    Some(Err(msg)) => {
                        self.fail(item, ip, &msg);
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            ok.then_some(out)
        });

        let ports = match f.get("ports") {
            None => Some(None),
            Some(n) => {
                let p = path.key("ports");
                self.non_empty_list(n, p, "; omit `ports` to allow every port")
                    .and_then(|items| {
                        let mut out = Vec::with_capacity(items.len());
                        let mut ok = true;
                        for (i, item) in items.iter().enumerate() {
                            match self.port(item, p.index(i)) {
                                Some(r) => out.push(r),
                                None => ok = false,
                            }
                        }
                        ok.then_some(Some(out))
                    })
            }
        };

        let protocols = match f.get("protocols") {
            None => Some(Protocols::default()),
            Some(n) => {
                let p = path.key("protocols");
                self.non_empty_list(n, p, "; omit `protocols` to allow tcp and udp")
                    .and_then(|items| {
                        let mut seen = Protocols {
                            tcp: false,
                            udp: false,
                        };
                        let mut ok = true;
                        for (i, item) in items.iter().enumerate() {
                            let ip = p.index(i);
                            let slot = match self.one_of(item, ip, "a protocol", &["tcp", "udp"]) {
                                Some(0) => &mut seen.tcp,
                                Some(_) => &mut seen.udp,
                                None => {
                                    ok = false;
                                    continue;
                                }
                            };
                            if *slot {
                                self.fail(item, ip, &format!("{} is listed twice", show(item)));
                                ok = false;
                            }
                            *slot = true;
                        }
                        ok.then_some(seen)
                    })
            }
        };

        Some(EgressRule {
            cidrs: cidrs?,
            ports: ports?,
            protocols: protocols?,
        })
    }

    fn port(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<(u16, u16)> {
        let text = match &node.data {
            Data::Value(Scalar::String(s)) => s.to_string(),
            Data::Value(Scalar::Integer(i)) => i.to_string(),
            _ => {
                self.type_error(node, path, "a port number or a \"LO-HI\" string");
                return None;
            }
        };
        match parse_port_text(&text) {
            Some(Ok(r)) => Some(r),
            Some(Err((lo, hi))) => {
                self.fail(
                    node,
                    path,
                    &format!("{text:?} is a reversed range ({lo} > {hi}); write \"{hi}-{lo}\""),
                );
                None
            }
            None => {
                self.fail(
                    node,
                    path,
                    &format!("{text:?} is not a port or range (expected 1-65535 or LO-HI)"),
                );
                None
            }
        }
    }

    fn binding(
        &mut self,
        node: &Node<'_>,
        path: KeyPath<'_>,
        names: &TierNames,
    ) -> Option<Binding> {
        let f = self.mapping(node, path, BINDING_KEYS, BINDING_KEYS)?;
        let tier = f.get("tier").and_then(|n| {
            let p = path.key("tier");
            let s = self.string(n, p)?;
            let found = names.by_name.get(s).map(|(i, _)| *i);
            if found.is_none() {
                self.fail(n, p, &format!("unknown tier {s:?} ({})", names.known()));
            }
            found
        });
        let matcher = f
            .get("match")
            .and_then(|n| self.matcher(n, path.key("match")));
        Some(Binding {
            tier: tier?,
            matcher: matcher?,
        })
    }

    fn matcher(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<Match> {
        let f = self.mapping(node, path, MATCH_KEYS, &[])?;
        let mapping_len = match &node.data {
            Data::Mapping(m) => m.len(),
            _ => 0,
        };
        if mapping_len == 0 {
            self.fail(
                node,
                path,
                &format!("must have at least one of: {}", MATCH_KEYS.join(", ")),
            );
            return None;
        }
        let mut ok = true;
        let mut m = Match::default();

        if let Some(n) = f.get("cgroupPath") {
            let p = path.key("cgroupPath");
            match self.string(n, p) {
                Some(s) if !s.starts_with('/') => {
                    self.fail(
                        n,
                        p,
                        &format!("{s:?} must start with `/` (the cgroup v2 path as /proc/PID/cgroup shows it after \"0::\")"),
                    );
                    ok = false;
                }
                Some(s) => match Glob::parse(s) {
                    Ok(g) => m.cgroup_path = Some(g),
                    Err(e) => {
                        self.fail(n, p, &e);
                        ok = false;
                    }
                },
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("namespace", &mut m.namespace),
            ("serviceAccount", &mut m.service_account),
            ("container", &mut m.container),
        ] {
            if let Some(n) = f.get(key) {
                match self.name_string(n, path.key(key)) {
                    Some(s) => *slot = Some(s.to_owned()),
                    None => ok = false,
                }
            }
        }
        if let Some(n) = f.get("podLabels") {
            match self.labels(n, path.key("podLabels")) {
                Some(l) => m.pod_labels = l,
                None => ok = false,
            }
        }
        if let Some(n) = f.get("spiffeId") {
            let p = path.key("spiffeId");
            match self.string(n, p).map(SpiffePattern::parse) {
                Some(Ok(s)) => m.spiffe_id = Some(s),
                Some(Err(e)) => {
                    self.fail(n, p, &e);
                    ok = false;
                }
                None => ok = false,
            }
        }
        // Every key present was either accepted or reported above; a mapping
        // made only of unknown keys has no usable key left.
        if ok && m.cgroup_path.is_none() && !m.has_pod_keys() {
            return None;
        }
        ok.then_some(m)
    }

    fn labels(&mut self, node: &Node<'_>, path: KeyPath<'_>) -> Option<BTreeMap<String, String>> {
        let Data::Mapping(map) = &node.data else {
            self.type_error(node, path, "a mapping of label names to values");
            return None;
        };
        if map.is_empty() {
            self.fail(
                node,
                path,
                "must not be empty; omit `podLabels` to match any labels",
            );
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in map {
            let Some(key) = self.string(k, path) else {
                ok = false;
                continue;
            };
            let kp = path.key(key);
            match self.string(v, kp) {
                Some(val) => {
                    out.insert(key.to_owned(), val.to_owned());
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example policy of CONTRACT section 2, verbatim.
    pub(crate) const CONTRACT_EXAMPLE: &str = r#"apiVersion: tiergate.io/v1alpha1
kind: TierPolicy
metadata:
  name: ai-platform            # required; stamped on every event
spec:
  trustDomain: corp.example    # SPIFFE IDs of pods: spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>
  mode: enforce                # enforce | audit (audit: nothing is blocked, would-be denials are reported as such)
  defaultTier: unassigned      # tier of a pod that no binding matches, and of a pod not yet resolved
  tiers:
    - name: tier0              # unique; [a-z0-9-]{1,63}
      description: read-only tools
      mode: audit              # optional; overrides spec.mode for this tier
      metadata: deny           # deny | allow — cloud metadata endpoints (section 2.1); default deny
      egress:                  # allow-list; everything not listed is denied
        - cidrs: ["10.20.0.0/16", "fd00:20::/64"]
          ports: ["443", "8000-8100"]   # optional; default: all ports
          protocols: [tcp]              # tcp | udp; default: both
    - name: unassigned
      egress: []
  bindings:                    # evaluated in order, first match wins; all keys in one match must hold
    - tier: tier0
      match:
        cgroupPath: "/agents/tier0/**"  # glob on the cgroup v2 path as /proc/<pid>/cgroup shows it ("0::<path>"); * = one level, ** = any depth
    - tier: tier0
      match:
        namespace: agents
        serviceAccount: retriever
        podLabels: {app: retriever}
        container: tool                 # one container of the pod
    - tier: tier0
      match:
        spiffeId: "spiffe://corp.example/ns/ops/sa/*"
"#;

    #[test]
    fn contract_example_parses() {
        let p = match parse_str(CONTRACT_EXAMPLE, "policy.yaml") {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.name, "ai-platform");
        assert_eq!(p.trust_domain, "corp.example");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.tiers.len(), 2);
        assert_eq!(p.default_tier, 1);
        let t0 = &p.tiers[0];
        assert_eq!(t0.name, "tier0");
        assert_eq!(t0.description.as_deref(), Some("read-only tools"));
        assert_eq!(t0.mode, Some(Mode::Audit));
        assert_eq!(t0.metadata, MetadataAccess::Deny);
        assert_eq!(t0.egress.len(), 1);
        let r = &t0.egress[0];
        assert_eq!(
            r.cidrs,
            vec![
                "10.20.0.0/16".parse::<IpNet>().expect("net"),
                "fd00:20::/64".parse().expect("net")
            ]
        );
        assert_eq!(r.ports, Some(vec![(443, 443), (8000, 8100)]));
        assert_eq!(
            r.protocols,
            Protocols {
                tcp: true,
                udp: false
            }
        );
        assert!(p.tiers[1].egress.is_empty());
        assert_eq!(p.bindings.len(), 3);
        assert_eq!(
            p.bindings[0]
                .matcher
                .cgroup_path
                .as_ref()
                .map(|g| g.as_str()),
            Some("/agents/tier0/**")
        );
        let m1 = &p.bindings[1].matcher;
        assert_eq!(m1.namespace.as_deref(), Some("agents"));
        assert_eq!(m1.service_account.as_deref(), Some("retriever"));
        assert_eq!(
            m1.pod_labels.get("app").map(String::as_str),
            Some("retriever")
        );
        assert_eq!(m1.container.as_deref(), Some("tool"));
        assert_eq!(
            p.bindings[2].matcher.spiffe_id.as_ref().map(|s| s.as_str()),
            Some("spiffe://corp.example/ns/ops/sa/*")
        );
        assert!(p.version.starts_with("sha256:"));
    }

    #[test]
    fn defaults_apply() {
        let p = parse_str(
            "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: {name: p}\nspec:\n  defaultTier: a\n  tiers:\n  - name: a\n    egress:\n    - cidrs: [10.0.0.1, \"::1\", \"::ffff:10.0.0.0/104\"]\n",
            "p.yaml",
        )
        .map_err(|e| e.to_string());
        let p = match p {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.trust_domain, DEFAULT_TRUST_DOMAIN);
        assert_eq!(p.mode, Mode::Enforce);
        assert!(p.bindings.is_empty());
        let r = &p.tiers[0].egress[0];
        assert_eq!(r.ports, None);
        assert_eq!(r.protocols, Protocols::default());
        let texts: Vec<String> = r.cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["10.0.0.1/32", "::1/128", "10.0.0.0/8"]);
        assert_eq!(p.tiers[0].metadata, MetadataAccess::Deny);
    }

    /// A valid header; cases append a `spec`.
    const HEAD: &str = "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  name: p\n";

    /// A spec (lines 5..) with one tier `a`, a rule and a binding; cases edit it.
    const SPEC: &str = "spec:
  defaultTier: a
  tiers:
    - name: a
      egress:
        - cidrs: [\"10.0.0.0/8\"]
          ports: [\"443\"]
          protocols: [tcp]
  bindings:
    - tier: a
      match:
        cgroupPath: /x/**
";

    fn errors_of(src: &str) -> String {
        match parse_str(src, "policy.yaml") {
            Ok(_) => panic!("should be rejected:\n{src}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_base_of_the_error_table_is_valid() {
        let src = format!("{HEAD}{SPEC}");
        if let Err(e) = parse_str(&src, "policy.yaml") {
            panic!("{e}");
        }
    }

    #[test]
    fn malformed_inputs_report_position_and_fix() {
        // (description, source, expected substrings of the error output)
        let with_spec = |from: &str, to: &str| -> String {
            assert!(SPEC.contains(from), "edit {from:?} does not apply");
            format!("{HEAD}{}", SPEC.replacen(from, to, 1))
        };
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            (
                "yaml syntax error",
                "apiVersion: [a\nkind: b\n".into(),
                vec!["policy.yaml:2:5: YAML syntax error:"],
            ),
            (
                "empty file",
                String::new(),
                vec!["policy.yaml:1:1: the file is empty"],
            ),
            (
                "only comments",
                "# nothing\n".into(),
                vec!["policy.yaml:1:1: the file is empty"],
            ),
            (
                "empty document",
                "---\n".into(),
                vec!["the document is empty"],
            ),
            (
                "several documents",
                format!("{HEAD}{SPEC}---\n{HEAD}{SPEC}"),
                vec!["policy.yaml:18:1: the file holds 2 YAML documents"],
            ),
            (
                "top level not a mapping",
                "- a\n- b\n".into(),
                vec!["policy.yaml:1:1: expected a mapping, found a list"],
            ),
            (
                "unknown top-level key",
                format!("{HEAD}{SPEC}status: {{}}\n"),
                vec![
                    "policy.yaml:17:1: status: unknown key (allowed keys: apiVersion, kind, metadata, spec)",
                ],
            ),
            (
                "missing spec",
                HEAD.into(),
                vec!["policy.yaml:1:1: spec: missing required key"],
            ),
            (
                "wrong apiVersion",
                format!("{}{SPEC}", HEAD.replace("v1alpha1", "v1")),
                vec![
                    "policy.yaml:1:13: apiVersion: \"tiergate.io/v1\" is not supported (expected tiergate.io/v1alpha1)",
                ],
            ),
            (
                "wrong kind",
                format!("{}{SPEC}", HEAD.replace("kind: TierPolicy", "kind: Policy")),
                vec!["policy.yaml:2:7: kind: \"Policy\" is not supported (expected TierPolicy)"],
            ),
            (
                "missing metadata.name",
                format!(
                    "apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata:\n  labels: {{}}\n{SPEC}"
                ),
                vec![
                    "policy.yaml:4:3: metadata.labels: unknown key (allowed keys: name)",
                    "policy.yaml:4:3: metadata.name: missing required key",
                ],
            ),
            (
                "bad metadata.name",
                format!("{}{SPEC}", HEAD.replace("name: p", "name: Bad_Name")),
                vec!["policy.yaml:4:9: metadata.name: \"Bad_Name\" is not a valid name"],
            ),
            (
                "metadata not a mapping",
                format!("apiVersion: tiergate.io/v1alpha1\nkind: TierPolicy\nmetadata: x\n{SPEC}"),
                vec!["policy.yaml:3:11: metadata: expected a mapping, found a string"],
            ),
            (
                "unknown spec key with suggestion",
                with_spec("  defaultTier: a\n", "  defaultTier: a\n  defaultTeir: a\n"),
                vec![
                    "policy.yaml:7:3: spec.defaultTeir: unknown key (did you mean \"defaultTier\"? allowed keys: trustDomain, mode, defaultTier, tiers, bindings)",
                ],
            ),
            (
                "bad trust domain",
                with_spec(
                    "  defaultTier: a\n",
                    "  defaultTier: a\n  trustDomain: Corp.Example\n",
                ),
                vec![
                    "policy.yaml:7:16: spec.trustDomain: \"Corp.Example\" is not a SPIFFE trust domain",
                ],
            ),
            (
                "bad spec mode",
                with_spec("  defaultTier: a\n", "  defaultTier: a\n  mode: block\n"),
                vec![
                    "policy.yaml:7:9: spec.mode: \"block\" is not a mode (expected enforce or audit)",
                ],
            ),
            (
                "unknown defaultTier",
                with_spec("defaultTier: a", "defaultTier: nope"),
                vec!["policy.yaml:6:16: spec.defaultTier: unknown tier \"nope\" (known tiers: a)"],
            ),
            (
                "missing defaultTier and tiers",
                format!("{HEAD}spec:\n  mode: audit\n"),
                vec![
                    "policy.yaml:6:3: spec.defaultTier: missing required key",
                    "policy.yaml:6:3: spec.tiers: missing required key",
                ],
            ),
            (
                "empty tiers",
                format!("{HEAD}spec:\n  defaultTier: a\n  tiers: []\n"),
                vec![
                    "policy.yaml:7:10: spec.tiers: must list at least one tier",
                    "policy.yaml:6:16: spec.defaultTier: unknown tier \"a\" (none are defined)",
                ],
            ),
            (
                "tiers not a list",
                format!("{HEAD}spec:\n  defaultTier: a\n  tiers: {{name: a}}\n"),
                vec!["policy.yaml:7:10: spec.tiers: expected a list, found a mapping"],
            ),
            (
                "bad tier name",
                with_spec("- name: a\n", "- name: A_1\n"),
                vec!["policy.yaml:8:13: spec.tiers[0].name: \"A_1\" is not a valid tier name"],
            ),
            (
                "reserved tier name",
                with_spec("defaultTier: a", "defaultTier: host")
                    .replace("- name: a\n", "- name: host\n")
                    .replace("tier: a\n", "tier: host\n"),
                vec!["policy.yaml:8:13: spec.tiers[0].name: \"host\" is reserved"],
            ),
            (
                "tier name not a string",
                with_spec("- name: a\n", "- name: 7\n    - name: a\n"),
                vec![
                    "policy.yaml:8:13: spec.tiers[0].name: expected a string, found an integer (quote it: \"7\")",
                ],
            ),
            (
                "duplicate tier",
                with_spec(
                    "          protocols: [tcp]\n",
                    "          protocols: [tcp]\n    - name: a\n",
                ),
                vec![
                    "policy.yaml:13:13: spec.tiers[1].name: duplicate tier name \"a\" (first defined at line 8)",
                ],
            ),
            (
                "unknown tier key",
                with_spec("      egress:\n", "      egres:\n"),
                vec![
                    "policy.yaml:9:7: spec.tiers[0].egres: unknown key (did you mean \"egress\"? allowed keys: name, description, mode, metadata, egress)",
                ],
            ),
            (
                "bad tier mode and metadata",
                with_spec(
                    "- name: a\n",
                    "- name: a\n      mode: Audit\n      metadata: open\n",
                ),
                vec![
                    "policy.yaml:9:13: spec.tiers[0].mode: \"Audit\" is not a mode (expected enforce or audit)",
                    "policy.yaml:10:17: spec.tiers[0].metadata: \"open\" is not a metadata access (expected deny or allow)",
                ],
            ),
            (
                "egress null",
                with_spec(
                    "      egress:\n        - cidrs: [\"10.0.0.0/8\"]\n          ports: [\"443\"]\n          protocols: [tcp]\n",
                    "      egress:\n",
                ),
                vec![
                    "policy.yaml:9:13: spec.tiers[0].egress: expected a list, found nothing (null)",
                ],
            ),
            (
                "missing cidrs",
                with_spec(
                    "        - cidrs: [\"10.0.0.0/8\"]\n          ports",
                    "        - ports",
                ),
                vec!["policy.yaml:10:11: spec.tiers[0].egress[0].cidrs: missing required key"],
            ),
            (
                "empty cidrs",
                with_spec("[\"10.0.0.0/8\"]", "[]"),
                vec!["policy.yaml:10:18: spec.tiers[0].egress[0].cidrs: must not be empty"],
            ),
            (
                "bad cidr",
                with_spec("[\"10.0.0.0/8\"]", "[\"10.0.0.0/8\", \"10.0.0.300/8\"]"),
                vec![
                    "policy.yaml:10:33: spec.tiers[0].egress[0].cidrs[1]: \"10.0.0.300/8\" is not a CIDR or IP address",
                ],
            ),
            (
                "host bits",
                with_spec("10.0.0.0/8", "10.0.0.1/8"),
                vec![
                    "policy.yaml:10:19: spec.tiers[0].egress[0].cidrs[0]: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?",
                ],
            ),
            (
                "ipv6 host bits",
                with_spec("10.0.0.0/8", "fd00::1/64"),
                vec!["fd00::1/64 has host bits set; did you mean fd00::/64?"],
            ),
            (
                "cidr not a string",
                with_spec("[\"10.0.0.0/8\"]", "[{a: b}]"),
                vec![
                    "policy.yaml:10:19: spec.tiers[0].egress[0].cidrs[0]: expected a string, found a mapping",
                ],
            ),
            (
                "port out of range",
                with_spec("[\"443\"]", "[\"443\", 70000]"),
                vec![
                    "policy.yaml:11:26: spec.tiers[0].egress[0].ports[1]: \"70000\" is not a port or range (expected 1-65535 or LO-HI)",
                ],
            ),
            (
                "port zero and garbage",
                with_spec("[\"443\"]", "[0, \"http\", \"1-\"]"),
                vec![
                    "policy.yaml:11:19: spec.tiers[0].egress[0].ports[0]: \"0\" is not a port",
                    "policy.yaml:11:22: spec.tiers[0].egress[0].ports[1]: \"http\" is not a port",
                    "policy.yaml:11:30: spec.tiers[0].egress[0].ports[2]: \"1-\" is not a port",
                ],
            ),
            (
                "reversed range",
                with_spec("[\"443\"]", "[\"8100-8000\"]"),
                vec![
                    "policy.yaml:11:19: spec.tiers[0].egress[0].ports[0]: \"8100-8000\" is a reversed range (8100 > 8000); write \"8000-8100\"",
                ],
            ),
            (
                "empty ports",
                with_spec("[\"443\"]", "[]"),
                vec![
                    "policy.yaml:11:18: spec.tiers[0].egress[0].ports: must not be empty; omit `ports` to allow every port",
                ],
            ),
            (
                "port of wrong type",
                with_spec("[\"443\"]", "[true]"),
                vec![
                    "policy.yaml:11:19: spec.tiers[0].egress[0].ports[0]: expected a port number or a \"LO-HI\" string, found a boolean",
                ],
            ),
            (
                "bad protocol",
                with_spec("[tcp]", "[icmp]"),
                vec![
                    "policy.yaml:12:23: spec.tiers[0].egress[0].protocols[0]: \"icmp\" is not a protocol (expected tcp or udp)",
                ],
            ),
            (
                "duplicate protocol",
                with_spec("[tcp]", "[tcp, udp, tcp]"),
                vec![
                    "policy.yaml:12:33: spec.tiers[0].egress[0].protocols[2]: \"tcp\" is listed twice",
                ],
            ),
            (
                "empty protocols",
                with_spec("[tcp]", "[]"),
                vec!["policy.yaml:12:22: spec.tiers[0].egress[0].protocols: must not be empty"],
            ),
            (
                "unknown rule key",
                with_spec(
                    "          protocols: [tcp]\n",
                    "          protocols: [tcp]\n          action: allow\n",
                ),
                vec![
                    "policy.yaml:13:11: spec.tiers[0].egress[0].action: unknown key (allowed keys: cidrs, ports, protocols)",
                ],
            ),
            (
                "unknown tier in binding",
                with_spec("    - tier: a\n", "    - tier: b\n"),
                vec![
                    "policy.yaml:14:13: spec.bindings[0].tier: unknown tier \"b\" (known tiers: a)",
                ],
            ),
            (
                "binding missing match",
                with_spec("      match:\n        cgroupPath: /x/**\n", ""),
                vec!["policy.yaml:14:7: spec.bindings[0].match: missing required key"],
            ),
            (
                "empty match",
                with_spec(
                    "      match:\n        cgroupPath: /x/**\n",
                    "      match: {}\n",
                ),
                vec![
                    "policy.yaml:15:14: spec.bindings[0].match: must have at least one of: cgroupPath, namespace, serviceAccount, podLabels, container, spiffeId",
                ],
            ),
            (
                "unknown match key",
                with_spec(
                    "cgroupPath: /x/**",
                    "cgroupPath: /x/**\n        nodeName: n1",
                ),
                vec![
                    "policy.yaml:17:9: spec.bindings[0].match.nodeName: unknown key (allowed keys: cgroupPath, namespace, serviceAccount, podLabels, container, spiffeId)",
                ],
            ),
            (
                "relative cgroupPath",
                with_spec("/x/**", "x/**"),
                vec![
                    "policy.yaml:16:21: spec.bindings[0].match.cgroupPath: \"x/**\" must start with `/`",
                ],
            ),
            (
                "bad glob",
                with_spec("/x/**", "/x/a**"),
                vec![
                    "policy.yaml:16:21: spec.bindings[0].match.cgroupPath: \"/x/a**\": `**` must be a whole path segment",
                ],
            ),
            (
                "bad spiffeId",
                with_spec("cgroupPath: /x/**", "spiffeId: corp.example/ns/a/sa/b"),
                vec![
                    "policy.yaml:16:19: spec.bindings[0].match.spiffeId: \"corp.example/ns/a/sa/b\" must start with `spiffe://`",
                ],
            ),
            (
                "label value not a string",
                with_spec("cgroupPath: /x/**", "podLabels: {app: x, tier: 1}"),
                vec![
                    "policy.yaml:16:35: spec.bindings[0].match.podLabels.tier: expected a string, found an integer (quote it: \"1\")",
                ],
            ),
            (
                "empty namespace",
                with_spec("cgroupPath: /x/**", "namespace: \"\""),
                vec!["policy.yaml:16:20: spec.bindings[0].match.namespace: must not be empty"],
            ),
            (
                "bindings not a list",
                format!(
                    "{HEAD}spec:\n  defaultTier: a\n  tiers: [{{name: a}}]\n  bindings: {{}}\n"
                ),
                vec!["policy.yaml:8:13: spec.bindings: expected a list, found a mapping"],
            ),
            (
                "duplicate yaml key",
                format!("{HEAD}{SPEC}")
                    .replace("  defaultTier: a\n", "  defaultTier: a\n  defaultTier: a\n"),
                vec!["policy.yaml:7:3: YAML syntax error: duplicated key in mapping"],
            ),
            (
                "non-string key",
                with_spec("  defaultTier: a\n", "  defaultTier: a\n  1: x\n"),
                vec!["policy.yaml:7:3: spec: keys must be strings, found an integer"],
            ),
            (
                "yaml tag",
                with_spec("defaultTier: a", "defaultTier: !tier a"),
                vec![
                    "policy.yaml:6:16: spec.defaultTier: expected a string, found a tagged value (YAML tags are not supported)",
                ],
            ),
        ];
        assert!(cases.len() >= 25);
        for (what, src, wants) in &cases {
            let got = errors_of(src);
            for want in wants {
                assert!(
                    got.contains(want),
                    "case {what:?}: expected {want:?} in:\n{got}\n--- source ---\n{src}"
                );
            }
        }
    }

    #[test]
    fn every_error_is_reported_together_in_file_order() {
        let src = format!(
            "{HEAD}spec:
  defaultTier: missing
  mode: sometimes
  tiers:
    - name: a
      egress:
        - cidrs: [\"10.0.0.1/8\", \"fd00::/64\", nonsense]
          ports: [\"0\", \"9-1\"]
          protocols: [sctp]
    - name: a
  bindings:
    - tier: zzz
      match: {{}}
"
        );
        let e = match parse_str(&src, "f.yaml") {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        };
        let lines: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
        let want = [
            "f.yaml:6:16: spec.defaultTier: unknown tier \"missing\"",
            "f.yaml:7:9: spec.mode: \"sometimes\" is not a mode",
            "f.yaml:11:19: spec.tiers[0].egress[0].cidrs[0]: 10.0.0.1/8 has host bits set",
            "f.yaml:11:46: spec.tiers[0].egress[0].cidrs[2]: \"nonsense\" is not a CIDR",
            "f.yaml:12:19: spec.tiers[0].egress[0].ports[0]: \"0\" is not a port",
            "f.yaml:12:24: spec.tiers[0].egress[0].ports[1]: \"9-1\" is a reversed range",
            "f.yaml:13:23: spec.tiers[0].egress[0].protocols[0]: \"sctp\" is not a protocol",
            "f.yaml:14:13: spec.tiers[1].name: duplicate tier name \"a\" (first defined at line 9)",
            "f.yaml:16:13: spec.bindings[0].tier: unknown tier \"zzz\"",
            "f.yaml:17:14: spec.bindings[0].match: must have at least one of",
        ];
        assert_eq!(lines.len(), want.len(), "{e}");
        for (got, want) in lines.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
        }
        // Display: one error per line.
        assert_eq!(e.to_string().lines().count(), want.len());
    }

    #[test]
    fn load_reports_missing_and_non_utf8_files() {
        let dir = std::env::temp_dir().join(format!("tiergate-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.yaml");
        let e = load(&missing).expect_err("missing file");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{}:1:1: cannot read the policy file:",
                missing.display()
            )),
            "{text}"
        );

        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, b"apiVersion: \xff\n").expect("write");
        let text = load(&bad).expect_err("not utf-8").to_string();
        assert!(
            text.contains(":1:1: the policy file is not valid UTF-8"),
            "{text}"
        );

        let good = dir.join("good.yaml");
        std::fs::write(&good, CONTRACT_EXAMPLE).expect("write");
        let p = load(&good).map_err(|e| e.to_string());
        assert!(p.is_ok(), "{p:?}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn tier_limit_is_enforced() {
        let mut src = format!("{HEAD}spec:\n  defaultTier: t0\n  tiers:\n");
        for i in 0..=agent_common::MAX_TIERS {
            src.push_str(&format!("    - name: t{i}\n"));
        }
        let got = errors_of(&src);
        assert!(
            got.contains("policy.yaml:8:5: spec.tiers: 257 tiers, more than the limit of 256"),
            "{got}"
        );
    }
}
