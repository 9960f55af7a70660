#!/usr/bin/env bash
# Start a real single-node Slurm cluster (with accounting) on this machine, for tests and for
# trying the Slurm path on a workstation. Needs root. Installs Debian's packages if missing.
#
#   slurm/start-local-cluster.sh STATE_DIR [PORT_BASE]
#   source STATE_DIR/env.sh        # exports SLURM_CONF for sbatch, squeue, sacct, submitit
#   slurm/stop-local-cluster.sh STATE_DIR
#
# Everything (config, munge socket, MariaDB data, Slurm state, logs) lives under STATE_DIR, and
# the daemons use the ports PORT_BASE..PORT_BASE+3, so two clusters can run side by side.
# Daemons are stopped by the pid files written here, never by name.
#
# Why it looks the way it does:
# - submitit reads job states through sacct, which needs slurmdbd backed by a database; without
#   it, result() on a cancelled or timed-out job waits forever.
# - The munge socket lives outside /run, so AccountingStoragePass names it explicitly; otherwise
#   slurmctld reaches slurmdbd through the default socket and fails authentication.
# - DOWN/DRAIN/INVAL node states persist in the state folder; they are removed before start.
# - PID 1 may not reap processes, so liveness is read from /proc/PID/stat (Z means dead).
set -eu

STATE_DIR=${1:?usage: start-local-cluster.sh STATE_DIR [PORT_BASE]}
PORT_BASE=${2:-${SLURM_LOCAL_PORT_BASE:-6817}}
mkdir -p "$STATE_DIR"
D=$(cd "$STATE_DIR" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
CTLD_PORT=$PORT_BASE
DBD_PORT=$((PORT_BASE + 1))
DB_PORT=$((PORT_BASE + 2))
SLURMD_PORT=$((PORT_BASE + 3))

log() { echo "[local-slurm] $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root and apt may be needed)"

# --- install -----------------------------------------------------------------------------
need=""
for bin in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client slurmdbd:slurmdbd \
    mariadbd:mariadb-server; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || need="$need ${bin##*:}"
done
if [ -n "$need" ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing$need and no apt-get to install them"
    log "installing$need"
    # Keep apt from starting system-wide daemons: ours run from STATE_DIR.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends $need >"$D/apt.log" 2>&1; then
        apt-get update -q >>"$D/apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends $need >>"$D/apt.log" 2>&1 \
            || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install failed; see $D/apt.log"; }
    fi
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# --- helpers -----------------------------------------------------------------------------
alive() {  # alive PIDFILE: the process exists and is not a zombie
    [ -s "$1" ] || return 1
    local pid state
    pid=$(cat "$1")
    [ -r "/proc/$pid/stat" ] || return 1
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [ "$state" != Z ]
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 i=0
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -le $((limit * 10)) ] || return 1
        sleep 0.1
    done
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

mkdir -p "$D"/{etc,munge,state,spool,run,log,mysql}
chmod 755 "$D" "$D/munge"

if alive "$D/run/slurmctld.pid" && alive "$D/run/slurmd.pid"; then
    log "already running in $D"
else
    # A half-started cluster from an earlier attempt: stop what is left.
    "$HERE/stop-local-cluster.sh" "$D" >/dev/null 2>&1 || true
    for p in $CTLD_PORT $DBD_PORT $DB_PORT $SLURMD_PORT; do
        port_free "$p" || die "port $p is in use; pass another PORT_BASE (now $PORT_BASE)"
    done

    HOST=$(hostname -s)
    SOCK="$D/munge/munge.socket"

    # --- munge ---------------------------------------------------------------------------
    if [ ! -s "$D/munge/munge.key" ]; then
        dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$D/munge/munge.key"
    fi
    munged --force --socket="$SOCK" --key-file="$D/munge/munge.key" --pid-file="$D/run/munged.pid" \
        --log-file="$D/log/munged.log" --seed-file="$D/munge/munge.seed"
    wait_for 10 munged test -S "$SOCK" || die "munged did not start; see $D/log/munged.log"

    # --- MariaDB for slurmdbd ------------------------------------------------------------
    if [ ! -d "$D/mysql/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$D/mysql" --user=root \
            --auth-root-authentication-method=normal >"$D/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed; see $D/log/mariadb-install.log"
    fi
    setsid mariadbd --no-defaults --datadir="$D/mysql" --user=root --port="$DB_PORT" \
        --bind-address=127.0.0.1 --socket="$D/run/mysql.sock" --pid-file="$D/run/mariadb.pid" \
        --log-error="$D/log/mariadb.log" --skip-log-bin --innodb-buffer-pool-size=64M \
        </dev/null >/dev/null 2>&1 &
    echo $! >"$D/run/mariadb.pid.launch"
    wait_for 30 mariadb test -S "$D/run/mysql.sock" || die "mariadbd did not start; see $D/log/mariadb.log"

    # --- config --------------------------------------------------------------------------
    read -r CPUS BOARDS SOCKETS CORES THREADS MEM < <(slurmd -C | awk '
        /NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
        END { print v["CPUs"], v["Boards"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"] }')
    MEM=$((MEM * 95 / 100))

    cat >"$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db_$PORT_BASE
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
EOF
    chmod 600 "$D/etc/slurmdbd.conf"

    cat >"$D/etc/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=30
NodeName=$HOST NodeHostname=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=$BOARDS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$D/etc/slurm.conf"

    # --- daemons -------------------------------------------------------------------------
    # slurmdbd reads slurmdbd.conf from the folder of SLURM_CONF.
    slurmdbd || die "slurmdbd did not start; see $D/log/slurmdbd.log"
    wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT" \
        || die "slurmdbd is not listening on $DBD_PORT; see $D/log/slurmdbd.log"
    sacctmgr -i add cluster local >/dev/null 2>&1 || true

    rm -f "$D"/state/node_state*
    slurmctld -f "$SLURM_CONF" || die "slurmctld did not start; see $D/log/slurmctld.log"
    wait_for 20 slurmctld scontrol ping || die "slurmctld does not answer; see $D/log/slurmctld.log"
    slurmd -f "$SLURM_CONF" -N "$HOST" || die "slurmd did not start; see $D/log/slurmd.log"

    node_idle() {
        local s
        s=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
        case "$s" in idle* | mixed* | allocated*) return 0 ;; esac
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        return 1
    }
    wait_for 30 node node_idle || die "node $HOST did not become idle (state: $(sinfo -h -o %T)); see $D/log/slurmd.log"
fi

export SLURM_CONF="$D/etc/slurm.conf"
# Jobs left from an unclean stop can come back as RUNNING and hold the node.
scancel --user="$(id -un)" >/dev/null 2>&1 || true
echo "export SLURM_CONF=$D/etc/slurm.conf" >"$D/env.sh"
log "cluster up: SLURM_CONF=$SLURM_CONF (ports $PORT_BASE-$SLURMD_PORT)"
echo "export SLURM_CONF=$SLURM_CONF"
