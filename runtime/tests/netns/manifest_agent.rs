//! The agent on a manifest directory, as a process in the node namespace: its log read as it
//! comes, files written as config management writes them, killed on drop.

use super::agent::{self, Log};
use super::cluster::CIDRS;
use super::Netns;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

/// Poll the directory often: the kill test wants syncs to start right away.
pub const FAST: &[&str] = &["--min-sync-period", "10ms"];

/// The agent, running in the node namespace on a manifest directory, its log read as it
/// comes; killed on drop.
pub struct AgentProcess {
    child: Child,
    pub log: Log,
    dir: PathBuf,
    args: Vec<String>,
    /// In a process group of its own, so that a kill reaches the nft it runs too.
    own_group: bool,
}

impl AgentProcess {
    pub fn start(node: &Netns, tag: &str, extra: &[&str]) -> AgentProcess {
        let mut args = vec!["--min-sync-period", "100ms"];
        args.extend(extra);
        AgentProcess::new(node, tag, &args, false)
    }

    /// An agent in its own process group, killed with everything it started.
    pub fn start_isolated(node: &Netns, tag: &str) -> AgentProcess {
        agent::become_subreaper();
        AgentProcess::new(node, tag, FAST, true)
    }

    fn new(node: &Netns, tag: &str, args: &[&str], own_group: bool) -> AgentProcess {
        let dir = std::env::temp_dir().join(format!("svc-nft-agent-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, log) = AgentProcess::spawn(node, &dir, &args, own_group);
        AgentProcess {
            child,
            log,
            dir,
            args,
            own_group,
        }
    }

    /// `svc-nft run` on `dir` in namespace `node`.
    fn spawn(node: &Netns, dir: &Path, args: &[String], own_group: bool) -> (Child, Log) {
        use std::os::unix::process::CommandExt;
        let mut command = node.command(env!("CARGO_BIN_EXE_svc-nft"));
        command
            .arg("run")
            .args(["--manifests", dir.to_str().unwrap()])
            .args(CIDRS)
            .args(args)
            .stdout(Stdio::null());
        agent::logging(&mut command);
        if own_group {
            command.process_group(0);
        }
        let mut child = command.spawn().expect("start the agent");
        let log = Log::capture(&mut child);
        (child, log)
    }

    /// Start a new agent on the same directory with the same flags, once the caller has
    /// stopped this one; `log` is the new agent's.
    pub fn restart(&mut self, node: &Netns) {
        (self.child, self.log) = AgentProcess::spawn(node, &self.dir, &self.args, self.own_group);
    }

    /// Write `manifests` as the directory's only file and start a new agent on it, once the
    /// caller has stopped this one; returns when it was started.
    pub fn restart_on(&mut self, node: &Netns, manifests: &str) -> Instant {
        self.write("all.yaml", manifests);
        let started = Instant::now();
        self.restart(node);
        started
    }

    /// Send `signal` to the agent and reap it.
    pub fn signal(&mut self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let _ = self.child.wait();
    }

    /// SIGKILL the agent and everything it started (nft, mid-transaction or not), and wait
    /// until all of it is gone.
    pub fn kill_group(&mut self) {
        assert!(
            self.own_group,
            "only an isolated agent has a group of its own"
        );
        agent::kill_group(&mut self.child).unwrap();
    }

    pub fn write(&self, file: &str, content: &str) {
        // Write then rename, as config management does: the agent never reads half a file.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(tmp, self.dir.join(file)).unwrap();
    }

    /// Write in place, as an editor that dies mid-save leaves a file: the agent may read it
    /// half-written.
    pub fn write_in_place(&self, file: &str, content: &str) {
        std::fs::write(self.dir.join(file), content).unwrap();
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file)).unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.own_group {
            if let Err(e) = agent::kill_group(&mut self.child) {
                eprintln!("{e}");
            }
        } else {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
