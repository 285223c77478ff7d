#!/bin/sh
# The VM's workload: show what it is, then exit; the VM powers off with this status.
echo "hello from $(cat /etc/hostname): Debian $(cat /etc/debian_version), $(uname -sr)"
echo "user app: $(id app)"
echo "packages: $(dpkg-query -W -f='${Package}\n' | wc -l)"
