//! The crate graph is the architecture (docs/design.md, "Code layout"): the filesystem core
//! links no FUSE, no store engine, no TLS, no async runtime and no argument parser.

use std::path::Path;
use std::process::Command;

/// Names of the packages in `cargo tree -p PACKAGE -e normal`.
fn normal_dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .args(["tree", "--locked", "-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(&workspace)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn core_dependency_tree_has_no_adapter_crates() {
    let deps = normal_dependencies("digimedfs-core");
    // The tree is real: the core and its cipher are in it.
    assert!(deps.iter().any(|d| d == "digimedfs-core"), "{deps:?}");
    assert!(deps.iter().any(|d| d == "aes"), "{deps:?}");
    for adapter in [
        "fuser", "io-uring", "sled", "rustls", "tokio", "hyper", "clap",
    ] {
        assert!(
            !deps.iter().any(|d| d == adapter),
            "digimedfs-core depends on {adapter}: {deps:?}"
        );
    }
}

#[test]
fn mkfs_fsck_and_key_service_link_no_fuse() {
    for package in ["mkfs-digimed", "fsck-digimed", "digimedfs-keyservice"] {
        let deps = normal_dependencies(package);
        assert!(deps.iter().any(|d| d == "digimedfs-core"), "{deps:?}");
        for frontend in ["fuser", "io-uring", "digimedfs"] {
            assert!(
                !deps.iter().any(|d| d == frontend),
                "{package} depends on {frontend}"
            );
        }
    }
}
