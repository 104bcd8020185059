#!/bin/sh
# Installs imgmount with its mount helper, shell completions and man pages.
#
#   packaging/install.sh                          as root: /usr/local and /sbin
#   DESTDIR=/tmp/pkg PREFIX=/usr packaging/install.sh   into a package tree
#
# PREFIX (default /usr/local) holds bin/, share/man/man1/ and the completions;
# SBINDIR (default /sbin, where mount(8) looks) gets mount.imgmount, a link to
# the binary, so that `mount -t imgmount`, fstab lines and systemd mount units
# work. IMGMOUNT_BIN names a binary already built; otherwise this builds
# target/release/imgmount.
set -eu
PREFIX=${PREFIX:-/usr/local}
SBINDIR=${SBINDIR:-/sbin}
DESTDIR=${DESTDIR:-}
bin=${IMGMOUNT_BIN:-}
# Relative to where the script was started, before it moves to the repository.
[ -z "$bin" ] || bin=$(readlink -f "$bin")
cd "$(dirname "$0")/.."
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=target/release/imgmount
fi

install -D -m 0755 "$bin" "$DESTDIR$PREFIX/bin/imgmount"
install -d "$DESTDIR$SBINDIR"
ln -sf "$PREFIX/bin/imgmount" "$DESTDIR$SBINDIR/mount.imgmount"

share="$DESTDIR$PREFIX/share"
install -d "$share/bash-completion/completions" "$share/zsh/site-functions" \
    "$share/fish/vendor_completions.d"
"$bin" completions bash > "$share/bash-completion/completions/imgmount"
"$bin" completions zsh > "$share/zsh/site-functions/_imgmount"
"$bin" completions fish > "$share/fish/vendor_completions.d/imgmount.fish"
"$bin" manpages "$share/man/man1"

echo "installed $DESTDIR$PREFIX/bin/imgmount, $DESTDIR$SBINDIR/mount.imgmount," \
    "completions and man pages under $share"
