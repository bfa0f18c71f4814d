//! The minimal transaction between two tables.
//!
//! Elements are added and deleted one by one; a chain whose rules changed is flushed and
//! refilled (our chains hold a handful of rules; rule handles would buy nothing); a set or map
//! whose declaration changed is recreated. The operations are ordered so that nothing is
//! deleted while still referenced and nothing is referenced before it exists, which is what lets
//! the whole batch commit atomically.

use crate::render::{element, element_list, set_declaration, TableId};
use crate::table::{Chain, Element, Key, Rule, Set, Table};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Display, Formatter};

/// One nft command of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    AddTable,
    /// Create a chain, empty (its rules follow as [`Op::AddRule`]).
    AddChain(String, Chain),
    FlushChain(String),
    DeleteChain(String),
    /// Create a set or map, without its elements (they follow as [`Op::AddElements`]).
    AddSet(String, Set),
    /// Delete a set or map (`true`: a map).
    DeleteSet(String, bool),
    AddElements(String, Vec<(Key, Element)>),
    DeleteElements(String, Vec<Key>),
    AddRule(String, Rule),
}

/// A batch of commands on one table, applied by the kernel all or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The table the commands act on (only its family and name are used).
    pub table: Table,
    /// In the order the kernel must apply them.
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Commands that move a kernel holding `old` to `new`. Both must be the same table (family
/// and name); an empty `old` (no sets, no chains) yields the commands that create `new`.
pub fn diff(old: &Table, new: &Table) -> Transaction {
    let is_new_table = old.sets.is_empty() && old.chains.is_empty();
    let recreated_sets: BTreeSet<&str> = old
        .sets
        .iter()
        .filter(|(name, set)| match new.sets.get(*name) {
            Some(n) => !n.same_declaration(set),
            None => true,
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let recreated_chains: BTreeSet<&str> = old
        .chains
        .iter()
        .filter(|(name, chain)| match new.chains.get(*name) {
            Some(n) => n.base != chain.base,
            None => true,
        })
        .map(|(name, _)| name.as_str())
        .collect();
    // Chains that keep existing but must be refilled: their rules changed, or they read a set
    // that is about to be deleted.
    let refilled: BTreeSet<&str> = old
        .chains
        .iter()
        .filter(|(name, chain)| {
            !recreated_chains.contains(name.as_str())
                && (new.chains[*name].rules != chain.rules
                    || chain.set_refs().any(|s| recreated_sets.contains(s)))
        })
        .map(|(name, _)| name.as_str())
        .collect();

    let mut ops = Vec::new();
    if is_new_table {
        ops.push(Op::AddTable);
    }
    // 1. Drop references: rules first, then elements of surviving maps.
    for name in refilled.iter().chain(&recreated_chains) {
        ops.push(Op::FlushChain(name.to_string()));
    }
    for (name, set) in &old.sets {
        if recreated_sets.contains(name.as_str()) {
            continue;
        }
        let new_elems = &new.sets[name].elements;
        let gone: Vec<Key> = set
            .elements
            .iter()
            .filter(|(k, e)| new_elems.get(*k) != Some(e))
            .map(|(k, _)| k.clone())
            .collect();
        if !gone.is_empty() {
            ops.push(Op::DeleteElements(name.clone(), gone));
        }
    }
    // 2. Delete what is gone or changed shape.
    for name in &recreated_sets {
        ops.push(Op::DeleteSet(name.to_string(), old.sets[*name].is_map()));
    }
    for name in &recreated_chains {
        ops.push(Op::DeleteChain(name.to_string()));
    }
    // 3. Create: chains (empty, so any rule or element may refer to any chain), then sets.
    let created_chains: Vec<(&String, &Chain)> = new
        .chains
        .iter()
        .filter(|(n, _)| !old.chains.contains_key(*n) || recreated_chains.contains(n.as_str()))
        .collect();
    for (name, chain) in &created_chains {
        let empty = Chain {
            rules: vec![],
            ..(*chain).clone()
        };
        ops.push(Op::AddChain(name.to_string(), empty));
    }
    for (name, set) in &new.sets {
        let created = !old.sets.contains_key(name) || recreated_sets.contains(name.as_str());
        let added: Vec<(Key, Element)> = if created {
            let decl = Set {
                elements: BTreeMap::new(),
                ..set.clone()
            };
            ops.push(Op::AddSet(name.clone(), decl));
            set.elements.clone().into_iter().collect()
        } else {
            let old_elems = &old.sets[name].elements;
            set.elements
                .iter()
                .filter(|(k, e)| old_elems.get(*k) != Some(e))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        if !added.is_empty() {
            ops.push(Op::AddElements(name.clone(), added));
        }
    }
    // 4. Fill chains.
    let filled = created_chains
        .iter()
        .map(|(n, _)| n.as_str())
        .chain(refilled.iter().copied());
    for name in filled.collect::<BTreeSet<_>>() {
        for rule in &new.chains[name].rules {
            ops.push(Op::AddRule(name.to_string(), rule.clone()));
        }
    }
    Transaction {
        table: Table {
            family: new.family,
            name: new.name.clone(),
            ..Table::default()
        },
        ops,
    }
}

impl Display for Transaction {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        let t = TableId(&self.table);
        for op in &self.ops {
            match op {
                Op::AddTable => writeln!(f, "add table {t}")?,
                Op::AddChain(name, chain) => match &chain.base {
                    Some(base) => writeln!(f, "add chain {t} {name} {{ {base} }}")?,
                    None => writeln!(f, "add chain {t} {name}")?,
                },
                Op::FlushChain(name) => writeln!(f, "flush chain {t} {name}")?,
                Op::DeleteChain(name) => writeln!(f, "delete chain {t} {name}")?,
                Op::AddSet(name, set) => {
                    let kind = if set.is_map() { "map" } else { "set" };
                    let decl = set_declaration(set).join("; ");
                    writeln!(f, "add {kind} {t} {name} {{ {decl}; }}")?
                }
                Op::DeleteSet(name, is_map) => {
                    let kind = if *is_map { "map" } else { "set" };
                    writeln!(f, "delete {kind} {t} {name}")?
                }
                Op::AddElements(name, elems) => {
                    let list = element_list(elems.iter().map(|(k, e)| element(k, e)), 0);
                    writeln!(f, "add element {t} {name} {list}")?
                }
                Op::DeleteElements(name, keys) => {
                    let bare = Element {
                        data: None,
                        comment: None,
                    };
                    let list = element_list(keys.iter().map(|k| element(k, &bare)), 0);
                    writeln!(f, "delete element {t} {name} {list}")?
                }
                Op::AddRule(chain, rule) => writeln!(f, "add rule {t} {chain} {rule}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{DataType, Expr, Payload, Stmt, Value, Verdict};
    use crate::table::{Data, TypeSpec};
    use std::net::Ipv4Addr;

    fn vmap(targets: &[(u8, &str)]) -> Set {
        let mut set = Set::verdict_map(TypeSpec::Type(vec![DataType::Ipv4Addr]));
        for (last, chain) in targets {
            let key = vec![Value::Ipv4(Ipv4Addr::new(10, 0, 0, *last))];
            let data = Some(Data::Verdict(Verdict::Goto(chain.to_string())));
            set.elements.insert(
                key,
                Element {
                    data,
                    comment: None,
                },
            );
        }
        set
    }

    fn table(targets: &[(u8, &str)], chains: &[&str]) -> Table {
        let mut t = Table {
            name: "t".into(),
            ..Table::default()
        };
        t.sets.insert("m".into(), vmap(targets));
        let lookup = Stmt::Vmap {
            key: Expr::Payload(Payload::IpDaddr),
            map: "m".into(),
        };
        t.chains.insert(
            "entry".into(),
            Chain::regular(vec![Rule::new(vec![lookup])]),
        );
        for c in chains {
            let accept = Rule::new(vec![Stmt::Verdict(Verdict::Accept)]);
            t.chains.insert(c.to_string(), Chain::regular(vec![accept]));
        }
        t
    }

    #[test]
    fn equal_tables_need_no_commands() {
        let t = table(&[(1, "a")], &["a"]);
        assert!(diff(&t, &t).is_empty());
    }

    #[test]
    fn an_empty_table_is_created_whole() {
        let t = table(&[(1, "a")], &["a"]);
        let empty = Table {
            name: "t".into(),
            ..Table::default()
        };
        let text = diff(&empty, &t).to_string();
        assert!(text.starts_with("add table inet t\n"), "{text}");
        assert!(text.contains("add element inet t m {\n\t10.0.0.1 : goto a\n}\n"));
    }

    #[test]
    fn moving_an_element_to_a_new_chain_orders_references() {
        let old = table(&[(1, "a")], &["a"]);
        let new = table(&[(1, "b")], &["b"]);
        let text = diff(&old, &new).to_string();
        // The element that points at `a` goes before `a`; `b` exists before anything
        // points at it.
        let expected = "\
flush chain inet t a
delete element inet t m {
\t10.0.0.1
}
delete chain inet t a
add chain inet t b
add element inet t m {
\t10.0.0.1 : goto b
}
add rule inet t b accept
";
        assert_eq!(text, expected);
    }
}
