//! The `svc-nft` command line. Commands write to the writers they are given and return the
//! exit status, so tests drive them exactly as the binary does.

use crate::cidr;
use crate::config::RunArgs;
use crate::engine::Engine;
use crate::explain::{report, Format, Origin, Proto, Query};
use crate::feature_gates;
use crate::input;
use crate::kernel;
use crate::logging;
use clap::{Args, ColorChoice, CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
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
    #[command(after_help = COMPILE_STATUS)]
    Compile {
        #[command(flatten)]
        input: Inputs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show what a change of manifests does to the ruleset: a unified diff (exit 0 when equal,
    /// 1 when they differ, 2 on bad input), or the nft batch that applies it.
    #[command(after_help = DIFF_STATUS)]
    Diff {
        /// The manifests before the change (file, directory or -).
        old: PathBuf,
        /// The manifests after the change.
        new: PathBuf,
        /// Print the minimal nft transaction from OLD to NEW instead of a diff.
        #[arg(long)]
        transaction: bool,
        /// Colour the diff: auto (when stdout is a terminal and NO_COLOR is unset or empty),
        /// always or never.
        #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
        color: ColorChoice,
        #[command(flatten)]
        keep_going: KeepGoing,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Compile and apply once into this network namespace's kernel, replacing svc-nft's table
    /// in one transaction; print what changed.
    #[command(after_help = APPLY_STATUS)]
    Apply {
        #[command(flatten)]
        input: Inputs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Keep this node's kernel in sync with the API server (or, with --manifests, a manifest
    /// directory): recompile the Services that change, apply the difference; serve health and
    /// metrics. SIGTERM stops it and leaves the rules in place.
    #[command(after_help = logging::HELP)]
    Run(RunArgs),
    /// Remove svc-nft's table from this network namespace, and nothing else.
    Cleanup {
        /// nftables table svc-nft owns (family inet).
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
    },
    /// Print a shell completion script: `source <(svc-nft completions bash)`, or save it
    /// where the shell looks (bash: /usr/share/bash-completion/completions/svc-nft; zsh: a
    /// file _svc-nft on $fpath; fish: ~/.config/fish/completions/svc-nft.fish).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff), made from these very flags: `svc-nft man | man -l -`;
    /// with COMMAND, that command's page (svc-nft-COMMAND(1)).
    Man {
        /// A command, e.g. compile.
        command: Option<String>,
    },
    /// Where would this node send a new connection? Evaluates the compiled rules (not the
    /// kernel): DNAT candidates with their share, REJECT, DROP or not handled, whether the
    /// source is masqueraded, and the chains and map elements on the way.
    #[command(after_help = EXPLAIN_STATUS)]
    Explain {
        #[command(flatten)]
        input: Inputs,
        /// The client's address.
        #[arg(long)]
        from: IpAddr,
        /// Where it connects to (`10.96.0.10:53`, `[fd00::a]:53`).
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
        /// Default: node if --from is a node IP or --local-address, pod if it is in
        /// --cluster-cidr, else external.
        #[arg(long, value_enum)]
        origin: Option<Origin>,
        /// Addresses of this node besides --node-ip (a second interface, a secondary
        /// address): `fib daddr type local` calls them local, so NodePorts on CIDRs answer there.
        #[arg(long = "local-address", value_delimiter = ',')]
        local_addresses: Vec<IpAddr>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
        format: Format,
        #[command(flatten)]
        node: NodeArgs,
    },
}

const COMPILE_STATUS: &str = "\
Exit status: 0 when every input was read and accepted; 1 when a path cannot be read, a \
directory holds no manifest file or an object is rejected (each reported on stderr as \
`error: ...`; no ruleset is printed, or with --keep-going one without them); 2 on bad usage \
or when the output cannot be written. Warnings never change it.";

const DIFF_STATUS: &str = "\
Exit status, as diff(1): 0 when the rulesets are equal, 1 when they differ, 2 when a path \
cannot be read, a directory holds no manifest file or an object is rejected (no diff is \
printed, or with --keep-going the diff without them), or on bad usage. Warnings never \
change it.";

const APPLY_STATUS: &str = "\
Exit status: 0 when applied; 1 when a path cannot be read, a directory holds no manifest \
file or an object is rejected (nothing is applied, or with --keep-going everything else \
is); 2 when the kernel refused the transaction (nothing changed) or on bad usage. Warnings \
never change it.";

const EXPLAIN_STATUS: &str = "\
Exit status: 0 when answered; 1 when a path cannot be read, a directory holds no manifest \
file or an object is rejected (no answer is printed, or with --keep-going one without \
them); 2 on bad usage. Warnings never change it.";

/// The manifests a command reads.
#[derive(Debug, Clone, Args)]
pub struct Inputs {
    /// A manifest file, a directory of *.yaml|*.yml|*.json files, or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub keep_going: KeepGoing,
}

impl Inputs {
    /// Compile the inputs; when something was rejected and `--keep-going` was not given,
    /// say `refusal` and return the exit status instead: the command fails closed.
    fn compile(
        &self,
        facts: &NodeFacts,
        refusal: &str,
        err: &mut dyn Write,
    ) -> Result<Compilation, i32> {
        let result = Compilation::of(&self.paths, facts, err);
        match go_on(result.rejected.len(), self.keep_going, refusal, err) {
            true => Ok(result),
            false => Err(result.status()),
        }
    }
}

#[derive(Debug, Clone, Copy, Args)]
pub struct KeepGoing {
    /// When an input is rejected or cannot be read, use the rest instead of stopping (the
    /// exit status still says so).
    #[arg(long)]
    pub keep_going: bool,
}

/// Facts about the node; kube-proxy's flag names. Lists take repeated flags or commas.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// nftables table svc-nft owns (family inet).
    #[arg(long, default_value = DEFAULT_TABLE)]
    pub table: String,
    /// This node's name, as in endpoints' nodeName.
    #[arg(long, visible_alias = "hostname-override")]
    pub node_name: Option<String>,
    /// This node's IP addresses (v4 and/or v6).
    #[arg(long = "node-ip", value_delimiter = ',')]
    pub node_ips: Vec<IpAddr>,
    /// This node's zone (its topology.kubernetes.io/zone label), for topology hints.
    #[arg(long)]
    pub node_zone: Option<String>,
    /// Pod CIDRs; traffic to Services from outside them is masqueraded.
    #[arg(long = "cluster-cidr", value_delimiter = ',', value_parser = cidr::parse)]
    pub cluster_cidrs: Vec<IpNet>,
    /// Service CIDRs; addresses in them that no Service owns are dropped.
    #[arg(long = "service-cidr", value_delimiter = ',', value_parser = cidr::parse)]
    pub service_cidrs: Vec<IpNet>,
    /// Where NodePorts answer: `primary` (the default: the node IPs), `all` (every local
    /// address), or CIDRs (every local address in them; a family without one: all of its
    /// local addresses). Never on loopback.
    #[arg(long = "nodeport-addresses", value_delimiter = ',', value_parser = cidr::nodeport_value)]
    pub nodeport_addresses: Vec<cidr::NodePortValue>,
    /// Masquerade all traffic sent to Services.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Feature gates, as kube-proxy takes them (Name=true|false, comma-separated). svc-nft
    /// acts on AllowServiceExternalIPs; others are ignored with a warning.
    #[arg(long = "feature-gates", value_delimiter = ',', value_parser = feature_gates::parse)]
    pub feature_gates: Vec<feature_gates::Gate>,
}

impl NodeArgs {
    /// The facts, after telling `err` what is worth a warning in them and which feature
    /// gates svc-nft does not act on.
    fn facts_warned(&self, err: &mut dyn Write) -> NodeFacts {
        let facts = self.facts();
        for warning in facts.warnings() {
            let _ = writeln!(err, "warning: {warning}");
        }
        for warning in feature_gates::apply(&self.feature_gates, &mut NodeFacts::default()) {
            let _ = writeln!(err, "warning: --feature-gates: {warning}");
        }
        facts
    }

    pub fn facts(&self) -> NodeFacts {
        let mut facts = NodeFacts {
            table: self.table.clone(),
            node_name: self.node_name.clone(),
            node_ips: self.node_ips.clone(),
            zone: self.node_zone.clone(),
            cluster_cidrs: cidr::normalise(&self.cluster_cidrs),
            service_cidrs: cidr::normalise(&self.service_cidrs),
            nodeport_addresses: cidr::nodeport_addresses(&self.nodeport_addresses),
            masquerade_all: self.masquerade_all,
            allow_external_ips: true,
        };
        feature_gates::apply(&self.feature_gates, &mut facts);
        facts
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
    let result = Compilation::of(paths, node, err);
    let clean = result.rejected.is_empty();
    (result.compiled, clean)
}

/// Manifests compiled, and what was left out of the result: paths that could not be read,
/// directories without manifests, rejected documents and objects (errors, not warnings).
struct Compilation {
    compiled: Compiled,
    rejected: Vec<Diagnostic>,
    /// Paths that could not be read (among `rejected`).
    unreadable: usize,
}

impl Compilation {
    /// Every diagnostic goes to `err` in file order, whichever stage found it.
    fn of(paths: &[PathBuf], node: &NodeFacts, err: &mut dyn Write) -> Compilation {
        let input = input::read(paths);
        let compiled = compile(&input.objects, node);
        let mut diagnostics = input.diagnostics;
        diagnostics.extend(compiled.diagnostics.iter().cloned());
        Compilation::reported(compiled, diagnostics, input.unreadable, err)
    }

    fn reported(
        compiled: Compiled,
        mut diagnostics: Vec<Diagnostic>,
        unreadable: usize,
        err: &mut dyn Write,
    ) -> Compilation {
        diagnostics.sort_by(|a, b| a.origin.cmp(&b.origin));
        for d in &diagnostics {
            // A closed stderr must not turn a diagnostic into a panic.
            let _ = writeln!(err, "{}: {d}", d.severity);
        }
        diagnostics.retain(Diagnostic::is_error);
        Compilation {
            compiled,
            rejected: diagnostics,
            unreadable,
        }
    }

    /// The exit status: 2 when a path could not be read, 1 when something was rejected.
    fn status(&self) -> i32 {
        match (self.unreadable, self.rejected.len()) {
            (0, 0) => 0,
            (0, _) => 1,
            _ => 2,
        }
    }

    /// nft comments naming what was left out, for the top of a --keep-going ruleset.
    fn left_out_comment(&self) -> String {
        if self.rejected.is_empty() {
            return String::new();
        }
        let mut text = String::from("# --keep-going: left out of this ruleset, as rejected:\n");
        for d in &self.rejected {
            let line = d.to_string().replace(['\n', '\r'], " ");
            text.push_str(&format!("#   {line}\n"));
        }
        text
    }
}

/// Fail closed: with anything rejected, `what` is not done unless --keep-going says so.
/// Returns whether to go on.
fn go_on(rejected: usize, keep_going: KeepGoing, what: &str, err: &mut dyn Write) -> bool {
    if rejected == 0 || keep_going.keep_going {
        return true;
    }
    let inputs = if rejected == 1 { "input" } else { "inputs" };
    let _ = writeln!(
        err,
        "error: {what}: {rejected} {inputs} rejected or unreadable (--keep-going goes on without them)"
    );
    false
}

/// Run a command; the return value is the process exit status.
pub fn run(command: &Command, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<i32> {
    match command {
        Command::Compile { input, node } => {
            compile_command(input, &node.facts_warned(err), out, err)
        }
        Command::Diff {
            old,
            new,
            transaction,
            color,
            keep_going,
            node,
        } => {
            let inputs = [old.as_path(), new.as_path()];
            let output = DiffOutput {
                transaction: *transaction,
                colour: colour_on(*color, std::io::stdout().is_terminal(), NoColor::from_env()),
            };
            diff_command(
                inputs,
                output,
                *keep_going,
                &node.facts_warned(err),
                out,
                err,
            )
        }
        Command::Apply { input, node } => apply_command(input, &node.facts_warned(err), out, err),
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
        Command::Completions { shell } => {
            out.write_all(completions(*shell).as_bytes())?;
            Ok(0)
        }
        Command::Man { command } => man_page(command.as_deref(), out, err),
        Command::Explain {
            input,
            from,
            to,
            proto,
            origin,
            local_addresses,
            format,
            node,
        } => {
            let query = Query {
                from: *from,
                to: *to,
                proto: *proto,
                origin: *origin,
                local_addresses: local_addresses.clone(),
            };
            explain_command(input, &node.facts_warned(err), &query, *format, out, err)
        }
    }
}

fn compile_command(
    input: &Inputs,
    facts: &NodeFacts,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let result = match input.compile(facts, "no ruleset printed", err) {
        Ok(result) => result,
        Err(status) => return Ok(status),
    };
    out.write_all(result.left_out_comment().as_bytes())?;
    out.write_all(replace_script(&result.compiled.table).as_bytes())?;
    Ok(result.status())
}

/// How `diff` prints.
#[derive(Debug, Clone, Copy)]
struct DiffOutput {
    /// The nft batch instead of a unified diff.
    transaction: bool,
    colour: bool,
}

/// Whether NO_COLOR asks for no colours (https://no-color.org: set and not empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoColor {
    Set,
    Unset,
}

impl NoColor {
    fn from_env() -> NoColor {
        match std::env::var_os("NO_COLOR") {
            Some(v) if !v.is_empty() => NoColor::Set,
            _ => NoColor::Unset,
        }
    }
}

/// --color: `auto` colours a terminal unless NO_COLOR says not to.
fn colour_on(choice: ColorChoice, terminal: bool, no_color: NoColor) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && no_color == NoColor::Unset,
    }
}

fn diff_command(
    inputs: [&std::path::Path; 2],
    output: DiffOutput,
    keep_going: KeepGoing,
    facts: &NodeFacts,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let [before, after] = inputs.map(|p| Compilation::of(&[p.to_path_buf()], facts, err));
    let rejected = before.rejected.len() + after.rejected.len();
    if !go_on(rejected, keep_going, "no diff printed", err) {
        return Ok(2);
    }
    let (before, after) = (&before.compiled.table, &after.compiled.table);
    let changed = if output.transaction {
        let tx = svc_nft_ir::diff(before, after);
        write!(out, "{tx}")?;
        !tx.is_empty()
    } else {
        let (a, b) = (replace_script(before), replace_script(after));
        let text = unified_diff(&a, &b, inputs);
        let text = if output.colour { colour(&text) } else { text };
        out.write_all(text.as_bytes())?;
        a != b
    };
    // Trouble wins over a difference, as in diff(1).
    Ok(if rejected > 0 { 2 } else { i32::from(changed) })
}

fn apply_command(
    input: &Inputs,
    facts: &NodeFacts,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let result = match input.compile(facts, "nothing applied", err) {
        Ok(result) => result,
        Err(status) => return Ok(status),
    };
    let table = &result.compiled.table;
    match Engine::new().reconcile(table) {
        Ok(changes) => writeln!(out, "applied table inet {}: {changes}", table.name)?,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(2);
        }
    }
    Ok(result.status())
}

fn explain_command(
    input: &Inputs,
    facts: &NodeFacts,
    query: &Query,
    format: Format,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let result = match input.compile(facts, "no answer printed", err) {
        Ok(result) => result,
        Err(status) => return Ok(status),
    };
    out.write_all(report(&result.compiled.table, facts, query, format).as_bytes())?;
    Ok(result.status())
}

fn completions(shell: Shell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "svc-nft", &mut script);
    let script = String::from_utf8_lossy(&script);
    // clap_complete's bash script spells a hyphenated binary's state two ways
    // (clap-rs/clap#6421): its loop sets svc__nft__subcmd__compile, its case arms wait for
    // svc__subcmd__nft__subcmd__compile, so no command's flags would ever complete.
    match shell {
        Shell::Bash => script.replace("svc__subcmd__nft", "svc__nft"),
        _ => script.into_owned(),
    }
}

/// The page of svc-nft, or of one of its commands as svc-nft-COMMAND.
fn man_page(
    command: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let cli = Cli::command();
    let page = match command {
        None => cli,
        Some(name) => match cli.find_subcommand(name) {
            Some(sub) => sub.clone().name(format!("svc-nft-{name}")),
            None => {
                writeln!(err, "error: svc-nft has no command {name:?}")?;
                return Ok(2);
            }
        },
    };
    let source = format!("svc-nft {}", env!("CARGO_PKG_VERSION"));
    clap_mangen::Man::new(page).source(source).render(out)?;
    Ok(0)
}

fn unified_diff(a: &str, b: &str, [old, new]: [&std::path::Path; 2]) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(3)
        .header(&old.display().to_string(), &new.display().to_string())
        .to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use svc_nft_compiler::Origin as Source;

    fn diagnostic(document: usize, message: &str) -> Diagnostic {
        Diagnostic::new(
            Source::document("in.yaml", document),
            None,
            None,
            message.into(),
        )
    }

    #[test]
    fn color_auto_means_a_terminal_without_no_color() {
        use ColorChoice::*;
        for (choice, terminal, no_color, on) in [
            (Auto, true, NoColor::Unset, true),
            (Auto, true, NoColor::Set, false),
            (Auto, false, NoColor::Unset, false),
            (Always, false, NoColor::Set, true),
            (Never, true, NoColor::Unset, false),
        ] {
            assert_eq!(
                colour_on(choice, terminal, no_color),
                on,
                "{choice:?} {terminal} {no_color:?}"
            );
        }
    }

    #[test]
    fn warnings_are_reported_but_never_block() {
        let compiled = compile(&[], &NodeFacts::default());
        let warning = diagnostic(1, "questionable").warning();
        let mut err = Vec::new();
        let result = Compilation::reported(compiled, vec![warning], 0, &mut err);
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "warning: in.yaml: document 1: questionable\n"
        );
        assert!(result.rejected.is_empty());
        assert!(go_on(
            result.rejected.len(),
            KeepGoing { keep_going: false },
            "x",
            &mut Vec::new()
        ));
        assert_eq!(result.left_out_comment(), "");
    }

    #[test]
    fn errors_are_left_out_and_named_in_file_order() {
        let compiled = compile(&[], &NodeFacts::default());
        let diagnostics = vec![
            diagnostic(2, "second\nline"),
            diagnostic(1, "first").warning(),
            diagnostic(1, "first error"),
        ];
        let result = Compilation::reported(compiled, diagnostics, 0, &mut Vec::new());
        assert_eq!(
            result.left_out_comment(),
            "# --keep-going: left out of this ruleset, as rejected:\n\
             #   in.yaml: document 1: first error\n\
             #   in.yaml: document 2: second line\n"
        );
        let mut err = Vec::new();
        assert!(!go_on(
            2,
            KeepGoing { keep_going: false },
            "nothing done",
            &mut err
        ));
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "error: nothing done: 2 inputs rejected or unreadable (--keep-going goes on without them)\n"
        );
        assert!(go_on(
            2,
            KeepGoing { keep_going: true },
            "nothing done",
            &mut Vec::new()
        ));
    }
}
