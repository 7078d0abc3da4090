#!/bin/bash
# The node's stand-in for systemd units: start/stop/restart/reload/is-active for the two
# daemons a Hetzner docker-ce server runs (docker, ssh), plus ssh.socket and daemon-reload.
# `systemctl`, `service` and the runbooks' SSH commands land here. A deliberate stop leaves a
# marker so the entrypoint's watchdog does not bring the daemon straight back (a Swarm backup
# stops Docker on purpose).
#
# SSH behaves as on Ubuntu 24.04 (Hetzner's docker-ce image), where sshd is socket-activated:
# systemd's ssh.socket owns the listening addresses and sshd, handed that socket, ignores its
# own Port lines. The socket's addresses come from sshd_config through sshd-socket-generator,
# which systemd runs at boot and on `systemctl daemon-reload` only. So after a new Port:
#   systemctl restart ssh            -> still (only) the old port, 22 stays open;
#   systemctl daemon-reload          -> the generator reads the new Port, nothing moves yet;
#   systemctl restart ssh.socket     -> the socket moves, and sshd restarts with it
#                                       (ssh.socket is RequiredBy=ssh.service).
# Sources: discourse.ubuntu.com/t/sshd-now-uses-socket-based-activation-ubuntu-22-10-and-later
# /30189, willshersystems/ansible-sshd#307, systemd/systemd#36795 (Ubuntu 24's ssh.socket and
# the generated /run/systemd/generator/ssh.socket.d/addresses.conf). Here sshd listens itself,
# on exactly the socket's ports (`sshd -p`, which overrides its Port lines), which is the
# same from outside. Not emulated: disabling the socket (it fails loudly instead).
set -u
verb=${1:-}
unit=${2:-}
unit=${unit%.service}
[ "$unit" = sshd ] && unit=ssh
[ "$unit" = docker.socket ] && unit=docker
[ "$unit" = sshd.socket ] && unit=ssh.socket
mkdir -p /run/casera

# The socket's state: ports the generator derived from sshd_config at the last boot or
# daemon-reload, and ports the socket listens on since it last (re)started.
GENERATED=/run/casera/ssh.socket.generated
LISTENING=/run/casera/ssh.socket.listen

# sshd-socket-generator: every port of sshd's effective config (Port lines add up), read by
# sshd's own parser. `sshd -T` insists on a loadable host key, which a first boot has not made
# yet; a throwaway one only for parsing stands in (-h adds a key, the config's stay).
generate_ssh_socket() {
    local parse_key=/run/casera/ssh-parse-hostkey ports
    [ -e $parse_key ] || ssh-keygen -q -t ed25519 -N '' -f $parse_key </dev/null >/dev/null
    ports=$(/usr/sbin/sshd -T -h $parse_key 2>/dev/null | awk '$1 == "port" {print $2}' \
        | sort -un | tr '\n' ' ')
    # A config sshd cannot parse leaves ssh.socket as packaged: port 22.
    echo "${ports:-22}" >$GENERATED
}

if [ "$verb" = daemon-reload ]; then
    generate_ssh_socket
    exit 0
fi

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
        [ -s $LISTENING ] || { [ -s $GENERATED ] || generate_ssh_socket; cp $GENERATED $LISTENING; }
        local port args=()
        for port in $(cat $LISTENING); do args+=(-p "$port"); done
        /usr/sbin/sshd "${args[@]}"
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
ssh.socket)
    pidfile=/run/sshd.pid
    start() {
        [ -s $GENERATED ] || generate_ssh_socket
        cp $GENERATED $LISTENING
        # The socket listens from here on; sshd comes with it once it has a host key (on a
        # first boot cloud-init writes them later, and on Ubuntu sshd would spawn on demand).
        if compgen -G '/etc/ssh/ssh_host_*_key' >/dev/null; then
            /usr/local/sbin/casera-service start ssh
        fi
    }
    stop() {
        /usr/local/sbin/casera-service stop ssh
        rm -f $LISTENING
    }
    reload() { stop; start; }
    case "$verb" in
    is-active | status)
        if [ -s $LISTENING ]; then echo active; exit 0; else echo inactive; exit 3; fi
        ;;
    disable | mask)
        echo "casera node: turning ssh.socket off is not emulated; move the port with" \
            "'systemctl daemon-reload && systemctl restart ssh.socket' as Ubuntu 24.04 needs" >&2
        exit 1
        ;;
    esac
    ;;
*)
    echo "casera node: unit '$unit' is not managed here (docker, ssh, ssh.socket are)" >&2
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
enable | disable | mask | unmask) exit 0 ;;
*) echo "usage: $0 start|stop|restart|reload|is-active UNIT" >&2; exit 2 ;;
esac
