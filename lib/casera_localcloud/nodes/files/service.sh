#!/bin/bash
# `service UNIT VERB` inside a node. Debian's own would run /etc/init.d/ssh, which starts an
# sshd outside casera-service and so outside the emulated ssh.socket (cloud-init calls
# `service ssh ...` where it finds no systemd). On Ubuntu 24.04 `service` goes to systemctl.
set -u
unit=${1:-}
verb=${2:-}
if [ -z "$unit" ] || [ -z "$verb" ]; then
    echo "usage: service UNIT start|stop|restart|reload|status" >&2
    exit 2
fi
exec /usr/local/sbin/casera-service "$verb" "$unit"
