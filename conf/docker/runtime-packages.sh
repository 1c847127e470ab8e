#!/bin/sh
# Prints the Debian packages that hold the shared libraries a binary
# needs (ldd), one per line: what the final stage of conf/docker/Dockerfile
# installs next to the module (libhiredis, libjansson, ...), named as the
# Debian release of the image names them.
#
#   runtime-packages.sh FILE.so

set -eu

[ $# -eq 1 ] || { echo "usage: $0 FILE" >&2; exit 2; }
ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
    name=${lib##*/}
    # merged /usr: dpkg may know the file under /lib or /usr/lib
    dpkg-query -S "*/$name" 2>/dev/null | sed -n 's/^\([^:,]*\).*/\1/p' | head -1
done | sort -u
