//! The compiler is a pure function of the set of objects: any order gives the same bytes.

use proptest::prelude::*;
use svc_nft_compiler::{compile, parse, NodeFacts, Object};
use svc_nft_ir::replace_script;

/// Every object of the bundled examples.
fn examples() -> Vec<Object> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut objects = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let (mut found, errors) = parse(&path.display().to_string(), &text);
        assert!(errors.is_empty(), "{errors:?}");
        objects.append(&mut found);
    }
    objects
}

proptest! {
    #[test]
    fn any_order_gives_the_same_ruleset(shuffled in Just(examples()).prop_shuffle()) {
        let node = NodeFacts {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..NodeFacts::default()
        };
        let expected = replace_script(&compile(&examples(), &node).table);
        prop_assert_eq!(replace_script(&compile(&shuffled, &node).table), expected);
    }
}
