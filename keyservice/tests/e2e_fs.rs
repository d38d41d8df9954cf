//! End to end with the filesystem crate: mkfs and open through the key service (slot kind 2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Env;
use digimedfs_sled::Sled;

#[test]
fn mkfs_and_open_through_key_service() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let b = env.client(&srv, "B", &tb);
    let backing = env.dir.path().join("backing");
    let opts = digimedfs_core::mkfs::MkfsOptions {
        tenant: "A".into(),
        ..Default::default()
    };
    let report = digimedfs_core::mkfs::mkfs(&backing, &a, &opts, &Sled).unwrap();
    let _ = report;

    let fs = digimedfs_core::filesystem::Filesystem::open(&backing, &a, &Default::default(), &Sled)
        .unwrap();
    let sb = fs.superblock();
    assert!(sb
        .slots
        .iter()
        .any(|s| s.kind == 2 && s.key_id == 1u32.to_le_bytes()));
    fs.statfs().unwrap();
    fs.close().unwrap();
    drop(fs);

    // Tenant B's client: a clear error naming the tenant mismatch.
    let e = match digimedfs_core::filesystem::Filesystem::open(
        &backing,
        &b,
        &Default::default(),
        &Sled,
    ) {
        Ok(_) => panic!("tenant B opened tenant A's filesystem"),
        Err(e) => e,
    };
    assert!(matches!(e, digimedfs_core::Error::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("wrong tenant"), "{e}");

    // Even a client that claims to be tenant A but holds B's token is refused by the service.
    let liar = env.client(&srv, "A", &tb);
    let e = match digimedfs_core::filesystem::Filesystem::open(
        &backing,
        &liar,
        &Default::default(),
        &Sled,
    ) {
        Ok(_) => panic!("B's token opened A's filesystem"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("wrong tenant"), "{e}");
    assert!(env.audit().contains("unwrap_failed"));

    // Revoked tenant: refused with a clear error.
    env.admin.tenant_revoke("A").unwrap();
    let e = match digimedfs_core::filesystem::Filesystem::open(
        &backing,
        &a,
        &Default::default(),
        &Sled,
    ) {
        Ok(_) => panic!("revoked tenant opened its filesystem"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("revoked"), "{e}");

    // Unreachable service.
    drop(srv);
    let e = match digimedfs_core::filesystem::Filesystem::open(
        &backing,
        &a,
        &Default::default(),
        &Sled,
    ) {
        Ok(_) => panic!("opened without the key service"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("unreachable"), "{e}");
    // What the kernel said, not a guess: a stopped service refuses the connection.
    assert!(e.to_string().contains("(connection refused)"), "{e}");
    assert_eq!(e.errno(), libc::ECONNREFUSED, "{e}");
    assert!(!e.to_string().contains("No route to host"), "{e}");
}

#[test]
fn rewrap_filesystem_moves_slot_to_newest_version() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let backing = env.dir.path().join("backing");
    let opts = digimedfs_core::mkfs::MkfsOptions {
        tenant: "A".into(),
        ..Default::default()
    };
    digimedfs_core::mkfs::mkfs(&backing, &a, &opts, &Sled).unwrap();
    let meta_before = common::all_files(&backing.join("meta"));

    // Nothing to do at the newest version.
    let r = digimedfs_keyclient::rewrap_filesystem(&backing, &a).unwrap();
    assert!(!r.changed);
    assert_eq!((r.slots[0].from, r.slots[0].to), (1, 1));

    env.admin.rotate("A").unwrap();
    let r = digimedfs_keyclient::rewrap_filesystem(&backing, &a).unwrap();
    assert!(r.changed);
    assert_eq!((r.slots[0].from, r.slots[0].to), (1, 2));
    assert_eq!(common::all_files(&backing.join("meta")), meta_before);
    env.admin.retire("A", 1).unwrap();
    let fs = digimedfs_core::filesystem::Filesystem::open(&backing, &a, &Default::default(), &Sled)
        .unwrap();
    assert!(fs
        .superblock()
        .slots
        .iter()
        .any(|s| s.kind == 2 && s.key_id == 2u32.to_le_bytes()));
    // Refused while open (mounted).
    let e = digimedfs_keyclient::rewrap_filesystem(&backing, &a).unwrap_err();
    assert!(matches!(e, digimedfs_core::Error::Busy { .. }), "{e}");
    fs.close().unwrap();
}
