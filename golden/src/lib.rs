//! Golden files for the svc-nft compiler, in the manner of rustc's UI tests.
//!
//! Each folder in `cases/` is one case:
//! - `input/`: the manifests (any `*.yaml`, `*.yml`, `*.json`);
//! - `flags` (optional): node flags, as given to `svc-nft compile`;
//! - `expected.nft`: what `svc-nft compile -f input/ $(cat flags)` prints;
//! - `expected.stderr`: its diagnostics, when the input has errors (absent: none expected);
//! - `changed/` (optional): the manifests after a change, and `expected.transaction`, what
//!   `svc-nft diff --transaction input/ changed/` prints.
//!
//! `cargo test -p svc-nft-golden` compares; `UPDATE_GOLDEN=1 cargo test -p svc-nft-golden`
//! rewrites the expected files, to be read in review like any other diff.
