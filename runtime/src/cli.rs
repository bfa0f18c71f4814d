//! The `svc-nft` command line. Commands write to the writers they are given and return the
//! exit status, so tests drive them exactly as the binary does.

use crate::config::RunArgs;
use crate::engine::Engine;
use crate::explain::{report, Format, Origin, Proto, Query};
use crate::input;
use crate::kernel;
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use svc_nft_compiler::{compile, Compiled, Diagnostic, NodeFacts, DEFAULT_TABLE};
use svc_nft_ir::replace_script;

#[derive(Debug, Parser)]
#[command(name = "svc-nft", version, about = "Kubernetes Services on nftables")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the nftables ruleset for the manifests; `| nft -f -` loads it, replacing the
    /// previous one in one transaction.
    Compile {
        /// A manifest file, a directory of *.yaml|*.yml|*.json files, or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show what a change of manifests does to the ruleset: a unified diff (exit 0 when equal,
    /// 1 when they differ, 2 on bad input), or the nft batch that applies it.
    Diff {
        /// The manifests before the change (file, directory or -).
        old: PathBuf,
        /// The manifests after the change.
        new: PathBuf,
        /// Print the minimal nft transaction from OLD to NEW instead of a diff.
        #[arg(long)]
        transaction: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Compile and apply once into this network namespace's kernel, replacing svc-nft's table
    /// in one transaction; print what changed.
    Apply {
        /// A manifest file, a directory of *.yaml|*.yml|*.json files, or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Keep this node's kernel in sync with the API server (or, with --manifests, a manifest
    /// directory): recompile the Services that change, apply the difference; serve health and
    /// metrics. SIGTERM stops it and leaves the rules in place.
    Run(RunArgs),
    /// Remove svc-nft's table from this network namespace, and nothing else.
    Cleanup {
        /// nftables table svc-nft owns (family inet).
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
    },
    /// Where would this node send a new connection? Evaluates the compiled rules (not the
    /// kernel): DNAT candidates with their share, REJECT, DROP or not handled, whether the
    /// source is masqueraded, and the chains and map elements on the way.
    Explain {
        /// A manifest file, a directory of *.yaml|*.yml|*.json files, or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
        /// The client's address.
        #[arg(long)]
        from: IpAddr,
        /// Where it connects to (`10.96.0.10:53`, `[fd00::a]:53`).
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
        /// Default: node if --from is a node IP, pod if it is in --cluster-cidr, else external.
        #[arg(long, value_enum)]
        origin: Option<Origin>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        format: Format,
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// Facts about the node; kube-proxy's flag names. Lists take repeated flags or commas.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// nftables table svc-nft owns (family inet).
    #[arg(long, default_value = DEFAULT_TABLE)]
    pub table: String,
    /// This node's name, as in endpoints' nodeName.
    #[arg(long, alias = "hostname-override")]
    pub node_name: Option<String>,
    /// This node's IP addresses (v4 and/or v6).
    #[arg(long = "node-ip", value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    /// This node's zone (its topology.kubernetes.io/zone label), for topology hints.
    #[arg(long)]
    pub node_zone: Option<String>,
    /// Pod CIDRs; traffic to Services from outside them is masqueraded.
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs; addresses in them that no Service owns are dropped.
    #[arg(long = "service-cidr", value_delimiter = ',')]
    pub service_cidrs: Vec<IpNet>,
    /// CIDRs whose node addresses accept NodePorts (default: every node IP; loopback only if
    /// a CIDR names it).
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// Masquerade all traffic sent to Services.
    #[arg(long)]
    pub masquerade_all: bool,
}

impl NodeArgs {
    pub fn facts(&self) -> NodeFacts {
        NodeFacts {
            table: self.table.clone(),
            node_name: self.node_name.clone(),
            node_ips: self.node_ips.clone(),
            zone: self.node_zone.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            service_cidrs: self.service_cidrs.clone(),
            nodeport_addresses: self.nodeport_addresses.clone(),
            masquerade_all: self.masquerade_all,
        }
    }

    /// Parse node flags alone, e.g. a golden case's `flags` file.
    pub fn parse_flags<'a>(flags: impl IntoIterator<Item = &'a str>) -> Result<NodeArgs, String> {
        #[derive(Parser)]
        struct FlagsOnly {
            #[command(flatten)]
            node: NodeArgs,
        }
        let argv = std::iter::once("svc-nft").chain(flags);
        FlagsOnly::try_parse_from(argv)
            .map(|f| f.node)
            .map_err(|e| e.to_string())
    }
}

/// Read and compile manifests; every rejected document or object goes to `err`.
/// Returns the result and whether everything was accepted.
pub fn compile_paths(paths: &[PathBuf], node: &NodeFacts, err: &mut dyn Write) -> (Compiled, bool) {
    let (objects, mut diagnostics) = input::read(paths);
    let compiled = compile(&objects, node);
    diagnostics.extend(compiled.diagnostics.iter().cloned());
    // In file order, whichever stage found them.
    diagnostics.sort_by(|a, b| a.origin.cmp(&b.origin));
    for d in &diagnostics {
        // A closed stderr must not turn a diagnostic into a panic.
        let _ = writeln!(err, "{}: {d}", d.severity);
    }
    (compiled, !diagnostics.iter().any(Diagnostic::is_error))
}

/// Run a command; the return value is the process exit status.
pub fn run(command: &Command, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<i32> {
    match command {
        Command::Compile { paths, node } => {
            let (compiled, clean) = compile_paths(paths, &node.facts(), err);
            out.write_all(replace_script(&compiled.table).as_bytes())?;
            Ok(if clean { 0 } else { 1 })
        }
        Command::Diff {
            old,
            new,
            transaction,
            node,
        } => {
            let facts = node.facts();
            let (before, clean_before) = compile_paths(std::slice::from_ref(old), &facts, err);
            let (after, clean_after) = compile_paths(std::slice::from_ref(new), &facts, err);
            if !(clean_before && clean_after) {
                return Ok(2);
            }
            let changed = if *transaction {
                let tx = svc_nft_ir::diff(&before.table, &after.table);
                write!(out, "{tx}")?;
                !tx.is_empty()
            } else {
                let (a, b) = (replace_script(&before.table), replace_script(&after.table));
                let text = unified_diff(&a, &b, old, new);
                out.write_all(text.as_bytes())?;
                a != b
            };
            Ok(i32::from(changed))
        }
        Command::Apply { paths, node } => {
            let (compiled, clean) = compile_paths(paths, &node.facts(), err);
            let name = compiled.table.name.clone();
            match Engine::new().reconcile(&compiled.table) {
                Ok(changes) => writeln!(out, "applied table inet {name}: {changes}")?,
                Err(e) => {
                    writeln!(err, "error: {e}")?;
                    return Ok(2);
                }
            }
            Ok(if clean { 0 } else { 1 })
        }
        Command::Run(args) => match args.agent().and_then(|agent| agent.run()) {
            Ok(()) => Ok(0),
            Err(e) => {
                writeln!(err, "error: {e}")?;
                Ok(2)
            }
        },
        Command::Cleanup { table } => {
            // Declaring the table first makes the delete succeed whether or not it exists.
            let script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
            match kernel::apply(&script) {
                Ok(()) => Ok(0),
                Err(e) => {
                    writeln!(err, "error: {e}")?;
                    Ok(2)
                }
            }
        }
        Command::Explain {
            paths,
            from,
            to,
            proto,
            origin,
            format,
            node,
        } => {
            let facts = node.facts();
            let (compiled, clean) = compile_paths(paths, &facts, err);
            let query = Query {
                from: *from,
                to: *to,
                proto: *proto,
                origin: *origin,
            };
            out.write_all(report(&compiled.table, &facts, &query, *format).as_bytes())?;
            Ok(if clean { 0 } else { 1 })
        }
    }
}

fn unified_diff(a: &str, b: &str, old: &std::path::Path, new: &std::path::Path) -> String {
    let diff = similar::TextDiff::from_lines(a, b);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&old.display().to_string(), &new.display().to_string())
        .to_string();
    if std::io::stdout().is_terminal() {
        colour(&text)
    } else {
        text
    }
}

/// ANSI colours, as `git diff` uses them.
fn colour(diff: &str) -> String {
    diff.lines()
        .map(|line| {
            let code = match line.as_bytes().first() {
                Some(b'+') => "32",
                Some(b'-') => "31",
                Some(b'@') => "36",
                _ => return format!("{line}\n"),
            };
            format!("\x1b[{code}m{line}\x1b[0m\n")
        })
        .collect()
}
