#!/usr/bin/env bash
# A real Slurm cluster on this machine, from Debian's packages: munged, MariaDB + slurmdbd (so that sacct works),
# slurmctld and two slurmd (node1, node2) with two fake GPUs each, and two partitions: `batch` (the default) and
# `urgent`, whose jobs preempt `batch` jobs (requeue).
#
#   slurm/local-cluster/start.sh [STATE_DIR]     (default: .cache/slurm-local; env SLURM_LOCAL_DIR)
#   export SLURM_CONF=STATE_DIR/etc/slurm.conf   (printed at the end; also in STATE_DIR/env.sh)
#
# Idempotent: a daemon whose pid file names a live process is left alone. Everything (configs, keys, databases,
# logs, pid files, sockets) lives under STATE_DIR; nothing outside it is touched. Ports: SLURM_LOCAL_PORT (default
# 17800) for slurmctld, +1 slurmdbd, +2 MariaDB, +11/+12 the two slurmd. Needs root (slurmd runs jobs as their user).
set -euo pipefail

STATE=$(realpath -m "${1:-${SLURM_LOCAL_DIR:-.cache/slurm-local}}")
PORT=${SLURM_LOCAL_PORT:-17800}
CPUS=${SLURM_LOCAL_CPUS:-4}          # per node, advertised (config_overrides): lets a few jobs share the box
MEM=${SLURM_LOCAL_MEM_MB:-8000}      # per node
CLUSTER=harness-local

log() { echo "[local-cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) == 0 ]] || die "run as root (slurmd must be able to start jobs as any user)"
# munged's socket and slurmd's step sockets live under STATE, and a unix socket's path has at most 107 bytes
((${#STATE} <= 70)) || die "the state directory's path is ${#STATE} characters ($STATE): the sockets under it would pass the 107 bytes a unix socket's path may have; use one of at most 70"

# ---- packages (about 10-40 s the first time; nothing is started by the install)
need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v slurmdbd >/dev/null || need+=(slurmdbd)
command -v munged >/dev/null || need+=(munge)
command -v mariadbd >/dev/null || need+=(mariadb-server)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$STATE"/{etc,run,log,munge,sock,ctld,spool,dev,mysql}
chmod 700 "$STATE/munge"; chmod 755 "$STATE/sock"
ETC=$STATE/etc RUN=$STATE/run LOG=$STATE/log
MUNGE_SOCKET=$STATE/sock/munge.socket

# ---- configuration (rewritten each time: same inputs, same files)
for i in 0 1; do [[ -c $STATE/dev/gpu$i ]] || mknod "$STATE/dev/gpu$i" c 1 3; done  # /dev/null clones
cat >"$ETC/slurm.conf" <<EOF
# written by slurm/local-cluster/start.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
GresTypes=gpu
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1,sched_min_interval=200000
MessageTimeout=20
KillWait=20
MinJobAge=600
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 1))
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/none
NodeName=node[1-2] NodeAddr=127.0.0.1 Port=[$((PORT + 11))-$((PORT + 12))] CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=batch Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=node[1-2] MaxTime=INFINITE State=UP PriorityTier=10
EOF
cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$STATE/dev/gpu[0-1]
EOF
cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$((PORT + 1))
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 2))
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
EOF
chmod 600 "$ETC/slurmdbd.conf"
echo "export SLURM_CONF=$ETC/slurm.conf" >"$STATE/env.sh"
export SLURM_CONF=$ETC/slurm.conf

# ---- munge
[[ -f $STATE/munge/munge.key ]] || { head -c 1024 /dev/urandom >"$STATE/munge/munge.key"; chmod 400 "$STATE/munge/munge.key"; }
if ! alive "$RUN/munged.pid"; then
  munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" --pid-file="$RUN/munged.pid" \
    --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munged.seed" 2>>"$LOG/munged.log" ||
    die "munged failed: $(tail -n 1 "$LOG/munged.log")"
fi

# ---- MariaDB (for slurmdbd only: loopback, its own data directory and socket)
DB_SOCKET=$STATE/mysql.sock
if ! alive "$RUN/mariadb.pid"; then
  if [[ ! -d $STATE/mysql/mysql ]]; then
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $LOG/mariadb-install.log"
  fi
  mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --socket="$DB_SOCKET" --port=$((PORT + 2)) \
    --bind-address=127.0.0.1 --pid-file="$RUN/mariadb.pid" --log-error="$LOG/mariadb.log" \
    --innodb-buffer-pool-size=64M --skip-log-bin >/dev/null 2>&1 &
  for _ in $(seq 100); do [[ -S $DB_SOCKET ]] && break; sleep 0.1; done
  [[ -S $DB_SOCKET ]] || die "MariaDB did not start: $LOG/mariadb.log"
  mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "cannot create the slurm database user"
fi

# ---- Slurm daemons (each forks and writes its pid file)
alive "$RUN/slurmdbd.pid" || slurmdbd || die "slurmdbd failed: $LOG/slurmdbd.log"
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$((PORT + 1))) 2>/dev/null && break; sleep 0.1; done
alive "$RUN/slurmctld.pid" || slurmctld -i -f "$ETC/slurm.conf" || die "slurmctld failed: $LOG/slurmctld.log"
for n in node1 node2; do
  alive "$RUN/slurmd-$n.pid" || slurmd -N "$n" -f "$ETC/slurm.conf" || die "slurmd $n failed: $LOG/slurmd-$n.log"
done

# ---- ready when both nodes are idle (or busy with our jobs) and accounting answers
for _ in $(seq 300); do
  # (sinfo fails until slurmctld answers; under set -e and pipefail that failure would end this script silently)
  states=$(sinfo -h -N -p batch -o %T 2>/dev/null | sort -u | tr '\n' ' ') || states=
  if [[ -n $states && ! $states =~ (down|drain|unknown|not_responding|fail) ]] && sacct -n -X -S now >/dev/null 2>&1; then
    log "ready: nodes ${states% } (state in $STATE)"
    echo "export SLURM_CONF=$ETC/slurm.conf"
    exit 0
  fi
  sleep 0.1
done
sinfo -N -l >&2 || true
die "the cluster did not become ready in 30 s; logs in $LOG"
