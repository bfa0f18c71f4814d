//! An interpreter of the IR: where would the kernel send the first packet of a connection?
//!
//! It walks the base chains of the hooks a new connection crosses, in priority order, and
//! evaluates every statement the way nftables does. `numgen random` is the only chance in the
//! IR: the interpreter follows every slot and weighs each outcome by its probability, so the
//! answer is the full set of candidate endpoints with their shares. It reads the IR, not the
//! kernel, so it stays honest as the layout changes — and the kernel tests check it.

use crate::expr::{BinOp, CmpOp, CtKey, Expr, L4Proto, MetaKey, Payload, Stmt, Value, Verdict};
use crate::table::{Chain, Data, Element, Hook, Key, Table};
use std::net::IpAddr;

/// The first packet of a connection, as it enters the node (or leaves a local process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The client's address.
    pub saddr: IpAddr,
    /// The address it connects to.
    pub daddr: IpAddr,
    pub proto: L4Proto,
    /// The port it connects to.
    pub dport: u16,
    /// Sent by a process on the node itself (`fib saddr type local`, the output hook).
    pub from_node: bool,
    /// Sent to an address of the node (`fib daddr type local`).
    pub to_node: bool,
}

/// What happens to the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Destination rewritten to this endpoint.
    Dnat {
        addr: IpAddr,
        port: u16,
    },
    Reject,
    Drop,
    /// Left alone: not a Service address svc-nft handles.
    Untouched,
}

/// One possible outcome, with its probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub fate: Fate,
    /// Probability of this outcome, 0 to 1.
    pub share: f64,
    /// Source address rewritten on the way out.
    pub masquerade: bool,
    /// Chains, rules and elements that decided it, in order.
    pub path: Vec<String>,
    /// Comments of the map elements matched: the Service port, `namespace/name:port`.
    pub services: Vec<String>,
}

/// Every outcome of `packet` in `table`, most likely first.
pub fn explain(table: &Table, packet: &Packet) -> Vec<Outcome> {
    let first = if packet.from_node {
        Hook::Output
    } else {
        Hook::Prerouting
    };
    let start = State {
        packet: packet.clone(),
        original: packet.clone(),
        mark: 0,
        dnat: false,
        masquerade: false,
        path: vec![],
        services: vec![],
    };
    let mut outcomes = Vec::new();
    for (run, share) in run_hook(table, first, start, 1.0) {
        let (fate, state) = match run.fate {
            Some(fate) => (fate, run.state),
            None => {
                let fate = match run.state.dnat {
                    true => Fate::Dnat {
                        addr: run.state.packet.daddr,
                        port: run.state.packet.dport,
                    },
                    false => Fate::Untouched,
                };
                // Postrouting draws no random numbers: one branch comes out.
                let (post, _) = run_hook(table, Hook::Postrouting, run.state, share)
                    .into_iter()
                    .next()
                    .expect("a hook always ends somewhere");
                (fate, post.state)
            }
        };
        outcomes.push(Outcome {
            fate,
            share,
            masquerade: state.masquerade,
            path: state.path,
            services: state.services,
        });
    }
    merge(outcomes)
}

/// Outcomes that differ only in the slot drawn are one outcome with the summed share.
fn merge(outcomes: Vec<Outcome>) -> Vec<Outcome> {
    let mut merged: Vec<Outcome> = Vec::new();
    for o in outcomes {
        match merged
            .iter_mut()
            .find(|m| m.fate == o.fate && m.masquerade == o.masquerade)
        {
            Some(m) => m.share += o.share,
            None => merged.push(o),
        }
    }
    merged.sort_by(|a, b| {
        b.share
            .partial_cmp(&a.share)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| format!("{:?}", a.fate).cmp(&format!("{:?}", b.fate)))
    });
    merged
}

#[derive(Clone, Debug)]
struct State {
    packet: Packet,
    original: Packet,
    mark: u32,
    dnat: bool,
    masquerade: bool,
    path: Vec<String>,
    services: Vec<String>,
}

/// A state after a chain, and the fate it reached, if any (drop, reject).
#[derive(Clone, Debug)]
struct Run {
    state: State,
    fate: Option<Fate>,
}

/// How a chain ended for one branch.
enum End {
    /// Fell off the end, or `return`: continue in the caller.
    Continue,
    /// Accepted by this base chain (`accept`, or a NAT statement): the next base chain runs.
    Accept,
    Final(Fate),
}

fn run_hook(table: &Table, hook: Hook, state: State, share: f64) -> Vec<(Run, f64)> {
    let mut chains: Vec<(&String, &Chain)> = table
        .chains
        .iter()
        .filter(|(_, c)| c.base.is_some_and(|b| b.hook == hook))
        .collect();
    chains.sort_by_key(|(name, c)| (c.base.map(|b| b.priority), name.as_str()));
    let mut branches = vec![(state, share)];
    let mut finished = Vec::new();
    for (name, _) in chains {
        let mut next = Vec::new();
        for (mut st, sh) in branches {
            st.path.push(format!("{name}:"));
            for (end, st2, sh2) in run_chain(table, name, st, sh, 0) {
                match end {
                    End::Final(fate) => finished.push((
                        Run {
                            state: st2,
                            fate: Some(fate),
                        },
                        sh2,
                    )),
                    End::Continue | End::Accept => next.push((st2, sh2)),
                }
            }
        }
        branches = next;
    }
    finished.extend(
        branches
            .into_iter()
            .map(|(state, sh)| (Run { state, fate: None }, sh)),
    );
    finished
}

/// Run chain `name`; jumps recurse. Returns every branch's end.
fn run_chain(
    table: &Table,
    name: &str,
    state: State,
    share: f64,
    depth: usize,
) -> Vec<(End, State, f64)> {
    assert!(depth < 16, "chain loop at {name}");
    let chain = &table.chains[name];
    let mut branches = vec![(state, share)];
    let mut out = Vec::new();
    for (i, rule) in chain.rules.iter().enumerate() {
        let mut next = Vec::new();
        for (st, sh) in branches {
            // The rule goes in the path before the elements it looked up.
            let at = st.path.len();
            let line = format!("  {name}[{i}]: {rule}");
            for (step, mut st2, sh2) in run_rule(table, &rule.stmts, st, sh) {
                match step {
                    Step::NoMatch => next.push((st2, sh2)),
                    Step::Next => {
                        st2.path.insert(at, line.clone());
                        next.push((st2, sh2));
                    }
                    Step::Verdict(v) => {
                        st2.path.insert(at, line.clone());
                        match v {
                            Verdict::Accept => out.push((End::Accept, st2, sh2)),
                            Verdict::Drop => out.push((End::Final(Fate::Drop), st2, sh2)),
                            Verdict::Return => out.push((End::Continue, st2, sh2)),
                            Verdict::Jump(ref to) | Verdict::Goto(ref to) => {
                                let goto = matches!(v, Verdict::Goto(_));
                                for (end, st3, sh3) in run_chain(table, to, st2, sh2, depth + 1) {
                                    match end {
                                        End::Continue if !goto => next.push((st3, sh3)),
                                        other => out.push((other, st3, sh3)),
                                    }
                                }
                            }
                        }
                    }
                    Step::Final(end) => {
                        st2.path.insert(at, line.clone());
                        out.push((end, st2, sh2));
                    }
                }
            }
        }
        branches = next;
    }
    out.extend(branches.into_iter().map(|(st, sh)| (End::Continue, st, sh)));
    out
}

enum Step {
    NoMatch,
    /// The rule ran to its end without a verdict.
    Next,
    Verdict(Verdict),
    Final(End),
}

fn run_rule(table: &Table, stmts: &[Stmt], state: State, share: f64) -> Vec<(Step, State, f64)> {
    let Some((stmt, rest)) = stmts.split_first() else {
        return vec![(Step::Next, state, share)];
    };
    let mut st = state;
    match stmt {
        Stmt::Match { left, op, right } => match matches(table, &st, left, *op, right) {
            true => run_rule(table, rest, st, share),
            false => vec![(Step::NoMatch, st, share)],
        },
        Stmt::Vmap { key, map } => {
            let Some(key) = eval(&st, key, None) else {
                return vec![(Step::NoMatch, st, share)];
            };
            match lookup(table, map, &key) {
                Some((
                    k,
                    Element {
                        data: Some(Data::Verdict(v)),
                        comment,
                    },
                )) => {
                    st.path.push(format!("  @{map}[{}] -> {v}", show(k)));
                    st.services.extend(comment.clone());
                    vec![(Step::Verdict(v.clone()), st, share)]
                }
                _ => vec![(Step::NoMatch, st, share)],
            }
        }
        Stmt::DnatMap { key, map, .. } => {
            // Each slot of `numgen random mod N` is one branch, of probability 1/N.
            let slots = numgen(key).unwrap_or(1);
            let share = share / f64::from(slots);
            let hit = |slot| eval(&st, key, Some(slot)).and_then(|k| lookup(table, map, &k));
            (0..slots)
                .map(|slot| match hit(slot) {
                    Some((
                        k,
                        Element {
                            data: Some(Data::Values(to)),
                            ..
                        },
                    )) => {
                        let mut s = st.clone();
                        s.packet.daddr = to_addr(&to[0]);
                        if let Some(Value::Port(port)) = to.get(1) {
                            s.packet.dport = *port;
                        }
                        s.dnat = true;
                        s.path
                            .push(format!("  @{map}[{}] -> {}", show(k), show(to)));
                        (Step::Final(End::Accept), s, share)
                    }
                    _ => (Step::NoMatch, st.clone(), share),
                })
                .collect()
        }
        Stmt::Dnat { addr, port, .. } => {
            st.packet.daddr = to_addr(addr);
            st.packet.dport = *port;
            st.dnat = true;
            st.path.push(format!(
                "  dnat to {}",
                show(&[addr.clone(), Value::Port(*port)])
            ));
            vec![(Step::Final(End::Accept), st, share)]
        }
        Stmt::Masquerade => {
            st.masquerade = true;
            vec![(Step::Final(End::Accept), st, share)]
        }
        Stmt::MetaSet {
            key: MetaKey::Mark,
            value,
        } => {
            if let Some([Value::Bits(m)]) = eval(&st, value, None).as_deref() {
                st.mark = *m;
            }
            run_rule(table, rest, st, share)
        }
        Stmt::MetaSet { .. } | Stmt::Update { .. } => run_rule(table, rest, st, share),
        Stmt::Reject(_) => vec![(Step::Final(End::Final(Fate::Reject)), st, share)],
        Stmt::Verdict(v) => vec![(Step::Verdict(v.clone()), st, share)],
    }
}

fn numgen(expr: &Expr) -> Option<u32> {
    match expr {
        Expr::NumgenRandom(n) => Some(*n),
        Expr::Concat(parts) => parts.iter().find_map(numgen),
        _ => None,
    }
}

fn to_addr(v: &Value) -> IpAddr {
    match v {
        Value::Ipv4(a) => IpAddr::V4(*a),
        Value::Ipv6(a) => IpAddr::V6(*a),
        other => unreachable!("not an address: {other:?}"),
    }
}

fn addr_value(a: IpAddr) -> Value {
    match a {
        IpAddr::V4(a) => Value::Ipv4(a),
        IpAddr::V6(a) => Value::Ipv6(a),
    }
}

fn show(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(" . ")
}

/// The value(s) of an expression for this packet; `None` when it does not apply (an IPv6
/// field of an IPv4 packet, `tcp dport` of a UDP packet): the rule then does not match.
fn eval(st: &State, expr: &Expr, slot: Option<u32>) -> Option<Vec<Value>> {
    let p = &st.packet;
    let one = |v: Value| Some(vec![v]);
    match expr {
        Expr::Payload(field) => match field {
            Payload::IpSaddr => p.saddr.is_ipv4().then(|| vec![addr_value(p.saddr)]),
            Payload::IpDaddr => p.daddr.is_ipv4().then(|| vec![addr_value(p.daddr)]),
            Payload::Ip6Saddr => p.saddr.is_ipv6().then(|| vec![addr_value(p.saddr)]),
            Payload::Ip6Daddr => p.daddr.is_ipv6().then(|| vec![addr_value(p.daddr)]),
            Payload::ThDport => one(Value::Port(p.dport)),
            Payload::Dport(proto) => (*proto == p.proto).then(|| vec![Value::Port(p.dport)]),
        },
        Expr::Meta(MetaKey::L4Proto) => one(Value::Proto(p.proto)),
        Expr::Meta(MetaKey::Mark) => one(Value::Bits(st.mark)),
        Expr::Ct(CtKey::OriginalIpDaddr) => st
            .original
            .daddr
            .is_ipv4()
            .then(|| vec![addr_value(st.original.daddr)]),
        Expr::Ct(CtKey::OriginalIp6Daddr) => st
            .original
            .daddr
            .is_ipv6()
            .then(|| vec![addr_value(st.original.daddr)]),
        Expr::Ct(CtKey::OriginalProtoDst) => one(Value::Port(st.original.dport)),
        Expr::Ct(CtKey::State | CtKey::Status) | Expr::FibSaddrType | Expr::FibDaddrType => None,
        Expr::NumgenRandom(_) => slot.map(Value::Int).map(|v| vec![v]),
        Expr::Concat(parts) => {
            let mut out = Vec::new();
            for part in parts {
                out.extend(eval(st, part, slot)?);
            }
            Some(out)
        }
        Expr::Bitwise(e, op, c) => match eval(st, e, slot)?.as_slice() {
            [Value::Bits(b)] => one(Value::Bits(match op {
                BinOp::And => b & c,
                BinOp::Or => b | c,
                BinOp::Xor => b ^ c,
            })),
            _ => None,
        },
        Expr::Fixed(e, v) => eval(st, e, slot).map(|_| vec![v.clone()]),
        Expr::Value(v) => one(v.clone()),
        Expr::SetRef(_) => None,
    }
}

fn matches(table: &Table, st: &State, left: &Expr, op: CmpOp, right: &Expr) -> bool {
    // Keys whose truth is a property of the connection, not a value.
    let property = match (left, right) {
        (Expr::Ct(CtKey::State), Expr::Value(Value::CtState(s))) => {
            Some(*s == crate::expr::CtState::New)
        }
        (Expr::Ct(CtKey::Status), Expr::Value(Value::CtStatusDnat)) => Some(st.dnat),
        (Expr::FibSaddrType, Expr::Value(Value::LocalAddress)) => Some(st.packet.from_node),
        (Expr::FibDaddrType, Expr::Value(Value::LocalAddress)) => Some(st.packet.to_node),
        _ => None,
    };
    let hit = match property {
        Some(hit) => hit,
        None => {
            let Some(key) = eval(st, left, None) else {
                return false; // the protocol dependency fails: no match, whatever the operator
            };
            match right {
                Expr::SetRef(set) => lookup(table, set, &key).is_some(),
                other => eval(st, other, None).is_some_and(|r| {
                    r.len() == key.len() && r.iter().zip(&key).all(|(e, v)| component_matches(e, v))
                }),
            }
        }
    };
    hit == (op == CmpOp::Eq)
}

/// The element of `set` whose key matches, prefixes matching the addresses they contain.
fn lookup<'t>(table: &'t Table, set: &str, key: &[Value]) -> Option<(&'t Key, &'t Element)> {
    let set = table.sets.get(set)?;
    set.elements.iter().find(|(k, _)| {
        k.len() == key.len() && k.iter().zip(key).all(|(e, v)| component_matches(e, v))
    })
}

fn component_matches(element: &Value, value: &Value) -> bool {
    match (element, value) {
        (Value::Prefix(net), Value::Ipv4(a)) => net.contains(&IpAddr::V4(*a)),
        (Value::Prefix(net), Value::Ipv6(a)) => net.contains(&IpAddr::V6(*a)),
        _ => element == value,
    }
}
