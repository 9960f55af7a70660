#!/usr/bin/env bash
# Stop a cluster started by start-local-cluster.sh: cancel its jobs, then SIGTERM each daemon by
# the pid file written at start (never by name), waiting for it to exit.
#
#   slurm/stop-local-cluster.sh STATE_DIR
set -u

STATE_DIR=${1:?usage: stop-local-cluster.sh STATE_DIR}
[ -d "$STATE_DIR" ] || exit 0
D=$(cd "$STATE_DIR" && pwd)

alive() {  # alive PID: the process exists and is not a zombie
    [ -r "/proc/$1/stat" ] || return 1
    [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)" != Z ]
}
stop() {  # stop PIDFILE
    [ -s "$1" ] || return 0
    local pid i=0
    pid=$(cat "$1")
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        while alive "$pid" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$1"
}

if [ -f "$D/etc/slurm.conf" ]; then
    export SLURM_CONF="$D/etc/slurm.conf"
    if [ -s "$D/run/slurmctld.pid" ] && alive "$(cat "$D/run/slurmctld.pid")"; then
        timeout 10 scancel --user="$(id -un)" >/dev/null 2>&1 || true
        sleep 0.5
    fi
fi
stop "$D/run/slurmd.pid"
stop "$D/run/slurmctld.pid"
stop "$D/run/slurmdbd.pid"
[ -s "$D/run/mariadb.pid" ] || { [ -s "$D/run/mariadb.pid.launch" ] && cp "$D/run/mariadb.pid.launch" "$D/run/mariadb.pid"; }
stop "$D/run/mariadb.pid"
rm -f "$D/run/mariadb.pid.launch"
stop "$D/run/munged.pid"
rm -f "$D/env.sh"
echo "[local-slurm] stopped cluster in $D" >&2
