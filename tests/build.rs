//! Says that the end-to-end tests were left out of a build, and how to run them: on the first
//! `cargo test` of a fresh clone, and again whenever the `e2e` feature is switched off.

fn main() {
    if std::env::var_os("CARGO_FEATURE_E2E").is_none() {
        println!(
            "cargo:warning=end-to-end tests (real mounts, root) not built: run scripts/test.sh, \
             or `cargo build --workspace --bins && cargo test -p digimedfs-tests --features e2e`"
        );
    }
}
