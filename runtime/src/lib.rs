//! svc-nft, the program: reading manifests, the command line, and keeping a node's kernel in
//! sync (the apply engine and the agent). The compiler and the IR live in their own crates;
//! this crate only drives them.

mod agent;
pub mod cidr;
pub mod cli;
pub mod cluster;
mod cold;
pub mod config;
mod conntrack;
pub mod engine;
mod explain;
pub mod feature_gates;
mod foreign;
pub mod health;
pub mod input;
pub mod kernel;
mod kubeproxy;
pub mod logging;
mod manifests;
pub mod metrics;
mod netlink;
pub mod syncer;
