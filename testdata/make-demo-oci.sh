#!/bin/bash
# Makes testdata/demo-oci, the OCI image the demo imports, with umoci (Debian's
# umoci 0.4.7 made the checked-in one). Two layers: the demo tree, then a layer
# that changes os-release, removes etc/hostname (a whiteout) and adds NEWS and a
# larger manual. Also writes demo-oci/SHA256SUMS, the sums of every regular file of
# the final root filesystem as umoci unpacks it: the demo checks its mount against
# them. Times are pinned so that the layers are reproducible.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d /var/tmp/make-demo-oci.XXXXXX)
trap 'rm -rf "$work"' EXIT
out=$PWD/demo-oci
rm -rf "$out"
pin() { find "$1" -exec touch -h -d '2026-01-01 00:00:00 UTC' {} +; }

umoci init --layout "$out"
umoci new --image "$out:demo"
umoci unpack --image "$out:demo" "$work/bundle"
rootfs=$work/bundle/rootfs
cp -a demo-tree/. "$rootfs/"
chmod -R go-w "$rootfs"
pin "$rootfs"
umoci repack --image "$out:demo" --history.created_by "demo tree" "$work/bundle"

# A new bundle of the new image: a repack holds what changed since its unpack.
umoci unpack --image "$out:demo" "$work/bundle2"
rootfs=$work/bundle2/rootfs
rm "$rootfs/etc/hostname"
sed -i 's/^VERSION_ID=.*/VERSION_ID="2"/' "$rootfs/etc/os-release"
printf 'Layer 2 changed os-release and removed etc/hostname.\n' > "$rootfs/usr/share/doc/demo/NEWS"
for i in $(seq 1 2000); do
    printf 'Line %04d of the manual: every 4 KiB block of this file is checked against its fs-verity digest as it is read.\n' "$i"
done > "$rootfs/usr/share/doc/demo/manual.txt"
chmod -R go-w "$rootfs"
pin "$rootfs"
umoci repack --image "$out:demo" --history.created_by "layer 2" "$work/bundle2"
umoci gc --layout "$out"

rm -rf "$work/check"
umoci unpack --image "$out:demo" "$work/check"
(cd "$work/check/rootfs" && find . -type f | sort | xargs sha256sum) > "$out/SHA256SUMS"
