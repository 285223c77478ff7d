#!/bin/sh
# Serve the current folder over HTTP with busybox httpd, in the foreground.
ip link set lo up 2>/dev/null
httpd -p "$PORT" -h "$PWD"
echo "listening on :$PORT"
i=0
while true; do
  echo "uptime tick $i"
  i=$((i + 1))
  sleep 5
done
