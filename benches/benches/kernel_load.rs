//! What the kernel charges to load svc-nft's ruleset, against kube-proxy's nftables layout.
//!
//! ```text
//! sudo cargo bench -p svc-nft-benches --bench kernel_load
//! SVC_NFT_BENCH_SIZES=1000,10000 cargo bench -p svc-nft-benches --bench kernel_load
//! ```
//!
//! For each size N (env `SVC_NFT_BENCH_SIZES`, default `1000,10000,100000`) of N Services × 3
//! endpoints:
//! - compile and render the svc-nft ruleset (timed, no kernel);
//! - load it whole with `nft -f -` into a fresh network namespace, then apply one change on
//!   top (one Service going from 3 to 4 endpoints, as the [`svc_nft_ir::diff`] transaction),
//!   each timed as the wall time of the `ip netns exec NS nft -f -` process;
//! - for N ≤ 5000, load kube-proxy's nftables layout for the same Services the same way: one
//!   chain per Service (`dnat ip to numgen random mod 3 map { … }`), reached through a verdict
//!   map `service-ips` of `vip . tcp . 80 : goto service-<i>`. That layout loads in quadratic
//!   time, hence the cap.
//!
//! Sizes up to 10k are run 3 times (median reported), larger ones once; every run gets its own
//! fresh namespace. Then a Markdown table is printed.
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
    let baseline = process_overhead();
    eprintln!(
        "kernel_load: sizes {sizes:?}; an empty `ip netns exec … nft -f -` takes {}",
        ms(baseline)
    );
    let rows: Vec<Row> = sizes.iter().map(|&n| measure(n)).collect();
    println!();
    println!("{}", markdown(&rows));
    println!(
        "Times are wall times of one `ip netns exec NS nft -f -` process (an empty script: {}), \
         median of {REPEATS} for N ≤ {REPEAT_MAX}, single run above; each load into a fresh \
         namespace. Ratio: kube-proxy-shape load / svc-nft load.",
        ms(baseline)
    );
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

fn measure(n: usize) -> Row {
    let node = node_facts();
    let gen = Synthetic::new(n, ENDPOINTS);
    let objects = gen.objects();
    let changed = gen.with_endpoints(n / 2, ENDPOINTS + 1);

    let start = Instant::now();
    let compiled = compile_clean(&objects, &node);
    let script = svc_nft_ir::replace_script(&compiled.table);
    let compile_render = start.elapsed();
    let after = compile_clean(&changed, &node);
    let change = svc_nft_ir::diff(&compiled.table, &after.table).to_string();
    drop(objects);
    drop(changed);
    eprintln!(
        "{n} Services: compile+render {}, script {} bytes, change {} bytes",
        ms(compile_render),
        script.len(),
        change.len()
    );

    let repeats = if n <= REPEAT_MAX { REPEATS } else { 1 };
    let mut loads = Vec::new();
    let mut changes = Vec::new();
    for run in 1..=repeats {
        let ns = Netns::create();
        let load = ns.nft(&script);
        let one = ns.nft(&change);
        // The change really landed: the chain for 4 endpoints exists now.
        ns.nft("list chain inet svc-nft pick-v4-tcp-4\n");
        drop(ns);
        eprintln!(
            "  svc-nft run {run}/{repeats}: load {}, one change {}",
            ms(load),
            ms(one)
        );
        loads.push(load);
        changes.push(one);
    }

    let kube_proxy = (n <= KUBE_PROXY_MAX).then(|| {
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
        endpoints: n * ENDPOINTS,
        script_bytes: script.len(),
        compile_render,
        load: median(loads),
        change: median(changes),
        change_bytes: change.len(),
        kube_proxy,
    }
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
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
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
        elapsed
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

fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| services | endpoints | script bytes | compile+render | svc-nft load | one change \
         (bytes) | kube-proxy-shape load | ratio |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let (kube_proxy, ratio) = match r.kube_proxy {
            Some(kp) => (
                ms(kp),
                format!("{:.1}×", kp.as_secs_f64() / r.load.as_secs_f64()),
            ),
            None => ("—".to_string(), "—".to_string()),
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} |",
            r.services,
            r.endpoints,
            r.script_bytes,
            ms(r.compile_render),
            ms(r.load),
            ms(r.change),
            r.change_bytes,
            kube_proxy,
            ratio
        )
        .unwrap();
    }
    out
}

/// Without `--bench`: build both scripts for a small cluster, no kernel.
fn smoke() {
    let gen = Synthetic::new(10, ENDPOINTS);
    let compiled = compile_clean(&gen.objects(), &node_facts());
    let script = svc_nft_ir::replace_script(&compiled.table);
    let after = compile_clean(&gen.with_endpoints(5, ENDPOINTS + 1), &node_facts());
    let change = svc_nft_ir::diff(&compiled.table, &after.table).to_string();
    let kube_proxy = kube_proxy_script(&gen);
    assert!(script.contains("pick-v4-tcp-3") && change.contains("pick-v4-tcp-4"));
    assert_eq!(kube_proxy.matches("chain service-").count(), 10);
    println!("kernel_load: scripts OK; run with `cargo bench` to load them into a kernel");
}
