//! What the kernel charges to load svc-nft's ruleset, against kube-proxy's nftables layout.
//!
//! ```text
//! sudo cargo bench -p svc-nft-benches --bench kernel_load
//! SVC_NFT_BENCH_SIZES=1000,10000 cargo bench -p svc-nft-benches --bench kernel_load
//! SVC_NFT_BENCH_MIX=1 cargo bench -p svc-nft-benches --bench kernel_load
//! ```
//!
//! For each size N (env `SVC_NFT_BENCH_SIZES`, default `1000,10000,100000`) of N Services × 3
//! endpoints, plain (TCP, IPv4, `ClusterIP`) or, with `SVC_NFT_BENCH_MIX=1`, with every Service
//! feature mixed in ([`Synthetic::mixed`]: UDP, dual-stack, NodePort, LoadBalancer, traffic
//! policies, source ranges, affinity, terminating endpoints, zone hints):
//! - compile and render the svc-nft ruleset (timed, no kernel);
//! - load it whole with `nft -f -` into a fresh network namespace, then apply one change on
//!   top (one Service going from 3 to 4 endpoints, as the [`svc_nft_ir::diff`] transaction),
//!   each timed as the wall time of the `ip netns exec NS nft -f -` process;
//! - plain mode only, for N ≤ 5000: load kube-proxy's nftables layout for the same Services the
//!   same way: one chain per Service (`dnat ip to numgen random mod 3 map { … }`), reached
//!   through a verdict map `service-ips` of `vip . tcp . 80 : goto service-<i>`. That layout
//!   loads in quadratic time, hence the cap; it only knows plain Services, hence not in the mix.
//!
//! Sizes up to 10k are run 3 times (median reported), larger ones once; every run gets its own
//! fresh namespace. Then a Markdown table is printed.
//!
//! At 100k Services this process keeps ~1.5 GB resident while nft runs (as a daemon holding
//! its caches would). Where memory is charged to a tight cgroup, that alone can make the
//! kernel's half of the load markedly slower than loading the same script from a shell.
//!
//! Needs root, `ip` (iproute2) and `nft`. Nothing runs in the caller's network namespace: every
//! `nft` runs under `ip netns exec svcnft-bench-<pid>`, and that namespace is deleted when the
//! run ends, panics included (a SIGKILL or Ctrl-C can leave it behind:
//! `ip netns delete svcnft-bench-<pid>`).
//!
//! Without `--bench` (as under `cargo test --benches`) it only checks that the scripts are
//! generated, and touches no kernel state.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use svc_nft_benches::{compile_clean, node_facts, Synthetic, PORT, TARGET_PORT};
use svc_nft_compiler::{Object, Resource};

const DEFAULT_SIZES: &str = "1000,10000,100000";
const ENDPOINTS: usize = 3;
/// Largest size the kube-proxy layout is loaded at (it is quadratic).
const KUBE_PROXY_MAX: usize = 5_000;
/// Largest size measured 3 times.
const REPEAT_MAX: usize = 10_000;
const REPEATS: usize = 3;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        smoke();
        return;
    }
    let sizes = sizes();
    let mix = mix();
    let mode = if mix {
        "mixed (SVC_NFT_BENCH_MIX=1: every Service feature)"
    } else {
        "plain (TCP, IPv4, ClusterIP)"
    };
    let baseline = process_overhead();
    eprintln!(
        "kernel_load: mode {mode}; sizes {sizes:?}; an empty `ip netns exec … nft -f -` takes {}",
        ms(baseline)
    );
    let rows: Vec<Row> = sizes.iter().map(|&n| measure(n, mix)).collect();
    println!();
    println!("Mode: {mode}.");
    println!();
    println!("{}", markdown(&rows, mix));
    println!(
        "Times are wall times of one `ip netns exec NS nft -f -` process (an empty script: {}), \
         median of {REPEATS} for N ≤ {REPEAT_MAX}, single run above; each load into a fresh \
         namespace.{}",
        ms(baseline),
        if mix {
            " Endpoints: all of the EndpointSlices' (v4 and v6, terminating included)."
        } else {
            " Ratio: kube-proxy-shape load / svc-nft load."
        }
    );
}

/// Whether to measure the mixed cluster, from `SVC_NFT_BENCH_MIX`.
fn mix() -> bool {
    match std::env::var("SVC_NFT_BENCH_MIX").as_deref() {
        Err(_) | Ok("" | "0") => false,
        Ok("1") => true,
        Ok(other) => panic!("SVC_NFT_BENCH_MIX: {other:?} is neither 1 nor 0"),
    }
}

/// The sizes to run, from `SVC_NFT_BENCH_SIZES`.
fn sizes() -> Vec<usize> {
    let text = std::env::var("SVC_NFT_BENCH_SIZES").unwrap_or_else(|_| DEFAULT_SIZES.into());
    let sizes: Vec<usize> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("SVC_NFT_BENCH_SIZES: {s:?} is not a number"))
        })
        .collect();
    assert!(
        !sizes.is_empty() && !sizes.contains(&0),
        "SVC_NFT_BENCH_SIZES: give positive Service counts, e.g. 1000,10000"
    );
    sizes
}

/// One line of the report.
struct Row {
    services: usize,
    endpoints: usize,
    script_bytes: usize,
    compile_render: Duration,
    load: Duration,
    change: Duration,
    change_bytes: usize,
    kube_proxy: Option<Duration>,
}

fn measure(n: usize, mix: bool) -> Row {
    let node = node_facts();
    let plain = Synthetic::new(n, ENDPOINTS);
    let gen = if mix { plain.mixed() } else { plain };
    let objects = gen.objects();
    let endpoints = endpoint_count(&objects);
    let changed_service = n / 2;
    let changed = gen.with_endpoints(changed_service, ENDPOINTS + 1);

    let start = Instant::now();
    let compiled = compile_clean(&objects, &node);
    let script = svc_nft_ir::replace_script(&compiled.table);
    let compile_render = start.elapsed();
    let after = compile_clean(&changed, &node);
    let change = svc_nft_ir::diff(&compiled.table, &after.table).to_string();
    // The chains the change adds (pick-v4-tcp-4 in plain mode), to check it landed.
    let new_chains: Vec<&String> = after
        .table
        .chains
        .keys()
        .filter(|c| !compiled.table.chains.contains_key(*c))
        .collect();
    drop(objects);
    drop(changed);
    let table = &compiled.table;
    eprintln!(
        "{n} Services: compile+render {}, script {} bytes ({} chains, {} set elements, {} \
         notes), change {} bytes (svc-{changed_service}: {}; new chains {new_chains:?})",
        ms(compile_render),
        script.len(),
        table.chains.len(),
        table.sets.values().map(|s| s.elements.len()).sum::<usize>(),
        table.notes.len(),
        change.len(),
        gen.features(changed_service).join(", "),
    );

    let repeats = if n <= REPEAT_MAX { REPEATS } else { 1 };
    let mut loads = Vec::new();
    let mut changes = Vec::new();
    for run in 1..=repeats {
        let ns = Netns::create();
        let load = ns.nft(&script);
        let one = ns.nft(&change);
        // The change really landed: the chains it adds exist now.
        let chains = ns.chains();
        let missing: Vec<_> = new_chains.iter().filter(|c| !chains.contains(c)).collect();
        assert!(missing.is_empty(), "the change did not add {missing:?}");
        drop(ns);
        eprintln!(
            "  svc-nft run {run}/{repeats}: load {}, one change {}",
            ms(load),
            ms(one)
        );
        loads.push(load);
        changes.push(one);
    }

    let kube_proxy = (!mix && n <= KUBE_PROXY_MAX).then(|| {
        let text = kube_proxy_script(&gen);
        let mut runs = Vec::new();
        for run in 1..=repeats {
            let ns = Netns::create();
            let load = ns.nft(&text);
            drop(ns);
            eprintln!(
                "  kube-proxy shape run {run}/{repeats}: load {} ({} bytes)",
                ms(load),
                text.len()
            );
            runs.push(load);
        }
        median(runs)
    });

    Row {
        services: n,
        endpoints,
        script_bytes: script.len(),
        compile_render,
        load: median(loads),
        change: median(changes),
        change_bytes: change.len(),
        kube_proxy,
    }
}

/// How many endpoints the EndpointSlices list, ready or not.
fn endpoint_count(objects: &[Object]) -> usize {
    let listed = |o: &Object| match &o.resource {
        Resource::EndpointSlice(slice) => slice.endpoints.as_ref().map_or(0, Vec::len),
        _ => 0,
    };
    objects.iter().map(listed).sum()
}

/// kube-proxy's nftables layout for the same Services and endpoints: a chain per Service
/// that DNATs through an anonymous map on `numgen random`, reached from a verdict map keyed by
/// `vip . proto . port`, from a chain hooked at nat prerouting.
fn kube_proxy_script(gen: &Synthetic) -> String {
    let mut out = String::new();
    out.push_str("table ip kube-proxy {\n");
    out.push_str("\tmap service-ips {\n");
    out.push_str("\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    out.push_str("\t\telements = {\n");
    for i in 0..gen.services {
        let sep = if i + 1 < gen.services { "," } else { "" };
        let vip = gen.cluster_ip(i);
        writeln!(out, "\t\t\t{vip} . tcp . {PORT} : goto service-{i}{sep}").unwrap();
    }
    out.push_str("\t\t}\n\t}\n\n");
    out.push_str("\tchain services {\n");
    out.push_str("\t\tip daddr . meta l4proto . th dport vmap @service-ips\n");
    out.push_str("\t}\n\n");
    out.push_str("\tchain nat-prerouting {\n");
    out.push_str("\t\ttype nat hook prerouting priority dstnat; policy accept;\n");
    out.push_str("\t\tjump services\n");
    out.push_str("\t}\n");
    for i in 0..gen.services {
        let slots: Vec<String> = (0..gen.endpoints_per_service)
            .map(|j| format!("{j} : {} . {TARGET_PORT}", gen.endpoint_ip(i, j)))
            .collect();
        writeln!(
            out,
            "\n\tchain service-{i} {{\n\t\tip daddr {} tcp dport {PORT} dnat ip to numgen random \
             mod {} map {{ {} }}\n\t}}",
            gen.cluster_ip(i),
            gen.endpoints_per_service,
            slots.join(", ")
        )
        .unwrap();
    }
    out.push_str("}\n");
    out
}

/// A network namespace of this process, deleted when dropped (panics included).
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("svcnft-bench-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap_or_else(|e| panic!("running `ip netns add {name}`: {e}"));
        assert!(
            status.success(),
            "`ip netns add {name}` failed ({status}): the kernel benchmark needs root"
        );
        Netns { name }
    }

    /// Run `nft -f -` on `script` inside the namespace; its wall time. Panics if nft fails.
    fn nft(&self, script: &str) -> Duration {
        self.run(script, false).0
    }

    /// The names of the chains of the namespace's inet tables. (`list chains` is cheap, where
    /// `list chain X` makes nft 1.0.6 fetch every set element first: 12 s at 100k Services.)
    fn chains(&self) -> Vec<String> {
        let (_, listing) = self.run("list chains inet\n", true);
        let names = listing
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain "));
        names
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect()
    }

    /// Run `nft -f -` on `script`: its wall time and, if `capture`, what it printed.
    fn run(&self, script: &str, capture: bool) -> (Duration, String) {
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running `ip netns exec {} nft`: {e}", self.name));
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Write from a thread: nft may report an error, and fill its stderr pipe, before it has
        // read all of the script.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                // A failed write means nft exited early; its status and stderr say why.
                let _ = stdin.write_all(script.as_bytes());
            });
            child.wait_with_output().expect("waiting for nft")
        });
        let elapsed = start.elapsed();
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr: String = stderr.chars().take(4000).collect();
            panic!(
                "nft -f - in {} failed ({}):\n{stderr}",
                self.name, output.status
            );
        }
        (
            elapsed,
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("`ip netns delete {}` failed: {status}", self.name),
            Err(e) => eprintln!("running `ip netns delete {}`: {e}", self.name),
        }
    }
}

/// What an empty `ip netns exec … nft -f -` costs: process start-up, not kernel work.
fn process_overhead() -> Duration {
    let ns = Netns::create();
    let runs = (0..5).map(|_| ns.nft("")).collect();
    median(runs)
}

fn median(mut runs: Vec<Duration>) -> Duration {
    assert!(!runs.is_empty());
    runs.sort();
    runs[runs.len() / 2]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The report; the kube-proxy-shape columns only in plain mode.
fn markdown(rows: &[Row], mix: bool) -> String {
    let mut out = String::new();
    out.push_str(
        "| services | endpoints | script bytes | compile+render | svc-nft load | one change \
         (bytes) |",
    );
    out.push_str(if mix {
        "\n|---:|---:|---:|---:|---:|---:|\n"
    } else {
        " kube-proxy-shape load | ratio |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    });
    for r in rows {
        write!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) |",
            r.services,
            r.endpoints,
            r.script_bytes,
            ms(r.compile_render),
            ms(r.load),
            ms(r.change),
            r.change_bytes,
        )
        .unwrap();
        if !mix {
            let (kube_proxy, ratio) = match r.kube_proxy {
                Some(kp) => (
                    ms(kp),
                    format!("{:.1}×", kp.as_secs_f64() / r.load.as_secs_f64()),
                ),
                None => ("—".to_string(), "—".to_string()),
            };
            write!(out, " {kube_proxy} | {ratio} |").unwrap();
        }
        out.push('\n');
    }
    out
}

/// Without `--bench`: build the scripts for small clusters, plain and mixed, no kernel.
fn smoke() {
    let node = node_facts();
    for gen in [
        Synthetic::new(10, ENDPOINTS),
        Synthetic::new(40, ENDPOINTS).mixed(),
    ] {
        let compiled = compile_clean(&gen.objects(), &node);
        let script = svc_nft_ir::replace_script(&compiled.table);
        let changed = gen.with_endpoints(gen.services / 2, ENDPOINTS + 1);
        let after = compile_clean(&changed, &node);
        let change = svc_nft_ir::diff(&compiled.table, &after.table).to_string();
        assert!(script.contains("pick-v4-tcp-3") && change.contains("pick-v4-tcp-4"));
    }
    let kube_proxy = kube_proxy_script(&Synthetic::new(10, ENDPOINTS));
    assert_eq!(kube_proxy.matches("chain service-").count(), 10);
    println!("kernel_load: scripts OK; run with `cargo bench` to load them into a kernel");
}
