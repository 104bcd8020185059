#!/bin/bash
# What a hot sequential read costs in CPU, beside its speed: core-seconds the whole machine
# spent (user, system and interrupts, from /proc/stat) per GiB read with `dd bs=1M`, for
# imgmount verified, imgmount --verity=off, C composefs-fuse and squashfuse, all reading one
# file with its backing files in the page cache.
#
# Throughput alone cannot say whether a read is bound by CPU. With C cores and a cost of K
# core-s/GiB, no read can go faster than C / K GiB/s; a peer that runs well below its
# bound is waiting on something else (round trips, the reader). Peers are interleaved over
# ROUNDS rounds; medians are printed, then every sample.
#
# Usage: benches/seq_cpu.sh [--rounds N] [--size-mib N]   (root: mounts FUSE and squashfs)
# Environment: IMGMOUNT (binary; default: cargo build --release), BENCH_DIR (scratch parent,
# default /var/tmp), PEERS_DIR (where benches/compare.sh builds composefs-fuse; without it
# that peer is left out).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=5
SIZE_MIB=1024
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "seq_cpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "seq_cpu.sh: run as root (it mounts FUSE filesystems)" >&2; exit 2; }
IMGMOUNT=${IMGMOUNT:-target/release/imgmount}
[ -x "$IMGMOUNT" ] || cargo build --release -q -p imgmount
cfs_fuse=${PEERS_DIR:-/var/tmp/imgmount-peers}/composefs-1.0.8/build/tools/composefs-fuse
peers="imgmount imgmount-off"
[ -x "$cfs_fuse" ] && peers="$peers cfs-fuse"
command -v squashfuse_ll >/dev/null && command -v mksquashfs >/dev/null && peers="$peers squashfuse"

w=$(mktemp -d "${BENCH_DIR:-/var/tmp}/seq-cpu.XXXXXX")
mnt=$w/mnt
trap 'mountpoint -q "$mnt" && umount -l "$mnt"; rm -rf "$w"' EXIT
mkdir -p "$w/src" "$mnt"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$w/src/big"
"$IMGMOUNT" create "$w/src" "$w/big.cfs" --digest-store "$w/store/objects" >/dev/null
case $peers in *squashfuse*)
    mksquashfs "$w/src" "$w/big.sqfs" -noappend -noI -noD -noF -noX -quiet >/dev/null ;;
esac

mount_peer() {
    case $1 in
    imgmount) "$IMGMOUNT" mount --verity=require --objects "$w/store/objects" "$w/big.cfs" "$mnt" ;;
    imgmount-off) "$IMGMOUNT" mount --verity=off --objects "$w/store/objects" "$w/big.cfs" "$mnt" ;;
    cfs-fuse) "$cfs_fuse" -o "source=$w/big.cfs,basedir=$w/store/objects" "$mnt" ;;
    squashfuse) squashfuse_ll "$w/big.sqfs" "$mnt" ;;
    esac
    local i
    for i in $(seq 100); do
        mountpoint -q "$mnt" && return 0
        sleep 0.01
    done
    echo "seq_cpu.sh: $1 did not mount" >&2
    return 1
}
umount_peer() { case $1 in imgmount*) "$IMGMOUNT" umount "$mnt" ;; *) umount "$mnt" ;; esac; }
busy_ticks() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
hz=$(getconf CLK_TCK)

# imgmount builds and saves its Merkle tree sidecar once, as an import would have.
mount_peer imgmount
cat "$mnt/big" >/dev/null
umount_peer imgmount

: >"$w/samples"
for r in $(seq "$ROUNDS"); do
    for p in $peers; do
        # The backing files hot: objects, sidecars, images.
        find "$w/store" -type f -print0 | xargs -0 cat "$w/big.cfs" >/dev/null
        [ ! -e "$w/big.sqfs" ] || cat "$w/big.sqfs" >/dev/null
        mount_peer "$p"
        sleep 0.2
        b0=$(busy_ticks) t0=$(date +%s%N)
        dd if="$mnt/big" of=/dev/null bs=1M status=none
        t1=$(date +%s%N) b1=$(busy_ticks)
        umount_peer "$p"
        awk -v p="$p" -v b=$((b1 - b0)) -v hz="$hz" -v t=$((t1 - t0)) -v mib="$SIZE_MIB" \
            'BEGIN { printf "%s %.3f %.0f\n", p, b / hz / (mib / 1024), mib / (t / 1e9) }' >>"$w/samples"
    done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "# ${SIZE_MIB} MiB file, backing hot, median of $ROUNDS interleaved rounds; $(nproc) CPUs"
printf '%-14s %14s %10s %18s\n' peer core-s/GiB MiB/s "CPU bound, MiB/s"
for p in $peers; do
    k=$(awk -v p="$p" '$1 == p { print $2 }' "$w/samples" | median)
    s=$(awk -v p="$p" '$1 == p { print $3 }' "$w/samples" | median)
    bound=$(awk -v k="$k" -v c="$(nproc)" 'BEGIN { printf "%.0f", c / k * 1024 }')
    printf '%-14s %14s %10s %18s\n' "$p" "$k" "$s" "$bound"
done
echo "# samples (peer core-s/GiB MiB/s):"
sed 's/^/#   /' "$w/samples"
