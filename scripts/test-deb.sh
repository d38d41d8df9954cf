#!/usr/bin/env bash
# Builds the Debian package (scripts/build-deb.sh) and checks it without installing it on this
# machine: its control data (name, Depends on fuse3, maintainer scripts that parse), the file
# list and modes of `dpkg-deb -c`, and a throwaway root made with `dpkg-deb -x` in which every
# binary runs (--version), the umount helper parses, every man page renders without warnings
# (man -l), each completion parses in its shell, sysusers.d/tmpfiles.d make the user and directories with the right modes
# and owners (systemd-sysusers/systemd-tmpfiles --root), the key service unit passes
# `systemd-analyze verify`, and the logrotate configuration parses (`logrotate -d`) and rotates
# a log that a process keeps open for appending. Needs cargo-deb, dpkg-deb, man-db, systemd and
# logrotate; .ci/run installs them.
# Exits 1 naming every failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

for tool in dpkg-deb man systemd-analyze systemd-sysusers systemd-tmpfiles logrotate; do
    command -v "$tool" >/dev/null 2>&1 || { echo "test-deb.sh: $tool not found (apt-get install dpkg man-db systemd logrotate)" >&2; exit 1; }
done

rm -rf "$target/debian"
scripts/build-deb.sh --output "$work/digimedfs.deb" >/dev/null
deb="$work/digimedfs.deb"
[[ -s $deb ]] || { echo "FAIL: no package at $deb" >&2; exit 1; }

# Control data.
[[ $(dpkg-deb -f "$deb" Package) == digimedfs ]] || fail "Package is not digimedfs"
dpkg-deb -f "$deb" Depends | grep -Eq '(^|, )fuse3($|[ ,])' || fail "Depends lacks fuse3: $(dpkg-deb -f "$deb" Depends)"
mkdir "$work/control"
dpkg-deb -e "$deb" "$work/control"
for s in postinst prerm postrm; do
    [[ -x $work/control/$s ]] || fail "maintainer script $s missing or not executable"
    sh -n "$work/control/$s" || fail "maintainer script $s does not parse"
done

# File list and modes, as dpkg-deb -c prints them ("-rwxr-xr-x root/root ... ./usr/bin/x").
# (cargo-deb writes owner root as 0/0.)
dpkg-deb -c "$deb" | awk '{sub("^root/root$", "0/0", $2); print $1, $2, $6}' >"$work/list"
expect() { # MODE PATH
    grep -qxF -e "$1 0/0 ./$2" "$work/list" || fail "not in the package as $1 root:root: /$2"
}
expect -rwxr-xr-x usr/bin/digimedfs
expect -rwxr-xr-x usr/sbin/mkfs.digimed
expect -rwxr-xr-x usr/sbin/fsck.digimed
expect -rwxr-xr-x usr/sbin/digimed-keyservice
expect -rwxr-xr-x usr/sbin/umount.fuse.digimedfs
dpkg-deb -c "$deb" >"$work/raw-list"
grep -q '^l.* \./usr/sbin/fsck\.fuse\.digimedfs -> fsck\.digimed$' "$work/raw-list" ||
    fail "/usr/sbin/fsck.fuse.digimedfs is not a link to fsck.digimed"
for page in man1/digimedfs.1 man1/digimedfs-mount.1 man1/digimedfs-backup-begin.1 \
    man1/digimedfs-info.1 man1/digimedfs-tune.1 \
    man8/mkfs.digimed.8 man8/fsck.digimed.8 man8/digimed-keyservice.8 \
    man8/digimed-keyservice-serve.8 man8/digimed-keyservice-token-issue-admin.8; do
    expect -rw-r--r-- "usr/share/man/$page.gz"
done
for bin in digimedfs mkfs.digimed fsck.digimed digimed-keyservice; do
    expect -rw-r--r-- "usr/share/bash-completion/completions/$bin"
    expect -rw-r--r-- "usr/share/zsh/vendor-completions/_$bin"
    expect -rw-r--r-- "usr/share/fish/vendor_completions.d/$bin.fish"
done
expect -rw-r--r-- lib/systemd/system/digimed-keyservice.service
expect -rw-r--r-- usr/lib/sysusers.d/digimedfs.conf
expect -rw-r--r-- usr/lib/tmpfiles.d/digimedfs.conf
expect -rw-r--r-- etc/logrotate.d/digimedfs
grep -qxF /etc/logrotate.d/digimedfs "$work/control/conffiles" 2>/dev/null ||
    fail "/etc/logrotate.d/digimedfs is not a conffile"
# Man pages only compressed; nothing outside the FHS places above.
grep -E '\./usr/share/man/.*[18]$' "$work/list" && fail "uncompressed man pages"
awk '{print $3}' "$work/list" | grep -vE '^\./$|^\./(usr|usr/lib|usr/share|lib|lib/systemd|etc|etc/logrotate\.d)/$|^\./usr/(bin|sbin)/|^\./usr/share/(man|doc|bash-completion|zsh|fish)/|^\./usr/lib/(sysusers|tmpfiles)\.d/|^\./lib/systemd/system/|^\./etc/logrotate\.d/digimedfs$' \
    && fail "files outside the expected directories"

# A throwaway root.
root="$work/root"
dpkg-deb -x "$deb" "$root"
for bin in usr/bin/digimedfs usr/sbin/mkfs.digimed usr/sbin/fsck.digimed usr/sbin/digimed-keyservice; do
    "$root/$bin" --version >/dev/null || fail "$bin --version"
    if command -v readelf >/dev/null && readelf -S "$root/$bin" | grep -Eq '\.debug_(info|line) '; then
        fail "$bin is not stripped"
    fi
done
n=0
sh -n "$root/usr/sbin/umount.fuse.digimedfs" || fail "umount.fuse.digimedfs does not parse"
for page in "$root"/usr/share/man/man[18]/*.gz; do
    n=$((n + 1))
    err=$(MANWIDTH=80 man -l "$page" 2>&1 >/dev/null) || fail "man -l $page failed"
    [[ -z $err ]] || fail "man -l ${page#"$root"}: $err"
done
((n >= 30)) || fail "only $n man pages"
for f in "$root"/usr/share/bash-completion/completions/*; do bash -n "$f" || fail "bash -n $f"; done
if command -v zsh >/dev/null; then
    for f in "$root"/usr/share/zsh/vendor-completions/*; do zsh -n "$f" || fail "zsh -n $f"; done
fi
if command -v fish >/dev/null; then
    for f in "$root"/usr/share/fish/vendor_completions.d/*; do fish -n "$f" || fail "fish -n $f"; done
fi
# The user and directories, as postinst makes them, inside the throwaway root.
mkdir -p "$root/etc"
systemd-sysusers --root="$root" digimedfs.conf >/dev/null 2>&1 || fail "systemd-sysusers --root"
ks_ids=$(awk -F: '$1 == "digimed-keyservice" {print $3 ":" $4}' "$root/etc/passwd")
[[ -n $ks_ids ]] || fail "no digimed-keyservice user from sysusers.d"
systemd-tmpfiles --root="$root" --create digimedfs.conf || fail "systemd-tmpfiles --root"
dir_is() { # MODE OWNER:GROUP PATH
    local got
    got=$(stat -c '%a %u:%g' "$root$3" 2>&1)
    [[ $got == "$1 $2" ]] || fail "$3: want $1 $2, got $got"
}
dir_is 700 0:0 /etc/digimedfs
dir_is 750 "0:${ks_ids#*:}" /etc/digimed-keyservice
dir_is 700 "$ks_ids" /var/lib/digimed-keyservice
dir_is 750 0:0 /var/log/digimedfs
# The unit against this root (its ExecStart binary) and the system's units (targets it names);
# its Documentation= man pages from the package.
cp -an /lib/systemd/system/. "$root/lib/systemd/system/"
if ! out=$(MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" \
    /lib/systemd/system/digimed-keyservice.service 2>&1) || [[ -n $out ]]; then
    fail "systemd-analyze verify: $out"
fi

# The logrotate configuration: it parses, names the mounts' log files, and rotating a copy of it
# (paths moved into $work) keeps a log that a process holds open for appending, as a mount's
# background process does, usable: the old lines compressed, the new ones at the start of the
# emptied file (copytruncate).
lr="$work/logrotate"
mkdir -p "$lr/log"
conf="$root/etc/logrotate.d/digimedfs"
if ! out=$(logrotate -d --state "$lr/state" "$conf" 2>&1) || grep -qi 'error' <<<"$out"; then
    fail "logrotate -d $conf: $out"
fi
grep -q '^/var/log/digimedfs/\*\.log {' "$conf" || fail "$conf does not rotate /var/log/digimedfs/*.log"
sed "s|^/var/log/digimedfs/|$lr/log/|" "$conf" >"$lr/conf"
exec 7>>"$lr/log/mnt-proj.log"
echo "before the rotation" >&7
logrotate -f --state "$lr/state" "$lr/conf" || fail "logrotate -f (the package's configuration on a copy)"
echo "after the rotation" >&7
exec 7>&-
[[ $(zcat "$lr/log/mnt-proj.log.1.gz" 2>&1) == "before the rotation" ]] ||
    fail "no compressed copy of the rotated log: $(ls "$lr/log")"
cmp -s "$lr/log/mnt-proj.log" <(echo "after the rotation") ||
    fail "the log held open for appending after the rotation: $(head -c 200 "$lr/log/mnt-proj.log" | od -An -c | head -3)"

if ((failed)); then exit 1; fi
echo "test-deb.sh: $(basename "$deb"): $(wc -l <"$work/list") entries, $n man pages, all checks passed"
