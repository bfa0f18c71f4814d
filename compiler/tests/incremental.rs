//! A change to one Service touches only that Service's elements: the transaction does not
//! grow with the number of Services.

use svc_nft_compiler::{compile, parse, NodeFacts};
use svc_nft_ir::{diff, Op};

/// `n` Services with two endpoints each; Service `moved` has its second endpoint elsewhere.
fn cluster(n: usize, moved: Option<usize>) -> svc_nft_ir::Table {
    let text: Vec<String> = (0..n)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            let second = if Some(i) == moved { 246 } else { 245 };
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                 spec: {{clusterIP: 10.96.{hi}.{lo}, ports: [{{port: 80}}]}}\n---\n\
                 apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s{i}}}\n\
                 subsets: [{{addresses: [{{ip: 10.244.{hi}.{lo}}}, {{ip: 10.{second}.{hi}.{lo}}}], ports: [{{port: 80}}]}}]\n"
            )
        })
        .collect();
    let (objects, errors) = parse("generated", &text.join("---\n"));
    assert!(errors.is_empty(), "{errors:?}");
    compile(&objects, &NodeFacts::default()).table
}

/// Elements added plus deleted, and whether anything but elements changed.
fn size(n: usize) -> (usize, bool) {
    let tx = diff(&cluster(n, None), &cluster(n, Some(n / 2)));
    let mut elements = 0;
    let mut structural = false;
    for op in &tx.ops {
        match op {
            Op::AddElements(_, e) => elements += e.len(),
            Op::DeleteElements(_, k) => elements += k.len(),
            _ => structural = true,
        }
    }
    (elements, structural)
}

#[test]
fn one_endpoint_moving_costs_the_same_at_any_size() {
    let small = size(100);
    assert_eq!(small, size(2000));
    // The slot's data element (delete + add) and the hairpin element (delete + add).
    assert_eq!(small, (4, false));
}
