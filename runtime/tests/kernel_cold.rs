//! The engine's cold start (a table not in the kernel yet): a skeleton through nft, then the
//! elements over netlink in one commit (see `runtime/src/cold.rs`). What it loads is what nft
//! loads; a refused element batch leaves no table behind; a process killed between the two
//! steps leaves an inert table that the next start replaces; traffic flows after it.

mod netns;

use netns::cluster::{answers, pairs, Cluster, CIDRS};
use netns::inputs::{examples, golden_cases};
use netns::{listing, tcp, Netns, Outcome, ANSWER_WAIT};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use svc_nft::engine::{Engine, Route};
use svc_nft_compiler::{compile, parse, NodeFacts};
use svc_nft_ir::{replace_script, Data, Table, Verdict};

/// The table as `nft -j` lists it, canonical.
fn state(ns: &Netns, table: &str) -> Json {
    listing::table(ns, table)
}

fn tables(ns: &Netns) -> String {
    ns.nft_list("list tables")
}

/// When two canonical listings differ: a unified diff of them.
fn assert_same(actual: &Json, expected: &Json, what: &str) {
    if actual != expected {
        let delta = listing::json_diff(expected, actual, ("loaded by nft", "loaded cold"));
        panic!("{what}: the cold load differs from nft's\n{delta}");
    }
}

fn compiled(manifests: &str, node: &NodeFacts) -> Table {
    let (objects, errors) = parse("test", manifests);
    assert!(errors.is_empty(), "{errors:?}");
    compile(&objects, node).table
}

/// `svc-nft apply` in `ns` with the cold load's debug line on stderr; `env` added to its
/// environment.
fn apply(ns: &Netns, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut command = ns.command("env");
    command
        .arg("SVC_NFT_LOG=svc_nft=debug")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(env!("CARGO_BIN_EXE_svc-nft"))
        .arg("apply")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run svc-nft apply");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every golden case (every Service feature the compiler knows, interval sets and IPv6
/// affinity recorders included), applied by the binary into a fresh namespace — cold — then
/// applied again, which finds the table and replaces it through nft: both hold the same.
#[test]
fn a_cold_apply_loads_what_nft_loads_for_every_golden_case() {
    if !netns::require() {
        return;
    }
    let mut loaded = 0;
    for dir in golden_cases() {
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        let flags = std::fs::read_to_string(dir.join("flags")).unwrap_or_default();
        let input = dir.join("input").to_string_lossy().into_owned();
        // Cases with rejected objects (bad-input) apply the rest, as `compile` prints it.
        let mut args = vec!["--keep-going", "-f", &input];
        args.extend(flags.split_whitespace());
        let ns = Netns::new("golden");
        let cold = apply(&ns, &args, "", &[]);
        assert!(
            String::from_utf8_lossy(&cold.stdout).starts_with("applied table"),
            "{case}: {}",
            stderr(&cold)
        );
        assert!(
            stderr(&cold).contains("cold load"),
            "{case}: {}",
            stderr(&cold)
        );
        assert!(!stderr(&cold).contains("WARN"), "{case}: {}", stderr(&cold));
        let name = tables(&ns);
        let name = name.trim().strip_prefix("table inet ").unwrap().to_string();
        let after_cold = state(&ns, &name);
        let warm = apply(&ns, &args, "", &[]);
        assert!(
            !stderr(&warm).contains("cold load"),
            "{case}: {}",
            stderr(&warm)
        );
        assert_same(&after_cold, &state(&ns, &name), &case);
        loaded += 1;
    }
    assert!(loaded > 10, "only {loaded} golden cases found");
}

/// In-process: a new engine's first sync into a namespace without the table loads exactly what
/// `nft -f` of the same table loads, without falling back to nft.
#[test]
fn the_engine_loads_a_mixed_cluster_cold_as_nft_does() {
    if !netns::require() {
        return;
    }
    let node = NodeFacts {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        ..NodeFacts::default()
    };
    let table = compiled(&examples(), &node);
    let name = table.name.clone();
    let ns = Netns::new("cold");
    ns.nft(&replace_script(&table)).expect("nft loads it");
    let expected = state(&ns, &name);
    ns.nft(&format!("delete table inet {name}\n")).unwrap();
    let (synced, failures) = ns.run(move || {
        let mut engine = Engine::new();
        let synced = engine.sync(table).expect("cold sync");
        (synced, engine.failures)
    });
    assert_eq!((synced.route, failures), (Route::Full, 0));
    assert_same(&state(&ns, &name), &expected, "examples");
}

/// The element batch is refused (a verdict element goes to a chain that does not exist, which
/// the skeleton cannot notice: its maps are empty): the skeleton is deleted, the nft fallback
/// is refused too, and no table is left. The next sync is cold again and succeeds.
#[test]
fn a_refused_element_batch_leaves_no_table_behind() {
    if !netns::require() {
        return;
    }
    let good = compiled(&examples(), &NodeFacts::default());
    let mut bad = good.clone();
    let (map, elems) = bad
        .sets
        .iter_mut()
        .find(|(_, s)| s.data == Some(None) && !s.elements.is_empty())
        .expect("a verdict map with elements");
    let element = elems.elements.values_mut().next().unwrap();
    element.data = Some(Data::Verdict(Verdict::Goto("no-such-chain".into())));
    eprintln!("broken: an element of {map}");
    let ns = Netns::new("refused");
    let name = good.name.clone();
    ns.nft(&replace_script(&good)).expect("nft loads it");
    let expected = state(&ns, &name);
    ns.nft(&format!("delete table inet {name}\n")).unwrap();
    let (failed, failures, again, failures_after) = ns.run(move || {
        let mut engine = Engine::new();
        let failed = engine.sync(bad).is_err();
        let failures = engine.failures;
        let tables = Command::new("nft").args(["list", "tables"]).output();
        assert_eq!(tables.unwrap().stdout, b"", "a table was left behind");
        let again = engine
            .sync(good)
            .map(|s| s.route)
            .map_err(|e| e.to_string());
        (failed, failures, again, engine.failures)
    });
    assert!(failed, "the broken table was accepted");
    // The cold load, then the nft replace.
    assert_eq!(failures, 2);
    assert_eq!(again.unwrap(), Route::Full);
    assert_eq!(
        failures_after, 2,
        "the good table's cold load fell back to nft"
    );
    assert_same(&state(&ns, &name), &expected, "after a refused batch");
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: t}\n\
                   spec: {clusterIP: 10.96.5.1, ports: [{port: 80, targetPort: 8080}]}\n---\n\
                   apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                   metadata: {name: web-a, namespace: t, labels: {kubernetes.io/service-name: web}}\n\
                   addressType: IPv4\nports: [{port: 8080}]\n\
                   endpoints: [{addresses: [10.244.1.2]}, {addresses: [10.244.2.2]}]\n";

fn connect(k: &Cluster) -> Outcome {
    let vip = "10.96.5.1:80".parse().unwrap();
    tcp(k.ns(k.c1), vip, ANSWER_WAIT)
}

/// The node's facts as `CIDRS` gives them to the binary.
fn cluster_node() -> NodeFacts {
    NodeFacts {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/32".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/16".parse().unwrap(),
            "fd00:96::/112".parse().unwrap(),
        ],
        ..NodeFacts::default()
    }
}

/// After a cold sync of the engine, a client's connection to a ClusterIP reaches the
/// Service's endpoints.
#[test]
fn a_cluster_ip_answers_after_a_cold_sync() {
    if !netns::require() {
        return;
    }
    let k = Cluster::new("", CIDRS);
    k.lab.node.nft("delete table inet svc-nft\n").unwrap();
    let table = compiled(WEB, &cluster_node());
    let failures = k.lab.node.run(move || {
        let mut engine = Engine::new();
        engine.sync(table).expect("cold sync");
        engine.failures
    });
    assert_eq!(failures, 0, "the cold load fell back to nft");
    let both = pairs(&[("10.244.1.2", "10.244.9.2"), ("10.244.2.2", "10.244.9.2")]);
    assert_eq!(answers(20, || connect(&k)), both);
}

/// A directory holding `nft`: the real one, except that after loading a skeleton (the only
/// script that starts with `create table`) it SIGKILLs its caller — svc-nft, between its two
/// steps.
fn killing_nft() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let real = std::env::split_paths(&path)
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new("/usr/sbin/nft").to_path_buf());
    let dir = std::env::temp_dir().join(format!("svc-nft-killing-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        r#"#!/bin/sh
script=$(mktemp)
cat > "$script"
{} "$@" < "$script"
rc=$?
head -n 1 "$script" | grep -q '^create table' && kill -9 $PPID
rm -f "$script"
exit $rc
"#,
        real.display()
    );
    let wrapper = dir.join("nft");
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// svc-nft killed right after nft loaded the skeleton: the table it leaves decides nothing
/// (its base chains accept at once, its plain sets are empty, the ClusterIP is not served),
/// and the next apply finds it and replaces it through nft with the whole ruleset.
#[test]
fn a_kill_between_skeleton_and_elements_leaves_an_inert_table() {
    if !netns::require() {
        return;
    }
    let mut k = Cluster::new("", CIDRS);
    let node = &k.lab.node;
    node.nft("delete table inet svc-nft\n").unwrap();
    let before = connect(&k);
    let dir = killing_nft();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut args = vec!["-f", "-"];
    args.extend(CIDRS);
    let killed = apply(node, &args, WEB, &[("PATH", &path)]);
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(killed.status.signal(), Some(9), "{}", stderr(&killed));

    // Inert: each base chain's first rule is a lone accept; the plain sets are empty.
    let listing: Json = serde_json::from_str(&node.nft_list("-j list table inet svc-nft")).unwrap();
    let items = listing["nftables"].as_array().unwrap();
    let base: Vec<&str> = items
        .iter()
        .filter_map(|i| i.get("chain").filter(|c| c.get("hook").is_some()))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!base.is_empty());
    for chain in &base {
        let first = items
            .iter()
            .filter_map(|i| i.get("rule"))
            .find(|r| r["chain"] == *chain)
            .unwrap_or_else(|| panic!("{chain} has no rule"));
        assert_eq!(
            first["expr"],
            serde_json::json!([{"accept": null}]),
            "{chain}"
        );
    }
    let filled: Vec<&Json> = items
        .iter()
        .filter_map(|i| i.get("set").or(i.get("map")))
        .filter(|s| s.get("elem").is_some())
        .filter(|s| !s["flags"].to_string().contains("interval"))
        .collect();
    assert!(filled.is_empty(), "elements loaded: {filled:?}");
    assert_eq!(connect(&k), before, "the skeleton changed traffic");

    // The next apply is not cold: it replaces the table whole.
    let next = apply(node, &args, WEB, &[]);
    assert!(next.status.success(), "{}", stderr(&next));
    assert!(!stderr(&next).contains("cold load"), "{}", stderr(&next));
    let both = pairs(&[("10.244.1.2", "10.244.9.2"), ("10.244.2.2", "10.244.9.2")]);
    assert_eq!(answers(20, || connect(&k)), both);
    // And it holds what a load from scratch holds.
    let replaced = state(&k.lab.node, "svc-nft");
    k.lab.node.nft("delete table inet svc-nft\n").unwrap();
    k.reload(WEB);
    assert_same(&replaced, &state(&k.lab.node, "svc-nft"), "after a kill");
}
