#!/usr/bin/env bash
# Stop the local cluster started by start.sh: cancel its jobs, then stop each daemon by its pid file.
#   slurm/local-cluster/stop.sh [STATE_DIR] [--purge]   (--purge also deletes STATE_DIR: job ids restart at 1)
# Only processes named in STATE_DIR/run/*.pid are signalled (and the job steps of this cluster's own jobs).
set -uo pipefail

PURGE=0
ARGS=()
for a in "$@"; do [[ $a == --purge ]] && PURGE=1 || ARGS+=("$a"); done
STATE=$(realpath -m "${ARGS[0]:-${SLURM_LOCAL_DIR:-.cache/slurm-local}}")
RUN=$STATE/run
export SLURM_CONF=$STATE/etc/slurm.conf

log() { echo "[local-cluster] $*" >&2; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# job steps outlive slurmd: cancel this cluster's jobs first and wait for them to go
if alive "$RUN/slurmctld.pid"; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [[ -n $jobs ]]; then
    scancel $jobs 2>/dev/null
    for _ in $(seq 300); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.1; done
  fi
fi

stop() {  # pid files: SIGTERM to all, then wait (SIGKILL after 10 s)
  local pids=() f
  for f in "$@"; do alive "$f" && pids+=("$(cat "$f")"); rm -f "$f"; done
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in $(seq 200); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.05; done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { log "$p ignored SIGTERM: SIGKILL"; kill -KILL "$p"; }; done
  return 0
}
# the Slurm daemons and the database together, munge (which they talk through) last
stop "$RUN"/slurmd-node1.pid "$RUN"/slurmd-node2.pid "$RUN"/slurmctld.pid "$RUN"/slurmdbd.pid "$RUN"/mariadb.pid
stop "$RUN"/munged.pid
log "stopped (state in $STATE)"
if ((PURGE)); then rm -rf "$STATE"; log "purged $STATE"; fi
