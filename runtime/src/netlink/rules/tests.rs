use super::*;
use svc_nft_ir::{RejectWith, SetFlag, Verdict};

fn table() -> Table {
    let endpoints = Set::data_map(
        TypeSpec::Type(vec![DataType::Ipv4Addr, DataType::InetService]),
        TypeSpec::Type(vec![DataType::Ipv4Addr, DataType::InetService]),
    );
    let mut affinity = Set::data_map(
        TypeSpec::Type(vec![DataType::Ipv6Addr]),
        TypeSpec::Type(vec![DataType::Ipv6Addr, DataType::InetService]),
    );
    affinity.flags = vec![SetFlag::Dynamic, SetFlag::Timeout];
    Table {
        name: "t".into(),
        sets: [("m".into(), endpoints), ("affinity-v6".into(), affinity)].into(),
        ..Table::default()
    }
}

fn dnat(key: Expr) -> Rule {
    let map = "m".into();
    Rule::new(vec![Stmt::DnatMap {
        family: Family::Ip,
        key,
        map,
    }])
}

/// Where nft would add a check this encoder does not place, or refuse the rule, the
/// encoder refuses it too.
#[test]
fn what_nft_would_encode_otherwise_is_refused() {
    let t = table();
    let frontend = Expr::Concat(vec![
        Expr::Payload(Payload::IpDaddr),
        Expr::Payload(Payload::ThDport),
    ]);
    assert!(encode_rule(&dnat(frontend.clone()), &t).is_some());
    // No IP field checked the family before the DNAT.
    assert!(encode_rule(&dnat(Expr::Meta(MetaKey::Mark)), &t).is_none());
    // An IPv6 field after an IPv4 one.
    let mixed = Expr::Concat(vec![
        Expr::Payload(Payload::IpDaddr),
        Expr::Payload(Payload::Ip6Daddr),
    ]);
    assert!(encode_rule(&dnat(mixed), &t).is_none());
    // A TCP reset where the rule has not checked for TCP.
    let reset = Rule::new(vec![Stmt::Reject(RejectWith::TcpReset)]);
    assert!(encode_rule(&reset, &t).is_none());
    // A set the table does not declare; a table of another family; a long comment.
    let unknown = Rule::new(vec![Stmt::matches(
        Expr::Payload(Payload::IpDaddr),
        Expr::SetRef("nowhere".into()),
    )]);
    assert!(encode_rule(&unknown, &t).is_none());
    let ip = Table {
        family: Family::Ip,
        ..table()
    };
    assert!(encode_rule(&dnat(frontend), &ip).is_none());
    let accept = Rule::new(vec![Stmt::Verdict(Verdict::Accept)]);
    assert!(encode_rule(&accept.clone().with_comment("x".repeat(128)), &t).is_some());
    assert!(encode_rule(&accept.with_comment("x".repeat(129)), &t).is_none());
}
