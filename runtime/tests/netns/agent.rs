//! The agent under test as a process: its log, read from stderr by a thread as it comes, so
//! that a test waits for what the agent says it did (it logs `synced:` once the kernel has
//! committed a sync, `rejected` for a bad file or object) instead of for a time that suits one
//! machine; and a SIGKILL of a whole process group that waits until the group is gone.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread;
use std::time::{Duration, Instant};

/// How long a wait for the agent or the kernel may take: far more than a debug build on two
/// busy cores needs, so that only a real hang fails a test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Sets up `command` (the agent) for `Log::capture`: stderr piped, and every line logged,
/// since a sync that changed nothing is logged at DEBUG only.
pub fn logging(command: &mut Command) -> &mut Command {
    command.env("SVC_NFT_LOG", "debug").stderr(Stdio::piped())
}

/// What a process has written to stderr so far, line by line, with when each line arrived.
/// `SVC_NFT_TEST_LOGS=1` also echoes it.
#[derive(Clone)]
pub struct Log(Arc<Shared>);

struct Shared {
    lines: Mutex<Lines>,
    grew: Condvar,
}

#[derive(Default)]
struct Lines {
    lines: Vec<(Instant, String)>,
    /// The process closed its stderr: it exited (or was killed), nothing more will come.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Log {
    /// Starts reading `child`'s stderr, which `logging` piped.
    pub fn capture(child: &mut Child) -> Log {
        let stderr = child.stderr.take().expect("the agent's stderr is piped");
        let shared = Arc::new(Shared {
            lines: Mutex::default(),
            grew: Condvar::new(),
        });
        let reader = shared.clone();
        let echo = std::env::var_os("SVC_NFT_TEST_LOGS").is_some();
        thread::Builder::new()
            .name("agent-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line).into_owned();
                    if echo {
                        eprintln!("agent: {line}");
                    }
                    reader.lock().lines.push((Instant::now(), line));
                    reader.grew.notify_all();
                }
                reader.lock().closed = true;
                reader.grew.notify_all();
            })
            .expect("spawn the log reader");
        Log(shared)
    }

    /// How many lines there are so far: where a wait for what happens next starts.
    pub fn mark(&self) -> usize {
        self.0.lock().lines.len()
    }

    /// Line `i`.
    pub fn line(&self, i: usize) -> String {
        self.0.lock().lines[i].1.clone()
    }

    /// Waits for the first line from index `since` on for which `found` holds; returns its
    /// index and when it arrived. `found` may look at the kernel: it runs without the lock, so
    /// the agent is never held up writing. Panics naming `what`, with the log's tail, after
    /// `PATIENCE` or once the process has closed its stderr without such a line.
    pub fn wait_for(
        &self,
        what: &str,
        since: usize,
        mut found: impl FnMut(&str) -> bool,
    ) -> (usize, Instant) {
        let deadline = Instant::now() + PATIENCE;
        let mut next = since;
        loop {
            let (fresh, closed) = {
                let mut lines = self.0.lock();
                while lines.lines.len() <= next && !lines.closed {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    lines = self.0.grew.wait_timeout(lines, left).unwrap().0;
                }
                (
                    lines.lines[next.min(lines.lines.len())..].to_vec(),
                    lines.closed,
                )
            };
            for (at, line) in &fresh {
                if found(line) {
                    return (next, *at);
                }
                next += 1;
            }
            // A chatty agent may log on and on without the line: the deadline holds anyway.
            if fresh.is_empty() || Instant::now() > deadline {
                let why = if closed && Instant::now() <= deadline {
                    "the agent exited"
                } else {
                    "timed out"
                };
                panic!(
                    "{why} waiting {PATIENCE:?} for {what}; its log ends:\n{}",
                    self.tail(30)
                );
            }
        }
    }

    /// Waits for the agent's next successful sync from line `since` on (it logs `synced:` once
    /// the kernel has committed) and returns when its line arrived; panics if a sync fails.
    pub fn wait_for_sync(&self, what: &str, since: usize) -> Instant {
        let sync = |l: &str| l.contains("synced:") || l.contains("sync failed");
        let (i, at) = self.wait_for(what, since, sync);
        let line = self.line(i);
        assert!(
            !line.contains("sync failed"),
            "{what}: {line}\n{}",
            self.tail(30)
        );
        at
    }

    /// Waits for the agent's next pass over its state from line `since` on: a sync, or a
    /// periodic check of the kernel (`verified:`) when nothing changed. Returns the index of
    /// the line after it, where a wait for the pass after that starts.
    pub fn wait_for_pass(&self, what: &str, since: usize) -> usize {
        let pass = |l: &str| l.contains("synced:") || l.contains("verified:");
        1 + self.wait_for(what, since, pass).0
    }

    /// The last `n` lines, for a failure message.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock();
        let from = lines.lines.len().saturating_sub(n);
        let tail: Vec<&str> = lines.lines[from..].iter().map(|(_, l)| &**l).collect();
        tail.join("\n")
    }
}

/// Makes this process the reaper of its orphaned descendants. A killed agent's children (nft)
/// are reparented to the nearest subreaper, else to init — which in some containers never
/// reaps them, so their zombies would keep a killed group alive for ever.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
    });
}

/// SIGKILLs the process group that `leader` (started by us, with `process_group(0)`, after
/// `become_subreaper`) leads, and waits until no process of it is left, nft mid-transaction or
/// not: the kernel holds whatever it will hold. Err when the group outlives `PATIENCE`.
pub fn kill_group(leader: &mut Child) -> Result<(), String> {
    let pgid = leader.id() as libc::pid_t;
    // SAFETY: kill(2) on a process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = leader.wait();
    let start = Instant::now();
    loop {
        // Reap the group's orphans, which came to us; then ask whether any is left.
        // SAFETY: waitpid(2) on our own children of that group, without blocking.
        while unsafe { libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        // SAFETY: signal 0 only checks whether the group exists.
        if unsafe { libc::kill(-pgid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            return Err(format!(
                "process group {pgid} outlived SIGKILL by {PATIENCE:?}"
            ));
        }
        thread::sleep(Duration::from_millis(1));
    }
}
