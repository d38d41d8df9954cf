#!/bin/sh
# Builds digimedfs in release mode and installs it system-wide (run as root):
#   /usr/local/bin/digimedfs      the filesystem daemon and key tool; mount(8) finds it for
#                                 type fuse.digimedfs (mount.fuse3 runs the program named after
#                                 the subtype, through /bin/sh, so it must be in PATH)
#   /usr/local/sbin/mkfs.digimed  mkfs(8) finds it for `mkfs -t digimed`
#   /usr/local/sbin/fsck.digimed  fsck(8) finds it for `fsck -t digimed`
#   /usr/local/sbin/fsck.fuse.digimedfs  link to fsck.digimed: what fsck(8) runs for a
#                                 device whose fstab line has type fuse.digimedfs
#   /usr/local/bin/digimed-keyservice  the key service (docs/keyservice.md)
# Needs fuse3 (mount.fuse3, fusermount3): apt-get install fuse3.
#
# Usage: scripts/install.sh [PREFIX]   (default PREFIX=/usr/local; DESTDIR is honoured)
set -eu

PREFIX="${1:-/usr/local}"
DESTDIR="${DESTDIR:-}"
cd "$(dirname "$0")/.."

cargo build --release --locked -p digimedfs -p mkfs-digimed -p fsck-digimed \
    -p digimedfs-keyservice

install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$PREFIX/sbin"
install -m 0755 target/release/digimedfs "$DESTDIR$PREFIX/bin/digimedfs"
install -m 0755 target/release/mkfs-digimed "$DESTDIR$PREFIX/sbin/mkfs.digimed"
install -m 0755 target/release/fsck-digimed "$DESTDIR$PREFIX/sbin/fsck.digimed"
ln -sf fsck.digimed "$DESTDIR$PREFIX/sbin/fsck.fuse.digimedfs"
install -m 0755 target/release/digimed-keyservice "$DESTDIR$PREFIX/bin/digimed-keyservice"
# Key files and logs.
install -d -m 0700 "$DESTDIR/etc/digimedfs"
install -d -m 0750 "$DESTDIR/var/log/digimedfs"

if [ -z "$DESTDIR" ] && ! command -v mount.fuse3 >/dev/null 2>&1 \
    && [ ! -x /sbin/mount.fuse3 ] && [ ! -x /usr/sbin/mount.fuse3 ]; then
    echo "warning: mount.fuse3 not found: install fuse3 for mount -t fuse.digimedfs and fstab" >&2
fi
echo "installed $DESTDIR$PREFIX/bin/digimedfs, $DESTDIR$PREFIX/sbin/mkfs.digimed, $DESTDIR$PREFIX/sbin/fsck.digimed (and fsck.fuse.digimedfs) and $DESTDIR$PREFIX/bin/digimed-keyservice"
