//! Arbitrary bytes through the whole `svc-nft compile -f FILE` chain: parse the manifest
//! stream, compile it for a node, render the nft script. Nothing may panic, hang or grow
//! without bound, whatever the input; rejections are diagnostics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use svc_nft_compiler::{compile, parse, NodeFacts, NodePortAddresses};
use svc_nft_ir::replace_script;

/// The node of most golden cases (dual-stack, named, zoned, with pod and Service networks),
/// masquerading all: the other branch of every node-dependent rule.
fn rich_node() -> NodeFacts {
    NodeFacts {
        node_name: Some("node-a".into()),
        node_ips: vec![
            "198.51.100.1".parse().unwrap(),
            "2001:db8:51::1".parse().unwrap(),
        ],
        zone: Some("zone-a".into()),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd00:96::/112".parse().unwrap(),
        ],
        nodeport_addresses: NodePortAddresses::Cidrs(vec![
            "198.51.100.0/24".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ]),
        masquerade_all: true,
        ..NodeFacts::default()
    }
}

fuzz_target!(|data: &[u8]| {
    // The CLI reads files as UTF-8 text (a file that is not is an I/O error, not a parse).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (objects, diagnostics) = parse("fuzz.yaml", text);
    for d in &diagnostics {
        let _ = d.to_string();
    }
    for node in [NodeFacts::default(), rich_node()] {
        let compiled = compile(&objects, &node);
        for d in &compiled.diagnostics {
            let _ = d.to_string();
        }
        let script = replace_script(&compiled.table);
        assert!(!script.is_empty());
    }
});
