//! Says, once per build, that the end-to-end tests were left out and how to run them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

fn main() {
    // A path that never exists makes cargo run this script on every build, so the line is
    // printed each time the tests are built without the feature.
    println!("cargo:rerun-if-changed=build.rs.always-rerun");
    if std::env::var_os("CARGO_FEATURE_E2E").is_none() {
        println!(
            "cargo:warning=end-to-end tests (real mounts, root) not built: run scripts/test.sh, \
             or `cargo build --workspace --bins && cargo test -p digimedfs-tests --features e2e`"
        );
    }
}
