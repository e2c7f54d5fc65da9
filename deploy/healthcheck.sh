#!/bin/bash
# Container health probe: GET /healthz on keygate's admin listener; healthy
# (exit 0) on a 200 answer within 2 seconds, unhealthy (exit 1) otherwise.
#
# Plain bash over /dev/tcp, so the runtime image needs no curl or wget. The
# address comes from KEYGATE_SERVER__ADMIN_LISTEN (the image sets
# 0.0.0.0:8081); a wildcard host is probed on loopback.
set -u

addr="${KEYGATE_SERVER__ADMIN_LISTEN:-127.0.0.1:8081}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in
    "" | 0.0.0.0) host=127.0.0.1 ;;
    ::) host=::1 ;;
esac

if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    echo "keygate-healthcheck: cannot connect to the admin listener at $host:$port"
    exit 1
fi
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: keygate-healthcheck\r\nConnection: close\r\n\r\n' >&3 || exit 1
# The status line, within 2 seconds.
if ! read -r -t 2 version status reason <&3; then
    echo "keygate-healthcheck: no answer from $host:$port within 2s"
    exit 1
fi
exec 3<&-
if [ "$status" != 200 ]; then
    echo "keygate-healthcheck: /healthz answered ${version:-} ${status:-} ${reason:-}"
    exit 1
fi
