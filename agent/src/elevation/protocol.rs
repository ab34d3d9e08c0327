//! The admin socket's protocol: one JSON request line, one JSON reply line.
//!
//! ```text
//! {"op":"grant","request":{"target":{"pod":{"namespace":"agents","name":"tool-0"}},
//!   "to":"tier2","duration_ms":900000,"ticket":"INC-1234","reason":"..."}}
//! {"op":"list"}
//! {"op":"revoke","id":"g-0123456789abcdef"}
//! ```
//! Replies: `{"ok":true,"grant":{...}}`, `{"ok":true,"grants":[...]}`,
//! `{"ok":false,"error":"one sentence"}`.

use serde::{Deserialize, Serialize};

use super::grant::{Grant, Request};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Grant { request: Request },
    List,
    Revoke { id: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }

    pub fn grant(g: Grant) -> Reply {
        Reply {
            ok: true,
            grant: Some(g),
            ..Default::default()
        }
    }

    pub fn grants(g: Vec<Grant>) -> Reply {
        Reply {
            ok: true,
            grants: Some(g),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elevation::grant::Target;

    #[test]
    fn wire_form_is_the_documented_one() {
        let op: Op = serde_json::from_str(
            r#"{"op":"grant","request":{"target":{"pod":{"namespace":"agents","name":"tool-0"}},"to":"tier2","duration_ms":900000,"ticket":"INC-1234","reason":"r"}}"#,
        )
        .unwrap();
        let Op::Grant { request } = op else { panic!() };
        assert_eq!(
            request.target,
            Target::Pod {
                namespace: "agents".into(),
                name: "tool-0".into(),
                container: None
            }
        );
        assert_eq!(
            serde_json::from_str::<Op>(r#"{"op":"revoke","id":"g-1"}"#).unwrap(),
            Op::Revoke { id: "g-1".into() }
        );
        assert_eq!(
            serde_json::to_string(&Reply::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
        assert!(serde_json::from_str::<Op>(r#"{"op":"grant"}"#).is_err());
    }
}
