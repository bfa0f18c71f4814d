//! What the engine's syncs cost, end to end, at 1k/10k/100k Services × 3 endpoints:
//!
//! - One Service change: one endpoint of one Service moves (same count, so only elements
//!   change). Timed: the IR diff alone, the engine's whole sync (diff + netlink batch + kernel
//!   commit), and for comparison the same change as an `nft -f -` process.
//! - The same change through the per-Service compiler (what the agents run): `upsert` of the
//!   changed EndpointSlice, `flush`, `Engine::sync_delta` — from the change reaching the
//!   engine to the kernel's commit, and its ratio to the first size.
//! - Cold full sync: `Engine::new().sync(table)` into a namespace without the table (the
//!   engine's gated load: a skeleton through nft, the elements over netlink, one commit), side
//!   by side with loading the same table whole with one `nft -f -` process. Median of 3 up to
//!   10k Services, one run above. With `SVC_NFT_BENCH_MIX=1`, of the mixed cluster
//!   (`Synthetic::mixed`: every Service feature, load-balancer source ranges included).
//!
//! ```text
//! sudo cargo bench -p svc-nft-benches --bench engine_sync
//! SVC_NFT_BENCH_SIZES=1000,10000 sudo cargo bench -p svc-nft-benches --bench engine_sync
//! ```
//!
//! The process moves itself into a network namespace of its own (`svcnft-engine-<pid>`,
//! deleted at the end) before touching the kernel; nothing runs in the caller's namespace.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::process::Command;
use std::time::{Duration, Instant};
use svc_nft::engine::{Engine, Route};
use svc_nft::kernel;
use svc_nft_benches::{compile_clean, node_facts, Synthetic};
use svc_nft_compiler::{Incremental, Object, Resource};
use svc_nft_ir::{diff, replace_script, Table};

/// The namespace this process runs in; deleted on drop.
struct Namespace(String);

impl Namespace {
    fn enter() -> Namespace {
        let name = format!("svcnft-engine-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "ip netns add {name}: needs root"
        );
        let ns = Namespace(name);
        let file = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("open the namespace");
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a namespace file we just opened; this thread alone runs the bench.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The cluster with endpoint 0 of Service `i` moved to an address no one else uses.
fn moved(objects: &[Object], i: usize) -> Vec<Object> {
    let name = format!("svc-{i}-v4");
    let mut out = objects.to_vec();
    for obj in &mut out {
        if let Resource::EndpointSlice(slice) = &mut obj.resource {
            let slice: &mut EndpointSlice = slice;
            if slice.metadata.name.as_deref() == Some(&name) {
                let endpoints = slice.endpoints.as_mut().expect("endpoints");
                endpoints[0].addresses = vec!["10.250.0.1".to_string()];
            }
        }
    }
    out
}

/// Delete the table, if this namespace has it: the next load is cold.
fn delete_table(table: &Table) {
    let id = format!("{} {}", table.family, table.name);
    kernel::apply(&format!("table {id} {{}}\ndelete table {id}\n")).expect("delete the table");
}

/// One cold full sync by a new engine, and one `nft -f -` load of the same table, each into
/// a namespace without the table; their times.
fn cold_and_nft(table: &Table) -> (Duration, Duration) {
    delete_table(table);
    let target = table.clone();
    let mut engine = Engine::new();
    let t = Instant::now();
    let synced = engine.sync(target).expect("cold full sync");
    let cold = t.elapsed();
    assert_eq!(synced.route, svc_nft::engine::Route::Full);
    assert_eq!(engine.failures, 0, "the cold load fell back to nft");
    drop(engine);
    delete_table(table);
    let script = replace_script(table);
    let t = Instant::now();
    kernel::apply(&script).expect("nft full load");
    let nft = t.elapsed();
    delete_table(table);
    (cold, nft)
}

/// Cold full syncs against nft full loads, as a Markdown table; of the mixed cluster with
/// `SVC_NFT_BENCH_MIX=1`.
fn cold_full_sync(sizes: &[usize]) {
    let mix = std::env::var("SVC_NFT_BENCH_MIX").is_ok_and(|v| v == "1");
    println!();
    if mix {
        println!("Cold full sync of the mixed cluster (`Synthetic::mixed`):");
    }
    println!("| Services | set elements | cold full sync (engine) | full load via `nft -f -` | nft / engine |");
    println!("|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let plain = Synthetic::new(n, 3);
        let gen = if mix { plain.mixed() } else { plain };
        let table = compile_clean(&gen.objects(), &node_facts()).table;
        let elements: usize = table.sets.values().map(|s| s.elements.len()).sum();
        let repeats = if n <= 10_000 { 3 } else { 1 };
        let (colds, nfts): (Vec<_>, Vec<_>) = (0..repeats).map(|_| cold_and_nft(&table)).unzip();
        let (cold, nft) = (median(colds), median(nfts));
        println!(
            "| {n} | {elements} | {cold:.2?} | {nft:.2?} | {:.1}× |",
            nft.as_secs_f64() / cold.as_secs_f64()
        );
    }
}

/// One Service's endpoints changing, through the per-Service compiler and the engine: the
/// time from the change reaching the engine (`upsert`) to the kernel's commit, at each size,
/// with the compile + diff part alone. Endpoint 0 of the middle Service moves and back.
fn service_change(sizes: &[usize]) {
    println!();
    println!(
        "| Services | per-Service compile + diff | change to kernel commit | × the first size |"
    );
    println!("|---:|---:|---:|---:|");
    let mut first = None;
    for &n in sizes {
        let node = node_facts();
        let objects = Synthetic::new(n, 3).objects();
        let mut state = Incremental::new(&node);
        for obj in &objects {
            state.upsert(obj).expect("valid");
        }
        let delta = state.flush();
        let mut engine = Engine::new();
        engine
            .sync_delta(state.shape(), &delta, || state.table())
            .expect("full load");
        let slice_of = |objects: &[Object]| {
            let name = format!("svc-{}-v4", n / 2);
            objects
                .iter()
                .find(|o| match &o.resource {
                    Resource::EndpointSlice(s) => s.metadata.name.as_deref() == Some(&name),
                    _ => false,
                })
                .cloned()
                .expect("the slice")
        };
        let (back, moved) = (slice_of(&objects), slice_of(&moved(&objects, n / 2)));
        drop(objects);
        let (mut compiles, mut totals) = (Vec::new(), Vec::new());
        for round in 0..40 {
            let obj = if round % 2 == 0 { &moved } else { &back };
            let t = Instant::now();
            state.upsert(obj).expect("valid");
            let delta = state.flush();
            compiles.push(t.elapsed());
            let synced = engine
                .sync_delta(state.shape(), &delta, || {
                    unreachable!("one change, no replace")
                })
                .expect("sync");
            totals.push(t.elapsed());
            assert_eq!(synced.route, Route::Netlink);
        }
        let (compile, total) = (median(compiles), median(totals));
        let base = *first.get_or_insert(total);
        println!(
            "| {n} | {compile:.2?} | {total:.2?} | {:.2}× |",
            total.as_secs_f64() / base.as_secs_f64()
        );
        delete_table(state.shape());
    }
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches`: nothing to check without a kernel
    }
    let sizes: Vec<usize> = std::env::var("SVC_NFT_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SVC_NFT_BENCH_SIZES: numbers"))
        .collect();
    let _ns = Namespace::enter();
    println!(
        "| Services | IR diff | engine sync (diff + netlink commit) | same change via `nft -f -` |"
    );
    println!("|---:|---:|---:|---:|");
    for &n in sizes
        .iter()
        .filter(|_| std::env::var_os("SVC_NFT_BENCH_SKIP_DIFF").is_none())
    {
        let node = node_facts();
        let objects = Synthetic::new(n, 3).objects();
        let a = compile_clean(&objects, &node).table;
        let b = compile_clean(&moved(&objects, n / 2), &node).table;
        let mut engine = Engine::new();
        engine.sync(a.clone()).expect("full load");
        let (mut diffs, mut syncs, mut nfts) = (vec![], vec![], vec![]);
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(diff(&a, &b));
            diffs.push(t.elapsed());
            let target = b.clone();
            let t = Instant::now();
            let synced = engine.sync(target).expect("sync to B");
            syncs.push(t.elapsed());
            assert_eq!(synced.route, svc_nft::engine::Route::Netlink);
            // Back to A through nft, timing the process, then tell the engine.
            let script = diff(&b, &a).to_string();
            let t = Instant::now();
            kernel::apply(&script).expect("nft back to A");
            nfts.push(t.elapsed());
            engine = Engine::new();
            engine.sync(a.clone()).expect("full load");
        }
        println!(
            "| {n} | {:.2?} | {:.2?} | {:.2?} |",
            median(diffs),
            median(syncs),
            median(nfts)
        );
    }
    service_change(&sizes);
    cold_full_sync(&sizes);
}
