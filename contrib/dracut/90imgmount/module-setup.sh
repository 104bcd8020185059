#!/bin/bash
# dracut module: the root filesystem is an image from an imgmount store (imgmount setup-root,
# run by imgmount-setup-root.service before initrd-root-fs.target).
# Install: copy this directory to /usr/lib/dracut/modules.d/90imgmount, then
#   echo 'add_dracutmodules+=" imgmount "' > /etc/dracut.conf.d/imgmount.conf
#   dracut --force

check() {
    require_binaries imgmount || return 1
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
    inst_binary "$(command -v imgmount)" /usr/bin/imgmount
    inst_simple "$moddir/imgmount-setup-root.service" \
        "$systemdsystemunitdir/imgmount-setup-root.service"
    mkdir -p "${initdir}${systemdsystemunitdir}/initrd-root-fs.target.wants"
    ln_r "$systemdsystemunitdir/imgmount-setup-root.service" \
        "$systemdsystemunitdir/initrd-root-fs.target.wants/imgmount-setup-root.service"
}
