//! What the store reads of a record: the few fields of the OCSF object
//! that make an update (see `observe.rs`), borrowed from the line.
//!
//! [`Rec::read`] reads records as agents write them with the scanner of
//! `scan.rs`, and anything the scanner does not take (escaped strings,
//! other types, malformed lines) with serde_json, so that both give the
//! same answer for every line: the scanner only ever declines.

use std::borrow::Cow;

use serde::Deserialize;

use super::observe::RuleRef;
use super::scan;
use super::shape::Shape;

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Rec<'a> {
    pub(super) class_uid: Option<u32>,
    pub(super) time: Option<u64>,
    pub(super) count: Option<u64>,
    #[serde(borrow)]
    pub(super) connection_info: Option<ConnInfo<'a>>,
    #[serde(borrow)]
    pub(super) dst_endpoint: Option<Endpoint<'a>>,
    #[serde(borrow)]
    pub(super) device: Option<Device<'a>>,
    #[serde(borrow)]
    pub(super) query: Option<Query<'a>>,
    #[serde(borrow)]
    pub(super) unmapped: Option<Unmapped<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct ConnInfo<'a> {
    #[serde(borrow)]
    pub(super) protocol_name: Option<Text<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Endpoint<'a> {
    #[serde(borrow)]
    pub(super) ip: Option<Text<'a>>,
    pub(super) port: Option<u16>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Device<'a> {
    #[serde(borrow)]
    pub(super) hostname: Option<Text<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Query<'a> {
    #[serde(borrow)]
    pub(super) hostname: Option<Text<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Unmapped<'a> {
    #[serde(borrow)]
    pub(super) tiergate: Option<Tiergate<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Tiergate<'a> {
    #[serde(borrow)]
    pub(super) kind: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) action: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) verdict: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) tier: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) fqdn: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) rule: Option<Rule<'a>>,
    #[serde(borrow)]
    pub(super) policy: Option<Policy<'a>>,
    #[serde(borrow)]
    pub(super) workload: Option<Workload<'a>>,
    pub(super) rules: Option<Vec<RuleRef>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Rule<'a> {
    #[serde(borrow)]
    pub(super) uid: Option<Text<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Policy<'a> {
    #[serde(borrow)]
    pub(super) name: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) version: Option<Text<'a>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Workload<'a> {
    #[serde(borrow)]
    pub(super) spiffe_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) namespace: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) service_account: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) systemd_unit: Option<Text<'a>>,
    #[serde(borrow)]
    pub(super) cgroup_path: Option<Text<'a>>,
    pub(super) owner: Option<serde_json::Value>,
}

/// A JSON string, borrowed from the line unless it has escapes (serde
/// borrows a `Cow` only when it is a field itself, not inside an `Option`).
#[derive(Debug, PartialEq)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

pub(super) fn text<'a>(v: &'a Option<Text<'_>>) -> Option<&'a str> {
    v.as_ref().map(|t| t.0.as_ref())
}

impl<'a> Rec<'a> {
    /// Reads one line: the scanner first, serde_json when it declines.
    pub(super) fn read(line: &'a [u8]) -> Result<Rec<'a>, serde_json::Error> {
        match scan::read(line) {
            Some(rec) => Ok(rec),
            None => Self::read_serde(line),
        }
    }

    /// [`Rec::read`], and the line's shape into `shape` when the scanner
    /// reads it (see `shape.rs`).
    pub(super) fn read_shaped(
        line: &'a [u8],
        shape: &mut Shape,
    ) -> Result<Rec<'a>, serde_json::Error> {
        match scan::read_shaped(line, shape) {
            Some(rec) => Ok(rec),
            None => Self::read_serde(line),
        }
    }

    /// Reads one line with serde_json only.
    pub(super) fn read_serde(line: &'a [u8]) -> Result<Rec<'a>, serde_json::Error> {
        serde_json::from_slice(line)
    }
}
