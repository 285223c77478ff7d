#!/bin/sh
echo "hello: listening on :8080"
exec nc -lk -p 8080 -e echo hello
