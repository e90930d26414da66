#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (Debian: tested on bookworm, slurm 22.05; Ubuntu
# ships the same packages), for tests/test_slurm.py and for trying
# `resnet-dyn -m hydra/launcher=slurm_cpu ...` without a real cluster.
#
#   scripts/local-slurm.sh start    # install slurm + munge if missing, configure, start, wait idle
#   scripts/local-slurm.sh status   # sinfo + squeue; exit 0 when the node is up
#   scripts/local-slurm.sh stop     # stop slurmd, slurmctld and munged
#
# Daemons are started directly (no systemd: containers and CI runners often have none).
# Jobs run as the user who submits them. LOCAL_SLURM_TIMEOUT (seconds, default 60) bounds the
# wait for the node to become idle.
set -euo pipefail

CONF_DIR=/etc/slurm                      # Debian's location (bookworm: slurm 22.05)
SLURM_CONF=$CONF_DIR/slurm.conf
CGROUP_CONF=$CONF_DIR/cgroup.conf
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
# A slurm.conf without this first line belongs to someone else: never overwrite it.
MARKER="# Written by scripts/local-slurm.sh (resnet_dyn): a single-node test cluster."
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
NODE=$(hostname -s)

log() { printf 'local-slurm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
  if [[ $EUID -ne 0 ]]; then
    # CI runners are often a normal user with password-less sudo.
    command -v sudo >/dev/null || die "run as root (installs packages, starts daemons)"
    exec sudo --preserve-env=LOCAL_SLURM_TIMEOUT "$0" "$@"
  fi
}

# True when the pid in file $1 is alive and its command is $2.
running() {
  local pid
  [[ -r $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(ps -o comm= -p "$pid" 2>/dev/null) == "$2" ]]
}

install_packages() {
  if [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/bin/sinfo \
        && -x /usr/sbin/munged ]]; then
    return 0
  fi
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt/dpkg run instead of failing on its lock.
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -qq -y --no-install-recommends)
  # Refresh the package lists only when they do not know slurm-wlm (fresh images ship none).
  if ! apt-cache policy slurm-wlm 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${apt[@]}" update >/dev/null
  fi
  if ! "${apt[@]}" install slurm-wlm munge >/dev/null; then
    # Stale lists point at superseded versions (404): refresh once and retry.
    "${apt[@]}" update >/dev/null
    "${apt[@]}" install slurm-wlm munge >/dev/null
  fi
}

start_munge() {
  if [[ ! -s $MUNGE_KEY ]]; then
    log "creating $MUNGE_KEY"
    install -d -o munge -g munge -m 0700 "$(dirname "$MUNGE_KEY")"
    # 1024 random bits, the size mungekey makes by default.
    (umask 077 && head -c 128 /dev/urandom >"$MUNGE_KEY")
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
  fi
  if ! running "$MUNGE_PID" munged; then
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    runuser -u munge -- /usr/sbin/munged
  fi
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

# The whole cluster config from this machine's size. CPUs: the cores this process may use
# (a container may see fewer than the hardware has; slurmd accepts fewer). Memory: what slurmd
# itself detects (slurmd -C), else MemTotal in MiB; more than slurmd detects would drain the node.
CONFIG_CHANGED=0
write_config() {
  local cpus mem_mb def_mem tmp
  cpus=$(nproc)
  mem_mb=$({ /usr/sbin/slurmd -C 2>/dev/null || true; } | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [[ -n $mem_mb ]] || mem_mb=$(free -m | awk '/^Mem:/ {print $2}')
  def_mem=$((mem_mb / cpus))
  if [[ -e $SLURM_CONF ]] && [[ $(head -n 1 "$SLURM_CONF") != "$MARKER" ]]; then
    die "$SLURM_CONF exists and was not written by this script; not touching it"
  fi
  install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$SPOOL_DIR"
  install -d -m 0700 "$STATE_DIR"
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARKER
# Regenerated on every start; edit the script, not this file.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
# Daemons as root; jobs still run as the user who submits them.
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
# Track job processes through /proc: needs no cgroup hierarchy (containers often lack one).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores and memory are consumable, so jobs share the node up to its size.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# A job that asks for no memory gets its share per core instead of the whole node.
DefMemPerCPU=$def_mem
# No accounting database and no mail on a test cluster.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
# A node that was down comes back as soon as it registers with a valid configuration.
ReturnToService=2
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if cmp -s "$tmp" "$SLURM_CONF"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$SLURM_CONF"
    chmod 0644 "$SLURM_CONF"
    CONFIG_CHANGED=1
  fi
  # slurm 22.05 needs no cgroup.conf with proctrack/linuxproc and task/none (tested), but any
  # cgroup plugin that does get loaded (other versions, plugin defaults) reads it: this one turns
  # every constraint off, as above. Another cgroup.conf is left alone.
  if [[ ! -e $CGROUP_CONF ]] || [[ $(head -n 1 "$CGROUP_CONF") == "$MARKER" ]]; then
    printf '%s\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' \
      "$MARKER" >"$CGROUP_CONF"
  fi
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

show_logs() {
  local f
  for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
    [[ -r $f ]] && { log "--- tail $f"; tail -n 20 "$f" >&2; }
  done
  return 0
}

wait_idle() {
  local state="" resumed=0 deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    state=$(node_state || true)
    case $state in
      idle | mixed | allocated) log "node $NODE is $state"; return 0 ;;
      # Left drained or down by an earlier run (e.g. killed mid-job): put it back once.
      drain* | down* | fail*)
        if ((resumed == 0)); then
          scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    sleep 1
  done
  log "node $NODE not idle after ${TIMEOUT}s (state: ${state:-unknown})"
  sinfo -N -l >&2 || true
  show_logs
  return 1
}

start() {
  need_root start
  install_packages
  start_munge
  write_config
  if ((CONFIG_CHANGED)) && running "$CTLD_PID" slurmctld; then
    log "slurm.conf changed: restarting the daemons"
    stop_slurm
  fi
  if ! running "$CTLD_PID" slurmctld; then
    /usr/sbin/slurmctld || { show_logs; die "slurmctld did not start"; }
  fi
  if ! running "$SLURMD_PID" slurmd; then
    /usr/sbin/slurmd || { show_logs; die "slurmd did not start"; }
  fi
  wait_idle
}

# Stop the process whose pid is in file $1 (command $2); wait up to 10 s for it to exit.
# Waits on the pid itself: the daemons remove their pid file before they have exited.
stop_pid() {
  local pid i
  running "$1" "$2" || return 0
  pid=$(<"$1")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do
    [[ $(ps -o comm= -p "$pid" 2>/dev/null) == "$2" ]] || return 0
    sleep 0.5
  done
  log "$2 ($pid) did not stop on SIGTERM; killing it"
  kill -9 "$pid" 2>/dev/null || true
}

stop_slurm() {
  stop_pid "$SLURMD_PID" slurmd
  stop_pid "$CTLD_PID" slurmctld
}

stop() {
  need_root stop
  stop_slurm
  stop_pid "$MUNGE_PID" munged
  log "stopped"
}

status() {
  command -v sinfo >/dev/null || { log "slurm is not installed"; return 1; }
  sinfo || return 1
  squeue || return 1
  case $(node_state) in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
  esac
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
