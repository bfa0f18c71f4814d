//! `svc-nft run --manifests DIR`: the agent on a local manifest directory. It watches DIR,
//! recompiles when its files change (at most once per `--min-sync-period`, so bursts of
//! writes coalesce), applies the difference, and every `--sync-period` replaces the table
//! whole to repair drift. Stopping it leaves the rules in place for the next agent.

use crate::cli::compile_paths;
use crate::engine::{Engine, Route};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use svc_nft_compiler::NodeFacts;

pub struct Agent {
    pub manifests: PathBuf,
    pub node: NodeFacts,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

/// What the directory looks like: file names, sizes and modification times. Any create,
/// write, delete or rename changes it.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

impl Agent {
    /// Run until killed.
    pub fn run(&self) -> ! {
        let mut engine = Engine::new();
        let mut seen = None;
        let mut last_full = Instant::now();
        loop {
            let now = fingerprint(&self.manifests);
            if seen.as_ref() != Some(&now) {
                let (compiled, _) = compile_paths(
                    std::slice::from_ref(&self.manifests),
                    &self.node,
                    &mut std::io::stderr(),
                );
                match engine.sync(compiled.table) {
                    Ok(s) => {
                        tracing::info!(
                            route = ?s.route,
                            bytes = s.bytes,
                            took_ms = s.took.as_secs_f64() * 1e3,
                            "synced: {}",
                            s.changes
                        );
                        seen = Some(now);
                        if s.route == Route::Full {
                            last_full = Instant::now();
                        }
                    }
                    // Retried on the next tick; the kernel still holds the last good rules.
                    Err(e) => tracing::error!(failures = engine.failures, "sync failed: {e}"),
                }
                // Compiling parses every manifest again; hand the memory that took back to the
                // system instead of keeping the peak resident until the next sync.
                // SAFETY: malloc_trim only releases free heap pages.
                unsafe { libc::malloc_trim(0) };
            } else if last_full.elapsed() >= self.sync_period {
                match engine.repair() {
                    Some(Ok(drift)) if drift.is_empty() => tracing::debug!("verified: no drift"),
                    Some(Ok(drift)) => tracing::warn!("repaired drift: {drift}"),
                    Some(Err(e)) => tracing::error!("repair failed: {e}"),
                    None => {}
                }
                last_full = Instant::now();
            }
            std::thread::sleep(self.min_sync_period);
        }
    }
}

/// A duration written as kube-proxy writes them: `500ms`, `2s`, `1m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: not a duration"))?;
        let seconds = match unit {
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
        };
        total += Duration::from_secs_f64(seconds);
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kube_proxy_flags() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
    }
}
