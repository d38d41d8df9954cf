//! POSIX behaviour through the mount: file I/O, holes, truncate, fallocate, rename, links,
//! symlinks, permissions as a non-root user, xattrs, fifos, mmap, fsync, O_APPEND, unlinked
//! open files, huge sparse files and big directories.

use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_tests::{cpath, errno_of, random_bytes, TestFs};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

fn read_at_exact(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off).unwrap();
    buf
}

#[test]
fn create_read_write_append() {
    let fs = TestFs::new();
    let p = fs.path("hello.txt");
    fs::write(&p, b"hello").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello");
    assert_eq!(fs::metadata(&p).unwrap().len(), 5);

    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello world");

    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"HELLO", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"HELLO world");

    // Overwrites at unaligned offsets across block boundaries of a data object (the file is
    // over INLINE_MAX), checked against a model.
    let big = fs.path("big.bin");
    let mut model = random_bytes(INLINE_MAX as usize + 3 * 4096 + 123);
    fs::write(&big, &model).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&big)
        .unwrap();
    let m = INLINE_MAX as usize;
    for (off, len) in [
        (4000usize, 1000usize),
        (0, 1),
        (8191, 2),
        (12000, 500),
        (m - 10, 20),
        (m + 3 * 4096 + 100, 5000),
    ] {
        let chunk = random_bytes(len);
        f.write_all_at(&chunk, off as u64).unwrap();
        if model.len() < off + len {
            model.resize(off + len, 0);
        }
        model[off..off + len].copy_from_slice(&chunk);
    }
    drop(f);
    assert_eq!(fs::metadata(&big).unwrap().len(), model.len() as u64);
    assert!(
        fs::read(&big).unwrap() == model,
        "big.bin content differs from model"
    );

    // create_new on an existing file, open of a missing one.
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST);
    let e = File::open(fs.path("missing")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);

    // Directories: readdir, rmdir of a non-empty directory, remove.
    fs::create_dir(fs.path("d")).unwrap();
    fs::write(fs.path("d/x"), b"x").unwrap();
    let mut names: Vec<String> = fs::read_dir(fs.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["x"]);
    let e = fs::remove_dir(fs.path("d")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTEMPTY);
    fs::remove_file(fs.path("d/x")).unwrap();
    fs::remove_dir(fs.path("d")).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
}

#[test]
fn random_writes_match_model_across_remount() {
    use rand::Rng;
    let mut fs = TestFs::new();
    let p = fs.path("model.bin");
    let mut model: Vec<u8> = Vec::new();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let off = rng.gen_range(0..300_000usize);
        let len = rng.gen_range(1..20_000usize);
        let chunk = random_bytes(len);
        f.write_all_at(&chunk, off as u64).unwrap();
        if model.len() < off + len {
            model.resize(off + len, 0);
        }
        model[off..off + len].copy_from_slice(&chunk);
    }
    drop(f);
    assert!(
        fs::read(&p).unwrap() == model,
        "content differs from model before remount"
    );
    fs.remount();
    assert_eq!(fs::metadata(&p).unwrap().len(), model.len() as u64);
    assert!(
        fs::read(&p).unwrap() == model,
        "content differs from model after remount"
    );
}

#[test]
fn seek_past_end_reads_holes_as_zeros() {
    let fs = TestFs::new();
    let p = fs.path("holes");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"abc").unwrap();
    let far = (1 << 20) + 7;
    f.seek(SeekFrom::Start(far)).unwrap();
    f.write_all(b"xyz").unwrap();
    drop(f);
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len() as u64, far + 3);
    assert_eq!(&data[..3], b"abc");
    assert!(
        data[3..far as usize].iter().all(|&b| b == 0),
        "hole is not zero"
    );
    assert_eq!(&data[far as usize..], b"xyz");

    // A file that is all hole.
    let q = fs.path("allhole");
    let f = File::create(&q).unwrap();
    f.set_len(100_000).unwrap();
    drop(f);
    let data = fs::read(&q).unwrap();
    assert_eq!(data.len(), 100_000);
    assert!(data.iter().all(|&b| b == 0));

    // Reading at and past EOF returns 0 bytes.
    let f = File::open(&p).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(f.read_at(&mut buf, far + 3).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, far + 1000).unwrap(), 0);
}

#[test]
fn truncate_up_and_down() {
    let mut fs = TestFs::new();
    // Down then up, on a file with a data object ("t", over INLINE_MAX) and on an inline one
    // ("t-inline"): (name, size grown to, original contents).
    let m = INLINE_MAX as usize;
    let cases: Vec<(&str, usize, Vec<u8>)> = vec![
        ("t", m + 20_000, random_bytes(m + 10_000)),
        ("t-inline", 20_000, random_bytes(10_000)),
    ];
    for (name, up, orig) in &cases {
        let p = fs.path(name);
        fs::write(&p, orig).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        f.set_len(5000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 5000);
        assert!(fs::read(&p).unwrap() == orig[..5000]);
        f.set_len(*up as u64).unwrap();
        let data = fs::read(&p).unwrap();
        assert_eq!(data.len(), *up);
        assert!(data[..5000] == orig[..5000]);
        assert!(
            data[5000..].iter().all(|&b| b == 0),
            "{name}: truncate down then up must not resurrect old data"
        );
        drop(f);
    }

    // Truncate at a block boundary and inside the first block, then grow (a file with a data
    // object: over INLINE_MAX).
    let q = fs.path("t2");
    let orig2 = random_bytes(m + 3 * 4096);
    fs::write(&q, &orig2).unwrap();
    let f = OpenOptions::new().write(true).open(&q).unwrap();
    f.set_len(4096).unwrap();
    f.set_len(8192).unwrap();
    drop(f);
    let data = fs::read(&q).unwrap();
    assert!(data[..4096] == orig2[..4096]);
    assert!(data[4096..].iter().all(|&b| b == 0));
    let f = OpenOptions::new().write(true).open(&q).unwrap();
    f.set_len(100).unwrap();
    f.set_len(3 * 4096 + 1).unwrap();
    drop(f);
    let data = fs::read(&q).unwrap();
    assert!(data[..100] == orig2[..100]);
    assert!(data[100..].iter().all(|&b| b == 0));

    // O_TRUNC and truncate to zero.
    let r = fs.path("t3");
    fs::write(&r, random_bytes(m + 50_000)).unwrap();
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&r)
            .unwrap(),
    );
    assert_eq!(fs::metadata(&r).unwrap().len(), 0);
    assert!(fs::read(&r).unwrap().is_empty());

    fs.remount();
    for (name, up, orig) in &cases {
        let data = fs::read(fs.path(name)).unwrap();
        assert_eq!(data.len(), *up, "{name}");
        assert!(
            data[..5000] == orig[..5000] && data[5000..].iter().all(|&b| b == 0),
            "{name} after remount"
        );
    }
    let data = fs::read(&q).unwrap();
    assert_eq!(data.len(), 3 * 4096 + 1);
    assert!(data[..100] == orig2[..100] && data[100..].iter().all(|&b| b == 0));
    assert_eq!(fs::metadata(&r).unwrap().len(), 0);
}

#[test]
fn fallocate_and_punch_hole() {
    let mut fs = TestFs::new();
    let p = fs.path("falloc");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: fd is a valid open descriptor owned by `f` for the duration of the call.
    let r = unsafe { libc::fallocate(fd, 0, 0, 1 << 20) };
    assert_eq!(
        r,
        0,
        "fallocate(0, 1 MiB): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert!(read_at_exact(&f, 0, 1 << 20).iter().all(|&b| b == 0));

    f.write_all_at(&[0x5a; 3 * 4096], 0).unwrap();
    // SAFETY: as above.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            4096,
        )
    };
    assert_eq!(
        r,
        0,
        "fallocate(PUNCH_HOLE|KEEP_SIZE): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        f.metadata().unwrap().len(),
        1 << 20,
        "punching a hole changed the size"
    );
    // The model of the first 3 blocks: data, punched block, data.
    let mut model = vec![0x5au8; 3 * 4096];
    model[4096..8192].fill(0);
    let check = |f: &File, model: &[u8], when: &str| {
        let d = read_at_exact(f, 0, 3 * 4096);
        let bad: Vec<usize> = (0..d.len()).filter(|&i| d[i] != model[i]).collect();
        assert!(
            bad.is_empty(),
            "{when}: {} bytes differ from the model, first at offset {} (got {:#x}, want {:#x})",
            bad.len(),
            bad[0],
            d[bad[0]],
            model[bad[0]]
        );
    };
    check(&f, &model, "after punching 4096..8192");

    // An unaligned punch inside a block.
    // SAFETY: as above.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            10_000,
            100,
        )
    };
    assert_eq!(r, 0, "unaligned punch: {}", std::io::Error::last_os_error());
    model[10_000..10_100].fill(0);
    check(&f, &model, "after punching 10000..10100");

    // KEEP_SIZE beyond EOF leaves the size alone.
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) };
    assert_eq!(
        r,
        0,
        "fallocate(KEEP_SIZE): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    drop(f);

    fs.remount();
    let f = File::open(&p).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    check(&f, &model, "after remount");
    assert!(read_at_exact(&f, 3 * 4096, (1 << 20) - 3 * 4096)
        .iter()
        .all(|&b| b == 0));
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

#[test]
fn rename_semantics() {
    let fs = TestFs::new();
    let p = |s: &str| fs.path(s);

    // Over an existing file.
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    let keep_open = File::open(p("a")).unwrap();
    fs::rename(p("a"), p("b")).unwrap();
    assert!(!p("a").exists());
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    let mut s = String::new();
    (&keep_open).read_to_string(&mut s).unwrap();
    assert_eq!(s, "A", "an open file must stay readable after rename");

    // A directory over an empty directory; over a non-empty one.
    fs::create_dir(p("d1")).unwrap();
    fs::write(p("d1/f"), b"in d1").unwrap();
    fs::create_dir(p("d2")).unwrap();
    fs::rename(p("d1"), p("d2")).unwrap();
    assert!(!p("d1").exists());
    assert_eq!(fs::read(p("d2/f")).unwrap(), b"in d1");
    fs::create_dir(p("d3")).unwrap();
    fs::write(p("d3/g"), b"g").unwrap();
    let e = fs::rename(p("d2"), p("d3")).unwrap_err();
    assert!(
        [libc::ENOTEMPTY, libc::EEXIST].contains(&errno_of(&e)),
        "dir over non-empty dir: {e}"
    );
    assert_eq!(fs::read(p("d3/g")).unwrap(), b"g");

    // Type mismatches.
    let e = fs::rename(p("b"), p("d3")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EISDIR, "file over dir: {e}");
    let e = fs::rename(p("d3"), p("b")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTDIR, "dir over file: {e}");

    // RENAME_NOREPLACE.
    fs::write(p("n1"), b"n1").unwrap();
    fs::write(p("n2"), b"n2").unwrap();
    assert_eq!(
        renameat2(&p("n1"), &p("n2"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    assert_eq!(fs::read(p("n1")).unwrap(), b"n1");
    assert_eq!(fs::read(p("n2")).unwrap(), b"n2");
    assert_eq!(
        renameat2(&p("n1"), &p("n3"), libc::RENAME_NOREPLACE),
        Ok(())
    );
    assert!(!p("n1").exists());
    assert_eq!(fs::read(p("n3")).unwrap(), b"n1");

    // RENAME_EXCHANGE, of files and of a file with a directory.
    assert_eq!(renameat2(&p("n2"), &p("n3"), libc::RENAME_EXCHANGE), Ok(()));
    assert_eq!(fs::read(p("n2")).unwrap(), b"n1");
    assert_eq!(fs::read(p("n3")).unwrap(), b"n2");
    assert_eq!(renameat2(&p("n2"), &p("d3"), libc::RENAME_EXCHANGE), Ok(()));
    assert!(p("n2").is_dir());
    assert_eq!(fs::read(p("n2/g")).unwrap(), b"g");
    assert_eq!(fs::read(p("d3")).unwrap(), b"n1");
    assert_eq!(
        renameat2(&p("n3"), &p("nonexistent"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );

    // Across directories, of a file and of a directory (its ".." must follow).
    fs::create_dir(p("src")).unwrap();
    fs::create_dir(p("dst")).unwrap();
    fs::create_dir(p("src/sub")).unwrap();
    fs::write(p("src/file"), b"moved").unwrap();
    let src_nlink = fs::metadata(p("src")).unwrap().nlink();
    let dst_nlink = fs::metadata(p("dst")).unwrap().nlink();
    fs::rename(p("src/file"), p("dst/file2")).unwrap();
    fs::rename(p("src/sub"), p("dst/sub")).unwrap();
    assert_eq!(fs::read(p("dst/file2")).unwrap(), b"moved");
    assert!(!p("src/file").exists() && !p("src/sub").exists());
    assert_eq!(
        fs::metadata(p("dst/sub/..")).unwrap().ino(),
        fs::metadata(p("dst")).unwrap().ino(),
        "moved directory's .. must be its new parent"
    );
    assert_eq!(
        fs::metadata(p("src")).unwrap().nlink(),
        src_nlink - 1,
        "old parent nlink"
    );
    assert_eq!(
        fs::metadata(p("dst")).unwrap().nlink(),
        dst_nlink + 1,
        "new parent nlink"
    );

    // A directory into its own subtree.
    let e = fs::rename(p("dst"), p("dst/sub/inner")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EINVAL);

    let mut names: Vec<String> = fs::read_dir(fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "d2", "d3", "dst", "n2", "n3", "src"]);
}

#[test]
fn hard_links_and_nlink() {
    let fs = TestFs::new();
    let a = fs.path("a");
    fs::write(&a, b"shared").unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 1);
    fs::create_dir(fs.path("dir")).unwrap();
    let b = fs.path("dir/b");
    fs::hard_link(&a, &b).unwrap();
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    assert_eq!(mb.nlink(), 2);
    let c = fs.path("c");
    fs::hard_link(&b, &c).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 3);

    // Writes through one name are seen through the others.
    OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .write_all_at(b"SH", 0)
        .unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"SHared");
    assert_eq!(fs::read(&c).unwrap(), b"SHared");

    fs::remove_file(&a).unwrap();
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 2);
    fs::remove_file(&c).unwrap();
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 1);
    assert_eq!(fs::read(&b).unwrap(), b"SHared");

    // Linking onto an existing name, linking a directory.
    fs::write(&a, b"other").unwrap();
    let e = fs::hard_link(&b, &a).unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST);
    let e = fs::hard_link(fs.path("dir"), fs.path("dirlink")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EPERM);

    // Directory link counts: 2 + number of subdirectories.
    let root_nlink = fs::metadata(fs.mountpoint()).unwrap().nlink();
    fs::create_dir(fs.path("p")).unwrap();
    assert_eq!(
        fs::metadata(fs.path("p")).unwrap().nlink(),
        2,
        "new directory nlink"
    );
    assert_eq!(
        fs::metadata(fs.mountpoint()).unwrap().nlink(),
        root_nlink + 1,
        "parent nlink"
    );
    fs::create_dir(fs.path("p/q")).unwrap();
    fs::create_dir(fs.path("p/r")).unwrap();
    fs::write(fs.path("p/file"), b"").unwrap();
    assert_eq!(fs::metadata(fs.path("p")).unwrap().nlink(), 4);
    fs::remove_dir(fs.path("p/q")).unwrap();
    assert_eq!(fs::metadata(fs.path("p")).unwrap().nlink(), 3);
}

#[test]
fn symlinks() {
    let fs = TestFs::new();
    fs::write(fs.path("target"), b"through the link").unwrap();
    std::os::unix::fs::symlink("target", fs.path("rel")).unwrap();
    let abs_target = fs.path("target");
    std::os::unix::fs::symlink(&abs_target, fs.path("abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", fs.path("dangling")).unwrap();
    let long_target = "x/".repeat(500) + "end";
    std::os::unix::fs::symlink(&long_target, fs.path("long")).unwrap();

    assert_eq!(fs::read_link(fs.path("rel")).unwrap(), Path::new("target"));
    assert_eq!(fs::read_link(fs.path("abs")).unwrap(), abs_target);
    assert_eq!(
        fs::read_link(fs.path("dangling")).unwrap(),
        Path::new("does/not/exist")
    );
    assert_eq!(
        fs::read_link(fs.path("long")).unwrap(),
        Path::new(&long_target)
    );

    let lm = fs::symlink_metadata(fs.path("rel")).unwrap();
    assert!(lm.file_type().is_symlink());
    assert_eq!(
        lm.len(),
        "target".len() as u64,
        "symlink st_size is the target length"
    );
    assert_eq!(fs::read(fs.path("rel")).unwrap(), b"through the link");
    assert_eq!(fs::read(fs.path("abs")).unwrap(), b"through the link");
    assert!(fs::metadata(fs.path("rel")).unwrap().is_file());
    let e = fs::read(fs.path("dangling")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
    let e = fs::read_link(fs.path("target")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EINVAL, "readlink of a regular file");

    // A symlink to a directory can be traversed.
    fs::create_dir(fs.path("d")).unwrap();
    fs::write(fs.path("d/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("d", fs.path("dlink")).unwrap();
    assert_eq!(fs::read(fs.path("dlink/inner")).unwrap(), b"inner");
    fs::remove_file(fs.path("dlink")).unwrap();
    assert!(
        fs.path("d/inner").exists(),
        "removing a symlink must not touch its target"
    );
}

/// Runs `f` in a forked child whose uid and gid are `id` (no supplementary groups) and
/// returns the child's exit status: what `f` returned, 200 if dropping privileges failed, 201
/// if `f` panicked.
///
/// `f` runs after fork() in a multi-threaded process, so it must only make plain libc calls
/// on data prepared before the fork.
fn as_user(id: u32, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork has no memory-safety preconditions. The child only makes libc calls
    // (setgroups/setgid/setuid, then the file syscalls in `f` on pre-built C strings) and
    // leaves with _exit, so it never touches locks other threads may have held at fork time.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: plain syscalls on integers; a null list with size 0 is allowed by setgroups.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(id) == 0
                && libc::setuid(id) == 0
        };
        let code = if dropped {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(201)
        } else {
            200
        };
        // SAFETY: _exit ends the child at once without running the parent's atexit handlers
        // or destructors (the temp dirs belong to the parent).
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our child.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "child did not exit normally: status {status}"
    );
    libc::WEXITSTATUS(status)
}

/// 0 if `r` is 0 (or a non-negative fd, which is closed), else errno.
fn rc(r: libc::c_int) -> i32 {
    if r >= 0 {
        0
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(255)
    }
}

fn errname(e: i32) -> String {
    match e {
        0 => "OK".into(),
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOENT => "ENOENT".into(),
        200 => "(could not drop privileges)".into(),
        201 => "(child panicked)".into(),
        e => format!("errno {e}"),
    }
}

#[test]
fn permissions_as_non_root_user() {
    const U: u32 = 1000;
    let fs = TestFs::with_options(&["allow_other"]);
    let rootfile = fs.path("rootfile");
    fs::write(&rootfile, b"root's").unwrap();
    set_mode(&rootfile, 0o644);
    let readonly = fs.path("readonly");
    fs::write(&readonly, b"ro").unwrap();
    chown(&readonly, U, U);
    set_mode(&readonly, 0o444);
    let world = fs.path("world");
    fs::write(&world, b"anyone").unwrap();
    set_mode(&world, 0o666);
    let rootdir = fs.path("rootdir");
    fs::create_dir(&rootdir).unwrap();
    set_mode(&rootdir, 0o755);
    fs::write(fs.path("rootdir/victim"), b"v").unwrap();
    let public = fs.path("public");
    fs::create_dir(&public).unwrap();
    set_mode(&public, 0o777);
    let owned = fs.path("public/owned");
    fs::write(&owned, b"mine").unwrap();
    chown(&owned, U, U);
    set_mode(&owned, 0o644);

    let c = |p: &Path| cpath(p);
    let (c_root, c_ro, c_world, c_owned) = (c(&rootfile), c(&readonly), c(&world), c(&owned));
    let c_newfile = c(&fs.path("rootdir/new"));
    let c_newdir = c(&fs.path("rootdir/sub"));
    let c_victim = c(&fs.path("rootdir/victim"));
    let c_mine = c(&fs.path("public/mine"));
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_100_000_000,
            tv_nsec: 987_654_321,
        },
    ];

    // SAFETY (all closures below): each makes libc calls on NUL-terminated strings built before
    // the fork and on a stack array of timespecs; fds opened are closed at child exit.
    let cases: Vec<(&str, i32, i32)> = vec![
        (
            "chmod of root's file",
            libc::EPERM,
            as_user(U, || rc(unsafe { libc::chmod(c_root.as_ptr(), 0o777) })),
        ),
        (
            "chown of root's file",
            libc::EPERM,
            as_user(U, || rc(unsafe { libc::chown(c_root.as_ptr(), U, U) })),
        ),
        (
            "write-open of a 0444 file",
            libc::EACCES,
            as_user(U, || {
                rc(unsafe { libc::open(c_ro.as_ptr(), libc::O_WRONLY) })
            }),
        ),
        (
            "truncate of a 0444 file",
            libc::EACCES,
            as_user(U, || rc(unsafe { libc::truncate(c_ro.as_ptr(), 0) })),
        ),
        (
            "write-open of root's 0644 file",
            libc::EACCES,
            as_user(U, || {
                rc(unsafe { libc::open(c_root.as_ptr(), libc::O_WRONLY) })
            }),
        ),
        (
            "read-open of root's 0644 file",
            0,
            as_user(U, || {
                rc(unsafe { libc::open(c_root.as_ptr(), libc::O_RDONLY) })
            }),
        ),
        (
            "create in root's 0755 dir",
            libc::EACCES,
            as_user(U, || {
                rc(
                    unsafe {
                        libc::open(c_newfile.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644)
                    },
                )
            }),
        ),
        (
            "mkdir in root's 0755 dir",
            libc::EACCES,
            as_user(U, || rc(unsafe { libc::mkdir(c_newdir.as_ptr(), 0o755) })),
        ),
        (
            "unlink in root's 0755 dir",
            libc::EACCES,
            as_user(U, || rc(unsafe { libc::unlink(c_victim.as_ptr()) })),
        ),
        (
            "chmod of own file",
            0,
            as_user(U, || rc(unsafe { libc::chmod(c_owned.as_ptr(), 0o600) })),
        ),
        (
            "chown of own file to root",
            libc::EPERM,
            as_user(U, || {
                rc(unsafe { libc::chown(c_owned.as_ptr(), 0, u32::MAX) })
            }),
        ),
        (
            "explicit utimens of own file",
            0,
            as_user(U, || {
                rc(unsafe { libc::utimensat(libc::AT_FDCWD, c_owned.as_ptr(), times.as_ptr(), 0) })
            }),
        ),
        (
            "utimens(NULL) of a 0666 file",
            0,
            as_user(U, || {
                rc(unsafe {
                    libc::utimensat(libc::AT_FDCWD, c_world.as_ptr(), std::ptr::null(), 0)
                })
            }),
        ),
        (
            "explicit utimens of root's 0666 file",
            libc::EPERM,
            as_user(U, || {
                rc(unsafe { libc::utimensat(libc::AT_FDCWD, c_world.as_ptr(), times.as_ptr(), 0) })
            }),
        ),
        (
            "utimens(NULL) of root's 0644 file",
            libc::EACCES,
            as_user(U, || {
                rc(
                    unsafe {
                        libc::utimensat(libc::AT_FDCWD, c_root.as_ptr(), std::ptr::null(), 0)
                    },
                )
            }),
        ),
        (
            "write to a 0666 file",
            0,
            as_user(U, || {
                rc(unsafe { libc::open(c_world.as_ptr(), libc::O_WRONLY | libc::O_APPEND) })
            }),
        ),
        (
            "create in a 0777 dir",
            0,
            as_user(U, || {
                rc(unsafe { libc::open(c_mine.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o640) })
            }),
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, got)| {
            format!("{what}: expected {}, got {}", errname(*want), errname(*got))
        })
        .collect();
    assert!(wrong.is_empty(), "as uid {U}:\n{}", wrong.join("\n"));

    // The effects of the allowed operations, seen by root.
    assert_eq!(fs::metadata(&owned).unwrap().mode() & 0o7777, 0o600);
    let m = fs::metadata(&owned).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_100_000_000, 987_654_321));
    let m = fs::metadata(fs.path("public/mine")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (U, U),
        "a new file belongs to its creator"
    );
    assert!(!fs.path("rootdir/new").exists() && fs.path("rootdir/victim").exists());
    assert_eq!(fs::read(&rootfile).unwrap(), b"root's");

    // Root may do all of it.
    set_mode(&rootfile, 0o640);
    chown(&rootfile, 1234, 5678);
    let c_root = cpath(&rootfile);
    // SAFETY: valid C string and timespec array for the duration of the call.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c_root.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0);
    let m = fs::metadata(&rootfile).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_100_000_000, 987_654_321));
    OpenOptions::new()
        .append(true)
        .open(&readonly)
        .unwrap()
        .write_all(b"!")
        .unwrap();
    assert_eq!(
        fs::read(&readonly).unwrap(),
        b"ro!",
        "root writes a 0444 file"
    );
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (cp, cn) = (cpath(p), cpath(name));
    // SAFETY: valid C strings; a null buffer with size 0 asks for the value's size.
    let size = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let n = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> Result<(), i32> {
    digimedfs_tests::try_set_xattr(p, name, value, flags)
}

fn listxattr(p: &Path) -> Vec<String> {
    let cp = cpath(p);
    // SAFETY: a null buffer with size 0 asks for the list's size.
    let size = unsafe { libc::listxattr(cp.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(size >= 0, "listxattr: {}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; size as usize];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let n = unsafe { libc::listxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    let mut names: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    names
}

fn removexattr(p: &Path, name: &str) -> Result<(), i32> {
    let (cp, cn) = (cpath(p), cpath(name));
    // SAFETY: valid C strings.
    let r = unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn xattrs() {
    let mut fs = TestFs::new();
    let f = fs.path("file");
    fs::write(&f, b"data").unwrap();
    fs::create_dir(fs.path("dir")).unwrap();
    let d = fs.path("dir");

    assert_eq!(listxattr(&f), Vec::<String>::new());
    assert_eq!(getxattr(&f, "user.missing"), Err(libc::ENODATA));
    // No SELinux labels are stored (FUSE mounts are labelled by policy); EOPNOTSUPP makes
    // `ls -l` stop asking for every entry.
    assert_eq!(getxattr(&f, "security.selinux"), Err(libc::EOPNOTSUPP));
    assert_eq!(
        setxattr(&f, "security.selinux", b"system_u:object_r:fusefs_t:s0", 0),
        Err(libc::EOPNOTSUPP)
    );
    setxattr(&f, "user.a", b"alpha", 0).unwrap();
    let binary: Vec<u8> = vec![0, 1, 2, 0, 255, 0];
    setxattr(&f, "user.bin", &binary, 0).unwrap();
    let big = random_bytes(4000);
    setxattr(&f, "user.big", &big, 0).unwrap();
    setxattr(&f, "user.empty", b"", 0).unwrap();
    setxattr(&d, "user.ondir", b"dir value", 0).unwrap();

    assert_eq!(getxattr(&f, "user.a").unwrap(), b"alpha");
    assert_eq!(getxattr(&f, "user.bin").unwrap(), binary);
    assert_eq!(getxattr(&f, "user.big").unwrap(), big);
    assert_eq!(getxattr(&f, "user.empty").unwrap(), b"");
    assert_eq!(getxattr(&d, "user.ondir").unwrap(), b"dir value");
    assert_eq!(
        listxattr(&f),
        ["user.a", "user.big", "user.bin", "user.empty"]
    );

    assert_eq!(
        setxattr(&f, "user.a", b"x", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&f, "user.nope", b"x", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    setxattr(&f, "user.a", b"replaced", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&f, "user.a").unwrap(), b"replaced");

    // A too-small buffer gets ERANGE.
    let (cp, cn) = (cpath(&f), cpath("user.a"));
    let mut small = [0u8; 2];
    // SAFETY: `small` has room for 2 bytes.
    let r = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), small.as_mut_ptr().cast(), 2) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );

    removexattr(&f, "user.bin").unwrap();
    assert_eq!(getxattr(&f, "user.bin"), Err(libc::ENODATA));
    assert_eq!(removexattr(&f, "user.bin"), Err(libc::ENODATA));
    assert_eq!(listxattr(&f), ["user.a", "user.big", "user.empty"]);

    let bare = fs.path("bare");
    fs::write(&bare, b"no xattrs").unwrap();

    fs.remount();
    // Misses are remembered per inode: a later set must still be found.
    assert_eq!(getxattr(&bare, "user.later"), Err(libc::ENODATA));
    assert_eq!(getxattr(&bare, "security.capability"), Err(libc::ENODATA));
    setxattr(&bare, "user.later", b"set after a miss", 0).unwrap();
    assert_eq!(getxattr(&bare, "user.later").unwrap(), b"set after a miss");
    assert_eq!(listxattr(&f), ["user.a", "user.big", "user.empty"]);
    assert_eq!(getxattr(&f, "user.a").unwrap(), b"replaced");
    assert_eq!(getxattr(&f, "user.big").unwrap(), big);
    assert_eq!(getxattr(&d, "user.ondir").unwrap(), b"dir value");
    assert_eq!(fs::read(&f).unwrap(), b"data");
}

#[test]
fn mkfifo_passes_data() {
    let fs = TestFs::new();
    let p = fs.path("fifo");
    let cp = cpath(&p);
    // SAFETY: valid C string.
    let r = unsafe { libc::mkfifo(cp.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo: {}", std::io::Error::last_os_error());
    set_mode(&p, 0o640);
    let m = fs::symlink_metadata(&p).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(m.file_type().is_fifo(), "not a fifo: {:?}", m.file_type());
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(m.len(), 0);

    let writer_path = p.clone();
    let writer = std::thread::spawn(move || {
        let mut w = OpenOptions::new().write(true).open(&writer_path).unwrap();
        w.write_all(b"through the fifo").unwrap();
    });
    let mut r = File::open(&p).unwrap();
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, "through the fifo");
    assert!(fs::read_dir(fs.mountpoint())
        .unwrap()
        .any(|e| e.unwrap().file_name() == "fifo"));
    fs::remove_file(&p).unwrap();
}

#[test]
fn mmap_read_and_shared_write() {
    let mut fs = TestFs::new();
    let p = fs.path("mapped");
    // Over INLINE_MAX: a data object.
    let len = INLINE_MAX as usize + 3 * 4096 + 100;
    let orig = random_bytes(len);
    fs::write(&p, &orig).unwrap();

    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // SAFETY: mapping `len` bytes of an open file we own; checked against MAP_FAILED below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is `len` bytes long, readable and writable, and nothing else aliases it
    // until munmap below.
    let map = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) };
    assert!(map[..] == orig[..], "mmap read differs from the file");
    let mut expected = orig.clone();
    map[10..20].copy_from_slice(b"MMAPWRITE!");
    expected[10..20].copy_from_slice(b"MMAPWRITE!");
    map[2 * 4096 + 5] = !map[2 * 4096 + 5];
    expected[2 * 4096 + 5] = !expected[2 * 4096 + 5];
    map[len - 1] = b'Z';
    expected[len - 1] = b'Z';
    // SAFETY: msync and munmap on exactly the mapping created above; `map` is not used after.
    unsafe {
        assert_eq!(
            libc::msync(ptr, len, libc::MS_SYNC),
            0,
            "msync: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::munmap(ptr, len), 0);
    }
    drop(f);
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), len, "mmap writes changed the size");
    assert!(
        got == expected,
        "read() after msync does not see the mmap writes"
    );

    fs.remount();
    let got = fs::read(&p).unwrap();
    assert!(got == expected, "mmap writes lost across remount");
}

#[test]
fn fsync_file_and_directory() {
    let fs = TestFs::new();
    fs::create_dir(fs.path("d")).unwrap();
    let p = fs.path("d/synced");
    let mut f = File::create(&p).unwrap();
    let data = random_bytes(200_000);
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    f.write_all(b"more").unwrap();
    f.sync_data().unwrap();
    drop(f);
    File::open(fs.path("d")).unwrap().sync_all().unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 200_004);
    assert!(got[..200_000] == data[..] && &got[200_000..] == b"more");
}

#[test]
fn o_append_from_two_processes() {
    let fs = TestFs::new();
    let p = fs.path("log");
    fs::write(&p, b"").unwrap();
    // 2 × 600 lines of 68 bytes: the file grows past INLINE_MAX (from inline to a data object)
    // while both append.
    const LINES: usize = 600;
    let pad = "p".repeat(60);
    let script = format!(
        "exec 3>>\"$1\"; i=0; while [ $i -lt {LINES} ]; do printf '%s-%04d-{pad}\\n' \"$2\" $i >&3; i=$((i+1)); done"
    );
    let spawn = |tag: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(&p)
            .arg(tag)
            .spawn()
            .expect("spawn sh")
    };
    let (mut a, mut b) = (spawn("A"), spawn("B"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());

    let text = fs::read_to_string(&p).unwrap();
    let mut expected: Vec<String> = Vec::new();
    for tag in ["A", "B"] {
        for i in 0..LINES {
            expected.push(format!("{tag}-{i:04}-{pad}"));
        }
    }
    let mut got: Vec<String> = text.lines().map(str::to_string).collect();
    let bad: Vec<&String> = got
        .iter()
        .filter(|l| !expected.contains(l))
        .take(5)
        .collect();
    assert!(bad.is_empty(), "torn or foreign lines: {bad:?}");
    assert_eq!(got.len(), 2 * LINES, "line count");
    got.sort();
    expected.sort();
    assert!(got == expected, "some lines missing or duplicated");
    // Each writer's lines stay in order.
    for tag in ["A-", "B-"] {
        let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(tag)).collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "{tag} lines out of order"
        );
    }
    assert_eq!(fs::metadata(&p).unwrap().len() as usize, text.len());
    assert!(text.len() as u64 > INLINE_MAX);
}

#[test]
fn unlinked_open_file_stays_usable() {
    let fs = TestFs::new();
    let p = fs.path("ghost");
    // Over INLINE_MAX: a data object.
    let m = INLINE_MAX;
    let data = random_bytes(m as usize + 50_000);
    fs::write(&p, &data).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    assert!(
        fs::read_dir(fs.mountpoint()).unwrap().next().is_none(),
        "unlinked name still listed"
    );
    assert!(
        read_at_exact(&f, 0, data.len()) == data,
        "unlinked file unreadable"
    );
    f.write_all_at(b"still writable", m + 60_000).unwrap();
    assert_eq!(read_at_exact(&f, m + 60_000, 14), b"still writable");
    let meta = f.metadata().unwrap();
    assert_eq!(meta.nlink(), 0);
    assert_eq!(meta.len(), m + 60_014);
    // A new file may take the name meanwhile.
    fs::write(&p, b"new").unwrap();
    assert!(read_at_exact(&f, 0, 100) == data[..100]);
    assert_eq!(fs::read(&p).unwrap(), b"new");
}

#[test]
fn sparse_file_beyond_4gib() {
    let fs = TestFs::new();
    let p = fs.path("sparse");
    let off: u64 = 5 << 30;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"far away", off).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().len(), off + 8);
    let f = File::open(&p).unwrap();
    assert_eq!(read_at_exact(&f, off, 8), b"far away");
    for at in [0u64, 4096, (4 << 30) - 100, 4 << 30, off - 65_536] {
        assert!(
            read_at_exact(&f, at, 65_536.min((off - at) as usize))
                .iter()
                .all(|&b| b == 0),
            "hole at {at} is not zero"
        );
    }
    // The tail: zeros up to the data.
    let tail = read_at_exact(&f, off - 10, 18);
    assert_eq!(&tail[..10], &[0u8; 10]);
    assert_eq!(&tail[10..], b"far away");
    // The backing store must stay sparse too.
    let used: u64 = digimedfs_tests::walk_files(fs.backing())
        .iter()
        .map(|q| fs::metadata(q).unwrap().blocks() * 512)
        .sum();
    assert!(
        used < 256 << 20,
        "backing dir uses {used} bytes for a 5 GiB sparse file"
    );
}

#[test]
fn ten_thousand_files_in_one_directory() {
    let fs = TestFs::new();
    let d = fs.path("many");
    fs::create_dir(&d).unwrap();
    const N: usize = 10_000;
    for i in 0..N {
        File::create(d.join(format!("file-{i:05}"))).unwrap();
    }
    fs::write(d.join("file-00042"), b"forty-two").unwrap();
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), N, "readdir count");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), N, "readdir returned duplicates");
    assert_eq!(names[0], "file-00000");
    assert_eq!(names[N - 1], format!("file-{:05}", N - 1));
    for i in [0usize, 42, 4999, 9999] {
        let m = fs::metadata(d.join(format!("file-{i:05}"))).unwrap();
        assert!(m.is_file());
        assert_eq!(m.len(), if i == 42 { 9 } else { 0 });
    }
    for i in 0..N {
        fs::remove_file(d.join(format!("file-{i:05}"))).unwrap();
    }
    assert!(fs::read_dir(&d).unwrap().next().is_none());
    fs::remove_dir(&d).unwrap();
}

/// Writing, truncating and fallocating drop setuid, and setgid where Linux does (the file is
/// group-executable or the writer is not in its group), and the new mode shows at once; root
/// (CAP_FSETID) keeps both. The kernel leaves this to the filesystem (FUSE_HANDLE_KILLPRIV_V2).
#[test]
fn modification_drops_setuid_and_setgid_as_linux_does() {
    const U: u32 = 1000;
    let mut fs = TestFs::with_options(&["allow_other"]);
    let mode_of = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let cases: [(&str, u32, u32); 2] = [("plain", 0o6666, 0o666), ("gexec", 0o6777, 0o777)];
    for (name, before, after) in cases {
        for op in ["append", "truncate", "fallocate"] {
            let p = fs.path(format!("{name}-{op}"));
            fs::write(&p, b"data").unwrap();
            set_mode(&p, before);
            assert_eq!(mode_of(&p), before, "{name}-{op}: mode before");
            let c = cpath(&p);
            let status = as_user(U, || {
                // SAFETY: plain syscalls on a C string prepared before the fork.
                unsafe {
                    let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                    if fd < 0 {
                        return rc(fd);
                    }
                    let r = match op {
                        "append" => {
                            if libc::write(fd, b"x".as_ptr().cast(), 1) == 1 {
                                0
                            } else {
                                -1
                            }
                        }
                        "truncate" => libc::ftruncate(fd, 2),
                        _ => libc::fallocate(fd, 0, 0, 8192),
                    };
                    let e = rc(r);
                    libc::close(fd);
                    e
                }
            });
            assert_eq!(status, 0, "{name}-{op} as user {U}: {}", errname(status));
            assert_eq!(
                mode_of(&p),
                after,
                "{name}-{op} by a user outside the group: mode {:o}, expected {after:o}",
                mode_of(&p)
            );
        }
    }
    // Root writing keeps both bits.
    let p = fs.path("root-writes");
    fs::write(&p, b"data").unwrap();
    set_mode(&p, 0o6755);
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    assert_eq!(mode_of(&p), 0o6755, "root's write must keep setuid/setgid");
    // chown of a non-directory drops setuid, and setgid with group exec, even by root to the
    // same owner (generic/193).
    for (before, after) in [(0o6755, 0o755), (0o6744, 0o2744)] {
        let c = fs.path(format!("chown-{before:o}"));
        fs::write(&c, b"data").unwrap();
        set_mode(&c, before);
        std::os::unix::fs::chown(&c, Some(0), Some(0)).unwrap();
        assert_eq!(mode_of(&c), after, "chown of a {before:o} file");
    }
    // A write by a user without CAP_FSETID through O_DIRECT drops the bits too, and the new
    // mode shows at once (generic/355).
    let d = fs.path("direct");
    fs::write(&d, vec![1u8; 4096]).unwrap();
    set_mode(&d, 0o6666);
    let cd = cpath(&d);
    let status = as_user(U, || {
        let mut buf = vec![0u8; 8192];
        let off = buf.as_ptr().align_offset(4096);
        let aligned = buf[off..off + 4096].as_mut_ptr();
        // SAFETY: plain syscalls; `aligned` points to 4096 writable bytes inside `buf`.
        unsafe {
            let fd = libc::open(cd.as_ptr(), libc::O_WRONLY | libc::O_DIRECT);
            if fd < 0 {
                return rc(fd);
            }
            let r = libc::pwrite(fd, aligned.cast(), 4096, 0);
            libc::close(fd);
            if r == 4096 {
                0
            } else {
                rc(-1)
            }
        }
    });
    assert_eq!(status, 0, "O_DIRECT write as user {U}: {}", errname(status));
    assert_eq!(
        mode_of(&d),
        0o666,
        "after an O_DIRECT write by a non-member"
    );
    // The mode survives a remount as shown.
    let shown: Vec<(String, u32)> = ["plain-append", "gexec-fallocate", "root-writes"]
        .iter()
        .map(|n| (n.to_string(), mode_of(&fs.path(n))))
        .collect();
    fs.remount();
    for (n, m) in shown {
        assert_eq!(mode_of(&fs.path(&n)), m, "{n}: mode after remount");
    }
}

/// Access times (B11, xfstests generic/003). The kernel leaves atime of FUSE inodes to the
/// daemon: under `relatime` (the default) a read updates atime when it is not later than
/// mtime or ctime, under `strictatime` every read does, under `noatime` none does;
/// `nodiratime` leaves directories alone, and a read-only mount never updates. Reads served
/// from the kernel's page cache count too (the open is what reaches the daemon), a listing
/// counts for the directory, and the updates survive a remount.
#[test]
fn atime_relatime_strictatime_noatime() {
    use std::time::Duration;
    fn atime(p: &Path) -> (i64, i64) {
        let m = fs::metadata(p).unwrap();
        (m.atime(), m.atime_nsec())
    }
    fn mc_times(p: &Path) -> (i64, i64, i64, i64) {
        let m = fs::metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
    }
    fn list(d: &Path) -> usize {
        fs::read_dir(d).unwrap().count()
    }
    // Long enough for the clocks (the daemon's coarse one included) to move on.
    let pause = || std::thread::sleep(Duration::from_millis(120));
    // Makes a file (its data stays in the page cache) and a directory with an entry.
    fn setup(fs: &TestFs) -> (std::path::PathBuf, std::path::PathBuf) {
        let f = fs.path("f");
        fs::write(&f, b"some data").unwrap();
        let d = fs.path("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("x"), b"x").unwrap();
        (f, d)
    }

    // relatime, the default.
    let mut fs = TestFs::new();
    let (f, d) = setup(&fs);
    let (a0, t0) = (atime(&f), mc_times(&f));
    pause();
    assert_eq!(fs::read(&f).unwrap(), b"some data");
    let a1 = atime(&f);
    assert!(
        a1 > a0,
        "relatime: first read after the write: {a0:?} -> {a1:?}"
    );
    assert_eq!(mc_times(&f), t0, "a read changed mtime or ctime");
    pause();
    fs::read(&f).unwrap();
    let mut buf = [0u8; 4];
    File::open(&f).unwrap().read_exact_at(&mut buf, 2).unwrap();
    assert_eq!(
        atime(&f),
        a1,
        "relatime: reads with no change since the last one"
    );
    pause();
    OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"!")
        .unwrap();
    assert_eq!(atime(&f), a1, "a write must not change atime");
    pause();
    fs::read(&f).unwrap();
    let a2 = atime(&f);
    assert!(
        a2 > a1,
        "relatime: first read after a change: {a1:?} -> {a2:?}"
    );
    let d0 = atime(&d);
    pause();
    assert_eq!(list(&d), 1);
    let d1 = atime(&d);
    assert!(
        d1 > d0,
        "relatime: listing a changed directory: {d0:?} -> {d1:?}"
    );
    pause();
    list(&d);
    assert_eq!(atime(&d), d1, "relatime: listing an unchanged directory");
    fs.remount();
    assert_eq!(atime(&f), a2, "file atime after remount");
    assert_eq!(atime(&d), d1, "directory atime after remount");
    // Cold cache now: the read reaches the daemon, still no update without a change.
    fs::read(&f).unwrap();
    assert_eq!(
        atime(&f),
        a2,
        "relatime: read after remount without a change"
    );
    // A read-only mount never updates atime, even with strictatime.
    fs.unmount();
    let mnt = fs.mountpoint().to_path_buf();
    digimedfs_tests::run_ok(&mut fs.mount_command(fs.key_file(), &mnt, &["ro", "strictatime"]));
    assert!(digimedfs_tests::wait_until(Duration::from_secs(30), || {
        digimedfs_tests::is_mounted(&mnt)
    }));
    fs.mark_mounted();
    pause();
    fs::read(&f).unwrap();
    list(&d);
    assert_eq!(atime(&f), a2, "read-only mount: file atime");
    assert_eq!(atime(&d), d1, "read-only mount: directory atime");
    fs.remount();
    assert_eq!(atime(&f), a2, "file atime after the read-only mount");
    drop(fs);

    // strictatime: every read, also from the page cache, and every listing.
    let mut fs = TestFs::with_options(&["strictatime"]);
    let (f, d) = setup(&fs);
    let mut last = atime(&f);
    for i in 0..3 {
        pause();
        fs::read(&f).unwrap();
        let now = atime(&f);
        assert!(now > last, "strictatime: read {i}: {last:?} -> {now:?}");
        last = now;
    }
    let mut last_d = atime(&d);
    for i in 0..2 {
        pause();
        list(&d);
        let now = atime(&d);
        assert!(
            now > last_d,
            "strictatime: listing {i}: {last_d:?} -> {now:?}"
        );
        last_d = now;
    }
    fs.remount();
    assert_eq!(atime(&f), last, "strictatime: file atime after remount");
    assert_eq!(
        atime(&d),
        last_d,
        "strictatime: directory atime after remount"
    );
    pause();
    fs::read(&f).unwrap();
    assert!(atime(&f) > last, "strictatime: read after remount");
    drop(fs);

    // noatime: neither files nor directories; utimensat still sets atime.
    let mut fs = TestFs::with_options(&["noatime"]);
    let (f, d) = setup(&fs);
    let (a0, d0) = (atime(&f), atime(&d));
    pause();
    fs::read(&f).unwrap();
    list(&d);
    assert_eq!(
        (atime(&f), atime(&d)),
        (a0, d0),
        "noatime: read and listing"
    );
    fs.remount();
    pause();
    fs::read(&f).unwrap();
    assert_eq!(atime(&f), a0, "noatime: read from a cold cache");
    let when = libc::timespec {
        tv_sec: 1_000_000,
        tv_nsec: 5,
    };
    let times = [when, when];
    // SAFETY: a valid path and two timespecs for utimensat to read.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&f).as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat");
    assert_eq!(atime(&f), (1_000_000, 5), "noatime: utimensat sets atime");
    drop(fs);

    // nodiratime: files as relatime, directories never.
    let fs = TestFs::with_options(&["nodiratime"]);
    let (f, d) = setup(&fs);
    let (a0, d0) = (atime(&f), atime(&d));
    pause();
    fs::read(&f).unwrap();
    list(&d);
    assert!(atime(&f) > a0, "nodiratime: file read");
    assert_eq!(atime(&d), d0, "nodiratime: directory listing");
}
