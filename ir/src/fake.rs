//! An in-memory kernel for tests: applies a [`Transaction`] to a [`Table`] the way nftables
//! would, refusing what the kernel refuses (knftables' fake is the model).

use crate::diff::{Op, Transaction};
use crate::table::Table;

impl Table {
    /// Apply `tx` all or nothing, as the kernel commits a batch. Refused, as by the kernel: a
    /// table created twice, a chain or set created over an existing one with a different
    /// shape, deleting or flushing what does not exist, an element added over a different one
    /// with the same key, deleting an element that is not there, a rule in a missing chain.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), String> {
        let mut next = self.clone();
        for op in &tx.ops {
            next.apply_op(op)?;
        }
        *self = next;
        Ok(())
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::AddTable if !self.sets.is_empty() || !self.chains.is_empty() => {
                return Err("add table: it exists and is not empty".into())
            }
            Op::AddTable => {}
            Op::AddChain(name, chain) => match self.chains.get(name) {
                Some(c) if c.base != chain.base => return Err(format!("add chain {name}: exists")),
                Some(_) => {}
                None => {
                    let empty = crate::Chain {
                        rules: vec![],
                        ..chain.clone()
                    };
                    self.chains.insert(name.clone(), empty);
                }
            },
            Op::FlushChain(name) => self.chain(name)?.rules.clear(),
            Op::DeleteChain(name) => {
                self.chains
                    .remove(name)
                    .ok_or(format!("delete chain {name}: no such chain"))?;
            }
            Op::AddSet(name, set) => match self.sets.get(name) {
                Some(s) if !s.same_declaration(set) => {
                    return Err(format!("add set {name}: exists"))
                }
                Some(_) => {}
                None => {
                    self.sets.insert(name.clone(), set.clone());
                }
            },
            Op::DeleteSet(name, _) => {
                self.sets
                    .remove(name)
                    .ok_or(format!("delete set {name}: no such set"))?;
            }
            Op::AddElements(name, elements) => {
                let set = self.set(name)?;
                for (key, element) in elements {
                    match set.elements.get(key) {
                        Some(e) if e.data != element.data => {
                            return Err(format!("add element {name} {key:?}: exists"))
                        }
                        _ => set.elements.insert(key.clone(), element.clone()),
                    };
                }
            }
            Op::DeleteElements(name, keys) => {
                let set = self.set(name)?;
                for key in keys {
                    set.elements
                        .remove(key)
                        .ok_or(format!("delete element {name} {key:?}: no such element"))?;
                }
            }
            Op::AddRule(name, rule) => self.chain(name)?.rules.push(rule.clone()),
        }
        Ok(())
    }

    fn chain(&mut self, name: &str) -> Result<&mut crate::Chain, String> {
        self.chains
            .get_mut(name)
            .ok_or(format!("{name}: no such chain"))
    }

    fn set(&mut self, name: &str) -> Result<&mut crate::Set, String> {
        self.sets
            .get_mut(name)
            .ok_or(format!("{name}: no such set"))
    }
}
