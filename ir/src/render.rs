//! nft text output. Accepted by `nft -f -` 1.0.6; close to what `nft list` prints, so a golden
//! file reads like the kernel's own listing.

use crate::expr::{
    BinOp, CmpOp, CtKey, CtState, DataType, Expr, Family, L4Proto, MetaKey, Payload, RejectWith,
    Stmt, Value, Verdict,
};
use crate::table::{BaseChain, Chain, ChainType, Data, Element, Hook, Key, Set, SetFlag, Table};
use crate::table::{Rule, TypeSpec};
use std::fmt::{self, Display, Formatter, Write};

/// A script that replaces `table` whole in one transaction, whether or not it exists yet:
/// declare it (a no-op if present), delete it, then define it.
pub fn replace_script(table: &Table) -> String {
    let id = TableId(table);
    format!("table {id} {{}}\ndelete table {id}\n{table}")
}

/// `family name`, as every nft command names a table.
pub(crate) struct TableId<'a>(pub &'a Table);

impl Display for TableId<'_> {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        write!(f, "{} {}", self.0.family, self.0.name)
    }
}

fn join<T: Display>(items: impl IntoIterator<Item = T>, sep: &str) -> String {
    let mut out = String::new();
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        write!(out, "{item}").expect("writing to a String cannot fail");
    }
    out
}

/// nft string literal: comments come from Kubernetes names, which never hold quotes, but a
/// stray quote must not break the script.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

impl Display for Family {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        })
    }
}

impl Display for L4Proto {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Sctp => "sctp",
        })
    }
}

impl Display for Value {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            Value::Ipv4(a) => write!(f, "{a}"),
            Value::Ipv6(a) => write!(f, "{a}"),
            Value::Prefix(n) => write!(f, "{n}"),
            Value::Proto(p) => write!(f, "{p}"),
            Value::Port(p) => write!(f, "{p}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bits(b) => write!(f, "{b:#x}"),
            Value::CtState(CtState::New) => f.write_str("new"),
            Value::CtStatusDnat => f.write_str("dnat"),
            Value::LocalAddress => f.write_str("local"),
        }
    }
}

impl Display for DataType {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(match self {
            DataType::Ipv4Addr => "ipv4_addr",
            DataType::Ipv6Addr => "ipv6_addr",
            DataType::InetProto => "inet_proto",
            DataType::InetService => "inet_service",
        })
    }
}

impl Display for TypeSpec {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            TypeSpec::Type(types) => write!(f, "type {}", join(types, " . ")),
            TypeSpec::Typeof(exprs) => write!(f, "typeof {}", join(exprs, " . ")),
        }
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            Expr::Payload(p) => f.write_str(match p {
                Payload::IpSaddr => "ip saddr",
                Payload::IpDaddr => "ip daddr",
                Payload::Ip6Saddr => "ip6 saddr",
                Payload::Ip6Daddr => "ip6 daddr",
                Payload::ThDport => "th dport",
                Payload::Dport(proto) => return write!(f, "{proto} dport"),
            }),
            Expr::Meta(MetaKey::L4Proto) => f.write_str("meta l4proto"),
            Expr::Meta(MetaKey::Mark) => f.write_str("meta mark"),
            Expr::Ct(CtKey::State) => f.write_str("ct state"),
            Expr::Ct(CtKey::Status) => f.write_str("ct status"),
            Expr::Ct(CtKey::OriginalIpDaddr) => f.write_str("ct original ip daddr"),
            Expr::Ct(CtKey::OriginalIp6Daddr) => f.write_str("ct original ip6 daddr"),
            Expr::Ct(CtKey::OriginalProtoDst) => f.write_str("ct original proto-dst"),
            Expr::FibSaddrType => f.write_str("fib saddr type"),
            Expr::FibDaddrType => f.write_str("fib daddr type"),
            Expr::NumgenRandom(n) => write!(f, "numgen random mod {n}"),
            Expr::Concat(parts) => f.write_str(&join(parts, " . ")),
            Expr::Bitwise(e, op, v) => {
                let op = match op {
                    BinOp::And => "&",
                    BinOp::Or => "|",
                    BinOp::Xor => "^",
                };
                write!(f, "{e} {op} {v:#x}")
            }
            Expr::Fixed(e, v) => {
                let zero = match v {
                    Value::Ipv4(_) => "0.0.0.0",
                    Value::Ipv6(_) => "::",
                    _ => "0",
                };
                write!(f, "{e} & {zero} | {v}")
            }
            Expr::Value(v) => write!(f, "{v}"),
            Expr::SetRef(name) => write!(f, "@{name}"),
        }
    }
}

impl Display for Verdict {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Return => f.write_str("return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

impl Display for Stmt {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        match self {
            // A bitwise left side needs an explicit `==`, or nft reads the constant as part of it.
            Stmt::Match {
                left: left @ Expr::Bitwise(..),
                op: CmpOp::Eq,
                right,
            } => write!(f, "{left} == {right}"),
            Stmt::Match { left, op, right } => match op {
                CmpOp::Eq => write!(f, "{left} {right}"),
                CmpOp::Ne => write!(f, "{left} != {right}"),
            },
            Stmt::Vmap { key, map } => write!(f, "{key} vmap @{map}"),
            Stmt::DnatMap { family, key, map } => write!(f, "dnat {family} to {key} map @{map}"),
            Stmt::Dnat { family, addr, port } => match addr {
                Value::Ipv6(a) => write!(f, "dnat {family} to [{a}]:{port}"),
                a => write!(f, "dnat {family} to {a}:{port}"),
            },
            Stmt::Masquerade => f.write_str("masquerade fully-random"),
            Stmt::MetaSet { key, value } => write!(f, "{} set {value}", Expr::Meta(*key)),
            Stmt::Update {
                set,
                key,
                timeout,
                data,
            } => {
                write!(f, "update @{set} {{ {key}")?;
                if let Some(t) = timeout {
                    write!(f, " timeout {t}s")?;
                }
                if let Some(d) = data {
                    write!(f, " : {d}")?;
                }
                f.write_str(" }")
            }
            Stmt::Reject(RejectWith::PortUnreachable) => f.write_str("reject"),
            Stmt::Reject(RejectWith::TcpReset) => f.write_str("reject with tcp reset"),
            Stmt::Verdict(v) => write!(f, "{v}"),
        }
    }
}

impl Display for Rule {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(&join(&self.stmts, " "))?;
        match &self.comment {
            Some(c) => write!(f, " comment {}", quoted(c)),
            None => Ok(()),
        }
    }
}

impl Display for BaseChain {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        let kind = match self.kind {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        };
        let hook = match self.hook {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        };
        write!(
            f,
            "type {kind} hook {hook} priority {}; policy accept;",
            self.priority
        )
    }
}

/// `key [comment "…"] [: data]`, as in an `elements = { … }` list.
pub(crate) fn element(key: &Key, elem: &Element) -> String {
    let mut out = join(key, " . ");
    if let Some(c) = &elem.comment {
        write!(out, " comment {}", quoted(c)).expect("writing to a String cannot fail");
    }
    match &elem.data {
        Some(Data::Values(vs)) => write!(out, " : {}", join(vs, " . ")),
        Some(Data::Verdict(v)) => write!(out, " : {v}"),
        None => Ok(()),
    }
    .expect("writing to a String cannot fail");
    out
}

/// `{ e1, e2 }` with one element per line, each line indented by `indent` tabs.
pub(crate) fn element_list(elems: impl IntoIterator<Item = String>, indent: usize) -> String {
    let pad = "\t".repeat(indent);
    let lines: Vec<String> = elems.into_iter().map(|e| format!("{pad}\t{e}")).collect();
    format!("{{\n{}\n{pad}}}", lines.join(",\n"))
}

/// The declaration lines of a set or map (without elements), each ending in `;` so the same
/// text works inside a table block and on an `add set` command line.
pub(crate) fn set_declaration(set: &Set) -> Vec<String> {
    let mut lines = vec![match &set.data {
        None => format!("{}", set.key),
        Some(None) => format!("{} : verdict", set.key),
        Some(Some(TypeSpec::Type(t))) => format!("{} : {}", set.key, join(t, " . ")),
        Some(Some(TypeSpec::Typeof(e))) => format!("{} : {}", set.key, join(e, " . ")),
    }];
    if !set.flags.is_empty() {
        let flags = set.flags.iter().map(|f| match f {
            SetFlag::Interval => "interval",
            SetFlag::Timeout => "timeout",
            SetFlag::Dynamic => "dynamic",
        });
        lines.push(format!("flags {}", join(flags, ",")));
    }
    if let Some(seconds) = set.timeout {
        lines.push(format!("timeout {seconds}s"));
    }
    if let Some(c) = &set.comment {
        lines.push(format!("comment {}", quoted(c)));
    }
    lines
}

fn write_set(f: &mut Formatter, name: &str, set: &Set) -> fmt::Result {
    let kind = if set.is_map() { "map" } else { "set" };
    writeln!(f, "\t{kind} {name} {{")?;
    for line in set_declaration(set) {
        writeln!(f, "\t\t{line}")?;
    }
    if !set.elements.is_empty() {
        let elems = set.elements.iter().map(|(k, e)| element(k, e));
        writeln!(f, "\t\telements = {}", element_list(elems, 2))?;
    }
    writeln!(f, "\t}}")
}

fn write_chain(f: &mut Formatter, name: &str, chain: &Chain) -> fmt::Result {
    writeln!(f, "\tchain {name} {{")?;
    if let Some(base) = &chain.base {
        writeln!(f, "\t\t{base}")?;
    }
    for rule in &chain.rules {
        writeln!(f, "\t\t{rule}")?;
    }
    writeln!(f, "\t}}")
}

impl Display for Table {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        for note in &self.notes {
            writeln!(f, "# {note}")?;
        }
        writeln!(f, "table {} {{", TableId(self))?;
        let mut first = true;
        for (name, set) in &self.sets {
            if !std::mem::take(&mut first) {
                writeln!(f)?;
            }
            write_set(f, name, set)?;
        }
        for (name, chain) in &self.chains {
            if !std::mem::take(&mut first) {
                writeln!(f)?;
            }
            write_chain(f, name, chain)?;
        }
        writeln!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Element, Rule};
    use std::net::Ipv4Addr;

    #[test]
    fn a_table_renders_as_nft_accepts_it() {
        let mut set = Set::data_map(
            TypeSpec::Typeof(vec![Expr::Payload(Payload::IpDaddr), Expr::NumgenRandom(1)]),
            TypeSpec::Type(vec![DataType::Ipv4Addr]),
        );
        let key = vec![Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), Value::Int(0)];
        let data = Some(Data::Values(vec![Value::Ipv4(Ipv4Addr::new(10, 1, 0, 1))]));
        set.elements.insert(
            key,
            Element {
                data,
                comment: Some("a \"quoted\" name".into()),
            },
        );
        let marked = Expr::Bitwise(Box::new(Expr::Meta(MetaKey::Mark)), BinOp::And, 0x4000);
        let rule = Rule::new(vec![
            Stmt::matches(marked, Expr::Value(Value::Bits(0))),
            Stmt::Verdict(Verdict::Return),
        ]);
        let base = BaseChain {
            kind: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: 100,
        };
        let table = Table {
            name: "t".into(),
            notes: vec!["a note".into()],
            sets: [("m".to_string(), set)].into(),
            chains: [("post".to_string(), Chain::base(base, vec![rule]))].into(),
            ..Table::default()
        };
        let expected = "\
table inet t {}
delete table inet t
# a note
table inet t {
\tmap m {
\t\ttypeof ip daddr . numgen random mod 1 : ipv4_addr
\t\telements = {
\t\t\t10.0.0.1 . 0 comment \"a 'quoted' name\" : 10.1.0.1
\t\t}
\t}

\tchain post {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tmeta mark & 0x4000 == 0x0 return
\t}
}
";
        assert_eq!(replace_script(&table), expected);
    }
}
