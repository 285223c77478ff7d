#!/bin/sh
# Write a message into the shared memory region.
printf %s "$2" > "$1"
