#!/usr/bin/env bash
# The main job on a fresh Debian machine with Rust: install what is needed, build, start a local
# key service (demo CA, tenant "demo", a token), create a demo project filesystem whose master key
# is wrapped by the key service, mount it, and show that it works (and that the key service
# audited the unwrap).
#
#   scripts/demo.sh              # through the key service (default)
#   scripts/demo.sh --key-file   # single-machine default: a local key file, no key service
#
# Everything lives under $DIGIMEDFS_DEMO_DIR (default /var/tmp/digimedfs-demo); the key service
# listens on 127.0.0.1:$DIGIMEDFS_DEMO_KS_PORT (default 8443). Re-running reuses what exists
# (state, token, filesystem, running service, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=keyservice
case "${1:-}" in
    "") ;;
    --key-file) mode=keyfile ;;
    *) echo "usage: $0 [--key-file]" >&2; exit 2 ;;
esac
export DEBIAN_FRONTEND=noninteractive
if ! command -v fusermount3 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --workspace --bins
bin=$PWD/target/release
demo=${DIGIMEDFS_DEMO_DIR:-/var/tmp/digimedfs-demo}
port=${DIGIMEDFS_DEMO_KS_PORT:-8443}
mnt=$demo/mnt
mkdir -p "$mnt"
chmod 0700 "$demo"

ks=$demo/ks                  # key service state directory
cred=$demo/ks.credential     # unseals the key service root secret (generated, 0600)
token=$demo/demo.token       # tenant demo's token (0600)
pidfile=$demo/ks.pid
url=https://127.0.0.1:$port
ca=$ks/tls/ca.pem

ks_running() {
    [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null &&
        grep -qa digimed-keyservice "/proc/$(cat "$pidfile")/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start_keyservice() {
    if [ ! -f "$ks/root.sealed" ]; then
        echo "== initializing a demo key service in $ks =="
        (umask 077 && head -c 32 /dev/urandom | base64 >"$cred")
        # The admin token printed by init is kept (0600) but not needed by the demo.
        (umask 077 && "$bin/digimed-keyservice" --credential-file "$cred" init "$ks" --demo-tls \
            >"$demo/ks-init.txt")
        "$bin/digimed-keyservice" --credential-file "$cred" tenant add "$ks" demo
        (umask 077 && "$bin/digimed-keyservice" --credential-file "$cred" \
            token issue "$ks" demo >"$token")
    fi
    if ks_running; then
        echo "== key service already running (pid $(cat "$pidfile")) on $url =="
        return
    fi
    if port_open; then
        echo "ERROR: 127.0.0.1:$port is taken by another program; set DIGIMEDFS_DEMO_KS_PORT" >&2
        exit 1
    fi
    echo "== starting the key service on $url (log: $demo/keyservice.log) =="
    nohup "$bin/digimed-keyservice" --credential-file "$cred" serve "$ks" \
        --listen "127.0.0.1:$port" --tls-cert "$ks/tls/server.pem" --tls-key "$ks/tls/server.key" \
        >>"$demo/keyservice.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 100); do
        port_open && return
        # Alive is enough here: its command line is briefly unreadable while nohup execs it.
        if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "ERROR: the key service exited:" >&2
            tail -n 20 "$demo/keyservice.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "ERROR: the key service does not listen on $url" >&2
    exit 1
}

if [ "$mode" = keyservice ]; then
    start_keyservice
    backing=$demo/backing-ks
    key_args=(--keyservice "$url" --tenant demo --token-file "$token" --ca-file "$ca")
    mkfs_args=("${key_args[@]}")
else
    backing=$demo/backing
    [ -f "$demo/demo.key" ] || "$bin/digimedfs" keygen "$demo/demo.key"
    key_args=(--key-file "$demo/demo.key")
    mkfs_args=(--tenant demo "${key_args[@]}")
fi

# A demo mount of the other mode is unmounted first.
if mountpoint -q "$mnt" && ! findmnt -n -o SOURCE "$mnt" | grep -qx "$backing"; then
    echo "== unmounting the other demo filesystem from $mnt =="
    other=$(findmnt -n -o SOURCE "$mnt")
    fusermount3 -u "$mnt"
    # Its daemon holds that filesystem's lock until it has exited.
    flock -w 60 9 9<"$other/lock"
fi
[ -f "$backing/superblock" ] || "$bin/mkfs-digimed" -L demo "${mkfs_args[@]}" "$backing"
if ! mountpoint -q "$mnt"; then
    "$bin/digimedfs" mount "${key_args[@]}" "$backing" "$mnt"
fi
echo "patient 0042: cohort A, sample 17" >"$mnt/hello.txt"
mkdir -p "$mnt/results"
echo "== the mount (plaintext, for the project) =="
ls -la "$mnt"
cat "$mnt/hello.txt"
echo "== the backing directory (what storage sees) =="
find "$backing" -maxdepth 2 | sort
if grep -rqa "patient 0042" "$backing"; then
    echo "ERROR: plaintext found on storage" >&2
    exit 1
fi
echo "no plaintext on storage."
if [ "$mode" = keyservice ]; then
    echo "== the key service audit log: the unwrap that unlocked this mount =="
    grep '"op":"unwrap"' "$ks/audit.log" | tail -n 1
    "$bin/digimed-keyservice" --credential-file "$cred" audit verify "$ks"
fi
echo
echo "The demo filesystem is mounted on $mnt."
echo "Unmount with: fusermount3 -u $mnt   (or: umount $mnt)"
if [ "$mode" = keyservice ]; then
    echo "Then stop the key service with: kill -INT \$(cat $pidfile)"
    echo "(unmount first: the mount records its final epoch at the key service when it unmounts)"
fi
