#!/bin/bash
# Pull time of an image from a local registry beside `skopeo copy docker://…
# oci:…` followed by `umoci unpack` of the same image, measured in one run.
#
# The registry is Debian's docker-registry, started here on 127.0.0.1 with a
# temporary storage directory (plain HTTP: --tls-verify=false), stopped at
# the end. The image is LAYOUT:TAG if given, else the umoci-built test image
# of the import and registry tests (written by an ignored test), else a few
# hundred MB of this machine's /usr/bin, /usr/lib/python3.11 and /etc in
# three layers (--big). Each tool runs once untimed, then ROUNDS times
# interleaved into fresh destinations; the median is printed.
#
# `imgmount pull` downloads, checks every blob's digest and every layer's
# diff_id, stores each file as an object with its fs-verity digest and
# Merkle tree, and builds the composefs image; skopeo+umoci download and
# check blob digests, then write a plain directory tree.
#
# Usage: benches/pull_compare.sh [--big | LAYOUT:TAG]   (as root, for umoci's full unpack)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${IMGMOUNT:-target/release/imgmount}
ROUNDS=${ROUNDS:-5}
[ -x "$BIN" ] || cargo build --release -p imgmount
for tool in docker-registry skopeo umoci bc; do
    command -v "$tool" >/dev/null || { echo "needs $tool"; exit 1; }
done
W=$(mktemp -d "${TMPDIR:-/var/tmp}/pull-compare.XXXXXX")
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
ROOTLESS=()
[ "$(id -u)" = 0 ] || ROOTLESS=(--rootless)

case "${1:-}" in
--big)
    i=0
    for d in usr/bin usr/lib/python3.11 etc; do
        i=$((i + 1))
        tar -C / --warning=no-file-changed -cf "$W/l$i.tar" "$d" 2>/dev/null || true
    done
    umoci init --layout "$W/img" >/dev/null
    umoci new --image "$W/img:t" >/dev/null
    for l in "$W"/l[1-3].tar; do umoci raw add-layer --image "$W/img:t" "$l" >/dev/null; done
    SRC="$W/img:t"
    ;;
"")
    IMGMOUNT_TEST_IMAGE_OUT="$W/img" cargo test -q --workspace --test registry_pull \
        -- --ignored --exact write_the_test_image >/dev/null
    SRC="$W/img:t"
    ;;
*) SRC=$1 ;;
esac

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/config.yml" <<CONF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry
http:
  addr: 127.0.0.1:$PORT
CONF
docker-registry serve "$W/config.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
REF="127.0.0.1:$PORT/bench/img:t"
skopeo copy -q --dest-tls-verify=false "oci:$SRC" "docker://$REF"
blob_bytes=$(du -sb "$W/registry" | cut -f1)

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }
run_pull() {
    rm -rf "$W/store"
    local t0 t1
    t0=$(now)
    "$BIN" pull --store "$W/store" --tls-verify=false "$@" "$REF" >/dev/null
    t1=$(now)
    elapsed "$t0" "$t1"
}
run_skopeo_umoci() {
    rm -rf "$W/oci" "$W/bundle"
    local t0 t1
    t0=$(now)
    skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$W/oci:t"
    umoci unpack "${ROOTLESS[@]}" --image "$W/oci:t" "$W/bundle" >/dev/null
    t1=$(now)
    elapsed "$t0" "$t1"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_pull >/dev/null
run_skopeo_umoci >/dev/null
: > "$W/p"; : > "$W/pn"; : > "$W/s"
for _ in $(seq "$ROUNDS"); do
    run_pull >>"$W/p"
    run_pull --no-sync >>"$W/pn"
    run_skopeo_umoci >>"$W/s"
done
# A second pull of the same image into the same store: nothing to download.
t0=$(now)
"$BIN" pull --store "$W/store" --tls-verify=false "$REF" >/dev/null
again=$(elapsed "$t0" "$(now)")

echo "image: $SRC, $blob_bytes bytes in the registry's storage; median of $ROUNDS rounds (s)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) (machine shared: figures are noisy)"
printf '%-44s %8s\n' "imgmount pull" "$(median <"$W/p")"
printf '%-44s %8s\n' "imgmount pull --no-sync" "$(median <"$W/pn")"
printf '%-44s %8s\n' "skopeo copy docker:// oci: + umoci unpack" "$(median <"$W/s")"
printf '%-44s %8s\n' "imgmount pull again (image in the store)" "$again"
