//! Tables, chains, rules, sets and maps.

use crate::expr::{DataType, Expr, Family, Stmt, Value, Verdict};
use std::collections::BTreeMap;

/// One nftables table and everything in it. svc-nft owns its tables whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// `inet` for svc-nft's own tables (both IP families in one).
    pub family: Family,
    /// The table's name, e.g. `svc-nft`.
    pub name: String,
    /// Lines printed as `#` comments above the table (not sent to the kernel): what the
    /// compiler chose not to program, and why.
    pub notes: Vec<String>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
}

/// Hooks a base chain can attach to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// The type of a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

/// What makes a chain a base chain: where the kernel calls it. Policy is always `accept`:
/// svc-nft only acts on traffic it owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseChain {
    /// `filter` or `nat`: what the chain may do.
    pub kind: ChainType,
    /// Where in the packet path the kernel calls it.
    pub hook: Hook,
    /// Lower runs first; NAT destination rewriting runs at -100, source at 100.
    pub priority: i32,
}

/// A chain: a base chain (hooked) or a regular one (reached by jump/goto/vmap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// `Some` for a base chain, hooked into the packet path.
    pub base: Option<BaseChain>,
    /// Evaluated in order.
    pub rules: Vec<Rule>,
}

/// A rule: statements evaluated in order, with an optional comment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Evaluated left to right; a failed match ends the rule.
    pub stmts: Vec<Stmt>,
    /// Shown by `nft list`; for the reader only.
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// How a key or data type is declared: by datatype (`type a . b`) or by expression
/// (`typeof e . f`, needed where a component has no named datatype, e.g. `numgen`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeSpec {
    Type(Vec<DataType>),
    Typeof(Vec<Expr>),
}

/// Set flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetFlag {
    /// Elements may be prefixes or ranges.
    Interval,
    /// Elements expire (after [`Set::timeout`] unless they say otherwise).
    Timeout,
    /// Rules may add elements (`update @set { … }`).
    Dynamic,
}

/// The key of an element: one value per component of the set's key type.
pub type Key = Vec<Value>;

/// The data an element maps to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Data {
    Values(Vec<Value>),
    Verdict(Verdict),
}

/// The value side of an element, keyed by its [`Key`] in [`Set::elements`].
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    /// `None` for plain sets.
    pub data: Option<Data>,
    /// Shown by `nft list` (which Service port an element belongs to).
    pub comment: Option<String>,
}

/// A named set, or a map when `data` is set (a verdict map when it maps to verdicts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// The type of the keys.
    pub key: TypeSpec,
    /// `None`: a set. `Some(None)`: a verdict map. `Some(Some(t))`: a data map to `t`.
    pub data: Option<Option<TypeSpec>>,
    /// Interval, timeout, dynamic.
    pub flags: Vec<SetFlag>,
    /// Default lifetime of elements, in seconds (with [`SetFlag::Timeout`]).
    pub timeout: Option<u32>,
    /// Shown by `nft list`.
    pub comment: Option<String>,
    /// The elements by key, in key order (the rendering order).
    pub elements: BTreeMap<Key, Element>,
}

impl Set {
    /// A set of keys of type `key`.
    pub fn keys(key: TypeSpec) -> Set {
        Set {
            key,
            data: None,
            flags: vec![],
            timeout: None,
            comment: None,
            elements: BTreeMap::new(),
        }
    }

    /// A map from `key` to verdicts.
    pub fn verdict_map(key: TypeSpec) -> Set {
        Set {
            data: Some(None),
            ..Set::keys(key)
        }
    }

    /// A map from `key` to values of type `data`.
    pub fn data_map(key: TypeSpec, data: TypeSpec) -> Set {
        Set {
            data: Some(Some(data)),
            ..Set::keys(key)
        }
    }

    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }

    /// The declaration without elements: what must be recreated when it changes.
    pub fn same_declaration(&self, other: &Set) -> bool {
        self.key == other.key
            && self.data == other.data
            && self.flags == other.flags
            && self.timeout == other.timeout
            && self.comment == other.comment
    }

    /// Chains its elements jump or go to.
    pub fn chain_targets(&self) -> impl Iterator<Item = &str> {
        self.elements.values().filter_map(|e| match &e.data {
            Some(Data::Verdict(v)) => v.target(),
            _ => None,
        })
    }
}

impl Chain {
    pub fn regular(rules: Vec<Rule>) -> Chain {
        Chain { base: None, rules }
    }

    pub fn base(base: BaseChain, rules: Vec<Rule>) -> Chain {
        Chain {
            base: Some(base),
            rules,
        }
    }

    /// Named sets its rules read.
    pub fn set_refs(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.stmts.iter().flat_map(|s| s.set_refs()))
    }
}
