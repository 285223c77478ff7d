#!/bin/sh
# Make ./image: an OCI image layout with one small container image, "app",
# using umoci (Debian's umoci package) and busybox (from busybox-static;
# `ovm init` put a copy beside this script). Two layers: busybox with its
# applets, then the app, its user and its config: what `docker build` would
# give for a two-step Dockerfile.
set -eu
cd "$(dirname "$0")"
BUSYBOX=${BUSYBOX:-./busybox}
[ -x "$BUSYBOX" ] || BUSYBOX=/bin/busybox
ROOTLESS=
[ "$(id -u)" = 0 ] || ROOTLESS=--rootless
rm -rf image bundle
umoci init --layout image
umoci new --image image:app
umoci unpack $ROOTLESS --image image:app bundle

# layer 1: busybox and its applets
mkdir -p bundle/rootfs/bin bundle/rootfs/etc bundle/rootfs/tmp
cp "$BUSYBOX" bundle/rootfs/bin/busybox
chmod 0755 bundle/rootfs/bin/busybox
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -sf busybox "bundle/rootfs/bin/$a"; done
chmod 1777 bundle/rootfs/tmp
umoci repack --image image:app bundle

# layer 2: the app and the user it runs as
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' > bundle/rootfs/etc/passwd
printf 'root:x:0:\napp:x:1000:\n' > bundle/rootfs/etc/group
mkdir -p bundle/rootfs/app bundle/rootfs/home/app
cp app.sh bundle/rootfs/app/app.sh
chmod 0755 bundle/rootfs/app/app.sh
[ -n "$ROOTLESS" ] || chown -R 1000:1000 bundle/rootfs/home/app bundle/rootfs/app
umoci repack --image image:app bundle

umoci config --image image:app \
  --config.env GREETING=hello --config.workingdir /app --config.user app \
  --config.entrypoint /app/app.sh --config.cmd world --config.exposedports 8080/tcp
umoci gc --layout image
rm -rf bundle
echo "wrote $(pwd)/image (oci:image:app)"
