//! The crate graph is the architecture (docs/design.md, "Code layout"): the filesystem core
//! links no FUSE, no store engine, no TLS, no async runtime and no argument parser.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

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

/// The module path of each source file under `src` (`fuse::adapter` for `src/fuse/adapter.rs`,
/// `fuse` for `src/fuse/mod.rs`, `` for `lib.rs`/`main.rs`), with the file's code minus its
/// unit tests and line comments.
fn modules(src: &Path) -> Vec<(Vec<String>, bool, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read source dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let is_dir_module = matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            );
            if is_dir_module {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.push((parts, is_dir_module, code));
        }
    }
    out
}

/// Identifiers of a path that starts right after `crate::` or `super::` in `code`, and of
/// `{a, b}` groups there.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for item in group.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    out.push(vec![name]);
                }
            }
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|s| !s.is_empty()).collect());
    }
    out
}

/// Cycles among the modules of the crate whose sources are in `src` (a module and its own
/// submodules are one unit: a parent may use its children and they it).
fn module_cycles(src: &Path) -> Vec<Vec<String>> {
    let mods = modules(src);
    let names: std::collections::BTreeSet<Vec<String>> =
        mods.iter().map(|(p, _, _)| p.clone()).collect();
    let resolve = |path: Vec<String>| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| names.contains(p))
    };
    let mut graph = std::collections::BTreeMap::<Vec<String>, Vec<Vec<String>>>::new();
    for (me, _is_dir, code) in &mods {
        let parent: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
        let mut deps = Vec::new();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            for path in paths_after(code, prefix) {
                let full: Vec<String> = base
                    .iter()
                    .cloned()
                    .chain(path.iter().map(|s| s.to_string()))
                    .collect();
                if let Some(target) = resolve(full) {
                    let related = me.starts_with(&target) || target.starts_with(me);
                    if !related && !deps.contains(&target) {
                        deps.push(target);
                    }
                }
            }
        }
        graph.insert(me.clone(), deps);
    }
    // A cycle exists where a module reaches itself; report each module's shortest loop once.
    let mut cycles: Vec<Vec<String>> = Vec::new();
    for start in graph.keys() {
        let mut queue = std::collections::VecDeque::from([vec![start.clone()]]);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(route) = queue.pop_front() {
            let last = route.last().expect("route is never empty");
            for next in graph.get(last).into_iter().flatten() {
                if next == start {
                    let mut names: Vec<String> = route.iter().map(|m| m.join("::")).collect();
                    names.sort();
                    if !cycles.contains(&names) {
                        cycles.push(names);
                    }
                } else if seen.insert(next.clone()) {
                    let mut longer = route.clone();
                    longer.push(next.clone());
                    queue.push_back(longer);
                }
            }
        }
    }
    cycles
}

#[test]
fn no_crate_has_a_module_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in [
        "fs/core/src",
        "fs/sled/src",
        "fs/keyclient/src",
        "fs/src",
        "keyservice/src",
        "mkfs/src",
        "fsck/src",
    ] {
        let cycles = module_cycles(&workspace.join(krate));
        assert!(cycles.is_empty(), "{krate}: module cycles {cycles:?}");
    }
}

#[test]
fn the_cycle_finder_sees_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("lib.rs"), "pub mod a;\npub mod b;\n").expect("lib");
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A;\n").expect("a");
    std::fs::write(
        dir.path().join("b.rs"),
        "use crate::{a, c};\npub struct B;\n",
    )
    .expect("b");
    std::fs::write(dir.path().join("c.rs"), "pub struct C;\n").expect("c");
    assert_eq!(
        module_cycles(dir.path()),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
}
