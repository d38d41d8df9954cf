#!/usr/bin/env bash
# Installs the Debian package on a throwaway machine booted with systemd and follows
# docs/operations.md there as written. Checks:
#   - `dpkg -i` runs the maintainer scripts under a running systemd (user, directories, the
#     key service unit left disabled);
#   - "Key service under systemd": its code block, run as it stands (only /path/to/ replaced by
#     the test's CA-signed certificate), starts digimed-keyservice.service: active, enabled,
#     Type=notify with the STATUS= text that `serve` sends with READY=1, running as its user,
#     its lines in `journalctl -u digimed-keyservice`, and GET /v1/health over TLS with the CA;
#   - "With the key service instead of a key file": mkfs.digimed through that service
#     (ks.example replaced by 127.0.0.1, the placeholder TENANT by cardio);
#   - "Mounting at boot (systemd)": its fstab line makes, after `systemctl daemon-reload`, a
#     mnt-proj.mount that requires and is ordered after the key service and
#     network-online.target, needs /srv/backing's mount, is required by remote-fs.target and has
#     a 5 min timeout (x-systemd.mount-timeout); `systemctl start` mounts it (findmnt, a file
#     written and read back at once), its daemon in the unit's control group and in
#     `journalctl -t digimedfs DIGIMEDFS_MOUNTPOINT=/mnt/proj`;
#   - a reboot of the machine: the shutdown unmounted the filesystem cleanly while the key
#     service still ran (the daemon's "closed cleanly" before the service's "stopping", no "did
#     not record epoch" warning: umount waits for the daemon through umount.fuse.digimedfs);
#     at boot the key service was ready before the mount started, which came up with the file;
#     `systemctl stop` unmounts it, the daemon gone when it returns;
#   - "A mount as a systemd service (readiness)": its unit, for the same filesystem given a key
#     file slot ("Key management"), is active with the STATUS= text the daemon sends with
#     READY=1 once mounted, serves the file, and stops cleanly (exit 0);
#   - the mnt-proj.mount unit file of "Mounting at boot (systemd)" in place of the fstab line:
#     enabled (wanted by remote-fs.target), the same dependencies and timeout, mounts, serves
#     the file and stops cleanly; then the key service stops cleanly (exit 0), and fails to
#     start as documented with a wrong credential (exit 1, the reason in its journal) or
#     without its TLS key (243/CREDENTIALS), retried every 5 s;
#   - `dpkg -i` again (an upgrade) restarts the running key service; `dpkg -r` stops and
#     disables it and removes its unit; after `dpkg --purge` too the keys, token, state and
#     user are still there;
#   - nothing changed on this host: no package installed, /etc/passwd, group, shadow and gshadow
#     unchanged, the container, its overlay and bind mount gone.
# Not covered: .automount units (the kernel here may lack autofs).
# The machine: systemd-nspawn --boot on an overlay of a read-only bind mount of / (writes go to
# a tmpfs), with this host's services, its from-source install (/usr/local) and digimedfs
# configuration hidden, and a machine id of its own. Needs root, systemd-nspawn (package
# systemd-container), openssl and curl, and /dev/fuse; .ci/run installs them. On a failure it
# prints the machine's journal and console. DIGIMEDFS_DEB=FILE tests that package instead of
# building one.
# Exits 1 naming every failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }
note() { echo "test-systemd.sh: $*"; }

[[ $(id -u) == 0 ]] || { echo "test-systemd.sh: run as root (it boots a container)" >&2; exit 1; }
for tool in systemd-nspawn nsenter openssl curl dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "test-systemd.sh: $tool not found (apt-get install systemd-container util-linux openssl curl)" >&2
        exit 1
    }
done
[[ -c /dev/fuse ]] || { echo "test-systemd.sh: no /dev/fuse" >&2; exit 1; }

start=$SECONDS
name="digimedfs-systest-$$"
work=$(mktemp -d /tmp/digimedfs-systemd.XXXXXX)
lower="$work/lower" # read-only bind mount of /
upper="$work/upper" # tmpfs: the machine's writes
root="$work/root"   # the overlay the machine runs on
mkdir "$lower" "$upper" "$root"
ns_pid=""
ct_pid=""

# What must be the same on this host afterwards.
host_state() {
    sha256sum /etc/passwd /etc/group /etc/shadow /etc/gshadow 2>&1
    dpkg-query -W -f='${Package} ${Status}\n' digimedfs 2>&1 || true
    ls -d /lib/systemd/system/digimed-keyservice.service /var/lib/digimed-keyservice 2>&1 || true
}
host_before=$(host_state)

stop_machine() {
    [[ -n $ns_pid ]] || return 0
    if kill -0 "$ns_pid" 2>/dev/null; then
        kill -TERM "$ns_pid" 2>/dev/null || true # nspawn: an orderly halt of the machine
        for _ in $(seq 600); do kill -0 "$ns_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$ns_pid" 2>/dev/null || true
    fi
    wait "$ns_pid" 2>/dev/null || true
    ns_pid=""
    ct_pid=""
}

cleanup() {
    local rc=$?
    if ((rc != 0 || failed)) && [[ -n $ct_pid ]]; then
        echo "--- journal of the machine (this boot):" >&2
        in_ct journalctl -b --no-pager | tail -150 >&2 || true
    fi
    stop_machine
    local m left=0
    for m in "$root" "$upper" "$lower"; do
        if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" || true; fi
        if mountpoint -q "$m"; then
            echo "FAIL: $m is still mounted: unmount it, then rm -r $work" >&2
            left=1
        fi
    done
    # Never remove anything while a mount of / could be underneath.
    if ((left == 0)); then rm -rf --one-file-system "$work"; fi
    rm -rf "/run/systemd/nspawn/propagate/$name"
    local after
    after=$(host_state)
    if [[ $after != "$host_before" ]]; then
        echo "FAIL: this host changed: before:" >&2
        echo "$host_before" >&2
        echo "after:" >&2
        echo "$after" >&2
        rc=1
    fi
    ((left == 0)) || rc=1
    exit "$rc"
}
trap cleanup EXIT

# The package.
if [[ -n ${DIGIMEDFS_DEB:-} ]]; then
    cp "$DIGIMEDFS_DEB" "$work/digimedfs.deb"
else
    rm -rf "$target/debian"
    scripts/build-deb.sh --output "$work/digimedfs.deb" >/dev/null
fi
[[ -s $work/digimedfs.deb ]] || { echo "FAIL: no package" >&2; exit 1; }
built=$SECONDS

# The machine's root: this host's /, read-only underneath, writes into a tmpfs.
mount --bind / "$lower"
mount --make-private "$lower"
mount -o remount,bind,ro "$lower"
mount -t tmpfs -o mode=0755,size=2g digimedfs-systest "$upper"
mkdir "$upper/data" "$upper/work"
mount -t overlay -o "lowerdir=$lower,upperdir=$upper/data,workdir=$upper/work" digimedfs-systest "$root"
mountpoint -q "$root" || { echo "FAIL: no overlay on $root" >&2; exit 1; }
# A fresh machine: its own machine id (and journal), no services enabled but remote-fs.target
# (Debian's default), no fstab entries, no digimedfs from source or earlier tests, and no
# digimed-keyservice user.
systemd-id128 new >"$root/etc/machine-id"
find "$root/etc/systemd/system" -path '*.wants/*' ! -path '*/multi-user.target.wants/remote-fs.target' -delete
echo "# fstab of the digimedfs systemd test" >"$root/etc/fstab"
rm -rf "$root"/usr/local/{bin,sbin}/*digimed* "$root"/usr/local/lib/{systemd/system,sysusers.d,tmpfiles.d}/*digimed* \
    "$root"/etc/systemd/system/*digimed* "$root"/etc/{digimedfs,digimed-keyservice,default/digimed-keyservice} \
    "$root"/etc/logrotate.d/digimedfs "$root"/var/lib/digimed-keyservice "$root"/var/log/digimedfs \
    "$root"/srv/backing "$root"/mnt/proj
for f in passwd group shadow gshadow; do sed -i '/^digimed-keyservice:/d' "$root/etc/$f"; done
mkdir -p "$root/var/log/journal" # persistent: the journal of the boot before a reboot
cp "$work/digimedfs.deb" "$root/root/digimedfs.deb"
# The TLS files an administrator gets from a CA: a CA and a server certificate for 127.0.0.1.
tls="$root/root/tls"
mkdir -m 0700 "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=digimedfs test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 2 \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n') \
    -out "$tls/server.pem" 2>/dev/null

# Runs a command on the machine as root, with a login-like environment.
in_ct() {
    nsenter --target "$ct_pid" --all -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
show() { in_ct systemctl show --value -p "$1" "$2" 2>&1 || true; }

boot() {
    systemd-nspawn --quiet --directory="$root" --machine="$name" --private-network --register=no \
        --keep-unit --bind=/dev/fuse --console=pipe --boot </dev/null >>"$work/console.log" 2>&1 &
    ns_pid=$!
    ct_pid=""
    for _ in $(seq 300); do
        ct_pid=$(pgrep -P "$ns_pid" -x systemd || true)
        [[ -n $ct_pid ]] && break
        kill -0 "$ns_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $ct_pid ]] || { echo "FAIL: the machine did not boot:" >&2; tail -30 "$work/console.log" >&2; exit 1; }
    # PID 1 answers on its bus once it has set it up; then wait for the boot to finish.
    local state=""
    for _ in $(seq 300); do
        state=$(in_ct timeout 120 systemctl is-system-running --wait 2>&1 || true)
        [[ $state == *"Failed to connect to bus"* ]] || break
        sleep 0.1
    done
    if [[ $state != running ]]; then
        note "machine $name is $state after boot: $(in_ct systemctl list-units --failed --plain --no-legend | tr '\n' ';')"
    fi
}

poweroff() {
    if ((failed)); then
        echo "--- journal of the machine (this boot):" >&2
        in_ct journalctl -b --no-pager | tail -150 >&2 || true
    fi
    in_ct systemctl poweroff --no-block
    for _ in $(seq 1200); do kill -0 "$ns_pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$ns_pid" 2>/dev/null; then
        fail "the machine did not power off within 120 s"
        stop_machine
        return
    fi
    local rc=0
    wait "$ns_pid" || rc=$?
    ns_pid=""
    ct_pid=""
    ((rc == 0)) || fail "systemd-nspawn exited $rc after poweroff"
}

# Prints the fenced code block number N of the section "### HEADING" of docs/operations.md.
doc_block() {
    awk -v h="### $1" -v n="$2" '
        $0 == h { sec = 1; next }
        sec && !inb && /^##/ { exit }
        sec && /^```/ { if (inb) { inb = 0; if (k == n) exit } else { k++; inb = 1 }; next }
        sec && inb && k == n { print }
    ' docs/operations.md
}

# Boot 1: install, set up the key service and the mount as the documentation says.
boot
booted=$SECONDS
note "machine $name booted in $((booted - built)) s"
if ! out=$(in_ct dpkg -i /root/digimedfs.deb 2>&1); then
    fail "dpkg -i digimedfs.deb: $out"
fi
in_ct getent passwd digimed-keyservice >/dev/null || fail "dpkg -i made no digimed-keyservice user"
[[ $(in_ct stat -c '%a %U:%G' /var/lib/digimed-keyservice 2>&1) == "700 digimed-keyservice:digimed-keyservice" ]] ||
    fail "/var/lib/digimed-keyservice after dpkg -i: $(in_ct stat -c '%a %U:%G' /var/lib/digimed-keyservice 2>&1)"
[[ $(show UnitFileState digimed-keyservice.service) == disabled ]] ||
    fail "digimed-keyservice.service after dpkg -i: $(show UnitFileState digimed-keyservice.service), not disabled"

setup=$(doc_block "Key service under systemd" 1)
[[ -n $setup ]] || fail 'no code block under "Key service under systemd" in docs/operations.md'
setup=${setup//\/path\/to\//\/root\/tls\/}
if ! out=$(in_ct sh -exc "$setup" 2>&1); then
    fail "the commands of \"Key service under systemd\" failed: $out"
fi
grep -qF 'listening on 127.0.0.1:8443 (TLS)' <<<"$out" ||
    fail "systemctl status digimed-keyservice does not say \"listening on 127.0.0.1:8443 (TLS)\": $out"
ks=digimed-keyservice.service
[[ $(show ActiveState $ks)/$(show SubState $ks) == active/running ]] ||
    fail "$ks is $(show ActiveState $ks)/$(show SubState $ks)"
in_ct systemctl is-active --quiet digimed-keyservice || fail "systemctl is-active digimed-keyservice"
[[ $(show Type $ks) == notify ]] || fail "$ks Type=$(show Type $ks)"
# Only sd_notify sets a status text; it comes with READY=1.
[[ $(show StatusText $ks) == "listening on 127.0.0.1:8443 (TLS)" ]] ||
    fail "$ks StatusText (sent with READY=1) is \"$(show StatusText $ks)\""
[[ $(show UnitFileState $ks) == enabled ]] || fail "$ks not enabled after the documented commands"
main_pid=$(show MainPID $ks)
[[ $(in_ct ps -o user= -p "$main_pid" 2>&1) == digimed-keyservice ]] ||
    fail "$ks main process $main_pid runs as $(in_ct ps -o user= -p "$main_pid" 2>&1)"
journal=$(in_ct journalctl -u digimed-keyservice --no-pager -o cat 2>&1 || true)
grep -q 'key service listening (TLS)' <<<"$journal" ||
    fail "journalctl -u digimed-keyservice lacks \"key service listening (TLS)\": $journal"
health=$(in_ct curl -sS --cacert /etc/digimedfs/ks-ca.pem https://127.0.0.1:8443/v1/health 2>&1 || true)
[[ $health == *'"status":"ok"'* || $health == *'"status": "ok"'* ]] ||
    fail "GET https://127.0.0.1:8443/v1/health with the CA: $health"

mkfs=$(doc_block "With the key service instead of a key file" 1)
mkfs=${mkfs//https:\/\/ks.example:8443/https:\/\/127.0.0.1:8443}
mkfs=${mkfs//TENANT/cardio}
[[ $mkfs == *mkfs.digimed* ]] || fail 'no mkfs.digimed in "With the key service instead of a key file"'
if ! out=$(in_ct sh -exc "$mkfs" 2>&1); then
    fail "mkfs.digimed through the key service, as documented: $out"
fi
fstab=$(doc_block "Mounting at boot (systemd)" 1)
[[ $fstab == *fuse.digimedfs*x-systemd.requires=digimed-keyservice.service* ]] ||
    fail "no fstab line with x-systemd.requires=digimed-keyservice.service under \"Mounting at boot (systemd)\": $fstab"
in_ct sh -c 'cat >>/etc/fstab' <<<"$fstab"
in_ct systemctl daemon-reload
mu=mnt-proj.mount
[[ $(show SourcePath $mu) == /etc/fstab && $(show FragmentPath $mu) == /run/systemd/generator/mnt-proj.mount ]] ||
    fail "$mu is not systemd-fstab-generator's from /etc/fstab: SourcePath=$(show SourcePath $mu) FragmentPath=$(show FragmentPath $mu)"
has() { # PROPERTY UNIT WORD: the unit's property lists WORD
    local v
    v=$(show "$1" "$2")
    [[ " $v " == *" $3 "* ]] || fail "$2 $1 lacks $3: $v"
}
has Requires $mu digimed-keyservice.service
has After $mu digimed-keyservice.service
has After $mu network-online.target
has Wants $mu network-online.target
has RequiresMountsFor $mu /srv/backing
has Before $mu remote-fs.target
has Requires remote-fs.target $mu
[[ $(show TimeoutUSec $mu) == 5min ]] || fail "$mu TimeoutUSec=$(show TimeoutUSec $mu), not 5min (x-systemd.mount-timeout=5min)"
if ! out=$(in_ct sh -exc 'systemctl daemon-reload && systemctl start mnt-proj.mount' 2>&1); then
    fail "systemctl start mnt-proj.mount: $out"
fi
check_mounted() { # WHEN
    [[ $(show ActiveState $mu) == active ]] || fail "$1: $mu is $(show ActiveState $mu)"
    local fs
    fs=$(in_ct findmnt -n -o FSTYPE,SOURCE /mnt/proj 2>&1 || true)
    [[ $fs == "fuse.digimedfs /srv/backing" ]] || fail "$1: findmnt /mnt/proj: $fs"
    local pid unit
    pid=$(in_ct pgrep -x digimedfs | head -1 || true)
    unit=$(in_ct ps -o unit= -p "${pid:-0}" 2>&1 || true)
    [[ $unit == "$mu" ]] || fail "$1: the mount's daemon (pid ${pid:-none}) is in unit \"$unit\", not $mu"
}
check_mounted "after systemctl start"
# mount(8) returned only once the filesystem was live: use it at once.
in_ct sh -c 'echo "written at the first boot" >/mnt/proj/hello' || fail "writing /mnt/proj/hello"
[[ $(in_ct cat /mnt/proj/hello 2>&1) == "written at the first boot" ]] || fail "reading /mnt/proj/hello back"
in_ct journalctl -t digimedfs DIGIMEDFS_MOUNTPOINT=/mnt/proj --no-pager -o cat | grep -q . ||
    fail "journalctl -t digimedfs DIGIMEDFS_MOUNTPOINT=/mnt/proj is empty"
poweroff
first_boot_done=$SECONDS

# Boot 2: the key service and the mount come up at boot; the shutdown was clean.
boot
prev=$(in_ct journalctl -b -1 -t digimedfs --no-pager -o cat 2>&1 || true)
grep -q 'filesystem closed cleanly' <<<"$prev" ||
    fail "the shutdown did not close the filesystem cleanly: $prev"
grep -q 'did not record epoch' <<<"$prev" &&
    fail "at shutdown the key service was gone before the mount recorded its epoch: $prev"
# The unmount at shutdown waited for the daemon (umount.fuse.digimedfs): the key service was
# stopped only after the filesystem was closed.
order=$(in_ct journalctl -b -1 -t digimedfs -t digimed-keyservice --no-pager -o cat 2>&1 |
    grep -E '^(filesystem closed cleanly|key service stopping)$' | tr '\n' ';' || true)
[[ $order == "filesystem closed cleanly;key service stopping;" ]] ||
    fail "at shutdown the key service did not stop after the mount closed the filesystem: $order"
[[ $(show ActiveState $ks) == active ]] || fail "after reboot: $ks is $(show ActiveState $ks)"
check_mounted "after reboot"
ready=$(show ActiveEnterTimestampMonotonic $ks)
mounting=$(show InactiveExitTimestampMonotonic $mu)
((ready > 0 && mounting >= ready)) ||
    fail "at boot $mu started ($mounting us) before $ks was ready ($ready us)"
[[ $(in_ct cat /mnt/proj/hello 2>&1) == "written at the first boot" ]] || fail "after reboot: /mnt/proj/hello"
in_ct systemctl stop mnt-proj.mount || fail "systemctl stop mnt-proj.mount"
in_ct findmnt /mnt/proj >/dev/null && fail "/mnt/proj still mounted after systemctl stop mnt-proj.mount"
in_ct pgrep -x digimedfs >/dev/null && fail "a digimedfs process is left after systemctl stop mnt-proj.mount"
in_ct journalctl -b -t digimedfs --no-pager -o cat | grep -q 'filesystem closed cleanly' ||
    fail "systemctl stop mnt-proj.mount: no \"filesystem closed cleanly\" in the journal"

# "A mount as a systemd service (readiness)": its unit as it stands, for the same filesystem
# given a key file slot too ("Key management"): a Type=notify service that is active only
# once the daemon sent READY=1 with its status text, and stops cleanly on SIGTERM.
if ! out=$(in_ct sh -exc 'digimedfs keygen /etc/digimedfs/proj.key &&
    digimedfs key add --keyservice https://127.0.0.1:8443 --tenant cardio \
        --token-file /etc/digimedfs/cardio.token --ca-file /etc/digimedfs/ks-ca.pem \
        --new-key-file /etc/digimedfs/proj.key /srv/backing' 2>&1); then
    fail "a key file slot for /srv/backing: $out"
fi
unit=$(doc_block "A mount as a systemd service (readiness)" 1)
[[ $unit == *"[Service]"*ExecStart=* ]] || fail "no unit under \"A mount as a systemd service (readiness)\": $unit"
in_ct sh -c 'cat >/etc/systemd/system/digimedfs-proj.service' <<<"$unit"
ms=digimedfs-proj.service
if ! out=$(in_ct sh -exc "systemctl daemon-reload && systemctl start $ms" 2>&1); then
    fail "systemctl start $ms: $out"
    in_ct systemctl status --no-pager $ms >&2 || true
fi
[[ $(show ActiveState $ms)/$(show SubState $ms) == active/running ]] ||
    fail "$ms is $(show ActiveState $ms)/$(show SubState $ms)"
[[ $(show StatusText $ms) == "serving /srv/backing on /mnt/proj" ]] ||
    fail "$ms StatusText (sent with READY=1) is \"$(show StatusText $ms)\""
[[ $(in_ct findmnt -n -o FSTYPE /mnt/proj 2>&1) == fuse.digimedfs ]] || fail "$ms: /mnt/proj not mounted"
[[ $(in_ct cat /mnt/proj/hello 2>&1) == "written at the first boot" ]] || fail "$ms: /mnt/proj/hello"
in_ct journalctl -u $ms --no-pager -o cat | grep -q . || fail "journalctl -u $ms is empty"
in_ct systemctl stop $ms || fail "systemctl stop $ms"
[[ $(show Result $ms)/$(show ExecMainStatus $ms) == success/0 ]] ||
    fail "$ms stopped with Result=$(show Result $ms) ExecMainStatus=$(show ExecMainStatus $ms)"
in_ct findmnt /mnt/proj >/dev/null && fail "/mnt/proj still mounted after systemctl stop $ms"
in_ct journalctl -u $ms --no-pager -o cat | grep -q 'filesystem closed cleanly' ||
    fail "systemctl stop $ms: no \"filesystem closed cleanly\" in journalctl -u $ms"

# "Mounting at boot (systemd)", the same as a unit file: its mnt-proj.mount as it stands (with
# the key file slot above), in place of the fstab line, enabled and started.
in_ct sed -i '/fuse\.digimedfs/d' /etc/fstab
unit=$(doc_block "Mounting at boot (systemd)" 2)
[[ $unit == *"[Mount]"*Where=/mnt/proj* ]] || fail "no mnt-proj.mount under \"Mounting at boot (systemd)\": $unit"
in_ct sh -c 'cat >/etc/systemd/system/mnt-proj.mount' <<<"$unit"
closed=$(in_ct journalctl -b -t digimedfs --no-pager -o cat | grep -c 'filesystem closed cleanly' || true)
if ! out=$(in_ct sh -exc 'systemctl daemon-reload && systemctl enable --now mnt-proj.mount' 2>&1); then
    fail "systemctl enable --now mnt-proj.mount (unit file): $out"
fi
[[ $(show FragmentPath $mu) == /etc/systemd/system/mnt-proj.mount ]] ||
    fail "$mu from $(show FragmentPath $mu), not the unit file"
has Requires $mu digimed-keyservice.service
has After $mu digimed-keyservice.service
has RequiresMountsFor $mu /srv/backing
has Wants remote-fs.target $mu
[[ $(show TimeoutUSec $mu) == 5min ]] || fail "$mu (unit file) TimeoutUSec=$(show TimeoutUSec $mu)"
check_mounted "the unit file, started"
[[ $(in_ct cat /mnt/proj/hello 2>&1) == "written at the first boot" ]] || fail "the unit file: /mnt/proj/hello"
in_ct systemctl stop mnt-proj.mount || fail "systemctl stop mnt-proj.mount (unit file)"
in_ct findmnt /mnt/proj >/dev/null && fail "/mnt/proj still mounted after systemctl stop mnt-proj.mount (unit file)"
in_ct pgrep -x digimedfs >/dev/null && fail "a digimedfs process is left after systemctl stop mnt-proj.mount (unit file)"
(($(in_ct journalctl -b -t digimedfs --no-pager -o cat | grep -c 'filesystem closed cleanly' || true) == closed + 1)) ||
    fail "systemctl stop mnt-proj.mount (unit file): no \"filesystem closed cleanly\" in the journal"

# An upgrade (the package installed again) restarts the running key service (postinst).
pid_before=$(show MainPID $ks)
if ! out=$(in_ct dpkg -i /root/digimedfs.deb 2>&1); then fail "dpkg -i again (upgrade): $out"; fi
[[ $(show ActiveState $ks) == active && $(show MainPID $ks) != "$pid_before" ]] ||
    fail "after an upgrade $ks is $(show ActiveState $ks) with main pid $(show MainPID $ks) (before: $pid_before), not restarted"

in_ct systemctl stop digimed-keyservice || fail "systemctl stop digimed-keyservice"
[[ $(show Result $ks)/$(show ExecMainStatus $ks) == success/0 ]] ||
    fail "$ks stopped with Result=$(show Result $ks) ExecMainStatus=$(show ExecMainStatus $ks)"

# "Key service under systemd": a wrong credential makes it exit 1 with the reason in the
# journal, a missing file keeps systemd from starting it; both are retried every 5 s.
start_fails() { # WHAT STATUS JOURNAL-TEXT
    in_ct systemctl start digimed-keyservice >/dev/null 2>&1 && fail "$1: systemctl start digimed-keyservice succeeded"
    [[ $(show Result $ks)/$(show ExecMainStatus $ks) == "exit-code/$2" ]] ||
        fail "$1: $ks Result=$(show Result $ks) ExecMainStatus=$(show ExecMainStatus $ks), not exit-code/$2"
    local retry
    retry="$(show Restart $ks) $(show RestartUSec $ks) $(show StartLimitBurst $ks) $(show StartLimitIntervalUSec $ks)"
    [[ $retry == "on-failure 5s 5 5min" ]] ||
        fail "$1: $ks Restart RestartUSec StartLimitBurst StartLimitIntervalUSec: $retry, not on-failure 5s 5 5min"
    in_ct journalctl -u digimed-keyservice --no-pager -o cat | grep -qF "$3" ||
        fail "$1: no \"$3\" in journalctl -u digimed-keyservice"
    in_ct systemctl stop digimed-keyservice || true
    in_ct systemctl reset-failed digimed-keyservice || true
}
in_ct sh -c 'cd /etc/digimed-keyservice && cp -p credential credential.good && head -c 32 /dev/urandom >credential'
start_fails "a wrong credential" 1 "credential does not unseal /var/lib/digimed-keyservice"
in_ct sh -c 'cd /etc/digimed-keyservice && mv credential.good credential && mv server.key server.key.away'
start_fails "no server.key" 243 "Failed to set up credentials"
in_ct mv /etc/digimed-keyservice/server.key.away /etc/digimed-keyservice/server.key

# Removing, then purging the package: the service stopped and disabled, its unit gone, keys,
# state and the user kept ("Install").
in_ct systemctl start digimed-keyservice || fail "systemctl start digimed-keyservice (before dpkg -r)"
if ! out=$(in_ct dpkg -r digimedfs 2>&1); then fail "dpkg -r digimedfs: $out"; fi
[[ $(show ActiveState $ks)/$(show LoadState $ks) == inactive/not-found ]] ||
    fail "after dpkg -r: $ks is $(show ActiveState $ks)/$(show LoadState $ks), not inactive/not-found"
in_ct test -e /etc/systemd/system/multi-user.target.wants/digimed-keyservice.service &&
    fail "after dpkg -r: digimed-keyservice.service still enabled"
if ! out=$(in_ct dpkg --purge digimedfs 2>&1); then fail "dpkg --purge digimedfs: $out"; fi
for f in /etc/digimed-keyservice/credential /etc/digimed-keyservice/server.key /etc/digimedfs/cardio.token \
    /etc/digimedfs/proj.key /var/lib/digimed-keyservice/registry.json; do
    in_ct test -s "$f" || fail "after dpkg --purge: $f is gone"
done
in_ct getent passwd digimed-keyservice >/dev/null || fail "after dpkg --purge: the user digimed-keyservice is gone"
poweroff
end=$SECONDS

if ((failed)); then
    echo "--- console of the machine:" >&2
    tail -40 "$work/console.log" >&2
    exit 1
fi
note "all checks passed (package $((built - start)) s, first boot $((first_boot_done - built)) s, reboot $((end - first_boot_done)) s)"
