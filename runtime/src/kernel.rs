//! Talking to the kernel through the `nft` program: apply a script as one transaction, list a
//! table. Everything happens in the caller's network namespace.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

/// `nft` failed; `stderr` is nft's own explanation (the kernel's error, the offending line).
#[derive(Debug)]
pub struct NftError {
    pub stderr: String,
}

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "nft: {}", self.stderr.trim_end())
    }
}

impl std::error::Error for NftError {}

fn failed(e: impl std::fmt::Display) -> NftError {
    NftError {
        stderr: e.to_string(),
    }
}

/// Run `nft -f -` with `script` on stdin: the kernel commits all of it or none of it.
pub fn apply(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], script).map(drop)
}

/// `nft -j list table inet NAME` as JSON, or `None` when there is no such table.
pub fn list_table(name: &str) -> Result<Option<Value>, NftError> {
    let tables = run(&["-j", "list", "tables", "inet"], "")?;
    let tables: Value = serde_json::from_str(&tables).map_err(failed)?;
    let exists = items(&tables).any(|i| i["table"]["name"] == name);
    if !exists {
        return Ok(None);
    }
    let listing = run(&["-j", "list", "table", "inet", name], "")?;
    serde_json::from_str(&listing).map(Some).map_err(failed)
}

fn run(args: &[&str], stdin: &str) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run nft: {e}")))?;
    crate::foreign::spawned(child.id());
    let mut input = child.stdin.take().expect("piped");
    // nft reads the whole script before it answers; a write error shows up as its exit status.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    let out = child.wait_with_output().map_err(failed)?;
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn items(listing: &Value) -> impl Iterator<Item = &Value> {
    listing["nftables"].as_array().into_iter().flatten()
}

/// Whether rules fill this set (`update @set`): nft 1.0.6 lists such sets with the `timeout`
/// flag but without `dynamic`, and only they have timeouts in svc-nft's layout.
fn filled_by_rules(set: &Value) -> bool {
    let flags = set["flags"].as_array().into_iter().flatten();
    flags.into_iter().any(|f| f == "dynamic" || f == "timeout")
}

/// What a table holds, as the kernel lists it: chains, rules and set elements, each in a
/// canonical text form, so two listings can be compared and counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub chains: BTreeSet<String>,
    /// (chain, position, rule).
    pub rules: BTreeSet<(String, usize, String)>,
    /// (set, element).
    pub elements: BTreeSet<(String, String)>,
}

impl Inventory {
    /// Read a `nft -j list table` listing. Elements of sets rules fill (like the affinity
    /// map) are the traffic's, not ours, and are left out.
    pub fn of(listing: &Value) -> Inventory {
        let mut inv = Inventory::default();
        let mut position = std::collections::BTreeMap::<String, usize>::new();
        for item in items(listing) {
            if let Some(chain) = item.get("chain") {
                inv.chains
                    .insert(chain["name"].as_str().unwrap_or_default().to_string());
            } else if let Some(rule) = item.get("rule") {
                let chain = rule["chain"].as_str().unwrap_or_default().to_string();
                let n = position.entry(chain.clone()).or_default();
                inv.rules.insert((chain, *n, rule["expr"].to_string()));
                *n += 1;
            } else if let Some(set) = item.get("set").or_else(|| item.get("map")) {
                let name = set["name"].as_str().unwrap_or_default();
                let elems = set["elem"].as_array().into_iter().flatten();
                for elem in elems.filter(|_| !filled_by_rules(set)) {
                    inv.elements.insert((name.to_string(), elem.to_string()));
                }
            }
        }
        inv
    }

    /// How `self` became `after`: counts of what was added and removed.
    pub fn changes(&self, after: &Inventory) -> Changes {
        Changes {
            elements_added: after.elements.difference(&self.elements).count(),
            elements_removed: self.elements.difference(&after.elements).count(),
            chains_added: after.chains.difference(&self.chains).count(),
            chains_removed: self.chains.difference(&after.chains).count(),
            rules_added: after.rules.difference(&self.rules).count(),
            rules_removed: self.rules.difference(&after.rules).count(),
        }
    }
}

/// Counts of what changed in the kernel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub elements_added: usize,
    pub elements_removed: usize,
    pub chains_added: usize,
    pub chains_removed: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "elements +{} -{}, chains +{} -{}, rules +{} -{}",
            self.elements_added,
            self.elements_removed,
            self.chains_added,
            self.chains_removed,
            self.rules_added,
            self.rules_removed
        )
    }
}
