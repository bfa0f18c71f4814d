//! svc-nft, the program: reading manifests, the command line, and (later) keeping a node's
//! kernel in sync. The compiler and the IR live in their own crates; this crate only drives them.

pub mod cli;
mod explain;
pub mod input;
