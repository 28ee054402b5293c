#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster (Slurm 22.05 on Debian 12) on this
# machine, with accounting (slurmdbd + MariaDB) so that `sacct` reports jobs.
#
# Usage: scripts/slurm/start.sh            (as root)
#
# Idempotent: daemons that already run are left alone; when everything runs it
# only checks readiness and returns within a second or so. Never wipes state.
# Tear down with scripts/slurm/stop.sh [--purge].
#
# Environment:
#   ADVSOUP_SLURM_STATE    state folder (default /var/tmp/advsoup-slurm). Every
#                          parent must be traversable by the `mysql` user
#                          (so not pytest's 0700 /tmp/pytest-of-root/...).
#   ADVSOUP_SLURM_TIMEOUT  seconds to wait for the cluster to be ready (90)
#   ADVSOUP_SLURM_DB_PORT  MariaDB TCP port on 127.0.0.1 (3307)
#
# Layout of the state folder:
#   etc/slurm.conf etc/slurmdbd.conf   generated config (/etc/slurm/slurm.conf
#                                      is a symlink to etc/slurm.conf)
#   log/  run/ (pid files)  slurmctld/ (StateSaveLocation)  slurmd/ (spool)
#   mysql/ (MariaDB data dir, socket, pid, error log; owned by mysql)
set -euo pipefail

STATE="${ADVSOUP_SLURM_STATE:-/var/tmp/advsoup-slurm}"
STATE="${STATE%/}"
TIMEOUT="${ADVSOUP_SLURM_TIMEOUT:-90}"
DB_PORT="${ADVSOUP_SLURM_DB_PORT:-3307}"
CLUSTER=advsoup
NODE=localhost
read -r -a PACKAGES <<<"$("$(dirname "$0")/../system-packages.sh" list slurm)"

ETC="$STATE/etc"
LOG="$STATE/log"
RUN="$STATE/run"
DB="$STATE/mysql"
MYCNF="$DB/my.cnf"
CONF="$ETC/slurm.conf"
DBDCONF="$ETC/slurmdbd.conf"
export SLURM_CONF="$CONF"

T0=$SECONDS
log() { printf '[slurm/start %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
tail_log() { # file...
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2 || true
  done
}
die() { # message [log files to show]
  local msg="$1"; shift
  printf '[slurm/start] ERROR: %s\n' "$msg" >&2
  tail_log "$@"
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root"
[[ "$STATE" = /* ]] || die "ADVSOUP_SLURM_STATE must be an absolute path (got '$STATE')"

# One start/stop at a time (pytest-xdist workers, CI steps...).
LOCK=/run/lock/advsoup-slurm.lock
[ -d /run/lock ] || LOCK=/tmp/advsoup-slurm.lock
exec 9>"$LOCK"
flock -w 600 9 || die "could not get lock $LOCK"

pid_alive() { # pidfile expected-comm
  local pid
  [ -s "$1" ] || return 1
  pid="$(tr -dc '0-9' <"$1")"
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] \
    && ! is_zombie "$pid"
}
# An exited daemon stays a zombie until PID 1 reaps it (slowly, in containers).
is_zombie() { [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" = Z ]; }

stop_pid() { # pidfile comm [seconds] (used when the generated config changed)
  local pid
  pid_alive "$1" "$2" || return 0
  pid="$(tr -dc '0-9' <"$1")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $(( ${3:-10} * 10 ))); do { kill -0 "$pid" 2>/dev/null && ! is_zombie "$pid"; } || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

wait_for() { # seconds command...  (polls every 0.2 s)
  local secs="$1" end; shift
  end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# Refuse early when another process holds one of our ports: it would answer
# the readiness checks in place of the daemons started here.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for dp in slurmdbd:6819:"$RUN/slurmdbd.pid" slurmctld:6817:"$RUN/slurmctld.pid" \
          slurmd:6818:"$RUN/slurmd.pid" mariadbd:"$DB_PORT":"$DB/mysqld.pid"; do
  IFS=: read -r d port pidf <<<"$dp"
  if ! pid_alive "$pidf" "$d" && port_busy "$port"; then
    die "port $port on 127.0.0.1 (for $d) is in use by another process: a SLURM cluster started elsewhere or with another ADVSOUP_SLURM_STATE? Stop it first (scripts/slurm/stop.sh with its ADVSOUP_SLURM_STATE)."
  fi
done

# --------------------------------------------------------------- packages ---
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  apt-get "${apt_opts[@]}" update -qq >/dev/null \
    || die "apt-get update failed"
  apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >"/tmp/advsoup-slurm-apt.log" 2>&1 \
    || die "apt-get install failed" /tmp/advsoup-slurm-apt.log
  log "installed"
fi
for u in munge mysql; do id -u "$u" >/dev/null 2>&1 || die "user '$u' missing after install"; done

# ------------------------------------------------------------ state dirs ---
mkdir -p "$STATE" "$ETC" "$LOG" "$RUN" "$STATE/slurmctld" "$STATE/slurmd"
chmod 755 "$STATE"
mkdir -p "$DB"
chown mysql:mysql "$DB"
chmod 750 "$DB"
runuser -u mysql -- test -w "$DB" \
  || die "user mysql cannot write $DB: every parent of ADVSOUP_SLURM_STATE must be world-traversable (o+x)"

# --------------------------------------------------------------- configs ---
ncpu="$(nproc)"
mem_total=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))   # MiB
headroom=$(( mem_total / 10 )); [ "$headroom" -ge 1024 ] || headroom=1024
real_mem=$(( mem_total - headroom )); [ "$real_mem" -ge 256 ] || real_mem=256
# Use the hardware topology slurmd sees when its CPU count matches nproc, so
# that slurmd registers with exactly the configured layout.
topo=""
if hw="$(slurmd -C 2>/dev/null | head -n1)" && [[ "$hw" =~ CPUs=([0-9]+) ]] && [ "${BASH_REMATCH[1]}" = "$ncpu" ]; then
  topo="$(grep -o -E '(Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' <<<"$hw" | tr '\n' ' ')"
fi

new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Generated by scripts/slurm/start.sh -- single-node test cluster. Do not edit.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Fast turnaround for tests.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=0
MinJobAge=120
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=60
SlurmdTimeout=60
MessageTimeout=10
# Accounting (must be set before slurmctld starts).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$ncpu ${topo}RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

conf_changed=0
if ! cmp -s "$new_conf" "$CONF"; then
  [ -e "$CONF" ] && conf_changed=1
  install -m 644 "$new_conf" "$CONF"
fi

# Snakemake's slurm plugin drops SLURM_CONF for its inner srun: the default
# path has to lead to this config.
mkdir -p /etc/slurm
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)" != "$CONF" ]; then
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    mv /etc/slurm/slurm.conf "/etc/slurm/slurm.conf.advsoup-bak.$(date +%s)"
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

PWFILE="$ETC/db-password"
if [ ! -s "$PWFILE" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$PWFILE")
fi
DB_PASS="$(cat "$PWFILE")"
(umask 077; cat >"$new_conf" <<EOF
# Generated by scripts/slurm/start.sh. Must be mode 600, owned by SlurmUser (root).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
if ! cmp -s "$new_conf" "$DBDCONF"; then
  [ -e "$DBDCONF" ] && conf_changed=1
  install -m 600 -o root -g root "$new_conf" "$DBDCONF"
fi
chmod 600 "$DBDCONF"; chown root:root "$DBDCONF"

cat >"$new_conf" <<EOF
# Generated by scripts/slurm/start.sh
[mysqld]
user=mysql
datadir=$DB/data
socket=$DB/mysqld.sock
pid-file=$DB/mysqld.pid
log-error=$DB/mysqld.err
bind-address=127.0.0.1
port=$DB_PORT
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_lock_wait_timeout=900
max_allowed_packet=16M
[client]
socket=$DB/mysqld.sock
user=root
EOF
if ! cmp -s "$new_conf" "$MYCNF"; then
  [ -e "$MYCNF" ] && conf_changed=1
  install -m 644 "$new_conf" "$MYCNF"
fi

if [ "$conf_changed" = 1 ]; then
  log "configuration changed: restarting the daemons that run"
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$DB/mysqld.pid" mariadbd 60
fi

# ----------------------------------------------------------------- munge ---
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  if ! pid_alive /run/munge/munged.pid munged; then
    log "starting munged"
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged </dev/null >"$LOG/munged.out" 2>&1 9>&- \
      || die "munged failed to start" "$LOG/munged.out" /var/log/munge/munged.log
    wait_for 15 test -s /run/munge/munged.pid || true
    if [ -s /run/munge/munged.pid ]; then cp /run/munge/munged.pid "$RUN/munged.pid"; fi  # ours, for stop.sh
  fi
  wait_for 15 munge_ok || die "munge does not work" "$LOG/munged.out" /var/log/munge/munged.log
fi

# --------------------------------------------------------------- mariadb ---
db_ok() { timeout 5 mariadb --defaults-file="$MYCNF" -e 'SELECT 1'; }
if ! pid_alive "$DB/mysqld.pid" mariadbd || ! db_ok >/dev/null 2>&1; then
  if [ ! -d "$DB/data/mysql" ]; then
    log "initialising MariaDB data dir"
    rm -rf "$DB/data"
    mariadb-install-db --defaults-file="$MYCNF" --user=mysql --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install-db.log" 2>&1 \
      || die "mariadb-install-db failed" "$LOG/mariadb-install-db.log"
  fi
  if ! pid_alive "$DB/mysqld.pid" mariadbd; then
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --defaults-file="$MYCNF" </dev/null >>"$LOG/mariadbd.out" 2>&1 9>&- &
  fi
  wait_for 60 db_ok || die "MariaDB did not come up" "$DB/mysqld.err" "$LOG/mariadbd.out"
fi
# (Re)create the accounting DB user; cheap and idempotent.
mariadb --defaults-file="$MYCNF" <<EOF || die "could not create the slurm DB user" "$DB/mysqld.err"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

# --------------------------------------------------------- slurm daemons ---
daemons_alive() { # die at once when a slurm daemon of ours has exited
  local d
  for d in slurmdbd slurmctld slurmd; do
    pid_alive "$RUN/$d.pid" "$d" || die "$d is not running (exited)" "$LOG/$d.out" "$LOG/$d.log"
  done
}
start_slurm_daemon() { # name port command...
  local name="$1" port="$2"; shift 2
  pid_alive "$RUN/$name.pid" "$name" && return 0
  # Something else on the port (another SLURM, another ADVSOUP_SLURM_STATE)
  # would answer our readiness checks in place of the daemon started here.
  port_busy "$port" && die "cannot start $name: port $port on 127.0.0.1 is in use by another process (a SLURM cluster started elsewhere or with another ADVSOUP_SLURM_STATE?)"
  log "starting $name"
  rm -f "$RUN/$name.pid"
  "$@" </dev/null >"$LOG/$name.out" 2>&1 9>&- || die "$name failed to start" "$LOG/$name.out" "$LOG/$name.log"
  wait_for 15 pid_alive "$RUN/$name.pid" "$name" || die "$name exited right after start" "$LOG/$name.out" "$LOG/$name.log"
}

dbd_ok() { pid_alive "$RUN/slurmdbd.pid" slurmdbd && timeout 5 sacctmgr -n -P list cluster format=cluster; }
start_slurm_daemon slurmdbd 6819 slurmdbd
wait_for 60 dbd_ok || die "slurmdbd does not answer" "$LOG/slurmdbd.out" "$LOG/slurmdbd.log" "$DB/mysqld.err"
if ! dbd_ok 2>/dev/null | grep -qx "$CLUSTER"; then
  log "registering cluster '$CLUSTER' in the accounting DB"
  timeout 10 sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed" "$LOG/slurmdbd.log"
fi
start_slurm_daemon slurmctld 6817 slurmctld
start_slurm_daemon slurmd 6818 slurmd -N "$NODE"

# ------------------------------------------------------------- readiness ---
node_state() { timeout 5 sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1; }
ctld_registered() { # slurmctld has registered with slurmdbd (job records flow)
  [ -n "$(timeout 5 sacctmgr -n -P show cluster "$CLUSTER" format=ControlHost 2>/dev/null)" ]
}
end=$((T0 + TIMEOUT)); [ "$end" -gt "$SECONDS" ] || end=$((SECONDS + 30))
resumed=0
while :; do
  daemons_alive
  st="$(node_state || true)"
  case "$st" in
    idle|mixed|allocated|completing)
      if timeout 5 sacct -n -X -o JobID >/dev/null 2>&1; then
        ctld_registered && break
        # slurmctld (re)registers with slurmdbd on its own, at the latest with
        # its next job record; not worth failing for.
        [ -n "${ready_since:-}" ] || ready_since=$SECONDS
        if [ $((SECONDS - ready_since)) -ge 10 ]; then
          log "note: slurmctld not yet registered with slurmdbd (it will be on the first job)"
          break
        fi
      fi ;;
    drained|draining|down|drained\*|down\*|fail|failing)
      # A node drained by an earlier run (e.g. "Kill task failed"); slurmd is up.
      if [ "$resumed" = 0 ] && pid_alive "$RUN/slurmd.pid" slurmd && [[ "$st" != *\* ]]; then
        log "node is '$st' ($(timeout 5 sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null)); resuming it"
        timeout 5 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        resumed=1
      fi ;;
  esac
  if [ "$SECONDS" -ge "$end" ]; then
    die "cluster not ready after ${TIMEOUT}s (node state '${st:-no answer from slurmctld}')" \
      "$LOG/slurmctld.log" "$LOG/slurmd.log" "$LOG/slurmdbd.log"
  fi
  sleep 0.3
done

# --------------------------------------------------------------- summary ---
log "SLURM cluster '$CLUSTER' ready in $((SECONDS - T0))s (state: $STATE)"
printf '  sinfo: %s\n' "$(timeout 5 sinfo -h -o '%P %a %l %D %T %N' | head -n1)"
printf '  node:  %s\n' "$(timeout 5 sinfo -h -N -n "$NODE" -o 'CPUs=%c Memory=%mMiB' | head -n1)"
printf '  sacct: works (slurmdbd 127.0.0.1:6819, MariaDB 127.0.0.1:%s)\n' "$DB_PORT"
printf '  conf:  /etc/slurm/slurm.conf -> %s\n' "$CONF"
