#!/bin/bash
# imgmount's main job, on the OCI image in testdata/demo-oci (two layers, made with
# umoci by testdata/make-demo-oci.sh): import it into a store, look inside without
# mounting, mount it with FUSE (as a normal user where the machine allows), check
# every byte against the sums umoci's own unpack gave, pin the image by digest, and
# see a tampered object refused. Everything lives in one directory under /var/tmp,
# removed at the end, as is the throwaway user a root run mounts as.
#
# As root it installs fuse3 with apt-get when fusermount3 is missing.
# IMGMOUNT_DEMO_BIN names an imgmount binary to use instead of building one (the
# test suite runs the demo that way: mounter/tests/demo.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

step() { printf '\n== %s\n' "$*"; }
note() { printf '   (%s)\n' "$*"; }

is_root=false
[ "$(id -u)" = 0 ] && is_root=true
if $is_root && ! command -v fusermount3 >/dev/null && command -v apt-get >/dev/null; then
    step "installing fuse3 (apt-get), for fusermount3"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
fi

bin=${IMGMOUNT_DEMO_BIN:-}
if [ -z "$bin" ]; then
    step "building imgmount (cargo build --release)"
    cargo build --release --locked --quiet
    bin=$repo/target/release/imgmount
fi

work=$(mktemp -d /var/tmp/imgmount-demo.XXXXXX)
chmod 755 "$work"
user=""
fuse_mode=""
cleanup() {
    for m in "$work/mnt" "$work/again"; do
        if grep -qs " $m " /proc/self/mountinfo; then
            "$bin" umount -l "$m" 2>/dev/null || true
        fi
    done
    if [ -n "$fuse_mode" ]; then chmod "$fuse_mode" /dev/fuse; fi
    if [ -n "$user" ]; then userdel "$user" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Who runs imgmount. A root run mounts as a throwaway user through fusermount3, as a
# laptop user would; a normal user runs it as themselves.
as=()
can_mount=false
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null; then
    can_mount=true
    if $is_root; then
        user=imgmount-demo-$$
        useradd --system --no-create-home --home-dir "$work" --shell /usr/sbin/nologin "$user"
        chown "$user:" "$work"
        as=(runuser -u "$user" --)
        mode=$(stat -c %a /dev/fuse)
        if [ "$mode" != 666 ]; then
            # Distributions make it 0666 (udev); a container may not.
            fuse_mode=$mode
            chmod 666 /dev/fuse
            note "/dev/fuse is $mode here; it is 0666 while the demo runs, as on most systems"
        fi
    fi
fi
# A user's FUSE mount is theirs alone (root included): read it as them too.
as_user() { "${as[@]+"${as[@]}"}" "$@"; }
im() { as_user "$bin" "$@"; }
export IMGMOUNT_STORE=$work/store

cp -r testdata/demo-oci "$work/layout"
[ -z "$user" ] || chown -R "$user:" "$work/layout"
echo "demo directory: $work (store: $IMGMOUNT_STORE)${user:+, running imgmount as user $user}"

step "imgmount import oci:$work/layout:demo"
digest=$(im import "oci:$work/layout:demo")
echo "$digest"
im images

step "imgmount ls demo /etc    (a tag works wherever an image does; no mount needed)"
im ls demo /etc

step "imgmount cat demo /usr/share/doc/demo/NEWS    (read from the store, checked)"
im cat demo /usr/share/doc/demo/NEWS

if ! $can_mount; then
    step "mount: skipped"
    note "no /dev/fuse or no fusermount3 here: install fuse3 to see it; ls and cat above read the image without mounting"
    exit 0
fi

mkdir "$work/mnt" "$work/again"
[ -z "$user" ] || chown "$user:" "$work/mnt" "$work/again"

step "imgmount mount --digest $digest demo $work/mnt"
note "pinned: only the image with exactly this fs-verity digest mounts"
im mount --digest "$digest" --log-file "$work/daemon.log" demo "$work/mnt"
grep " $work/mnt " /proc/self/mountinfo | cut -d' ' -f5,9,10
as_user ls -l "$work/mnt/etc" "$work/mnt/usr/share/doc/demo"

step "every file against the sums of umoci's own unpack (testdata/demo-oci/SHA256SUMS)"
as_user sh -c 'cd "$1" && sha256sum --quiet -c "$2"' - "$work/mnt" "$work/layout/SHA256SUMS"
echo "all $(wc -l < "$work/layout/SHA256SUMS") files match, every block checked against its digest as it was read"
as_user test ! -e "$work/mnt/etc/hostname" && echo "etc/hostname is gone: layer 2's whiteout applied"
echo "etc/motd -> $(as_user readlink "$work/mnt/etc/motd")"
im umount "$work/mnt"

step "a wrong --digest is refused"
wrong=sha256:$(printf '0%.0s' $(seq 64))
if im mount --digest "$wrong" demo "$work/again"; then
    echo "mounted with a wrong digest: this is a bug" >&2
    exit 1
fi

step "tampering with the object behind /usr/share/doc/demo/manual.txt"
object=$(im dump demo | awk '$1 == "/usr/share/doc/demo/manual.txt" { print $9 }')
echo "object $object: flipping one byte in its third block"
printf 'X' | dd of="$IMGMOUNT_STORE/objects/$object" bs=1 seek=9000 conv=notrunc status=none
echo "imgmount cat refuses it:"
if im cat demo /usr/share/doc/demo/manual.txt >/dev/null; then
    echo "tampered bytes were served: this is a bug" >&2
    exit 1
fi
echo "and so does a mount: the blocks before the bad one read, the bad one does not"
im mount --log-file "$work/daemon.log" demo "$work/again"
as_user head -c 8192 "$work/again/usr/share/doc/demo/manual.txt" | tail -n 2 | head -n 1
if as_user cat "$work/again/usr/share/doc/demo/manual.txt" >/dev/null; then
    echo "tampered bytes were served: this is a bug" >&2
    exit 1
fi
echo "the daemon's log says which file, which object and where:"
grep 'refused' "$work/daemon.log" | tail -n 1
im umount "$work/again"

step "done; removing $work${user:+ and user $user}"
