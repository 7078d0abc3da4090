#!/bin/sh
# Entry point of the local redis image. Arguments work as with the official image
# (`redis-server --appendonly yes ...`), so one stack file serves both.
#
# Redis started with appendonly yes ignores a lone dump.rdb and comes up empty. A volume
# holding only dump.rdb is a restored snapshot (the failover runbook puts it there): load it
# with AOF off, then turn AOF on, which writes the AOF from what was loaded.
set -e
if [ "$1" = "redis-server" ]; then shift; fi
if [ -f /data/dump.rdb ] && [ ! -d /data/appendonlydir ]; then
  echo "casera: /data has dump.rdb and no appendonlydir: loading the snapshot, then enabling AOF"
  (
    i=0
    while [ $i -lt 600 ]; do
      if [ "$(redis-cli ping 2>/dev/null)" = "PONG" ]; then
        redis-cli config set appendonly yes >/dev/null && echo "casera: AOF enabled" && exit 0
      fi
      i=$((i + 1)); sleep 1
    done
    echo "casera: redis did not answer; AOF left off"
  ) &
  # Last on the command line wins over the same directive earlier in "$@".
  exec redis-server /etc/redis/casera.conf "$@" --appendonly no
fi
exec redis-server /etc/redis/casera.conf "$@"
