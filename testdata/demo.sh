#!/bin/bash
# Builds imgmount and runs its main job on the bundled demo tree:
# create an image and object store, inspect it without mounting, read a file
# verified, then (as root or with fusermount3) mount it with FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=$PWD/target/release/imgmount
work=$(mktemp -d /tmp/imgmount-demo.XXXXXX)
echo "demo directory: $work"

# Git keeps neither mtimes nor (beyond the x bit) modes: pin both so the image
# digest is the same on every checkout, whatever the umask.
cp -a testdata/demo-tree "$work/tree"
chmod -R go-w "$work/tree"
find "$work/tree" -exec touch -h -d '2026-01-01 00:00:00' {} +

echo "== imgmount create (objects go to $work/objects)"
"$bin" create --digest-store "$work/objects" --print-digest "$work/tree" "$work/demo.cfs"
echo "== imgmount ls /etc"
"$bin" ls "$work/demo.cfs" /etc
echo "== imgmount cat /usr/share/doc/demo/README (verified against its fs-verity digest)"
"$bin" cat "$work/demo.cfs" /usr/share/doc/demo/README --objects "$work/objects"
echo "== imgmount dump"
"$bin" dump "$work/demo.cfs"
echo "== imgmount digest of the image (what a kernel command line would pin)"
"$bin" digest "$work/demo.cfs"

if [ -e /dev/fuse ] && { [ "$(id -u)" = 0 ] || command -v fusermount3 >/dev/null; }; then
    echo "== imgmount mount"
    mkdir -p "$work/mnt"
    if "$bin" mount --objects "$work/objects" "$work/demo.cfs" "$work/mnt"; then
        ls -la "$work/mnt" "$work/mnt/etc"
        cat "$work/mnt/etc/os-release"
        "$bin" umount "$work/mnt"
    else
        echo "(mount failed: see the message above)"
    fi
fi
