//! What gets logged: `SVC_NFT_LOG`, else `RUST_LOG`, else `info` (tracing's EnvFilter syntax).

use std::fmt::{self, Display, Formatter};
use tracing_subscriber::EnvFilter;

/// For `svc-nft run --help`.
pub const HELP: &str = "\
Logging: SVC_NFT_LOG says what is logged, in tracing's EnvFilter syntax (e.g. `debug`, \
`svc_nft=debug,kube=warn`); when it is unset or empty, RUST_LOG is read instead; with \
neither, `info`. SVC_NFT_LOG wins when both are set. Logs go to stderr, as text or JSON \
(--log-format).";

/// Where the directives came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    SvcNftLog,
    RustLog,
    Default,
}

impl Display for Source {
    fn fmt(&self, f: &mut Formatter) -> fmt::Result {
        f.write_str(match self {
            Source::SvcNftLog => "SVC_NFT_LOG",
            Source::RustLog => "RUST_LOG",
            Source::Default => "the default",
        })
    }
}

/// The directives to use given the two variables' values; empty counts as unset.
pub fn directives(svc_nft_log: Option<String>, rust_log: Option<String>) -> (String, Source) {
    let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    match (set(svc_nft_log), set(rust_log)) {
        (Some(d), _) => (d, Source::SvcNftLog),
        (None, Some(d)) => (d, Source::RustLog),
        (None, None) => ("info".into(), Source::Default),
    }
}

/// kube-client logs an ERROR of its own for every failed request of a retrying watch (15 in
/// 20 s of an outage); the watchers say once that a watch broke and once that it is back
/// (`cluster::watch`). A filter that names kube_client decides for itself.
const QUIET_KUBE_CLIENT: &str = "kube_client::client::builder=off";

fn quiet(filter: EnvFilter, directives: &str) -> EnvFilter {
    if directives.contains("kube_client") {
        return filter;
    }
    filter.add_directive(QUIET_KUBE_CLIENT.parse().expect("a valid directive"))
}

/// The filter from this process's environment, and a warning when the variable that was
/// read does not parse (then `info` is used).
pub fn from_env() -> (EnvFilter, Option<String>) {
    let var = |name| std::env::var(name).ok();
    let (directives, source) = directives(var("SVC_NFT_LOG"), var("RUST_LOG"));
    match EnvFilter::try_new(&directives) {
        Ok(filter) => (quiet(filter, &directives), None),
        Err(e) => {
            let warning =
                format!("{source}={directives:?} is not a log filter ({e}); logging at info");
            (quiet(EnvFilter::new("info"), ""), Some(warning))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn kube_clients_retry_errors_are_off_unless_asked_for() {
        let shown = |d: &str| quiet(EnvFilter::new(d), d).to_string();
        assert!(
            shown("debug").contains(QUIET_KUBE_CLIENT),
            "{}",
            shown("debug")
        );
        assert!(!shown("info,kube_client=debug").contains("=off"));
    }

    #[test]
    fn svc_nft_log_wins_then_rust_log_then_info() {
        assert_eq!(
            directives(some("debug"), some("warn")),
            ("debug".into(), Source::SvcNftLog)
        );
        assert_eq!(
            directives(None, some("warn")),
            ("warn".into(), Source::RustLog)
        );
        assert_eq!(
            directives(some(""), some("warn")),
            ("warn".into(), Source::RustLog)
        );
        assert_eq!(
            directives(None, some(" ")),
            ("info".into(), Source::Default)
        );
        assert_eq!(directives(None, None), ("info".into(), Source::Default));
    }
}
