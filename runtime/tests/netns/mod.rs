//! Kernel test support: throw-away network namespaces joined by veth pairs.
//!
//! Nothing here touches the host's own network namespace: every `ip`, `nft`
//! and `sysctl` runs with `-n NS` / `ip netns exec NS` on a namespace this
//! module created, and every namespace is deleted on drop (also on panic).
//! Include with `mod netns;` and start each test with
//! `if !netns::require() { return; }`. `Netns` is here; the routed `Lab`,
//! its servers and the `tcp`/`udp` probes are in `lab.rs`; `listing` compares
//! what nft lists, `inputs` reads the repository's manifests; `agent` runs
//! the agent and reads its log, `manifest_agent` runs it on a manifest directory.
#![allow(dead_code)]

pub mod agent;
pub mod cluster;
pub mod inputs;
mod lab;
pub mod listing;
pub mod manifest_agent;
#[allow(unused_imports)]
pub use lab::*;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::{self, JoinHandle};

/// Prefix of every namespace name; `sweep_stale` relies on it.
const PREFIX: &str = "svcnft-";

/// True when kernel tests can run (root, `ip` and `nft` runnable). Otherwise
/// prints a skip notice and records the skip (see `record_skip`), or panics under CI so
/// a broken runner is not green.
pub fn require() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        let runs = |cmd: &str, arg: &str| {
            Command::new(cmd)
                .arg(arg)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        root && runs("ip", "-V") && runs("nft", "--version")
    });
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but kernel tests cannot run: needs root + nft + ip");
        }
        eprintln!("skipping: needs root + nft + ip");
        record_skip();
    }
    ok
}

/// Appends `<test binary> <test>` to the file `$SVC_NFT_SKIPPED` names, if set: libtest
/// counts a skipped test as passed, so `scripts/test` counts the lines (once per test) and
/// reports them as skipped instead.
fn record_skip() {
    let Some(path) = std::env::var_os("SVC_NFT_SKIPPED") else {
        return;
    };
    let binary = std::env::args().next().unwrap_or_default();
    let binary = std::path::Path::new(&binary)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let test = thread::current().name().unwrap_or("?").to_string();
    let line = format!("{binary} {test}\n");
    // One short O_APPEND write: lines from parallel tests do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!("recording the skip in {path:?}: {e}");
    }
}

/// Runs a command to completion, panicking with its stderr when it fails.
fn must(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces left by earlier runs that crashed before their drops ran
/// (e.g. SIGKILL): names `svcnft-<pid>-...` whose pid no longer exists.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Poll `check` until it holds; panics naming `what` after `agent::PATIENCE`.
pub fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(
            start.elapsed() < agent::PATIENCE,
            "waited {:?} in vain for: {what}",
            agent::PATIENCE
        );
        thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A network namespace named `svcnft-<pid>-<counter>-<tag>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace, brings `lo` up (a fresh namespace has it down)
    /// and turns IPv6 duplicate address detection off for interfaces added later.
    pub fn new(tag: &str) -> Netns {
        static SWEEP: Once = Once::new();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        // `ip netns add` makes /run/netns a shared mount on first use; parallel
        // first calls would each stack a bind mount, so serialise them.
        static ADD: Mutex<()> = Mutex::new(());
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        {
            let _guard = ADD.lock().unwrap_or_else(|p| p.into_inner());
            must(Command::new("ip").args(["netns", "add", &name]));
        }
        let ns = Netns { name };
        ns.ip("link set lo up");
        // No IPv6 DAD: while a link-local address is tentative the kernel
        // sends no neighbour solicitation for *forwarded* packets, so the
        // first IPv6 packet through the node is lost (~1 s SYN retransmit).
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns
    }

    /// `ip -n NAME <args>` (args split on whitespace); panics with stderr on failure.
    pub fn ip(&self, args: &str) {
        must(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
        );
    }

    /// `program`, to be run inside this namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// `ip netns exec NAME argv...`, output returned whatever the exit status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.command(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("spawn ip netns exec {argv:?}: {e}"))
    }

    /// Loads an nft script (`nft -f -`, script on stdin); Err carries nft's stderr.
    pub fn nft(&self, script: &str) -> Result<String, String> {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(script.as_bytes());
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        match (out.status.success(), written) {
            (true, Ok(())) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            (_, Err(e)) if out.stderr.is_empty() => Err(format!("writing script: {e}")),
            _ => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// `nft <args>` in the namespace, e.g. `nft_list("-j list table inet svc-nft")`;
    /// panics on failure.
    pub fn nft_list(&self, args: &str) -> String {
        must(self.command("nft").args(args.split_whitespace()))
    }

    /// Sets a sysctl in this namespace only (`ip netns exec` + `sysctl -w`).
    pub fn sysctl(&self, key: &str, value: &str) {
        must(
            self.command("sysctl")
                .arg("-qw")
                .arg(format!("{key}={value}")),
        );
    }

    /// Runs `f` on a fresh thread that has joined this namespace and returns
    /// its result (a panic in `f` is resumed here). Only that thread moves, so
    /// parallel tests in the same process are unaffected.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }

    /// Like `run` but does not wait: used for long-lived server threads.
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        // Open before spawning so the namespace cannot vanish underneath us.
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        thread::spawn(move || {
            // SAFETY: valid fd; CLONE_NEWNET setns only affects this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns {path}: {}", io::Error::last_os_error());
            }
            drop(file);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it. Never
        // panic here: we may already be unwinding.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}
