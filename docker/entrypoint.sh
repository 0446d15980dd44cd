#!/bin/sh
# The image's entry point: `docker run IMAGE --suite ddn_smac ...` runs reproduce.py with those
# arguments; a command that is a program (`docker run IMAGE python -m suites.worker ...`, as the
# docker backend starts its runs, or `bash`) runs as it is.
if [ "$#" -gt 0 ] && command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec python reproduce.py "$@"
