//! A small position-marked YAML tree, built straight from saphyr-parser's
//! event stream.
//!
//! saphyr's own `MarkedYaml` loader reads its input one `char` at a time and
//! keeps every mapping in a hash map of whole subtrees; on a 10,000-rule
//! policy that was half of a reload's time to enforcement. This loader
//! borrows scalars from the source, keeps mappings as vectors (the walker
//! reads them in order anyway) and otherwise keeps saphyr's semantics:
//! scalars resolved by the YAML core schema (`Scalar::parse_from_cow_and_metadata`),
//! non-core tags kept as `Tagged`, aliases expanded by cloning within the
//! same node budget, and a duplicated key in a mapping is a syntax error at
//! the second key.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use saphyr::Scalar;
use saphyr_parser::{Event, Marker, Parser, ScanError, Span, SpannedEventReceiver, Tag};

/// One node and where it starts in the source.
// (Size matters: a 10,000-rule policy is some 70,000 nodes.)
#[derive(Clone, Debug, PartialEq)]
pub struct Node<'y> {
    pub data: Data<'y>,
    pub start: Marker,
}

/// A node's content.
#[derive(Clone, Debug, PartialEq)]
pub enum Data<'y> {
    /// Entries in source order.
    Mapping(Vec<(Node<'y>, Node<'y>)>),
    Sequence(Vec<Node<'y>>),
    Value(Scalar<'y>),
    /// A node with a tag outside the YAML core schema (boxed: rare, and
    /// it would double the size of every node).
    Tagged(Box<(Cow<'y, Tag>, Node<'y>)>),
    /// A scalar the core schema rejects (e.g. `!!int x`), or an empty document.
    BadValue,
}

/// Nodes that alias expansion may add in one load (as saphyr's loader):
/// the bound on a "billion laughs" document.
const ALIAS_NODE_BUDGET: usize = 100_000;

/// Mappings at least this long check duplicate keys with a hash set; shorter
/// ones (every mapping of a policy but `labels`) compare in place.
const DUPLICATE_SET_FROM: usize = 16;

/// Loads every document of `src`.
pub fn load(src: &str) -> Result<Vec<Node<'_>>, ScanError> {
    let mut loader = Loader {
        docs: Vec::new(),
        root: None,
        stack: Vec::new(),
        anchors: BTreeMap::new(),
        alias_budget: ALIAS_NODE_BUDGET,
        error: None,
    };
    let mut parser = Parser::new_from_str(src);
    parser.load(&mut loader, true)?;
    match loader.error {
        Some(e) => Err(e),
        None => Ok(loader.docs),
    }
}

/// A collection being built.
struct Open<'y> {
    node: Node<'y>,
    anchor: usize,
    tag: Option<Cow<'y, Tag>>,
    /// Mappings: the key waiting for its value, and where it was.
    key: Option<(Node<'y>, Marker)>,
    /// Mappings: the scalar keys so far, once the mapping is long.
    seen: Option<HashSet<Scalar<'y>>>,
}

struct Loader<'y> {
    docs: Vec<Node<'y>>,
    /// The finished root of the document being read.
    root: Option<Node<'y>>,
    stack: Vec<Open<'y>>,
    anchors: BTreeMap<usize, Node<'y>>,
    alias_budget: usize,
    error: Option<ScanError>,
}

impl<'y> SpannedEventReceiver<'y> for Loader<'y> {
    fn on_event(&mut self, ev: Event<'y>, span: Span) {
        // After an error the tree is not to be trusted: keep the first one.
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.event(ev, span) {
            self.error = Some(e);
        }
    }
}

fn scalar<'y>(
    value: Cow<'y, str>,
    style: saphyr_parser::ScalarStyle,
    tag: Option<&Cow<'y, Tag>>,
) -> Data<'y> {
    Scalar::parse_from_cow_and_metadata(value, style, tag).map_or(Data::BadValue, Data::Value)
}

fn tagged<'y>(tag: Cow<'y, Tag>, node: Node<'y>) -> Node<'y> {
    Node {
        start: node.start,
        data: Data::Tagged(Box::new((tag, node))),
    }
}

/// Nodes in `node`, counting down `budget`; false once it runs out.
fn within_budget(node: &Node<'_>, budget: &mut usize) -> bool {
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    match &node.data {
        Data::Mapping(entries) => entries
            .iter()
            .all(|(k, v)| within_budget(k, budget) && within_budget(v, budget)),
        Data::Sequence(items) => items.iter().all(|n| within_budget(n, budget)),
        Data::Tagged(t) => within_budget(&t.1, budget),
        Data::Value(_) | Data::BadValue => true,
    }
}

impl<'y> Loader<'y> {
    fn event(&mut self, ev: Event<'y>, span: Span) -> Result<(), ScanError> {
        match ev {
            Event::DocumentStart(_) | Event::Nothing | Event::StreamStart | Event::StreamEnd => {}
            Event::DocumentEnd => {
                // A document without content is a BadValue, as in saphyr.
                let root = self.root.take().unwrap_or(Node {
                    data: Data::BadValue,
                    start: span.start,
                });
                self.docs.push(root);
            }
            Event::SequenceStart(anchor, tag) => {
                self.open(Data::Sequence(Vec::new()), span, anchor, tag);
            }
            Event::MappingStart(anchor, tag) => {
                self.open(Data::Mapping(Vec::new()), span, anchor, tag);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let open = self.stack.pop().expect("parser: end event without a start");
                let mut node = open.node;
                if let Some(tag) = open.tag
                    && !tag.is_yaml_core_schema()
                {
                    node = tagged(tag, node);
                }
                self.insert(node, open.anchor, span.start)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                let node = match tag {
                    Some(tag) if !tag.is_yaml_core_schema() => tagged(
                        tag,
                        Node {
                            data: scalar(value, style, None),
                            start: span.start,
                        },
                    ),
                    tag => Node {
                        data: scalar(value, style, tag.as_ref()),
                        start: span.start,
                    },
                };
                self.insert(node, anchor, span.start)?;
            }
            Event::Alias(id) => {
                let node = self.alias(id, span)?;
                self.insert(node, 0, span.start)?;
            }
        }
        Ok(())
    }

    fn open(&mut self, data: Data<'y>, span: Span, anchor: usize, tag: Option<Cow<'y, Tag>>) {
        self.stack.push(Open {
            node: Node {
                data,
                start: span.start,
            },
            anchor,
            tag,
            key: None,
            seen: None,
        });
    }

    /// Expands an alias by cloning its anchor's subtree, within the budget.
    fn alias(&mut self, id: usize, span: Span) -> Result<Node<'y>, ScanError> {
        let Some(anchored) = self.anchors.get(&id) else {
            return Ok(Node {
                data: Data::BadValue,
                start: span.start,
            });
        };
        if !within_budget(anchored, &mut self.alias_budget) {
            return Err(ScanError::new_str(
                span.start,
                "alias expansion exceeded the maximum node budget (possible billion-laughs attack)",
            ));
        }
        let mut node = anchored.clone();
        node.start = span.start;
        Ok(node)
    }

    /// Adds a finished node to the collection being built (or makes it the
    /// document's root).
    fn insert(&mut self, node: Node<'y>, anchor: usize, mark: Marker) -> Result<(), ScanError> {
        // Anchor ids start at 1.
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some(parent) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match &mut parent.node.data {
            Data::Sequence(items) => items.push(node),
            Data::Mapping(entries) => match parent.key.take() {
                None => parent.key = Some((node, mark)),
                Some((key, key_mark)) => {
                    if is_duplicate(entries, &mut parent.seen, &key) {
                        return Err(ScanError::new_str(key_mark, "duplicated key in mapping"));
                    }
                    entries.push((key, node));
                }
            },
            _ => unreachable!("only collections are opened"),
        }
        Ok(())
    }
}

/// Whether `key` is already a key of `entries` (scalars by value, other
/// keys by structure, as saphyr compares them).
fn is_duplicate<'y>(
    entries: &[(Node<'y>, Node<'y>)],
    seen: &mut Option<HashSet<Scalar<'y>>>,
    key: &Node<'y>,
) -> bool {
    if entries.len() < DUPLICATE_SET_FROM {
        return entries.iter().any(|(k, _)| k.data == key.data);
    }
    let set = seen.get_or_insert_with(|| {
        entries
            .iter()
            .filter_map(|(k, _)| match &k.data {
                Data::Value(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    });
    match &key.data {
        Data::Value(s) => !set.insert(s.clone()),
        // Collection keys are rare and rejected by the walker anyway.
        _ => entries.iter().any(|(k, _)| k.data == key.data),
    }
}

#[cfg(test)]
mod tests {
    use super::{Data, load};
    use saphyr::{LoadableYamlNode, MarkedYaml, YamlData};

    /// The same shape and positions as saphyr's MarkedYaml loader.
    /// (saphyr gives the scalar inside a tag no position; ours keeps it.)
    fn same(a: &super::Node<'_>, b: &MarkedYaml<'_>) {
        same_at(a, b, true);
    }

    fn same_at(a: &super::Node<'_>, b: &MarkedYaml<'_>, positions: bool) {
        if positions {
            assert_eq!(a.start, b.span.start, "start of {a:?}");
        }
        match (&a.data, &b.data) {
            (Data::Value(x), YamlData::Value(y)) => assert_eq!(x, y),
            (Data::BadValue, YamlData::BadValue) => {}
            (Data::Sequence(x), YamlData::Sequence(y)) => {
                assert_eq!(x.len(), y.len());
                x.iter().zip(y).for_each(|(x, y)| same(x, y));
            }
            (Data::Mapping(x), YamlData::Mapping(y)) => {
                assert_eq!(x.len(), y.len());
                for ((xk, xv), (yk, yv)) in x.iter().zip(y) {
                    same(xk, yk);
                    same(xv, yv);
                }
            }
            (Data::Tagged(t), YamlData::Tagged(u, y)) => {
                assert_eq!(&t.0, u);
                same_at(&t.1, y, false);
            }
            (x, y) => panic!("{x:?} vs {y:?}"),
        }
    }

    #[test]
    fn matches_saphyr_on_what_policies_use() {
        let src = "a: 1\nb: [x, 'y', \"z\", 2.5, true, null, ~]\nc:\n  - d: {e: f}\n    g: !custom h\n  - &k {i: j}\n  - *k\n  - !!str 12\n  - !!int nope\nempty:\n";
        let ours = load(src).expect("valid");
        let theirs = MarkedYaml::load_from_str(src).expect("valid");
        assert_eq!(ours.len(), theirs.len());
        ours.iter().zip(&theirs).for_each(|(a, b)| same(a, b));
    }

    #[test]
    fn documents_and_errors_match_saphyr() {
        for src in ["", "---\n", "a: 1\n---\nb: 2\n", "--- 1\n--- 2\n"] {
            let ours = load(src).expect("valid");
            let theirs = MarkedYaml::load_from_str(src).expect("valid");
            assert_eq!(ours.len(), theirs.len(), "{src:?}");
            ours.iter().zip(&theirs).for_each(|(a, b)| same(a, b));
        }
        for src in [
            "a: 1\na: 2\n",
            "a: [1\n",
            "a: *nowhere\n",
            "{x: 1, y: 2, x: 3}",
        ] {
            let ours = load(src)
                .map(|_| ())
                .map_err(|e| (e.marker().line(), e.marker().col(), e.info().to_owned()));
            let theirs = MarkedYaml::load_from_str(src)
                .map(|_| ())
                .map_err(|e| (e.marker().line(), e.marker().col(), e.info().to_owned()));
            assert_eq!(ours, theirs, "{src:?}");
        }
    }

    #[test]
    fn long_mappings_find_duplicates_too() {
        let mut src: String = (0..40).map(|i| format!("k{i}: {i}\n")).collect();
        src.push_str("k7: again\n");
        let e = load(&src).expect_err("duplicate");
        assert_eq!(e.info(), "duplicated key in mapping");
        assert_eq!(e.marker().line(), 41);
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = load(&src).expect_err("billion laughs");
        assert!(e.info().contains("node budget"), "{}", e.info());
    }
}
