#!/usr/bin/env bash
# Tear down the single-node SLURM cluster started by scripts/slurm/start.sh.
#
# Usage: scripts/slurm/stop.sh [--purge]
#
# Cancels the cluster's jobs, then stops slurmd, slurmctld, slurmdbd, mariadbd
# and munged -- only the processes named in start.sh's pid files (munged only
# when start.sh started it). Safe to run when nothing runs.
# --purge also removes the state folder (job ids restart at 1, empty accounting
# DB) and the /etc/slurm/slurm.conf symlink that points into it. Installed
# packages are kept.
#
# Environment: ADVSOUP_SLURM_STATE (default /var/tmp/advsoup-slurm), as for start.sh.
set -euo pipefail

PURGE=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
  esac
done

STATE="${ADVSOUP_SLURM_STATE:-/var/tmp/advsoup-slurm}"
STATE="${STATE%/}"
RUN="$STATE/run"
CONF="$STATE/etc/slurm.conf"
export SLURM_CONF="$CONF"

log() { printf '[slurm/stop] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "ERROR: must run as root"; exit 1; }
[[ "$STATE" = /* && "$STATE" != / ]] || { log "ERROR: bad ADVSOUP_SLURM_STATE '$STATE'"; exit 1; }

LOCK=/run/lock/advsoup-slurm.lock
[ -d /run/lock ] || LOCK=/tmp/advsoup-slurm.lock
exec 9>"$LOCK"
flock -w 600 9 || { log "ERROR: could not get lock $LOCK"; exit 1; }

pid_of() { # pidfile expected-comm -> prints pid if that process is alive
  local pid
  [ -s "$1" ] || return 1
  pid="$(tr -dc '0-9' <"$1")"
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && ! is_zombie "$pid" && echo "$pid"
}

# An exited daemon stays a zombie until PID 1 reaps it (slowly, in containers
# whose init is not a real init): count that as gone.
is_zombie() { [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" = Z ]; }
alive() { kill -0 "$1" 2>/dev/null && ! is_zombie "$1"; }

stop_daemon() { # name pidfile
  local name="$1" pidfile="$2" pid
  if ! pid="$(pid_of "$pidfile" "$name")"; then
    rm -f "$pidfile"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do   # up to 15 s
    alive "$pid" || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  log "$name did not exit after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
  rm -f "$pidfile"
}

# Cancel the cluster's jobs while slurmctld still runs, so that no job steps
# (slurmstepd and the job's processes) outlive the cluster.
if [ -e "$CONF" ] && pid_of "$RUN/slurmctld.pid" slurmctld >/dev/null \
    && pid_of "$RUN/slurmd.pid" slurmd >/dev/null; then
  jobs="$(timeout 5 squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)"
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 50); do   # up to 10 s for the steps to go away
      [ -z "$(timeout 5 squeue -h -t R,CG,S -o %A 2>/dev/null || true)" ] && break
      sleep 0.2
    done
  fi
fi

stop_daemon slurmd "$RUN/slurmd.pid"
# Job steps of this cluster that survived (slurmstepd is reparented to init).
if ! pid_of "$RUN/slurmd.pid" slurmd >/dev/null; then
  for d in /proc/[0-9]*; do
    [ "$(readlink "$d/exe" 2>/dev/null || true)" = /usr/sbin/slurmstepd ] || continue
    log "killing leftover slurmstepd ${d#/proc/}"
    kill -KILL "${d#/proc/}" 2>/dev/null || true
  done
fi
stop_daemon slurmctld "$RUN/slurmctld.pid"
stop_daemon slurmdbd "$RUN/slurmdbd.pid"
stop_daemon mariadbd "$STATE/mysql/mysqld.pid"
if pid="$(pid_of "$RUN/munged.pid" munged)"; then   # only if start.sh started it
  stop_daemon munged "$RUN/munged.pid"
  rm -f /run/munge/munged.pid
else
  rm -f "$RUN/munged.pid"
fi

if [ "$PURGE" = 1 ]; then
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
  fi
  if [ -d "$STATE" ]; then
    log "removing $STATE"
    rm -rf --one-file-system "$STATE"
  fi
fi
log "done"
