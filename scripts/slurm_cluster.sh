#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying profiles/slurm-test.
#
#   scripts/slurm_cluster.sh start    install the Debian packages if missing, write the
#                                     configuration, start munged, slurmctld -c, slurmd, wait for
#                                     the node to be idle (does nothing if it already runs)
#   scripts/slurm_cluster.sh stop     kill exactly the daemons that `start` recorded
#   scripts/slurm_cluster.sh status   print the node state; exit 0 only when the cluster answers
#   scripts/slurm_cluster.sh env      print `export SLURM_CONF=...` (eval it to use sinfo, sbatch...)
#
# Everything lives under $SLURM_TEST_DIR (default /tmp/segformer-slurm): configuration, munge key
# and socket, state, spool, logs, PIDs; the daemons listen on 127.0.0.1 only. The one thing outside
# it is a symlink /etc/slurm/slurm.conf -> $SLURM_TEST_DIR/slurm.conf, made only where no SLURM
# configuration exists and removed by `stop`: inside a job, Snakemake's jobstep plugin runs `srun`
# with every SLURM_* variable (SLURM_CONF included) removed, so srun must find the configuration at
# its compiled-in default path. Clients outside jobs may use SLURM_CONF or that default.
#
# There is no slurmdbd, so `sacct` fails: profiles/slurm-test makes the Snakemake plugin poll with
# squeue, which sees finished jobs for MinJobAge (set to 600 s below). Needs root (daemons running
# as root, jobs of any user) and, if the packages are missing, apt-get. No systemd is needed.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin, often missing from a user's PATH

DIR="${SLURM_TEST_DIR:-/tmp/segformer-slurm}"
CTLD_PORT="${SLURM_TEST_CTLD_PORT:-16817}"   # away from the usual 6817/6818 of a real cluster
SLURMD_PORT="${SLURM_TEST_SLURMD_PORT:-16818}"
CONF="$DIR/slurm.conf"
DEFAULT_CONF=/etc/slurm/slurm.conf
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
PACKAGES=(slurmctld slurmd slurm-client munge)
NEEDED_COMMANDS=(munged mungekey slurmctld slurmd sinfo squeue sbatch scontrol)
DAEMONS=(slurmd slurmctld munged)   # stop order; start order is the reverse
START_TIMEOUT_S=30

die() { echo "slurm_cluster.sh: $*" >&2; exit 1; }
log() { echo "slurm_cluster.sh: $*" >&2; }

missing_commands() {
    local cmd missing=()
    for cmd in "${NEEDED_COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    echo "${missing[*]}"
}

install_packages() {
    local missing
    missing="$(missing_commands)"
    [[ -z "$missing" ]] && return 0
    [[ "$(id -u)" == 0 ]] || die "missing commands ($missing) and not root: install ${PACKAGES[*]} first"
    command -v apt-get >/dev/null || die "missing commands ($missing) and no apt-get to install ${PACKAGES[*]}"
    log "installing ${PACKAGES[*]} (missing: $missing)"
    # A fresh container has no package lists: update only when the plain install fails.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" \
            >"/tmp/slurm_cluster-apt.log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update >>"/tmp/slurm_cluster-apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" \
            >>"/tmp/slurm_cluster-apt.log" 2>&1 \
            || die "apt-get install ${PACKAGES[*]} failed, see /tmp/slurm_cluster-apt.log"
    fi
    missing="$(missing_commands)"
    [[ -z "$missing" ]] || die "still missing after apt-get install: $missing"
}

real_memory_mb() {
    # What the node offers jobs: physical memory less a margin for the daemons and the OS, so that
    # slurmd never finds less memory than configured (that would drain the node).
    local total_kb
    total_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    echo $(( total_kb / 1024 * 9 / 10 ))
}

write_config() {
    local cpus mem def_mem
    # At least 2 CPUs, even on a 1-core runner: the workflow's 2-worker training job must fit.
    cpus="$(nproc)"
    (( cpus >= 2 )) || cpus=2
    mem="$(real_memory_mb)"
    def_mem=$(( mem / cpus < 1024 ? mem / cpus : 1024 ))
    mkdir -p "$DIR"/{state,spool,log,pids,munge}
    chmod 700 "$DIR/munge"
    cat >"$CONF.tmp" <<EOF
# Single-node test cluster written by scripts/slurm_cluster.sh; rewritten on every start.
ClusterName=segformer-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# Loopback only: without these the daemons listen on every address.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/pids/slurmctld.daemon.pid
SlurmdPidFile=$DIR/pids/slurmd.daemon.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers: track processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# The completed-job record the tests read (there is no slurmdbd for sacct).
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default a job that asks no memory takes the whole node.
DefMemPerCPU=$def_mem
ReturnToService=2
# squeue shows finished jobs this long; Snakemake's plugin polls with squeue here.
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
# The node is whatever this file says, whatever the hardware detection finds.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$CONF.tmp" "$CONF"
}

# Point SLURM's default configuration path at ours, never over a configuration we did not write.
link_default_config() {
    if [[ -L "$DEFAULT_CONF" ]]; then
        local current
        current="$(readlink "$DEFAULT_CONF")"
        [[ "$current" == "$CONF" ]] && return 0
        [[ -e "$current" ]] && die "$DEFAULT_CONF links to $current (another test cluster?): stop" \
            "that one (SLURM_TEST_DIR=$(dirname "$current") $0 stop) or remove the link"
        rm -f "$DEFAULT_CONF"   # dangling: left by a cluster whose folder is gone
    elif [[ -e "$DEFAULT_CONF" ]]; then
        die "$DEFAULT_CONF exists: this machine has its own SLURM configuration, which this test" \
            "cluster will not replace; use that cluster (profiles/slurm) or move the file away"
    fi
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -s "$CONF" "$DEFAULT_CONF"
}

unlink_default_config() {
    if [[ -L "$DEFAULT_CONF" && "$(readlink "$DEFAULT_CONF")" == "$CONF" ]]; then
        rm -f "$DEFAULT_CONF"
    fi
}

pid_of() { [[ -s "$DIR/pids/$1.pid" ]] && cat "$DIR/pids/$1.pid" || true; }

# True when the recorded PID is alive and is still that daemon (guards against PID reuse).
daemon_alive() {
    local pid
    pid="$(pid_of "$1")"
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    [[ "$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -1)")" == "$1" ]]
}

node_state() { SLURM_CONF="$CONF" timeout 10 sinfo -h -N -n localhost -o %T 2>/dev/null | head -1 || true; }

# Start a daemon in the foreground of its own session, so that its PID is known exactly.
spawn() {
    local name="$1"; shift
    setsid "$@" >>"$DIR/log/$name.stdout" 2>&1 </dev/null &
    echo "$!" >"$DIR/pids/$name.pid"
}

wait_for() {
    local what="$1" test_cmd="$2" waited=0
    until eval "$test_cmd"; do
        (( waited >= START_TIMEOUT_S * 10 )) && return 1
        sleep 0.1
        waited=$(( waited + 1 ))
    done
    log "$what (after $(( waited / 10 )).$(( waited % 10 )) s)"
}

start_munged() {
    [[ -s "$DIR/munge/munge.key" ]] || mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null \
        || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    chmod 600 "$DIR/munge/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    spawn munged munged --foreground --force --key-file="$DIR/munge/munge.key" \
        --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for "munged up" "[[ -S '$MUNGE_SOCKET' ]]" \
        || die "munged did not create $MUNGE_SOCKET; see $DIR/log/munged.log"
}

start() {
    install_packages
    if daemon_alive munged && daemon_alive slurmctld && daemon_alive slurmd \
            && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]]; then
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    stop_daemons quiet   # leftovers of a half-started or killed cluster
    write_config
    link_default_config
    # Job ids restart at 1 after a clean start: keep the completed-job record of one run only.
    if [[ -f "$DIR/log/jobcomp.log" ]]; then mv "$DIR/log/jobcomp.log" "$DIR/log/jobcomp.log.1"; fi
    export SLURM_CONF="$CONF"
    start_munged
    # -c: clean start, so that jobs of an earlier, killed run do not come back as ghosts.
    spawn slurmctld slurmctld -D -c -f "$CONF"
    wait_for "slurmctld answers" "SLURM_CONF='$CONF' scontrol ping 2>/dev/null | grep -q UP" \
        || die "slurmctld did not come up; see $DIR/log/slurmctld.log"
    spawn slurmd slurmd -D -N localhost -f "$CONF"
    wait_for "node localhost idle" "[[ \"\$(node_state)\" == idle ]]" \
        || die "node not idle (state: '$(node_state)'); see $DIR/log/slurmd.log and slurmctld.log"
    for name in "${DAEMONS[@]}"; do
        daemon_alive "$name" || die "$name exited after starting; see $DIR/log/"
    done
    log "running: SLURM_CONF=$CONF, PIDs $(pid_of munged) $(pid_of slurmctld) $(pid_of slurmd)"
}

stop_daemons() {
    local name pid waited
    for name in "${DAEMONS[@]}"; do
        pid="$(pid_of "$name")"
        if daemon_alive "$name"; then
            kill -TERM "$pid"
            waited=0
            while daemon_alive "$name" && (( waited < 50 )); do sleep 0.1; waited=$(( waited + 1 )); done
            if daemon_alive "$name"; then kill -KILL "$pid" 2>/dev/null || true; fi
            [[ "${1:-}" == quiet ]] || log "stopped $name (PID $pid)"
        fi
        rm -f "$DIR/pids/$name.pid"
    done
}

status() {
    local name state ok=0
    for name in munged slurmctld slurmd; do
        if daemon_alive "$name"; then echo "$name: running (PID $(pid_of "$name"))"
        else echo "$name: not running"; ok=1; fi
    done
    # sinfo retries a dead controller for seconds: ask only a live one.
    state=""
    if daemon_alive slurmctld; then state="$(node_state)"; fi
    echo "node localhost: ${state:-no answer}"
    [[ -n "$state" ]] || ok=1
    echo "SLURM_CONF=$CONF"
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemons; unlink_default_config ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 start|stop|status|env   (state in \$SLURM_TEST_DIR, default /tmp/segformer-slurm)" ;;
esac
