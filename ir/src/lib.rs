//! The svc-nft IR: a flat, typed model of the nftables objects svc-nft puts in the kernel.
//!
//! Passes (the compiler) only produce it; emitters only consume it:
//! - [`render`] prints a [`Table`] as nft text that `nft -f -` (1.0.6) accepts, deterministically;
//! - [`diff`] turns two tables into the minimal [`Transaction`] that moves a kernel holding
//!   the first to the second in one atomic batch;
//! - [`explain`] interprets a table for one new connection: where it goes, with what chance.
//!
//! Every collection is ordered (`BTreeMap`, or a `Vec` whose order is meaningful), so the same
//! table always renders to the same bytes.

mod diff;
mod eval;
mod expr;
mod fake;
mod render;
mod table;

pub use diff::{diff, Op, Transaction};
pub use eval::{explain, Fate, Outcome, Packet};
pub use expr::{
    BinOp, CmpOp, CtKey, CtState, DataType, Expr, Family, L4Proto, MetaKey, Payload, RejectWith,
    Stmt, Value, Verdict,
};
pub use render::replace_script;
pub use table::{
    BaseChain, Chain, ChainType, Data, Element, Hook, Key, Rule, Set, SetFlag, Table, TypeSpec,
};
