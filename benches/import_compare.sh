#!/bin/bash
# Import time of a multi-layer OCI image beside `umoci unpack` of the same image,
# measured in one run on this machine.
#
# The image: three gzip layers made by umoci from this machine's /usr/bin,
# /usr/lib/python3.11 and /etc (a few hundred MB, tens of thousands of files),
# plus a fourth layer of whiteouts. Both tools read the same blobs from the
# page cache (each is run once untimed first). `umoci unpack` writes a plain
# directory tree; `imgmount import` checks every blob, hashes every file's
# fs-verity digest and Merkle tree, writes objects and sidecars, and builds
# the composefs image.
#
# Usage: benches/import_compare.sh   (root gives umoci's full unpack; otherwise --rootless)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${IMGMOUNT:-target/release/imgmount}
if [ ! -x "$BIN" ]; then
    cargo build --release -p imgmount
fi
for tool in umoci tar; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install umoci)"; exit 1; }
done
W=$(mktemp -d "${TMPDIR:-/var/tmp}/import-compare.XXXXXX")
trap 'rm -rf "$W"' EXIT

ROOTLESS=()
[ "$(id -u)" = 0 ] || ROOTLESS=(--rootless)

src_dirs=(usr/bin usr/lib/python3.11 etc)
i=0
for d in "${src_dirs[@]}"; do
    i=$((i + 1))
    tar -C / --warning=no-file-changed -cf "$W/l$i.tar" "$d" 2>/dev/null || true
done
mkdir -p "$W/wh/etc"
: > "$W/wh/etc/.wh.hostname"
tar -C "$W/wh" -cf "$W/l4.tar" etc

umoci init --layout "$W/img" >/dev/null
umoci new --image "$W/img:t" >/dev/null
for l in "$W"/l[1-4].tar; do
    umoci raw add-layer --image "$W/img:t" "$l" >/dev/null
done
blob_bytes=$(du -sb "$W/img/blobs" | cut -f1)
files=$(for l in "$W"/l[1-3].tar; do tar tf "$l"; done | wc -l)

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

run_umoci() {
    rm -rf "$W/bundle"
    local t0 t1
    t0=$(now)
    umoci unpack "${ROOTLESS[@]}" --image "$W/img:t" "$W/bundle" >/dev/null
    t1=$(now)
    elapsed "$t0" "$t1"
}
run_import() {
    rm -rf "$W/store"
    local t0 t1
    t0=$(now)
    "$BIN" import --store "$W/store" "$@" "oci:$W/img:t" >/dev/null
    t1=$(now)
    elapsed "$t0" "$t1"
}

# Warm the page cache with both tools once.
run_umoci >/dev/null
run_import --no-sync >/dev/null

u=$(run_umoci)
a=$(run_import)
b=$(run_import --no-sync)
# Importing again into the same store: everything is already there.
t0=$(now)
"$BIN" import --store "$W/store" "oci:$W/img:t" >/dev/null
t1=$(now)
again=$(elapsed "$t0" "$t1")

objects=$(find "$W/store/objects" -type f | wc -l)
store_bytes=$(du -sb "$W/store" | cut -f1)
bundle_bytes=$(du -sb "$W/bundle/rootfs" | cut -f1)

echo "image: 4 layers, $files tar entries, $((blob_bytes / 1048576)) MiB of gzip blobs"
printf '%-44s %8s s\n' "umoci unpack ${ROOTLESS[*]}" "$u"
printf '%-44s %8s s\n' "imgmount import (syncfs before naming)" "$a"
printf '%-44s %8s s\n' "imgmount import --no-sync" "$b"
printf '%-44s %8s s\n' "imgmount import again (all objects present)" "$again"
echo "umoci rootfs: $((bundle_bytes / 1048576)) MiB; imgmount store: $((store_bytes / 1048576)) MiB, $objects objects"
