#!/bin/sh
# Builds ngx_http_dify_status_module against an nginx source, with
# --with-compat, so that it loads into any nginx binary of the same
# version that was itself configured --with-compat (the official docker
# images and the nginx.org packages are), whatever its other flags.
#
#   build-module.sh NGINX_SRC MODULE_DIR OUT_DIR [configure arguments]
#
# NGINX_SRC: an unpacked nginx source (a release, with ./configure, or
# nginx's repository, with auto/configure); MODULE_DIR: this checkout
# (its "config" file); OUT_DIR receives ngx_http_dify_status_module.so.
# Used by conf/docker/Dockerfile and by t/61-official-image.t.

set -eu

[ $# -ge 3 ] || { echo "usage: $0 NGINX_SRC MODULE_DIR OUT_DIR [args]" >&2; exit 2; }
src=$1 mod=$(cd "$2" && pwd) out=$3
shift 3
mkdir -p "$out"
out=$(cd "$out" && pwd)

cd "$src"
if [ -x configure ]; then conf=./configure; else conf=auto/configure; fi
$conf --with-compat "$@" --add-dynamic-module="$mod" > "$out/configure.log" 2>&1 \
    || { tail -30 "$out/configure.log" >&2; exit 1; }
make -j"$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" -f objs/Makefile \
    modules > "$out/make.log" 2>&1 \
    || { tail -40 "$out/make.log" >&2; exit 1; }
cp objs/ngx_http_dify_status_module.so "$out/"
