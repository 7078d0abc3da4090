#!/bin/bash
# The node's stand-in for systemd units: start/stop/restart/reload/is-active for the two
# daemons a Hetzner docker-ce server runs (docker, ssh). `systemctl` and the runbooks' SSH
# commands land here. A deliberate stop leaves a marker so the entrypoint's watchdog does not
# bring the daemon straight back (a Swarm backup stops Docker on purpose).
set -u
verb=${1:-}
unit=${2:-}
unit=${unit%.service}
[ "$unit" = sshd ] && unit=ssh
[ "$unit" = docker.socket ] && unit=docker
mkdir -p /run/casera

pid_of() {
    local file=$1 pid
    [ -s "$file" ] || return 1
    pid=$(cat "$file")
    [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && echo "$pid"
}

wait_gone() {
    local pid=$1 i
    for i in $(seq 1 "$2"); do
        [ -d "/proc/$pid" ] || return 0
        sleep 1
    done
    return 1
}

case "$unit" in
docker)
    pidfile=/var/run/docker.pid
    start() {
        pid_of $pidfile >/dev/null && return 0
        rm -f /run/casera/docker.stopped
        # Nested containers' cgroups under one parent per node, not the host engine's
        # "docker" parent, so deleting the node can remove what a kill leaves behind.
        node=$(cat /etc/casera/node-name 2>/dev/null || hostname)
        dockerd --cgroup-parent "/casera-nodes/$node" >>/var/log/docker.log 2>&1 </dev/null &
        for _ in $(seq 1 60); do
            docker info >/dev/null 2>&1 && return 0
            sleep 0.5
        done
        echo "dockerd did not answer within 30s; see /var/log/docker.log" >&2
        return 1
    }
    stop() {
        touch /run/casera/docker.stopped
        local pid
        pid=$(pid_of $pidfile) || return 0
        kill -TERM "$pid"
        wait_gone "$pid" 25 || kill -KILL "$pid"
    }
    reload() { pid=$(pid_of $pidfile) && kill -HUP "$pid"; }
    ;;
ssh)
    pidfile=/run/sshd.pid
    start() {
        pid_of $pidfile >/dev/null && return 0
        rm -f /run/casera/ssh.stopped
        mkdir -p /run/sshd
        /usr/sbin/sshd
    }
    stop() {
        touch /run/casera/ssh.stopped
        local pid
        pid=$(pid_of $pidfile) || return 0
        kill -TERM "$pid"
        wait_gone "$pid" 10 || kill -KILL "$pid"
    }
    reload() { /usr/sbin/sshd -t && pid=$(pid_of $pidfile) && kill -HUP "$pid"; }
    ;;
*)
    echo "casera node: unit '$unit' is not managed here (docker, ssh are)" >&2
    exit 0
    ;;
esac

case "$verb" in
start) start ;;
stop) stop ;;
restart)
    if [ "$unit" = ssh ]; then /usr/sbin/sshd -t || exit 1; fi
    stop
    start
    ;;
reload | try-reload-or-restart | reload-or-restart) reload || { stop; start; } ;;
is-active | status)
    if pid_of $pidfile >/dev/null; then echo active; exit 0; else echo inactive; exit 3; fi
    ;;
enable | disable | daemon-reload | mask | unmask) exit 0 ;;
*) echo "usage: $0 start|stop|restart|reload|is-active UNIT" >&2; exit 2 ;;
esac
