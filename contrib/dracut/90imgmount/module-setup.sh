#!/bin/bash
# dracut module: the root filesystem is an image from an imgmount store (imgmount setup-root,
# run by imgmount-setup-root.service before initrd-root-fs.target).
# Install: copy this directory to /usr/lib/dracut/modules.d/90imgmount, then
#   echo 'add_dracutmodules+=" imgmount "' > /etc/dracut.conf.d/imgmount.conf
#   dracut --force

# The binary to install: $IMGMOUNT, else the first imgmount on the PATH or in the usual
# places (dracut's PATH has no /usr/local/sbin, where the README installs it).
imgmount_bin() {
    local c
    for c in "${IMGMOUNT:-}" "$(command -v imgmount 2> /dev/null)" \
        /usr/local/sbin/imgmount /usr/sbin/imgmount /usr/bin/imgmount; do
        if [[ -n $c && -x $c ]]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

check() {
    imgmount_bin > /dev/null || return 1
    # Only when asked for (add_dracutmodules, --add).
    return 255
}

depends() {
    echo systemd
}

installkernel() {
    hostonly='' instmods fuse overlay ${IMGMOUNT_FSTYPES:-ext4}
}

install() {
    inst_binary "$(imgmount_bin)" /usr/bin/imgmount
    inst_simple "$moddir/imgmount-setup-root.service" \
        "$systemdsystemunitdir/imgmount-setup-root.service"
    mkdir -p "${initdir}${systemdsystemunitdir}/initrd-root-fs.target.wants"
    ln_r "$systemdsystemunitdir/imgmount-setup-root.service" \
        "$systemdsystemunitdir/initrd-root-fs.target.wants/imgmount-setup-root.service"
    # The keys whose signatures make a deployment bootable (IMGMOUNT_TRUSTED_DIR to take
    # them from elsewhere); setup-root reads them at /etc/imgmount/trusted.d.
    local keys="${IMGMOUNT_TRUSTED_DIR:-/etc/imgmount/trusted.d}" k
    inst_dir /etc/imgmount/trusted.d
    for k in "$keys"/*.pub; do
        [[ -f $k ]] && inst_simple "$k" "/etc/imgmount/trusted.d/${k##*/}"
    done
}
