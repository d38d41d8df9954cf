//! A mount's metrics file: the daemon's counters of requests, bytes and integrity failures, in
//! the Prometheus text format under /run/digimedfs/metrics (docs/operations.md, "Metrics").

use digimedfs_tests::{
    metric_sample as sample, metrics_file, wait_until, walk_files, TestFs, METRICS_DIR,
};
use std::fs;
use std::time::Duration;

#[test]
fn a_mount_publishes_its_counters_and_removes_them_at_unmount() {
    let mut t = TestFs::new();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(t.path("big"), &data).expect("write big");
    fs::write(t.path("small"), b"small file").expect("write small");
    assert_eq!(fs::read(t.path("big")).expect("read big"), data);
    assert!(fs::metadata(t.path("missing")).is_err());
    let mnt = t.mountpoint().to_owned();
    let counted = |text: &str| {
        sample(text, "digimedfs_requests_total", "op=\"write\"").is_some_and(|n| n >= 1)
            && sample(text, "digimedfs_written_bytes_total", "").is_some_and(|n| n >= 200_000)
            && sample(text, "digimedfs_requests_total", "op=\"create\"").is_some_and(|n| n >= 2)
    };
    assert!(
        wait_until(Duration::from_secs(20), || metrics_file(&mnt)
            .is_some_and(|(_, text)| counted(&text))),
        "no metrics file under {METRICS_DIR} counting the writes: {:?}",
        metrics_file(&mnt)
    );
    let (path, text) = metrics_file(&mnt).expect("metrics file");
    assert_eq!(
        sample(&text, "digimedfs_integrity_failures_total", ""),
        Some(0),
        "{text}"
    );
    // A missed lookup is an answer, not an error.
    assert_eq!(
        sample(&text, "digimedfs_request_errors_total", "op=\"lookup\""),
        Some(0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE digimedfs_requests_total counter"),
        "{text}"
    );
    // Nothing of the contents: no file name appears.
    assert!(!text.contains("big") && !text.contains("small\""), "{text}");

    // Storage changes a block of the large file: the read fails and is counted as such.
    t.unmount();
    let object = walk_files(&t.backing().join("objects"))
        .into_iter()
        .find(|p| fs::metadata(p).is_ok_and(|m| m.len() >= 100_000))
        .expect("the large file's object");
    let mut bytes = fs::read(&object).expect("read object");
    bytes[8192 + 17] ^= 0x40;
    fs::write(&object, &bytes).expect("write object");
    t.mount();
    let err = fs::read(t.path("big")).expect_err("a changed block must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        wait_until(Duration::from_secs(20), || metrics_file(&mnt).is_some_and(
            |(_, text)| sample(&text, "digimedfs_integrity_failures_total", "")
                .is_some_and(|n| n >= 1)
                && sample(&text, "digimedfs_request_errors_total", "op=\"read\"")
                    .is_some_and(|n| n >= 1)
        )),
        "the integrity failure was not counted: {:?}",
        metrics_file(&mnt)
    );
    t.unmount();
    assert!(
        wait_until(Duration::from_secs(20), || !path.exists()),
        "{} outlived the mount",
        path.display()
    );
}
