#!/bin/sh
# The VM's workload: say hello and exit; the VM powers off with this status.
echo "hello from $(cat /etc/hostname): $(uname -sr), $(free -m | awk '/Mem:/ {print $2}') MiB of memory"
