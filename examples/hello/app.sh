#!/bin/sh
# The workload of Ovmfile.example: prints what the build left behind, then exits
# (the VM powers off with this script's exit status).
echo "hello VM: running $0 in $(pwd) as uid $(id -u), APP_HOME=$APP_HOME"
echo "greeting baked at build time: $(cat greeting)"
echo "kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s)"
