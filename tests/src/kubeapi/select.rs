//! Field and label selectors.

use serde_json::Value;

use super::http::Request;
use super::store::Resource;

/// What a list or watch asks for.
pub(super) struct Filter {
    pub(super) resource: Resource,
    namespace: Option<String>,
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Filter {
    pub(super) fn parse(
        resource: Resource,
        namespace: Option<&str>,
        req: &Request,
    ) -> Result<Filter, String> {
        let mut fields = Vec::new();
        for term in req
            .param("fieldSelector")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let k = k.trim();
            if !resource.field_labels().contains(&k) {
                return Err(format!("field label not supported: {k}"));
            }
            fields.push((k.to_string(), eq, v.trim().to_string()));
        }
        let mut labels = Vec::new();
        for term in split_top_level(req.param("labelSelector").unwrap_or("")) {
            labels.push(parse_label_term(&term)?);
        }
        Ok(Filter {
            resource,
            namespace: namespace.map(str::to_string),
            fields,
            labels,
        })
    }

    /// Whether `obj` (of the filter's resource) matches.
    pub(super) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let fields_ok = self
            .fields
            .iter()
            .all(|(k, eq, v)| (field_value(obj, k) == *v) == *eq);
        let label = |k: &str| meta["labels"][k].as_str();
        fields_ok
            && self.labels.iter().all(|r| match r {
                LabelReq::Eq(k, v) => label(k) == Some(v),
                LabelReq::Ne(k, v) => label(k) != Some(v),
                LabelReq::Exists(k) => label(k).is_some(),
                LabelReq::NotExists(k) => label(k).is_none(),
                LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
                LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            })
    }
}

fn field_value(obj: &Value, field: &str) -> String {
    let v = field.split('.').fold(obj, |v, part| &v[part]);
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null if field == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

/// Splits a label selector at the commas outside parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_term(t: &str) -> Result<LabelReq, String> {
    let bad = || format!("unable to parse requirement: {t}");
    if let Some(open) = t.find('(') {
        let inside = t[open + 1..].strip_suffix(')').ok_or_else(bad)?;
        let values: Vec<String> = inside
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        let mut words = t[..open].split_whitespace();
        let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        return match op {
            "in" => Ok(LabelReq::In(key.into(), values)),
            "notin" => Ok(LabelReq::NotIn(key.into(), values)),
            _ => Err(bad()),
        };
    }
    if let Some(k) = t.strip_prefix('!') {
        return Ok(LabelReq::NotExists(k.trim().into()));
    }
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(LabelReq::Ne(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().into(), v.trim().into()));
    }
    if t.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(LabelReq::Exists(t.into()))
}
