#!/bin/bash
# PID 1's child in a casera node (tini is PID 1 and reaps orphans). Plays the part that
# systemd plays on a Hetzner server: rules, first-boot cloud-init, dockerd, sshd, and a clean
# stop on SIGTERM so `docker stop` behaves like `shutdown` (Swarm sees dockerd leave).
set -u

log() { echo "casera-node: $*"; }

# /run is a tmpfs: recreate what the daemons expect there on every boot.
mkdir -p /run/sshd /run/casera

# Firewall and partition rules live in /etc/casera so they survive a restart of the node,
# as a Hetzner firewall does. They go in before any daemon listens.
for rules in /etc/casera/firewall.sh /etc/casera/partition.sh; do
    if [ -x "$rules" ]; then
        "$rules" || log "applying $rules failed"
    fi
done

# As systemd does before cloud-init: run the generators (sshd-socket-generator reads the
# sshd_config of this moment) and start sockets.target, so ssh.socket listens on the ports
# the config had at boot. A Port that cloud-init writes later moves nothing until
# `systemctl daemon-reload` and `systemctl restart ssh.socket` (see casera-service).
/usr/local/sbin/casera-service daemon-reload
/usr/local/sbin/casera-service start ssh.socket

# cloud-init runs once per instance, like on a cloud server; its own semaphore under
# /var/lib/cloud/instance makes a re-run of these stages a no-op on later boots.
if [ -e /var/lib/cloud/seed/nocloud/meta-data ] && [ ! -e /var/lib/cloud/instance/boot-finished ]; then
    log "first boot: running cloud-init"
    {
        cloud-init init --local
        cloud-init init
        cloud-init modules --mode=config
        cloud-init modules --mode=final
    } >>/var/log/casera-cloud-init.log 2>&1
    log "cloud-init finished: $(cloud-init status 2>&1 | tr '\n' ' ')"
fi

# Host keys are per node: the image carries none. cloud-init writes the ones the user data
# gives (ssh_keys) or generates its own (ssh_genkeytypes); only a node whose cloud-init made
# none gets keys here. Never alongside given keys: a Hetzner server has exactly those, and an
# extra unpinned key would be one more key a client might be offered. No RSA key: a 3072-bit
# one takes seconds on these machines, and every client here speaks ed25519.
if ! compgen -G '/etc/ssh/ssh_host_*_key' >/dev/null; then
    for type in ed25519 ecdsa; do
        ssh-keygen -q -t "$type" -N '' -f "/etc/ssh/ssh_host_${type}_key"
    done
fi

/usr/local/sbin/casera-service start docker
/usr/local/sbin/casera-service start ssh
touch /run/casera/booted
log "up: $(hostname)"

stopping=0
# Exit status 100 asks Docker's on-failure restart policy to boot the node again (`reboot`
# in the node, see power.sh); 0 leaves it off.
shutdown() {
    stopping=1
    log "shutting down"
    /usr/local/sbin/casera-service stop ssh
    /usr/local/sbin/casera-service stop docker
    if [ -e /run/casera/reboot-requested ]; then
        log "rebooting"
        exit 100
    fi
    exit 0
}
trap shutdown TERM INT

# Stay alive while the node is up; a daemon that dies is restarted, as systemd would.
while [ "$stopping" = 0 ]; do
    sleep 5 &
    wait $!
    for svc in docker ssh; do
        if [ "$stopping" = 0 ] && ! /usr/local/sbin/casera-service is-active "$svc" >/dev/null \
            && [ ! -e "/run/casera/$svc.stopped" ]; then
            log "$svc is not running: starting it"
            /usr/local/sbin/casera-service start "$svc"
        fi
    done
done
