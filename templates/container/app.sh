#!/bin/sh
# The container's entrypoint: greets its argument (cmd, or what follows
# `ovm run REF --`), says who and where it is, and exits 0.
echo "$GREETING $1 from $(hostname): user $(id -un) ($(id -u):$(id -g)) in $(pwd)"
[ -f motd.txt ] && cat motd.txt
exit 0
