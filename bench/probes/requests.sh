#!/usr/bin/env bash
# Counts the FUSE requests the kernel sends per phase (extract, ls -lR, rm -rf) of the
# usr/include part of the tree, from fuser's debug log (docs/performance.md, "What bounds
# each row").
. "$(dirname "$0")/common.sh"
B=$Q/back-req M=$Q/mnt-req L=$Q/requests.log
fusermount3 -u "$M" 2>/dev/null; rm -rf "$B"; mkdir -p "$B" "$M"
"$BIN/mkfs-digimed" --tenant probe --key-file "$Q/k" "$B" >/dev/null
RUST_LOG=fuser=debug "$BIN/digimedfs" mount -f --key-file "$Q/k" "$B" "$M" >"$L" 2>&1 &
sleep 1
count() { sed -n "$1" "$L" | grep -o 'FUSE([ 0-9]*) ino 0x[0-9a-f]* [A-Z_]*' | awk '{print $NF}' | sort | uniq -c | sort -rn | tr '\n' ' '; echo; }
tar -xf "$TREE_TAR" -C "$M" usr/include; sleep 2; a=$(wc -l <"$L")
ls -lR "$M" >/dev/null; sleep 1; b=$(wc -l <"$L")
rm -rf "$M/usr"; sleep 1
fusermount3 -u "$M"; sleep 1
echo "extract: $(count "1,${a}p")"
echo "ls -lR:  $(count "$((a + 1)),${b}p")"
echo "rm -rf:  $(count "$((b + 1)),\$p")"
