//! The standard `process_*` metrics every Prometheus client exports (client_golang's process
//! collector, which kube-proxy has), read from `/proc/self` at each scrape: dashboards'
//! CPU and memory panels use them.

use super::exposition::{counter, gauge};
use std::io;

/// One reading of the process's resources.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Process {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time: f64,
    open_fds: f64,
    max_fds: f64,
}

/// What `/proc/self/stat` says, in its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// User and system time, in clock ticks.
    cpu_ticks: u64,
    /// Since boot, in clock ticks.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// The fields of a `/proc/<pid>/stat` line we need. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: count from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let after_name = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `fields[0]` is field 3 (state): field n is `fields[n - 3]`.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) in `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("btime "))?;
    line.trim().parse().ok()
}

fn sysconf(name: libc::c_int) -> io::Result<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    if value > 0 {
        Ok(value as f64)
    } else {
        Err(io::Error::other("sysconf failed"))
    }
}

fn max_fds() -> io::Result<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur as f64)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {what}"))
}

impl Process {
    /// Reads `/proc/self` and `/proc/stat`.
    pub(super) fn read() -> io::Result<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let stat = parse_stat(&stat).ok_or_else(|| invalid("/proc/self/stat"))?;
        let boot = std::fs::read_to_string("/proc/stat")?;
        let boot = parse_boot_time(&boot).ok_or_else(|| invalid("/proc/stat"))?;
        let ticks = sysconf(libc::_SC_CLK_TCK)?;
        let page = sysconf(libc::_SC_PAGESIZE)?;
        // The listing's own descriptor is open while it is read, as in client_golang.
        let open_fds = std::fs::read_dir("/proc/self/fd")?.count();
        Ok(Process {
            cpu_seconds: stat.cpu_ticks as f64 / ticks,
            resident_bytes: stat.resident_pages as f64 * page,
            virtual_bytes: stat.virtual_bytes as f64,
            start_time: boot as f64 + stat.start_ticks as f64 / ticks,
            open_fds: open_fds as f64,
            max_fds: max_fds()?,
        })
    }

    /// client_golang's names and help texts.
    pub(super) fn render(&self, out: &mut String) {
        counter(
            out,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds,
        );
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                self.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                self.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                self.virtual_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                self.resident_bytes,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self.start_time,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(out, name, help, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names() {
        // Fields 3.. of a real line; the name holds a space and a parenthesis.
        let line = "4242 (svc (nft) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                    250 75 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 325,
                start_ticks: 98765,
                virtual_bytes: 123_456_789,
                resident_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn boot_time() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1767225600\nprocesses 9\n";
        assert_eq!(parse_boot_time(text), Some(1_767_225_600));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads_sanely() {
        let p = Process::read().expect("/proc is mounted");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time > 1e9 && p.start_time <= now + 1.0, "{p:?}");
        assert!(
            p.resident_bytes > 0.0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.open_fds >= 3.0 && p.open_fds <= p.max_fds, "{p:?}");
        assert!(p.cpu_seconds >= 0.0, "{p:?}");
        let mut out = String::new();
        p.render(&mut out);
        assert_eq!(out.lines().filter(|l| l.starts_with("# TYPE")).count(), 6);
    }
}
