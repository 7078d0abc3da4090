#!/bin/sh
# reboot, poweroff, halt and shutdown inside a node. There is no systemd to ask; PID 1 (tini)
# passes SIGTERM to the entrypoint, which stops sshd and dockerd cleanly and exits: with
# status 0 the container stays off (poweroff), with REBOOT_STATUS Docker's on-failure restart
# policy boots it again, as a server's reboot does. `docker kill` (a hard power-off) counts
# as a manual stop, so that policy never revives a killed node.
action=poweroff
case "$(basename "$0")" in
reboot) action=reboot ;;
esac
for arg in "$@"; do
    case "$arg" in -r | --reboot) action=reboot ;; esac
done
mkdir -p /run/casera
[ "$action" = reboot ] && touch /run/casera/reboot-requested
echo "casera node: $action"
kill -TERM 1
