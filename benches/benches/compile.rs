//! The pure half of svc-nft: compile, render, diff. No kernel involved.
//!
//! `cargo bench -p svc-nft-benches --bench compile` (add `-- --quick` for a short run).
//!
//! - `compile/<n>`: [`svc_nft_compiler::compile`] of `n` Services × 3 endpoints (TCP, v4), and
//!   `compile-mixed/10000` with every Service feature mixed in ([`Synthetic::mixed`]: UDP,
//!   dual-stack, NodePort, LoadBalancer, traffic policies, source ranges, affinity, terminating
//!   endpoints, zone hints);
//! - `render/<n>`: [`svc_nft_ir::replace_script`] of the compiled table;
//! - `diff/10000-one-service`: [`svc_nft_ir::diff`] between two 10k clusters where one Service
//!   goes from 3 to 4 endpoints, and the same plus rendering the transaction as nft text.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use svc_nft_benches::{compile_clean, node_facts, Synthetic};

const SIZES: [usize; 2] = [1_000, 10_000];
const ENDPOINTS: usize = 3;

fn compile(c: &mut Criterion) {
    let node = node_facts();
    let mut group = c.benchmark_group("compile");
    for n in SIZES {
        let objects = Synthetic::new(n, ENDPOINTS).objects();
        compile_clean(&objects, &node);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &objects, |b, objects| {
            b.iter(|| svc_nft_compiler::compile(black_box(objects), &node))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("compile-mixed");
    let n = 10_000;
    let objects = Synthetic::new(n, ENDPOINTS).mixed().objects();
    compile_clean(&objects, &node);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_with_input(BenchmarkId::from_parameter(n), &objects, |b, objects| {
        b.iter(|| svc_nft_compiler::compile(black_box(objects), &node))
    });
    group.finish();
}

fn render(c: &mut Criterion) {
    let node = node_facts();
    let mut group = c.benchmark_group("render");
    for n in SIZES {
        let table = compile_clean(&Synthetic::new(n, ENDPOINTS).objects(), &node).table;
        group.throughput(Throughput::Bytes(
            svc_nft_ir::replace_script(&table).len() as u64
        ));
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| svc_nft_ir::replace_script(black_box(table)))
        });
    }
    group.finish();
}

fn diff(c: &mut Criterion) {
    let node = node_facts();
    let n = 10_000;
    let gen = Synthetic::new(n, ENDPOINTS);
    let old = compile_clean(&gen.objects(), &node).table;
    let new = compile_clean(&gen.with_endpoints(n / 2, ENDPOINTS + 1), &node).table;
    let transaction = svc_nft_ir::diff(&old, &new);
    assert!(!transaction.is_empty());

    let mut group = c.benchmark_group("diff");
    group.bench_function("10000-one-service", |b| {
        b.iter(|| svc_nft_ir::diff(black_box(&old), black_box(&new)))
    });
    group.bench_function("10000-one-service+text", |b| {
        b.iter(|| svc_nft_ir::diff(black_box(&old), black_box(&new)).to_string())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = compile, render, diff
}
criterion_main!(benches);
