#!/usr/bin/env bash
# Side-by-side sequential read throughput of one large external file, in one run:
#
#   imgmount (verified)      imgmount mount IMAGE MNT                (user-space fs-verity)
#   imgmount --verity=off    imgmount mount --verity=off IMAGE MNT   (same path, no hashing)
#   kernel composefs         mount -t erofs -o loop,ro IMAGE M;
#                            mount -t overlay -o ro,metacopy=on,redirect_dir=on,lowerdir=M::OBJECTS
#
# Each run reads the whole file once with dd (1 MiB reads) from a fresh mount, so the FUSE
# page cache starts empty, while the object file itself stays in the page cache ("backing
# file hot", as in DESIGN §5). For imgmount the Merkle tree sidecar is built by a warm-up
# read before timing. Prints each run, then the median MiB/s and the ratios to the kernel.
#
# Needs root (loop + overlay mounts, and FUSE readahead tuning). Usage:
#   benches/compare.sh [SIZE_MIB (default 1024)] [RUNS (default 5)]
# Environment: IMGMOUNT (binary; default: build target/release/imgmount), BENCH_DIR (scratch
# parent, default /var/tmp).
set -euo pipefail

SIZE_MIB=${1:-1024}
RUNS=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "compare.sh: needs root (loop and overlay mounts)" >&2
    exit 1
fi
if [ -z "${IMGMOUNT:-}" ]; then
    (cd "$here" && cargo build --release -q -p imgmount)
    IMGMOUNT=$here/target/release/imgmount
fi

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/imgmount-bench.XXXXXX")
cleanup() {
    for m in "$work"/fuse "$work"/kernel "$work"/erofs; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work"/src "$work"/store/objects "$work"/fuse "$work"/kernel "$work"/erofs
echo "# ${SIZE_MIB} MiB file, ${RUNS} runs each, $(nproc) CPUs, $(uname -r)"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work"/src/big
"$IMGMOUNT" create "$work"/src "$work"/image.cfs --digest-store "$work"/store/objects >/dev/null
rm "$work"/src/big   # only the stored object remains; keep it hot in the page cache
cat "$work"/store/objects/*/* >/dev/null

# Reads the file once; prints MiB/s.
read_mibs() {
    local t0 t1
    t0=$(date +%s%N)
    dd if="$1" of=/dev/null bs=1M status=none
    t1=$(date +%s%N)
    echo "$SIZE_MIB $t0 $t1" | awk '{ printf "%.0f\n", $1 / (($3 - $2) / 1e9) }'
}

median() {
    sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

fuse_runs() {
    local label=$1
    shift
    local results=()
    # Warm-up: builds and saves the Merkle tree sidecar (verified mode) outside the timing.
    "$IMGMOUNT" mount "$@" --objects "$work"/store/objects "$work"/image.cfs "$work"/fuse
    dd if="$work"/fuse/big of=/dev/null bs=1M status=none
    "$IMGMOUNT" umount "$work"/fuse
    for _ in $(seq "$RUNS"); do
        "$IMGMOUNT" mount "$@" --objects "$work"/store/objects "$work"/image.cfs "$work"/fuse
        results+=("$(read_mibs "$work"/fuse/big)")
        "$IMGMOUNT" umount "$work"/fuse
    done
    echo "$label: ${results[*]}" >&2
    printf '%s\n' "${results[@]}" | median
}

kernel_runs() {
    local results=()
    for _ in $(seq "$RUNS"); do
        mount -t erofs -o loop,ro "$work"/image.cfs "$work"/erofs
        mount -t overlay overlay \
            -o "ro,metacopy=on,redirect_dir=on,lowerdir=$work/erofs::$work/store/objects" \
            "$work"/kernel
        results+=("$(read_mibs "$work"/kernel/big)")
        umount "$work"/kernel
        umount "$work"/erofs
    done
    echo "kernel composefs: ${results[*]}" >&2
    printf '%s\n' "${results[@]}" | median
}

verified=$(fuse_runs "imgmount verified" --verity=require)
off=$(fuse_runs "imgmount --verity=off" --verity=off)
kernel=$(kernel_runs)

echo
printf '%-24s %10s %10s\n' "" "MiB/s" "vs kernel"
for row in "imgmount verified:$verified" "imgmount --verity=off:$off" "kernel composefs:$kernel"; do
    name=${row%%:*}
    v=${row##*:}
    printf '%-24s %10s %10s\n' "$name" "$v" "$(awk -v a="$v" -v b="$kernel" 'BEGIN { printf "%.2f", a / b }')"
done
