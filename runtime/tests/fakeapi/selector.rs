//! Label and field selectors, applied to lists, live watches and replayed history alike.
//! On a watch, an object that stops matching is sent as `DELETED` and one that starts
//! matching as `ADDED`, as the API server's watch cache does.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::store::{Change, Res};
use super::watch::event_line;

/// What a list or watch asks for: resource, namespace, selectors.
pub(super) struct Filter {
    pub(super) res: &'static Res,
    pub(super) ns: Option<String>,
    pub(super) labels: Vec<LabelReq>,
    pub(super) fields: Vec<FieldReq>,
}

pub(super) enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

pub(super) struct FieldReq {
    pub(super) path: String,
    pub(super) value: String,
    pub(super) equal: bool,
}

/// `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (a,b)`,
/// `key notin (a,b)`, comma-separated (AND).
pub(super) fn parse_labels(sel: &str) -> Result<Vec<LabelReq>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&sel[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&sel[start..]);
    let mut reqs = Vec::new();
    for t in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        let bad = || format!("unable to parse requirement: {t:?}");
        let key = |k: &str| {
            let k = k.trim();
            if k.is_empty() || k.contains(char::is_whitespace) {
                Err(bad())
            } else {
                Ok(k.to_string())
            }
        };
        let req = if let Some(k) = t.strip_prefix('!') {
            LabelReq::NotExists(key(k)?)
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotIn(key(k)?, vec![v.trim().to_string()])
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            LabelReq::In(key(k)?, vec![v.trim().to_string()])
        } else if let (Some(open), true) = (t.find('('), t.ends_with(')')) {
            let mut head = t[..open].split_whitespace();
            let (Some(k), Some(op), None) = (head.next(), head.next(), head.next()) else {
                return Err(bad());
            };
            let values = t[open + 1..t.len() - 1]
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            match op {
                "in" => LabelReq::In(key(k)?, values),
                "notin" => LabelReq::NotIn(key(k)?, values),
                _ => return Err(bad()),
            }
        } else {
            LabelReq::Exists(key(t)?)
        };
        reqs.push(req);
    }
    Ok(reqs)
}

/// `path=v`, `path==v`, `path!=v`, comma-separated; `path` is any dotted JSON
/// path (`metadata.name`, `metadata.namespace`, `spec.type`, ...).
pub(super) fn parse_fields(sel: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = Vec::new();
    for t in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((p, v)) = t.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("invalid field selector: {t:?}"));
        };
        reqs.push(FieldReq {
            path: path.trim().to_string(),
            value: value.trim().to_string(),
            equal,
        });
    }
    Ok(reqs)
}

impl Filter {
    pub(super) fn new(
        res: &'static Res,
        ns: Option<String>,
        q: &HashMap<String, String>,
    ) -> Result<Filter, String> {
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
        Ok(Filter {
            res,
            ns,
            labels: parse_labels(get("labelSelector"))?,
            fields: parse_fields(get("fieldSelector"))?,
        })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.ns {
            if meta["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        let label = |k: &str| meta["labels"][k].as_str();
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let v = f.path.split('.').fold(obj, |v, seg| &v[seg]);
                let v = match v {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (v == f.value) == f.equal
            })
    }

    /// The event line this watch sees for `c`, if any.
    pub(super) fn convert(&self, c: &Change) -> Option<Vec<u8>> {
        if !std::ptr::eq(c.res, self.res) {
            return None;
        }
        let now = self.matches(&c.obj);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(p));
        match (c.kind, before, now) {
            ("MODIFIED", true, true) => Some(event_line("MODIFIED", &c.obj)),
            ("MODIFIED", false, true) | ("ADDED", _, true) => Some(event_line("ADDED", &c.obj)),
            ("MODIFIED", true, false) => {
                let mut old = c.prev.clone().expect("matched");
                old["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(event_line("DELETED", &old))
            }
            ("DELETED", _, true) => Some(event_line("DELETED", &c.obj)),
            _ => None,
        }
    }
}
