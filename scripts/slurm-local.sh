#!/usr/bin/env bash
# A single-node Slurm cluster on localhost with 4 fake GPUs, for the `--executor slurm` tests.
#
#   scripts/slurm-local.sh start    install (only what is missing), configure, start; waits for `idle`
#   scripts/slurm-local.sh stop     stop slurmctld, slurmd and munged
#   scripts/slurm-local.sh status   print the node line; exit 0 when the node answers
#
# Debian/Ubuntu, run as root, no systemd needed. GPUs are character devices under /run/fakegpu
# (slurmd only stats them), so jobs see CUDA_VISIBLE_DEVICES without a driver. Safe to run twice:
# a running cluster is left alone.
set -euo pipefail

FAKEGPU=/run/fakegpu
CONF=/etc/slurm/slurm.conf

answers() { sinfo -h -N -o '%T' 2>/dev/null | grep -Eqx 'idle|mixed|allocated|completing'; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
  command -v slurmd >/dev/null || [ -x /usr/sbin/slurmd ] || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  [ -x /usr/sbin/munged ] || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "slurm-local: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge >/dev/null
  fi
}

fake_gpus() {
  install -d -m 0755 "$FAKEGPU"
  for i in 0 1 2 3; do
    [ -e "$FAKEGPU/nvidia$i" ] && continue
    # Without CAP_MKNOD a symlink to a character device works as well.
    mknod -m 0666 "$FAKEGPU/nvidia$i" c 195 "$i" 2>/dev/null || ln -s /dev/null "$FAKEGPU/nvidia$i"
  done
}

write_config() {
  install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > "$CONF" <<'CONF'
ClusterName=pollard
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=3600
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
  cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=localhost Name=gpu File=$FAKEGPU/nvidia[0-3]
CONF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  if command -v sinfo >/dev/null && answers; then
    echo "slurm-local: already running"; sinfo -N -o '%N %T %c %G'; return 0
  fi
  [ "$(id -u)" -eq 0 ] || { echo "slurm-local: start needs root" >&2; exit 1; }
  install_packages
  start_munge
  fake_gpus
  write_config
  alive /run/slurmctld.pid || /usr/sbin/slurmctld
  alive /run/slurmd.pid || /usr/sbin/slurmd -N localhost
  for _ in $(seq 1 60); do
    answers && break
    sleep 0.5
  done
  # A node drained by an earlier bad start stays drained; bring it back.
  if sinfo -h -N -o '%T' 2>/dev/null | grep -q drain; then
    scontrol update nodename=localhost state=resume
    sleep 1
  fi
  answers || { echo "slurm-local: node did not come up; see /var/log/slurm/" >&2; sinfo -N -o '%N %T %E' >&2 || true; exit 1; }
  sinfo -N -o '%N %T %c %G'
}

stop() {
  scontrol shutdown 2>/dev/null || true
  for _ in $(seq 1 20); do
    alive /run/slurmctld.pid || alive /run/slurmd.pid || break
    sleep 0.25
  done
  alive /run/munge/munged.pid && kill "$(cat /run/munge/munged.pid)" || true
  echo "slurm-local: stopped"
}

status() {
  if command -v sinfo >/dev/null && answers; then sinfo -N -o '%N %T %c %G'; else echo "slurm-local: not running"; exit 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
