//! The `svc-nft` binary as a user runs it: inputs, outputs and exit statuses.

mod netns;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn svc_nft(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svc-nft"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run svc-nft");
    // A command refused for its flags exits without reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A scratch directory with the given files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str, files: &[(&str, &str)]) -> Dir {
        let dir = std::env::temp_dir().join(format!("svc-nft-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        Dir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const REDIS: &str = "apiVersion: v1
kind: Service
metadata: {name: redis}
spec: {clusterIP: 10.97.97.97, ports: [{port: 6379}]}
";

const REDIS_ENDPOINTS: &str = "apiVersion: v1
kind: Endpoints
metadata: {name: redis}
subsets: [{addresses: [{ip: 10.244.1.5}], ports: [{port: 6379}]}]
";

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .display()
        .to_string()
}

#[test]
fn compile_reads_stdin_and_replaces_the_table() {
    let out = svc_nft(&["compile", "-f", "-", "--table", "kp"], REDIS);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.starts_with("table inet kp {}\ndelete table inet kp\n"));
    assert!(
        script.contains("# default/redis (10.97.97.97:6379): no usable endpoint: REJECT"),
        "{script}"
    );
}

#[test]
fn compile_reads_a_directory_of_yaml_and_json_in_name_order() {
    let dir = Dir::new(
        "dir",
        &[
            ("b-endpoints.yml", REDIS_ENDPOINTS),
            ("a-service.yaml", REDIS),
            ("notes.txt", "not a manifest"),
        ],
    );
    let out = svc_nft(&["compile", "-f", dir.path()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("10.97.97.97 . 6379 . 0 : 10.244.1.5 . 6379"));
}

#[test]
fn bundled_examples_compile_cleanly_and_deterministically() {
    let first = svc_nft(&["compile", "-f", &examples()], "");
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(first.stderr.is_empty(), "{}", text(&first.stderr));
    let again = svc_nft(&["compile", "-f", &examples()], "");
    assert_eq!(first.stdout, again.stdout);
}

const BROKEN: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: ns1}\n\
                      spec: {clusterIP: 10.96.0.1, ports: [{port: 0}]}\n";

const BROKEN_ERROR: &str = "error: -: document 2: Service ns1/broken: spec.ports[0].port: \
                            0 is not a valid port number (1-65535)\n";

#[test]
fn a_rejected_object_prints_no_ruleset_and_exits_1() {
    let input = format!("{REDIS}---\n{BROKEN}");
    let out = svc_nft(&["compile", "-f", "-"], &input);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{BROKEN_ERROR}error: no ruleset printed: 1 input rejected or unreadable \
             (--keep-going goes on without them)\n"
        )
    );
    // `compile | nft -f -` must not replace the node's table with a partial one.
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn keep_going_prints_the_rest_and_names_what_it_left_out() {
    let input = format!("{REDIS}---\n{BROKEN}");
    let out = svc_nft(
        &["compile", "--keep-going", "-f", "-", "--table", "kp"],
        &input,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), BROKEN_ERROR);
    let script = text(&out.stdout);
    let expected_head = "# --keep-going: left out of this ruleset, as rejected:\n\
         #   -: document 2: Service ns1/broken: spec.ports[0].port: 0 is not a valid port \
         number (1-65535)\n\
         table inet kp {}\n";
    assert!(script.starts_with(expected_head), "{script}");
    // The good Service still compiles.
    assert!(script.contains("10.97.97.97"), "{script}");
}

#[test]
fn an_unreadable_path_prints_no_ruleset() {
    let good = Dir::new("unreadable", &[("svc.yaml", REDIS)]);
    for args in [
        vec!["compile", "-f", "/nonexistent/svc.yaml"],
        vec!["compile", "-f", good.path(), "-f", "/nonexistent/svc.yaml"],
    ] {
        let out = svc_nft(&args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("error: /nonexistent/svc.yaml: cannot read: No such file"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }
    let args = [
        "compile",
        "--keep-going",
        "-f",
        good.path(),
        "-f",
        "/nonexistent/svc.yaml",
    ];
    let out = svc_nft(&args, "");
    assert_eq!(
        out.status.code(),
        Some(2),
        "unreadable, even with --keep-going"
    );
    let script = text(&out.stdout);
    assert!(
        script.starts_with(
            "# --keep-going: left out of this ruleset, as rejected:\n\
             #   /nonexistent/svc.yaml: cannot read: No such file"
        ),
        "{script}"
    );
    assert!(script.contains("10.97.97.97"), "{script}");
}

#[test]
fn a_directory_without_manifests_is_warned_about_and_defines_nothing() {
    let dir = Dir::new("no-manifests", &[("notes.txt", "not a manifest")]);
    let out = svc_nft(&["compile", "-f", dir.path()], "");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stderr),
        format!(
            "warning: {}: no manifest files (*.yaml, *.yml, *.json) in this directory\n",
            dir.path()
        )
    );
    assert!(text(&out.stdout).contains("table inet svc-nft {"));
}

#[test]
fn explain_answers_nothing_on_rejected_input_unless_keep_going() {
    let input = format!("{REDIS}---\n{BROKEN}");
    let query = ["--from", "10.244.9.2", "--to", "10.97.97.97:6379"];
    let out = svc_nft(&[&["explain", "-f", "-"][..], &query].concat(), &input);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("error: no answer printed"));

    let args = [&["explain", "--keep-going", "-f", "-"][..], &query].concat();
    let out = svc_nft(&args, &input);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("\nREJECT  100.0%\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn diff_prints_nothing_on_an_unreadable_side_unless_keep_going() {
    let old = Dir::new("diff-missing", &[("svc.yaml", REDIS)]);
    let out = svc_nft(&["diff", old.path(), "/nonexistent"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("error: no diff printed"));

    let out = svc_nft(&["diff", "--keep-going", old.path(), "/nonexistent"], "");
    assert_eq!(out.status.code(), Some(2));
    let diff = text(&out.stdout);
    assert!(
        diff.contains("\n-# default/redis (10.97.97.97:6379)"),
        "{diff}"
    );
}

#[test]
fn each_command_documents_its_exit_status() {
    for command in ["compile", "diff", "apply", "explain"] {
        let help = text(&svc_nft(&[command, "--help"], "").stdout);
        assert!(help.contains("Exit status"), "{command}: {help}");
        assert!(help.contains("--keep-going"), "{command}: {help}");
    }
}

#[test]
fn apply_changes_nothing_in_the_kernel_on_rejected_input() {
    if !netns::require() {
        return;
    }
    let ns = netns::Netns::new("cli-apply");
    let bin = env!("CARGO_BIN_EXE_svc-nft");
    let good = Dir::new("apply-good", &[("svc.yaml", REDIS)]);
    let args = [bin, "apply", "-f", good.path(), "-f", "/nonexistent.yaml"];
    let out = ns.exec(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("error: nothing applied"));
    assert_eq!(ns.nft_list("list tables"), "", "the kernel was changed");

    let out = ns.exec(&[&args[..2], &["--keep-going"], &args[2..]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(ns.nft_list("list tables").contains("table inet svc-nft"));

    // The comment --keep-going puts on top of a printed ruleset is nft syntax.
    let compile = [&["compile", "--keep-going"], &args[2..]].concat();
    let script = text(&svc_nft(&compile, "").stdout);
    assert!(script.starts_with("# --keep-going"), "{script}");
    ns.nft(&script).expect("the --keep-going ruleset loads");
}

#[test]
fn cidr_flags_say_what_is_wrong() {
    for (flag, value, message) in [
        (
            "--cluster-cidr",
            "10.244.0.0/33",
            "prefix length 33 is out of range (IPv4 allows 0–32)",
        ),
        (
            "--service-cidr",
            "fd00::/129",
            "prefix length 129 is out of range (IPv6 allows 0–128)",
        ),
        (
            "--nodeport-addresses",
            "192.0.2.1",
            "192.0.2.1 has no prefix length",
        ),
    ] {
        let out = svc_nft(&["compile", "-f", "-", flag, value], REDIS);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("invalid IP address syntax"), "{stderr}");
    }
}

#[test]
fn overlapping_and_host_bit_cidrs_compile_as_their_union() {
    let compile = |cidrs: &str| {
        let out = svc_nft(&["compile", "-f", "-", "--service-cidr", cidrs], REDIS);
        assert!(out.status.success(), "{cidrs}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let merged = compile("10.96.0.0/12");
    assert!(merged.contains("10.96.0.0/12"), "{merged}");
    assert_eq!(compile("10.96.0.0/12,10.100.0.0/16,10.96.0.0/12"), merged);
    assert_eq!(compile("10.96.0.1/12"), merged);
}

#[test]
fn diff_exits_like_diff1() {
    let old = Dir::new("old", &[("svc.yaml", REDIS)]);
    let new = Dir::new("new", &[("svc.yaml", REDIS), ("eps.yaml", REDIS_ENDPOINTS)]);

    let same = svc_nft(&["diff", old.path(), old.path()], "");
    assert_eq!(same.status.code(), Some(0));
    assert!(same.stdout.is_empty());

    let changed = svc_nft(&["diff", old.path(), new.path()], "");
    assert_eq!(changed.status.code(), Some(1));
    let diff = text(&changed.stdout);
    assert!(diff.starts_with(&format!("--- {}\n+++ {}\n", old.path(), new.path())));
    // Not a terminal: no colour codes.
    assert!(!diff.contains('\x1b'));
    assert!(
        diff.contains("\n+\t\t\t10.97.97.97 . 6379 . 0 : 10.244.1.5 . 6379\n"),
        "{diff}"
    );

    let broken = Dir::new("broken", &[("svc.yaml", "kind: [")]);
    let trouble = svc_nft(&["diff", old.path(), broken.path()], "");
    assert_eq!(trouble.status.code(), Some(2));
}

#[test]
fn diff_transaction_is_the_minimal_batch() {
    let old = Dir::new("tx-old", &[("svc.yaml", REDIS)]);
    let new = Dir::new(
        "tx-new",
        &[("svc.yaml", REDIS), ("eps.yaml", REDIS_ENDPOINTS)],
    );
    let out = svc_nft(&["diff", "--transaction", old.path(), new.path()], "");
    assert_eq!(out.status.code(), Some(1));
    let tx = text(&out.stdout);
    assert!(
        tx.contains("add element inet svc-nft endpoints-v4-tcp {"),
        "{tx}"
    );
    assert!(!tx.contains("add table"), "only what changed: {tx}");
}

fn svc_nft_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_svc-nft"));
    command
        .args(args)
        .env_remove("SVC_NFT_LOG")
        .env_remove("RUST_LOG");
    command
        .envs(env.iter().copied())
        .output()
        .expect("run svc-nft")
}

#[test]
fn log_level_comes_from_svc_nft_log_then_rust_log() {
    let args = ["compile", "-f", &examples()];
    let bad = "svc_nft=loud";
    let warned = |env: &[(&str, &str)]| {
        let out = svc_nft_env(&args, env);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let rust_log = warned(&[("RUST_LOG", bad)]);
    assert!(
        rust_log.starts_with("warning: RUST_LOG=\"svc_nft=loud\" is not a log filter"),
        "{rust_log}"
    );
    let ours = warned(&[("SVC_NFT_LOG", bad), ("RUST_LOG", "info")]);
    assert!(ours.starts_with("warning: SVC_NFT_LOG="), "{ours}");
    // SVC_NFT_LOG wins: RUST_LOG is not even read.
    assert_eq!(warned(&[("SVC_NFT_LOG", "info"), ("RUST_LOG", bad)]), "");
}

#[test]
fn run_help_documents_logging_and_shows_hostname_override() {
    let help = text(&svc_nft(&["run", "--help"], "").stdout);
    for needle in ["SVC_NFT_LOG", "RUST_LOG", "--hostname-override"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    // It is the same flag as --node-name.
    let out = svc_nft(
        &["compile", "-f", "-", "--hostname-override", "node-a"],
        REDIS,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn completions_know_the_commands_and_flags() {
    for shell in ["bash", "zsh", "fish"] {
        let out = svc_nft(&["completions", shell], "");
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["compile", "explain", "keep-going", "cluster-cidr"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    assert_eq!(svc_nft(&["completions", "tcsh"], "").status.code(), Some(2));
}

#[test]
fn man_pages_are_roff_made_from_the_flags() {
    let page = text(&svc_nft(&["man"], "").stdout);
    assert!(page.contains(".TH svc-nft 1"), "{page}");
    assert!(page.contains("compile"), "{page}");
    let compile = svc_nft(&["man", "compile"], "");
    assert!(compile.status.success(), "{}", text(&compile.stderr));
    let compile = text(&compile.stdout);
    assert!(compile.contains(".TH svc-nft-compile 1"), "{compile}");
    assert!(compile.contains("keep\\-going"), "{compile}");
    assert!(compile.contains("Exit status"), "{compile}");
    let unknown = svc_nft(&["man", "nope"], "");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no command \"nope\""));
}

/// What bash offers after `words` with the completion script loaded.
fn bash_completes(words: &[&str]) -> String {
    let script = text(&svc_nft(&["completions", "bash"], "").stdout);
    let dir = Dir::new(
        &format!("bash-{}", words.len()),
        &[("svc-nft.bash", &script)],
    );
    let program = format!(
        "source {}/svc-nft.bash; COMP_WORDS=({}); COMP_CWORD={}; \
         complete -p svc-nft >/dev/null || exit 1; \
         $(complete -p svc-nft | sed 's/.*-F \\([^ ]*\\).*/\\1/') svc-nft '{}' '{}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        dir.path(),
        words.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn bash_completes_commands_and_flags() {
    assert!(bash_completes(&["svc-nft", "comp"])
        .lines()
        .any(|w| w == "compile"));
    let flags = bash_completes(&["svc-nft", "compile", "--keep"]);
    assert_eq!(flags.trim(), "--keep-going");
}

/// `svc-nft diff` between two scratch directories with `flags`, `env` set, in a terminal
/// (`script(1)` gives it one) or not.
fn coloured_diff(flags: &[&str], env: &[(&str, &str)], terminal: bool) -> bool {
    let old = Dir::new("colour-old", &[("svc.yaml", REDIS)]);
    let new = Dir::new(
        "colour-new",
        &[("svc.yaml", REDIS), ("eps.yaml", REDIS_ENDPOINTS)],
    );
    let bin = env!("CARGO_BIN_EXE_svc-nft");
    let argv = [&[bin, "diff", old.path(), new.path()][..], flags].concat();
    let mut command = if terminal {
        let mut script = Command::new("script");
        script.args(["-qec", &argv.join(" "), "/dev/null"]);
        script
    } else {
        let mut direct = Command::new(argv[0]);
        direct.args(&argv[1..]);
        direct
    };
    command.env_remove("NO_COLOR").envs(env.iter().copied());
    let out = command.output().expect("run svc-nft diff");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("10.244.1.5"), "{stdout}");
    stdout.contains("\x1b[32m+")
}

#[test]
fn diff_colours_follow_color_and_no_color() {
    let no_color = [("NO_COLOR", "1")];
    assert!(coloured_diff(&[], &[], true), "auto on a terminal");
    assert!(
        !coloured_diff(&[], &no_color, true),
        "NO_COLOR on a terminal"
    );
    assert!(
        coloured_diff(&[], &[("NO_COLOR", "")], true),
        "empty NO_COLOR"
    );
    assert!(!coloured_diff(&[], &[], false), "auto into a pipe");
    assert!(coloured_diff(&["--color", "always"], &no_color, false));
    assert!(!coloured_diff(&["--color=never"], &[], true));
}

#[test]
fn warnings_never_block_the_ruleset() {
    let input = REDIS.replace(
        "ports: [{port: 6379}]}",
        "ports: [{port: 6379}], bogusField: 1}",
    );
    let out = svc_nft(&["compile", "-f", "-"], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with("warning: "),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("10.97.97.97"));
}

#[test]
fn a_feature_gate_svc_nft_does_not_act_on_is_a_warning() {
    let out = svc_nft(
        &["compile", "-f", "-", "--feature-gates", "SomeGate=true"],
        REDIS,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: --feature-gates: feature gate SomeGate is not one"),
        "{}",
        text(&out.stderr)
    );
    let out = svc_nft(&["compile", "-f", "-", "--feature-gates", "X=maybe"], REDIS);
    assert_eq!(out.status.code(), Some(2), "not a boolean: a usage error");
}
