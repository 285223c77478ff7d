#!/bin/sh
# Print what the host wrote into the shared memory region.
exec od -An -c "$1"
