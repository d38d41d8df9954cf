//! End to end with the filesystem crate: mkfs and open through the key service (slot kind 2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Env;

#[test]
fn mkfs_and_open_through_key_service() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let b = env.client(&srv, "B", &tb);
    let backing = env.dir.path().join("backing");
    let opts = digimedfs::mkfs::MkfsOptions {
        tenant: "A".into(),
        ..Default::default()
    };
    let report = digimedfs::mkfs::mkfs(&backing, &a, &opts).unwrap();
    let _ = report;

    let fs = digimedfs::core::Filesystem::open(&backing, &a, &Default::default()).unwrap();
    let sb = fs.superblock();
    assert!(sb
        .slots
        .iter()
        .any(|s| s.kind == 2 && s.key_id == 1u32.to_le_bytes()));
    fs.statfs().unwrap();
    fs.close().unwrap();
    drop(fs);

    // Tenant B's client: a clear error naming the tenant mismatch.
    let e = match digimedfs::core::Filesystem::open(&backing, &b, &Default::default()) {
        Ok(_) => panic!("tenant B opened tenant A's filesystem"),
        Err(e) => e,
    };
    assert!(matches!(e, digimedfs::Error::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("wrong tenant"), "{e}");

    // Even a client that claims to be tenant A but holds B's token is refused by the service.
    let liar = env.client(&srv, "A", &tb);
    let e = match digimedfs::core::Filesystem::open(&backing, &liar, &Default::default()) {
        Ok(_) => panic!("B's token opened A's filesystem"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("wrong tenant"), "{e}");
    assert!(env.audit().contains("unwrap_failed"));

    // Revoked tenant: refused with a clear error.
    env.admin.tenant_revoke("A").unwrap();
    let e = match digimedfs::core::Filesystem::open(&backing, &a, &Default::default()) {
        Ok(_) => panic!("revoked tenant opened its filesystem"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("revoked"), "{e}");

    // Unreachable service.
    drop(srv);
    let e = match digimedfs::core::Filesystem::open(&backing, &a, &Default::default()) {
        Ok(_) => panic!("opened without the key service"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("unreachable"), "{e}");
}

#[test]
fn rewrap_filesystem_moves_slot_to_newest_version() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let backing = env.dir.path().join("backing");
    let opts = digimedfs::mkfs::MkfsOptions {
        tenant: "A".into(),
        ..Default::default()
    };
    digimedfs::mkfs::mkfs(&backing, &a, &opts).unwrap();
    let meta_before = common::all_files(&backing.join("meta"));

    // Nothing to do at the newest version.
    let r = digimedfs::keysource::service::rewrap_filesystem(&backing, &a).unwrap();
    assert!(!r.changed);
    assert_eq!((r.slots[0].from, r.slots[0].to), (1, 1));

    env.admin.rotate("A").unwrap();
    let r = digimedfs::keysource::service::rewrap_filesystem(&backing, &a).unwrap();
    assert!(r.changed);
    assert_eq!((r.slots[0].from, r.slots[0].to), (1, 2));
    assert_eq!(common::all_files(&backing.join("meta")), meta_before);
    env.admin.retire("A", 1).unwrap();
    let fs = digimedfs::core::Filesystem::open(&backing, &a, &Default::default()).unwrap();
    assert!(fs
        .superblock()
        .slots
        .iter()
        .any(|s| s.kind == 2 && s.key_id == 2u32.to_le_bytes()));
    // Refused while open (mounted).
    let e = digimedfs::keysource::service::rewrap_filesystem(&backing, &a).unwrap_err();
    assert!(matches!(e, digimedfs::Error::Busy { .. }), "{e}");
    fs.close().unwrap();
}
