//! Changes someone else makes to the agent's table (a `nft flush ruleset`, a firewalld reload,
//! an `iptables-nft` restore, an admin): noticed from the kernel's nf_tables notifications
//! within milliseconds, and handed to the sync loop as one repair per burst.
//!
//! Own commits are told apart by the committing thread the kernel names (NEWGEN's pid): a
//! thread of this process (the engine's netlink batches), or an `nft` child it ran. Changes
//! to other tables are ignored. When notifications are lost (the socket overran: `ENOBUFS`),
//! nothing can be told apart: the table is repaired once, and the socket opened again.

use crate::netlink::monitor::{Commit, Monitor};
use crate::syncer::Update;
use std::collections::{BTreeSet, VecDeque};
use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a burst of foreign changes may go quiet before it is repaired, and the longest
/// a burst may delay its repair.
const QUIET: Duration = Duration::from_millis(30);
const LONGEST: Duration = Duration::from_millis(300);
/// How many `nft` children are remembered: their commits may be announced after they exit.
const CHILDREN: usize = 64;

static SPAWNED: Mutex<VecDeque<u32>> = Mutex::new(VecDeque::new());

/// Note an `nft` child of this process: its commits are the agent's own.
pub fn spawned(pid: u32) {
    let mut spawned = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    if spawned.len() == CHILDREN {
        spawned.pop_front();
    }
    spawned.push_back(pid);
}

/// Whether the thread the kernel names committed on this process's behalf.
fn own(pid: u32) -> bool {
    let children = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    children.contains(&pid) || std::path::Path::new(&format!("/proc/self/task/{pid}")).exists()
}

/// What a foreign transaction did to `table` (`inet NAME`), for the log; `None`: nothing, or
/// it was the agent's own.
fn foreign(commit: &Commit, table: &str) -> Option<String> {
    let ours: BTreeSet<&str> = commit
        .changes
        .iter()
        .filter(|c| c.table == table)
        .map(|c| c.what)
        .collect();
    // A kernel that does not name the committer: nothing can be told apart.
    if ours.is_empty() || commit.pid.is_none_or(own) {
        return None;
    }
    let what = ours.into_iter().collect::<Vec<_>>().join(", ");
    let by = match (&commit.process, commit.pid) {
        (Some(name), Some(pid)) => format!("{name} (pid {pid})"),
        (_, pid) => format!("pid {}", pid.unwrap_or_default()),
    };
    Some(format!("{what} by {by}"))
}

/// Watch the kernel's notifications for changes to table `inet <table>` by anyone else, and
/// send one [`Update::Repair`] per burst. Returns when the sync loop is gone.
pub fn watch(table: String, updates: Sender<Update>) {
    let table = format!("inet {table}");
    let mut monitor: Option<Monitor> = None;
    loop {
        let subscribed = match &mut monitor {
            Some(monitor) => monitor,
            empty => match Monitor::open() {
                Ok(opened) => empty.insert(opened),
                Err(e) => {
                    let later = "foreign changes to the table wait for the periodic repair";
                    tracing::warn!("{later}: {e}");
                    return;
                }
            },
        };
        let why = match burst(subscribed, &table) {
            Ok(changes) => changes.join("; "),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                monitor = None; // subscribe again, after the repair's full compare
                "nf_tables notifications lost (receive buffer overrun)".to_string()
            }
            Err(e) => {
                tracing::warn!("nf_tables notifications: {e}; subscribing again");
                monitor = None;
                std::thread::sleep(LONGEST);
                continue;
            }
        };
        if updates.send(Update::Repair(why)).is_err() {
            return;
        }
    }
}

/// Wait for a foreign change to the table, then for the burst it starts to go quiet; what each
/// transaction of it did.
fn burst(monitor: &mut Monitor, table: &str) -> std::io::Result<Vec<String>> {
    let mut changes = Vec::new();
    let mut started: Option<Instant> = None;
    loop {
        let wait = started.map(|_| QUIET);
        let commits = monitor.next(wait)?;
        let before = changes.len();
        changes.extend(commits.iter().filter_map(|c| foreign(c, table)));
        let quiet = wait.is_some() && changes.len() == before;
        match started {
            Some(at) if quiet || at.elapsed() >= LONGEST => return Ok(changes),
            None if !changes.is_empty() => started = Some(Instant::now()),
            _ => {}
        }
    }
}
