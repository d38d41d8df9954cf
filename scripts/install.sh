#!/bin/sh
# Builds digimedfs in release mode and installs it system-wide from source (run as root):
#   PREFIX/bin/digimedfs      the filesystem daemon and key tool; mount(8) finds it for
#                             type fuse.digimedfs (mount.fuse3 runs the program named after
#                             the subtype, through /bin/sh, so it must be in PATH)
#   PREFIX/sbin/mkfs.digimed  mkfs(8) finds it for `mkfs -t digimed`
#   PREFIX/sbin/fsck.digimed  fsck(8) finds it for `fsck -t digimed`
#   PREFIX/sbin/fsck.fuse.digimedfs  link to fsck.digimed: what fsck(8) runs for a
#                             device whose fstab line has type fuse.digimedfs
#   PREFIX/sbin/digimed-keyservice  the key service (docs/keyservice.md)
#   PREFIX/share/man/man{1,8}/       a man page for each command and subcommand
#   PREFIX/share/{bash-completion/completions,zsh/site-functions,fish/vendor_completions.d}/
#   /etc/systemd/system/digimed-keyservice.service  (not enabled; docs/operations.md)
#   /etc/sysusers.d/digimedfs.conf, /etc/tmpfiles.d/digimedfs.conf  its user and directories:
#   /etc/digimedfs (0700), /var/log/digimedfs, /etc/digimed-keyservice, /var/lib/digimed-keyservice
#   /etc/logrotate.d/digimedfs  weekly rotation of /var/log/digimedfs/*.log
#   /sbin/umount.fuse.digimedfs  umount(8) runs it (from /sbin only): unmounting waits until the
#                             mount's process has written back and exited (docs/operations.md)
# The Debian package (scripts/build-deb.sh) installs the same under /usr.
# Needs fuse3 (mount.fuse3, fusermount3): apt-get install fuse3.
#
# Usage: scripts/install.sh [PREFIX]   (default PREFIX=/usr/local; DESTDIR is honoured: then
# nothing is created outside DESTDIR and no user is added)
set -eu

PREFIX="${1:-/usr/local}"
DESTDIR="${DESTDIR:-}"
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --release --locked -p digimedfs -p mkfs-digimed -p fsck-digimed \
    -p digimedfs-keyservice -p digimedfs-mangen
assets="$target/release/assets"
rm -rf "$assets"
"$target/release/digimedfs-mangen" "$assets" >/dev/null

install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$PREFIX/sbin"
install -m 0755 "$target/release/digimedfs" "$DESTDIR$PREFIX/bin/digimedfs"
install -m 0755 "$target/release/mkfs-digimed" "$DESTDIR$PREFIX/sbin/mkfs.digimed"
install -m 0755 "$target/release/fsck-digimed" "$DESTDIR$PREFIX/sbin/fsck.digimed"
ln -sf fsck.digimed "$DESTDIR$PREFIX/sbin/fsck.fuse.digimedfs"
install -m 0755 "$target/release/digimed-keyservice" "$DESTDIR$PREFIX/sbin/digimed-keyservice"
for section in 1 8; do
    install -d "$DESTDIR$PREFIX/share/man/man$section"
    install -m 0644 "$assets/man/man$section/"* "$DESTDIR$PREFIX/share/man/man$section/"
done
install -d "$DESTDIR$PREFIX/share/bash-completion/completions" \
    "$DESTDIR$PREFIX/share/zsh/site-functions" "$DESTDIR$PREFIX/share/fish/vendor_completions.d"
install -m 0644 "$assets/completions/bash/"* "$DESTDIR$PREFIX/share/bash-completion/completions/"
install -m 0644 "$assets/completions/zsh/"* "$DESTDIR$PREFIX/share/zsh/site-functions/"
install -m 0644 "$assets/completions/fish/"* "$DESTDIR$PREFIX/share/fish/vendor_completions.d/"

# The key service unit (running PREFIX's binary), its user and directories.
install -d "$DESTDIR/etc/systemd/system" "$DESTDIR/etc/sysusers.d" "$DESTDIR/etc/tmpfiles.d"
sed "s|^ExecStart=/usr/sbin/digimed-keyservice |ExecStart=$PREFIX/sbin/digimed-keyservice |" \
    fs/packaging/digimed-keyservice.service >"$DESTDIR/etc/systemd/system/digimed-keyservice.service"
chmod 0644 "$DESTDIR/etc/systemd/system/digimed-keyservice.service"
install -m 0644 fs/packaging/digimedfs.sysusers "$DESTDIR/etc/sysusers.d/digimedfs.conf"
install -m 0644 fs/packaging/digimedfs.tmpfiles "$DESTDIR/etc/tmpfiles.d/digimedfs.conf"
# umount(8) looks for its helpers in /sbin only, whatever PREFIX is.
install -d "$DESTDIR/sbin"
install -m 0755 fs/packaging/umount.fuse.digimedfs "$DESTDIR/sbin/umount.fuse.digimedfs"
# Weekly rotation of the mounts' log files (where they do not log to the journal).
install -d "$DESTDIR/etc/logrotate.d"
install -m 0644 fs/packaging/digimedfs.logrotate "$DESTDIR/etc/logrotate.d/digimedfs"
# Key files and logs (also without the user and systemd below).
install -d -m 0700 "$DESTDIR/etc/digimedfs"
install -d -m 0750 "$DESTDIR/var/log/digimedfs"
if [ -z "$DESTDIR" ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers digimedfs.conf
    elif ! getent passwd digimed-keyservice >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/digimed-keyservice \
            --no-create-home --shell /usr/sbin/nologin \
            --comment "digimedfs key service" digimed-keyservice
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create digimedfs.conf
    else
        install -d -m 0750 -o root -g digimed-keyservice /etc/digimed-keyservice
        install -d -m 0700 -o digimed-keyservice -g digimed-keyservice /var/lib/digimed-keyservice
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi

if [ -z "$DESTDIR" ] && ! command -v mount.fuse3 >/dev/null 2>&1 \
    && [ ! -x /sbin/mount.fuse3 ] && [ ! -x /usr/sbin/mount.fuse3 ]; then
    echo "warning: mount.fuse3 not found: install fuse3 for mount -t fuse.digimedfs and fstab" >&2
fi
echo "installed $DESTDIR$PREFIX/bin/digimedfs, $DESTDIR$PREFIX/sbin/mkfs.digimed, $DESTDIR$PREFIX/sbin/fsck.digimed (and fsck.fuse.digimedfs), $DESTDIR$PREFIX/sbin/digimed-keyservice, their man pages and completions, digimed-keyservice.service and /etc/logrotate.d/digimedfs"
