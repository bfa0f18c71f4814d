//! `nft -j` listings in a form that compares equal whenever the kernel holds the same thing,
//! for the tests that check one way of loading a table against another.

use super::Netns;
use serde_json::{Map, Value as Json};

/// `nft -j list table inet NAME` in `ns`, canonical.
pub fn table(ns: &Netns, name: &str) -> Json {
    canonical(&ns.nft_list(&format!("-j list table inet {name}")))
}

/// A `nft -j list table` listing without what depends on history rather than content
/// (handles, element order, whether nft decodes one transport-port load as `tcp dport` or
/// `th dport`, which depends on its cache), the items sorted by kind and name. The sort is
/// stable, so rules keep their order within a chain.
pub fn canonical(listing: &str) -> Json {
    let mut json: Json = serde_json::from_str(listing).expect("nft -j output is JSON");
    each_object(&mut json, &mut |map| {
        map.remove("handle");
        if map.get("field") == Some(&Json::from("dport")) {
            map.insert("protocol".into(), Json::from("th"));
        }
        if let Some(Json::Array(elems)) = map.get_mut("elem") {
            elems.sort_by_cached_key(|e| e.to_string());
        }
    });
    let mut items = json["nftables"].as_array().cloned().unwrap_or_default();
    items.retain(|i| i.get("metainfo").is_none());
    items.sort_by_cached_key(|item| {
        let (kind, body) = item.as_object().unwrap().iter().next().unwrap();
        let name = body.get("chain").or(body.get("name")).cloned();
        (
            kind.clone(),
            name.map(|n| n.to_string()).unwrap_or_default(),
        )
    });
    Json::Array(items)
}

/// Drops the handles, which depend on history.
pub fn without_handles(json: &mut Json) {
    each_object(json, &mut |map| {
        map.remove("handle");
    });
}

/// Calls `f` on every object in `json`, innermost first.
fn each_object<F: FnMut(&mut Map<String, Json>)>(json: &mut Json, f: &mut F) {
    match json {
        Json::Object(map) => {
            map.values_mut().for_each(|v| each_object(v, f));
            f(map);
        }
        Json::Array(items) => items.iter_mut().for_each(|v| each_object(v, f)),
        _ => {}
    }
}

pub fn pretty(json: &Json) -> String {
    serde_json::to_string_pretty(json).unwrap()
}

/// A unified diff from `old` to `new` pretty-printed, for a failure message.
pub fn json_diff(old: &Json, new: &Json, headers: (&str, &str)) -> String {
    unified_diff(&pretty(old), &pretty(new), headers)
}

/// A unified diff from `old` to `new`, for a failure message.
pub fn unified_diff(old: &str, new: &str, (old_header, new_header): (&str, &str)) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .header(old_header, new_header)
        .to_string()
}
