#!/bin/sh
#
# dify-status-entrypoint.sh: finds Redis for ngx_http_dify_status_module,
# then runs the command it is given (Dify's own nginx entrypoint).
#
# The module takes an IP address (or unix:/path), never a host name: a
# lookup would block the nginx worker.  Unless DIFY_STATUS_REDIS is set
# already (a fixed IP, or unix:/path), this looks up DIFY_STATUS_REDIS_HOST
# (default "redis", the compose service) once, now, and exports
# DIFY_STATUS_REDIS=IP:PORT for the templates.  If Redis's container later
# comes back with another IP, restart the nginx container (a reload does
# not run this again).

set -eu

if [ -z "${DIFY_STATUS_REDIS:-}" ]; then
    host=${DIFY_STATUS_REDIS_HOST:-redis}
    port=${DIFY_STATUS_REDIS_PORT:-6379}
    tries=0

    # Redis may start after nginx: wait up to 60 s for its name
    until ip=$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }') \
          && [ -n "$ip" ]
    do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            echo "dify-status-entrypoint: cannot resolve \"$host\"" >&2
            exit 1
        fi
        sleep 1
    done

    DIFY_STATUS_REDIS=$ip:$port
    export DIFY_STATUS_REDIS
fi

echo "dify-status-entrypoint: Redis for dify_status at $DIFY_STATUS_REDIS" >&2

if [ "$#" -eq 0 ]; then
    set -- nginx -g 'daemon off;'
fi

exec "$@"
