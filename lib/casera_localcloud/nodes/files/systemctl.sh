#!/bin/bash
# Nodes run no systemd (it cannot be PID 1 in this container); runbooks and cloud-init
# runcmd still say `systemctl restart ssh`, so the usual verbs go to casera-service.
set -u
args=()
for a in "$@"; do
    case "$a" in -*) ;; *) args+=("$a") ;; esac
done
verb=${args[0]:-}
# daemon-reload re-runs the generators: sshd-socket-generator re-reads sshd_config's ports.
if [ "$verb" = daemon-reload ]; then exec /usr/local/sbin/casera-service daemon-reload; fi
rc=0
for unit in "${args[@]:1}"; do
    /usr/local/sbin/casera-service "$verb" "$unit" || rc=$?
done
exit $rc
