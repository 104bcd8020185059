#!/usr/bin/env bash
# Every peer side by side, in one run, over the same files (issue 10, item 8).
#
# Peers (each mounts the same trees; those marked * verify nothing):
#   imgmount          imgmount mount --verity=require IMAGE.cfs   (user-space fs-verity)
#   imgmount-off    * imgmount mount --verity=off IMAGE.cfs
#   kernel-cfs      * kernel composefs: erofs + overlay (metacopy, data-only lower layer);
#                     no fs-verity here, so the kernel checks nothing either
#   squashfuse      * Debian's squashfuse_ll over an uncompressed squashfs of the tree
#   cfs-fuse        * C composefs-fuse, built from composefs v1.0.8 (meson) over IMAGE.cfs
#   erofsfuse       * erofsfuse from erofs-utils 1.9.3 (built here) over a plain EROFS image
#   kernel-erofs    * the plain EROFS image mounted by the kernel (file backed)
# Images carry no compression, like composefs objects. C peers are built under PEERS_DIR
# (default /var/tmp/imgmount-peers) from COMPOSEFS_GIT / EROFS_UTILS_GIT (tag v1.0.8 /
# v1.9.3) unless already there; a peer that cannot be built is left out, with the reason.
#
# Cases (every measurement on a fresh mount):
#   seq_hot     read a SIZE_MIB file with dd bs=1M, backing files in the page cache  MiB/s
#   seq_cpu     (with seq_hot, from the same read) core-seconds the whole machine
#               spent on it per GiB (/proc/stat): on C cores no read costing K can
#               pass C / K GiB/s, so this says whether seq_hot is bound by CPU        cpu-s
#   seq_cold    the same after drop_caches (backing files on disk)                    MiB/s
#   seq_reread  the same file read again in the same mount (the page cache's answer)  MiB/s
#   small       tar every one of SMALL_FILES files (all data) through cat, after
#               drop_caches                                                           s
#   walk        find -printf of size/mode/owner/mtime of every entry, backing hot     s
#   mount       mount, stat and list the root of the small-file image                 ms
#   import      imgmount import of the small-file tree as an OCI image (fresh store,
#               durable) beside umoci unpack of the same image; reimport: again into
#               the store that has every object                                       s
#
# Peers are interleaved: every round runs every case for every peer, the order of the
# peers rotating from round to round; the table gives medians of ROUNDS rounds (single runs
# on shared machines swing by 3x). Ratios are imgmount (verified) over the fastest peer
# that verifies nothing among cfs-fuse and squashfuse (umoci for import) and over kernel
# composefs; "better" says which way is good.
#
# Needs root (loop, overlay, kernel FUSE mounts, drop_caches). Installs missing Debian
# packages with apt-get. Usage:
#   benches/compare.sh [--rounds N] [--size-mib N] [--small-files N] [--cases LIST]
#                      [--peers LIST] [--keep]
# Environment: IMGMOUNT (binary; default: cargo build --release), BENCH_DIR (scratch
# parent, default /var/tmp), PEERS_DIR, COMPOSEFS_GIT, EROFS_UTILS_GIT.
set -euo pipefail

ROUNDS=5
SIZE_MIB=1024
SMALL_FILES=100000
CASES="seq_hot seq_cold seq_reread small walk mount import"
PEERS="imgmount imgmount-off kernel-cfs squashfuse cfs-fuse erofsfuse kernel-erofs"
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --small-files) SMALL_FILES=$2; shift 2 ;;
    --cases) CASES=${2//,/ }; shift 2 ;;
    --peers) PEERS=${2//,/ }; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-/var/tmp/imgmount-peers}
COMPOSEFS_GIT=${COMPOSEFS_GIT:-https://github.com/composefs/composefs.git}
EROFS_UTILS_GIT=${EROFS_UTILS_GIT:-https://git.kernel.org/pub/scm/linux/kernel/git/xiang/erofs-utils.git}

if [ "$(id -u)" != 0 ]; then
    echo "compare.sh: needs root (loop, overlay and FUSE mounts, drop_caches)" >&2
    exit 1
fi
if [ "$ROUNDS" -lt 5 ]; then
    echo "compare.sh: only $ROUNDS rounds: medians of fewer than 5 are not worth quoting" >&2
fi

log() { echo "# $*" >&2; }

# --- tools ------------------------------------------------------------------------------

need=()
for pkg_cmd in fuse3:fusermount3 squashfuse:squashfuse_ll squashfs-tools:mksquashfs \
    erofs-utils:mkfs.erofs umoci:umoci meson:meson ninja-build:ninja pkg-config:pkg-config \
    autoconf:autoconf automake:automake libtool:libtoolize git:git python3:python3; do
    command -v "${pkg_cmd#*:}" >/dev/null || need+=("${pkg_cmd%%:*}")
done
for pkg_h in libfuse3-dev:/usr/include/fuse3/fuse.h libssl-dev:/usr/include/openssl/evp.h \
    uuid-dev:/usr/include/uuid/uuid.h zlib1g-dev:/usr/include/zlib.h; do
    [ -e "${pkg_h#*:}" ] || need+=("${pkg_h%%:*}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

if [ -z "${IMGMOUNT:-}" ]; then
    (cd "$here" && cargo build --release -q -p imgmount)
    IMGMOUNT=$here/target/release/imgmount
fi

# Sources: a directory already there, else a clone of the tag.
fetch_source() { # DIR GIT TAG
    [ -d "$1" ] && return 0
    mkdir -p "$(dirname "$1")"
    git clone -q --depth 1 --branch "$3" "$2" "$1" 2>&1 | tail -3 >&2
}

cfs_fuse=$PEERS_DIR/composefs-1.0.8/build/tools/composefs-fuse
build_cfs_fuse() {
    [ -x "$cfs_fuse" ] && return 0
    local src=$PEERS_DIR/composefs-1.0.8
    fetch_source "$src" "$COMPOSEFS_GIT" v1.0.8 || { echo "cannot get composefs v1.0.8 from $COMPOSEFS_GIT"; return 1; }
    log "building composefs-fuse (composefs v1.0.8, meson) in $src"
    (cd "$src" && meson setup build -Dfuse=enabled -Dman=disabled && ninja -C build) \
        >"$PEERS_DIR/composefs-build.log" 2>&1 ||
        { echo "composefs build failed, see $PEERS_DIR/composefs-build.log"; return 1; }
}

erofs_src=$PEERS_DIR/erofs-utils-1.9.3
erofsfuse=$erofs_src/fuse/erofsfuse
build_erofsfuse() {
    [ -x "$erofsfuse" ] && return 0
    fetch_source "$erofs_src" "$EROFS_UTILS_GIT" v1.9.3 || { echo "cannot get erofs-utils v1.9.3 from $EROFS_UTILS_GIT"; return 1; }
    log "building erofsfuse (erofs-utils 1.9.3) in $erofs_src"
    (cd "$erofs_src" && ./autogen.sh && ./configure --enable-fuse --without-selinux \
        --disable-lzma --without-libzstd --without-xxhash && make -j"$(nproc)") \
        >"$PEERS_DIR/erofs-utils-build.log" 2>&1 ||
        { echo "erofs-utils build failed, see $PEERS_DIR/erofs-utils-build.log"; return 1; }
}

active=()
for p in $PEERS; do
    why=
    case $p in
    cfs-fuse) why=$(build_cfs_fuse) || { log "leaving out cfs-fuse: $why"; continue; } ;;
    erofsfuse) why=$(build_erofsfuse) || { log "leaving out erofsfuse: $why"; continue; } ;;
    imgmount | imgmount-off | kernel-cfs | squashfuse | kernel-erofs) ;;
    *) echo "compare.sh: unknown peer $p" >&2; exit 2 ;;
    esac
    active+=("$p")
done
# mkfs.erofs of the erofs-utils just built when there is one: it is the newer format writer.
mkfs_erofs=mkfs.erofs
[ -x "$erofs_src/mkfs/mkfs.erofs" ] && mkfs_erofs=$erofs_src/mkfs/mkfs.erofs

# --- fixtures ---------------------------------------------------------------------------

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/imgmount-compare.XXXXXX")
mnt=$work/mnt
lower=$work/lower # kernel-cfs's erofs layer
cleanup() {
    for m in "$mnt" "$lower"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        fi
    done
    if [ "$KEEP" = 1 ]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
mkdir -p "$mnt" "$lower" "$work/src/big" "$work/src/small"

log "$(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS rounds"
log "peers: ${active[*]}"
log "making a ${SIZE_MIB} MiB file and $SMALL_FILES small files in $work/src"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/src/big/big"
# Sizes log-uniform from 64 bytes to 32 KiB (median about 1.4 KiB; every file external to
# the composefs image), 1000 files a directory, content seeded so runs are comparable.
python3 - "$work/src/small" "$SMALL_FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(10)
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(rng.randbytes(int(2 ** rng.uniform(6, 15))))
EOF

log "building images"
for t in big small; do
    # One store per tree, so that making one tree's backing files hot reads only those.
    "$IMGMOUNT" create "$work/src/$t" "$work/$t.cfs" --digest-store "$work/store-$t/objects" >/dev/null
    mksquashfs "$work/src/$t" "$work/$t.sqfs" -noappend -noI -noD -noF -noX -quiet >/dev/null
    "$mkfs_erofs" --quiet "$work/$t.erofs" "$work/src/$t" >/dev/null 2>&1 ||
        "$mkfs_erofs" "$work/$t.erofs" "$work/src/$t" >/dev/null
done
# The OCI image of the small-file tree, for import.
umoci init --layout "$work/oci" >/dev/null
umoci new --image "$work/oci:t" >/dev/null
tar -C "$work/src/small" -cf "$work/small.tar" .
umoci raw add-layer --image "$work/oci:t" "$work/small.tar" >/dev/null
rm "$work/small.tar"

# --- mounting ---------------------------------------------------------------------------

mount_peer() { # PEER TREE
    case $1 in
    imgmount) "$IMGMOUNT" mount --verity=require --objects "$work/store-$2/objects" "$work/$2.cfs" "$mnt" ;;
    imgmount-off) "$IMGMOUNT" mount --verity=off --objects "$work/store-$2/objects" "$work/$2.cfs" "$mnt" ;;
    kernel-cfs)
        mount -t erofs -o loop,ro "$work/$2.cfs" "$lower"
        mount -t overlay overlay \
            -o "ro,metacopy=on,redirect_dir=on,lowerdir=$lower::$work/store-$2/objects" "$mnt"
        ;;
    squashfuse) squashfuse_ll "$work/$2.sqfs" "$mnt" ;;
    cfs-fuse) "$cfs_fuse" -o "source=$work/$2.cfs,basedir=$work/store-$2/objects" "$mnt" ;;
    erofsfuse) "$erofsfuse" "$work/$2.erofs" "$mnt" >>"$work/erofsfuse.log" 2>&1 ;;
    kernel-erofs) mount -t erofs -o ro "$work/$2.erofs" "$mnt" 2>/dev/null ||
        mount -t erofs -o loop,ro "$work/$2.erofs" "$mnt" ;;
    esac
    # A FUSE daemon may return before the kernel answers for the mount point.
    local i
    for i in $(seq 100); do
        mountpoint -q "$mnt" && return 0
        sleep 0.01
    done
    echo "compare.sh: $1 did not mount $2" >&2
    return 1
}

umount_peer() { # PEER
    case $1 in
    imgmount | imgmount-off) "$IMGMOUNT" umount "$mnt" ;;
    kernel-cfs) umount "$mnt"; umount "$lower" ;;
    *) umount "$mnt" ;;
    esac
}

# The files a peer reads its TREE from, so they can be made hot.
backing() { # PEER TREE
    case $1 in
    imgmount | imgmount-off | kernel-cfs | cfs-fuse)
        echo "$work/$2.cfs"
        # The objects of the tree, and their Merkle tree sidecars.
        find "$work/store-$2" -type f
        ;;
    squashfuse) echo "$work/$2.sqfs" ;;
    erofsfuse | kernel-erofs) echo "$work/$2.erofs" ;;
    esac
}

make_hot() { backing "$1" "$2" | tr '\n' '\0' | xargs -0 cat >/dev/null; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s%N; }
mibs() { awk -v mib="$SIZE_MIB" -v t0="$1" -v t1="$2" 'BEGIN { printf "%.0f", mib / ((t1 - t0) / 1e9) }'; }
secs() { awk -v t0="$1" -v t1="$2" 'BEGIN { printf "%.3f", (t1 - t0) / 1e9 }'; }
read_big() { dd if="$mnt/big" of=/dev/null bs=1M status=none; }
read_all() { tar -C "$mnt" -cf - . | cat >/dev/null; }
walk_all() { find "$mnt" -printf '%s %m %U %G %T@\n' >/dev/null; }
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; } # user nice system irq softirq
cpu_per_gib() { awk -v b="$(($2 - $1))" -v hz="$(getconf CLK_TCK)" -v mib="$SIZE_MIB" 'BEGIN { printf "%.3f", b / hz / (mib / 1024) }'; }
mount_ms() { awk -v t0="$1" -v t1="$2" 'BEGIN { printf "%.1f", (t1 - t0) / 1e6 }'; }

# Before timing anything: imgmount reads everything once, which builds and saves its Merkle
# tree sidecars, as import would have; every peer shows it serves the trees' bytes.
log "warm-up: imgmount builds its sidecars; every peer is checked"
mount_peer imgmount big
cat "$mnt/big" >/dev/null
umount_peer imgmount
mount_peer imgmount small
read_all
umount_peer imgmount
probe=d000/f000007
for p in "${active[@]}"; do
    mount_peer "$p" big
    cmp -n $((4 << 20)) "$mnt/big" "$work/src/big/big" ||
        { echo "compare.sh: $p serves wrong bytes" >&2; exit 1; }
    umount_peer "$p"
    mount_peer "$p" small
    cmp "$mnt/$probe" "$work/src/small/$probe" ||
        { echo "compare.sh: $p serves wrong bytes" >&2; exit 1; }
    umount_peer "$p"
done

# --- measuring --------------------------------------------------------------------------

results=$work/results
: >"$results"
record() { echo "$1 $2 $3" >>"$results"; } # CASE PEER VALUE


# One measurement on a fresh mount of TREE: backing files made hot, or the page cache
# dropped; for "reread" the command runs once untimed first, in the same mount.
timed() { # CASE PEER TREE hot|cold|reread FORMAT COMMAND
    local t0 t1 b0 b1
    if [ "$4" = cold ]; then drop_caches; else make_hot "$2" "$3"; fi
    mount_peer "$2" "$3"
    [ "$4" = reread ] && $6
    b0=$(busy_ticks)
    t0=$(now)
    $6
    t1=$(now)
    b1=$(busy_ticks)
    umount_peer "$2"
    record "$1" "$2" "$($5 "$t0" "$t1")"
    if [ "$1" = seq_hot ]; then record seq_cpu "$2" "$(cpu_per_gib "$b0" "$b1")"; fi
}

measure() { # CASE PEER
    local t0 t1
    case $1 in
    seq_hot) timed "$1" "$2" big hot mibs read_big ;;
    seq_cold) timed "$1" "$2" big cold mibs read_big ;;
    seq_reread) timed "$1" "$2" big reread mibs read_big ;;
    small) timed "$1" "$2" small cold secs read_all ;;
    walk) timed "$1" "$2" small hot secs walk_all ;;
    mount)
        make_hot "$2" small
        t0=$(now)
        mount_peer "$2" small
        stat "$mnt/." >/dev/null
        ls "$mnt" >/dev/null
        t1=$(now)
        umount_peer "$2"
        record "$1" "$2" "$(mount_ms "$t0" "$t1")"
        ;;
    esac
}

measure_import() {
    local t0 t1
    rm -rf "$work/import-store" "$work/bundle"
    local tools="imgmount umoci"
    [ $((round % 2)) = 0 ] && tools="umoci imgmount"
    for tool in $tools; do
        t0=$(now)
        if [ "$tool" = umoci ]; then
            umoci unpack --image "$work/oci:t" "$work/bundle" >/dev/null
        else
            "$IMGMOUNT" import --store "$work/import-store" "oci:$work/oci:t" >/dev/null
        fi
        t1=$(now)
        record import "$tool" "$(secs "$t0" "$t1")"
    done
    t0=$(now)
    "$IMGMOUNT" import --store "$work/import-store" "oci:$work/oci:t" >/dev/null
    t1=$(now)
    record reimport imgmount "$(secs "$t0" "$t1")"
    rm -rf "$work/import-store" "$work/bundle"
}

for round in $(seq "$ROUNDS"); do
    # Rotate the peer order by one each round.
    shift_by=$(((round - 1) % ${#active[@]}))
    order=("${active[@]:$shift_by}" "${active[@]:0:$shift_by}")
    log "round $round/$ROUNDS: ${order[*]}"
    for c in $CASES; do
        if [ "$c" = import ]; then
            measure_import
            continue
        fi
        for p in "${order[@]}"; do
            measure "$c" "$p"
        done
    done
done

# --- the table --------------------------------------------------------------------------

median() { # CASE PEER
    awk -v c="$1" -v p="$2" '$1 == c && $2 == p { print $3 }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
# The best of the values given ("-" for none), by the case's direction.
best() { # higher|lower VALUE...
    local dir=$1
    shift
    printf '%s\n' "$@" | grep -v '^-$' | sort -g | if [ "$dir" = higher ]; then tail -1; else head -1; fi | grep . || echo -
}

echo
echo "# $SIZE_MIB MiB file, $SMALL_FILES small files, median of $ROUNDS interleaved rounds;"
echo "# $(nproc) CPUs, $(uname -r), load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
cols=("${active[@]}" umoci)
printf '%-10s %-5s %-6s' case unit better
for p in "${cols[@]}"; do printf ' %12s' "$p"; done
printf ' %13s %13s\n' vs-unverified vs-kernel-cfs
declare -A m
# seq_cpu comes from the seq_hot reads, and is shown below them.
rows=$(for c in $CASES; do echo "$c"; [ "$c" != seq_hot ] || echo seq_cpu; done)
for c in $rows reimport; do
    case $c in
    seq_cpu) unit=cpu-s; better=lower ;;
    seq_*) unit=MiB/s; better=higher ;;
    mount) unit=ms; better=lower ;;
    reimport) [[ " $CASES " == *" import "* ]] || continue; unit=s; better=lower ;;
    *) unit=s; better=lower ;;
    esac
    printf '%-10s %-5s %-6s' "$c" "$unit" "$better"
    for p in "${cols[@]}"; do
        m[$c.$p]=$(median "$c" "$p")
        printf ' %12s' "${m[$c.$p]}"
    done
    # The fastest peer that verifies nothing: cfs-fuse or squashfuse; umoci for import.
    case $c in
    import) ref=${m[import.umoci]} ;;
    reimport) ref=${m[import.umoci]} ;;
    *) ref=$(best $better "${m[$c.cfs-fuse]:--}" "${m[$c.squashfuse]:--}") ;;
    esac
    printf ' %13s %13s\n' "$(ratio "${m[$c.imgmount]}" "$ref")" "$(ratio "${m[$c.imgmount]}" "${m[$c.kernel-cfs]:--}")"
done
echo "# vs-*: imgmount (verified) / the peer. import: a fresh store, durable (fsync); reimport:"
echo "# into the store that has every object; both against umoci unpack."

# The issue's targets, from the medians above.
target() { # NAME VALUE OP LIMIT
    local verdict
    verdict=$(awk -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
        if (v == "-") { print "not measured"; exit }
        ok = (op == ">=") ? v >= l : v <= l
        print ok ? "holds" : "misses" }')
    printf '#   %-46s %8s %s %-5s %s\n' "$1" "$2" "$3" "$4" "$verdict"
}
echo "# targets (issue 10):"
target "seq_hot vs faster of cfs-fuse, squashfuse" \
    "$(ratio "${m[seq_hot.imgmount]:--}" "$(best higher "${m[seq_hot.cfs-fuse]:--}" "${m[seq_hot.squashfuse]:--}")")" ">=" 1.0
target "small files vs kernel composefs" "$(ratio "${m[small.imgmount]:--}" "${m[small.kernel-cfs]:--}")" "<=" 1.2
target "metadata walk vs kernel erofs" "$(ratio "${m[walk.imgmount]:--}" "${m[walk.kernel-erofs]:--}")" "<=" 1.0
target "re-read vs kernel composefs" "$(ratio "${m[seq_reread.imgmount]:--}" "${m[seq_reread.kernel-cfs]:--}")" ">=" 0.8
target "import vs umoci unpack" "$(ratio "${m[import.imgmount]:--}" "${m[import.umoci]:--}")" "<=" 1.0
target "reimport vs import" "$(ratio "${m[reimport.imgmount]:--}" "${m[import.imgmount]:--}")" "<=" 0.2
target "mount of an image file, ms" "${m[mount.imgmount]:--}" "<=" 50
