#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying profiles/slurm-test.
#
#   scripts/slurm_cluster.sh start    install the Debian packages if missing, write the
#                                     configuration, start munged, slurmctld -c, slurmd, wait for
#                                     the node to be idle (does nothing if it already runs)
#   scripts/slurm_cluster.sh stop     kill exactly the daemons that `start` recorded
#   scripts/slurm_cluster.sh status   print the node state; exit 0 only when the cluster answers
#   scripts/slurm_cluster.sh env      print `export SLURM_CONF=...` (eval it to use sinfo, sbatch...)
#   scripts/slurm_cluster.sh --nodes 2 start|stop|status|env
#                                     the same with two nodes (see "Two nodes" below)
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
#
# Two nodes (--nodes 2, or SLURM_TEST_NODES=2; state in /tmp/segformer-slurm-2n by default): the
# Debian build has no multiple-slurmd support, and msrun needs the two nodes to have different
# addresses anyway (it starts its scheduler on the node that owns --master_addr), so each node lives
# in a network namespace of its own, joined by veth pairs:
#
#   host 10.78.1.254 <-veth-> 10.78.1.1 [namespace segformer-slurm-n1: slurmctld, slurmd segformer-n1]
#                              10.78.0.1 <-veth-> 10.78.0.2 [namespace segformer-slurm-n2: slurmd segformer-n2]
#
# Job steps run inside their node's namespace (slurmd's children inherit it); the file system, the
# munge socket (munged stays on the host) and the configuration are shared. Inside the namespaces the
# daemons listen on every address, which are only those of the pairs: slurmctld binds the address of
# the machine's host name with NoCtldInAddrAny (127.0.0.1 here), which node 2 could not reach. Clients
# on the host reach slurmctld at 10.78.1.1. The node names resolve through two lines added to
# /etc/hosts (marked "segformer-slurm-2n", written in place; removed by `stop`), as msrun needs for
# the master address. `stop` also removes the namespaces and the pairs, and a failed `start` undoes
# what it did. SLURM_TEST_SUBNET (default 10.78, a /16 of which two /24 are used) moves the pairs
# elsewhere; scripts/multinode_msrun.py uses 10.77.0.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin, often missing from a user's PATH

NODES="${SLURM_TEST_NODES:-1}"
if [[ "${1:-}" == --nodes ]]; then NODES="${2:-}"; shift 2 || true; fi
[[ "$NODES" == 1 || "$NODES" == 2 ]] || { echo "slurm_cluster.sh: --nodes must be 1 or 2 (got '$NODES')" >&2; exit 1; }
if [[ "$NODES" == 1 ]]; then
    DIR="${SLURM_TEST_DIR:-/tmp/segformer-slurm}"
    NODE_NAMES=(localhost)
    DAEMONS=(slurmd slurmctld munged)   # stop order; start order is the reverse
else
    DIR="${SLURM_TEST_DIR:-/tmp/segformer-slurm-2n}"
    NODE_NAMES=(segformer-n1 segformer-n2)
    DAEMONS=(slurmd-segformer-n2 slurmd-segformer-n1 slurmctld munged)
    SUBNET="${SLURM_TEST_SUBNET:-10.78}"
    NODE_ADDRS=("$SUBNET.0.1" "$SUBNET.0.2")
    NETNS=(segformer-slurm-n1 segformer-slurm-n2)
    CTLD_ADDR="$SUBNET.1.1"   # node 1's end of the pair to the host
    HOST_ADDR="$SUBNET.1.254"
    HOST_IF=sgslurm-h   # pair host <-> node 1; the other end, sgslurm-c, in node 1's namespace
    NODE_IFS=(sgslurm-a sgslurm-b)   # pair node 1 <-> node 2
    HOSTS_MARK="# segformer-slurm-2n"
fi
CTLD_PORT="${SLURM_TEST_CTLD_PORT:-16817}"   # away from the usual 6817/6818 of a real cluster
SLURMD_PORT="${SLURM_TEST_SLURMD_PORT:-16818}"
CONF="$DIR/slurm.conf"
DEFAULT_CONF=/etc/slurm/slurm.conf
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
PACKAGES=(slurmctld slurmd slurm-client munge)
NEEDED_COMMANDS=(munged mungekey slurmctld slurmd sinfo squeue sbatch scontrol)
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
    local ctld_addr=127.0.0.1 spool="$DIR/spool" slurmd_pid="$DIR/pids/slurmd.daemon.pid"
    local slurmd_log="$DIR/log/slurmd.log" nodes_conf partition_nodes
    local listen="# Loopback only: without these the daemons listen on every address.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"
    if [[ "$NODES" == 1 ]]; then
        nodes_conf="NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        partition_nodes=localhost
    else
        # Each node offers half of the machine's memory; both offer all of its CPUs (at least 2).
        mem=$(( mem / 2 ))
        def_mem=$(( mem / cpus < 1024 ? mem / cpus : 1024 ))
        ctld_addr="$CTLD_ADDR"
        listen="# Every address of a node's network namespace: those of its veth pairs and its own loopback."
        spool="$DIR/spool/%n" slurmd_pid="$DIR/pids/slurmd-%n.daemon.pid" slurmd_log="$DIR/log/slurmd-%n.log"
        nodes_conf="NodeName=${NODE_NAMES[0]} NodeAddr=${NODE_ADDRS[0]} NodeHostname=${NODE_NAMES[0]} CPUs=$cpus RealMemory=$mem State=UNKNOWN
NodeName=${NODE_NAMES[1]} NodeAddr=${NODE_ADDRS[1]} NodeHostname=${NODE_NAMES[1]} CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        partition_nodes="$(IFS=,; echo "${NODE_NAMES[*]}")"
    fi
    cat >"$CONF.tmp" <<EOF
# $NODES-node test cluster written by scripts/slurm_cluster.sh; rewritten on every start.
ClusterName=segformer-test
# The name must be localhost (slurmctld checks it against this host), the address is where it listens.
SlurmctldHost=localhost($ctld_addr)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
$listen
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$DIR/pids/slurmctld.daemon.pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$slurmd_log
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
$nodes_conf
PartitionName=debug Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
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
    [[ "$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -1)")" == "${1%%-*}" ]]
}

node_state() {   # the state of node $1 (default: the first)
    SLURM_CONF="$CONF" timeout 10 sinfo -h -N -n "${1:-${NODE_NAMES[0]}}" -o %T 2>/dev/null | head -1 || true
}

all_nodes_in() {   # true when every node's state matches the regular expression $1
    local node
    for node in "${NODE_NAMES[@]}"; do [[ "$(node_state "$node")" =~ $1 ]] || return 1; done
}

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

all_daemons_alive() {
    local name
    for name in "${DAEMONS[@]}"; do daemon_alive "$name" || return 1; done
}

# ---- two nodes: the namespace of node 2, the veth pair, the /etc/hosts lines ----

# /etc/hosts is rewritten in place (it may be a bind mount that a rename would not replace).
remove_hosts_lines() {
    [[ -n "${HOSTS_MARK:-}" && -f /etc/hosts ]] || return 0
    grep -qF -- "$HOSTS_MARK" /etc/hosts || return 0
    local kept
    kept="$(grep -vF -- "$HOSTS_MARK" /etc/hosts || true)"
    printf '%s\n' "$kept" >/etc/hosts
}

add_hosts_lines() {
    remove_hosts_lines
    local i
    for i in 0 1; do
        printf '%s %s  %s %s\n' "${NODE_ADDRS[$i]}" "${NODE_NAMES[$i]}" "$HOSTS_MARK" "$DIR" >>/etc/hosts
    done
}

remove_network() {
    ip link del "$HOST_IF" >/dev/null 2>&1 || true   # deletes both ends of the pair
    local ns
    for ns in "${NETNS[@]}"; do ip netns del "$ns" >/dev/null 2>&1 || true; done   # with their pairs
    remove_hosts_lines
}

make_network() {
    [[ "$(id -u)" == 0 ]] || die "two nodes need root (ip netns, veth, /etc/hosts)"
    command -v ip >/dev/null || die "two nodes need iproute2's ip"
    if ip -o -4 addr show | grep -q "inet $HOST_ADDR/"; then
        die "$HOST_ADDR is already assigned on this machine (another run?): set SLURM_TEST_SUBNET"
    fi
    local n1=(ip netns exec "${NETNS[0]}") n2=(ip netns exec "${NETNS[1]}")
    ip netns add "${NETNS[0]}"
    ip netns add "${NETNS[1]}"
    ip link add "$HOST_IF" type veth peer name sgslurm-c
    ip link set sgslurm-c netns "${NETNS[0]}"
    ip addr add "$HOST_ADDR/24" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    "${n1[@]}" ip addr add "$CTLD_ADDR/24" dev sgslurm-c
    "${n1[@]}" ip link set sgslurm-c up
    ip link add "${NODE_IFS[0]}" type veth peer name "${NODE_IFS[1]}"
    ip link set "${NODE_IFS[0]}" netns "${NETNS[0]}"
    ip link set "${NODE_IFS[1]}" netns "${NETNS[1]}"
    "${n1[@]}" ip addr add "${NODE_ADDRS[0]}/24" dev "${NODE_IFS[0]}"
    "${n1[@]}" ip link set "${NODE_IFS[0]}" up
    "${n1[@]}" ip link set lo up
    "${n2[@]}" ip addr add "${NODE_ADDRS[1]}/24" dev "${NODE_IFS[1]}"
    "${n2[@]}" ip link set "${NODE_IFS[1]}" up
    "${n2[@]}" ip link set lo up
    "${n2[@]}" ip route add default via "${NODE_ADDRS[0]}"   # slurmctld's address, through node 1
    add_hosts_lines
    log "network: host $HOST_ADDR <-> $CTLD_ADDR ${NODE_NAMES[0]} ${NODE_ADDRS[0]} (namespace ${NETNS[0]})" \
        "<-> ${NODE_ADDRS[1]} ${NODE_NAMES[1]} (namespace ${NETNS[1]})"
}

start() {
    install_packages
    if all_daemons_alive && all_nodes_in '^(idle|mixed|allocated)'; then
        log "already running (SLURM_CONF=$CONF)"
        return 0
    fi
    stop_daemons quiet   # leftovers of a half-started or killed cluster
    if [[ "$NODES" == 2 ]]; then
        remove_network
        trap 'log "start failed: undoing it"; stop_daemons quiet; remove_network; unlink_default_config' EXIT
    fi
    write_config
    link_default_config
    if [[ "$NODES" == 2 ]]; then make_network; fi
    # Job ids restart at 1 after a clean start: keep the completed-job record of one run only.
    if [[ -f "$DIR/log/jobcomp.log" ]]; then mv "$DIR/log/jobcomp.log" "$DIR/log/jobcomp.log.1"; fi
    export SLURM_CONF="$CONF"
    start_munged
    # -c: clean start, so that jobs of an earlier, killed run do not come back as ghosts.
    # In a node's network namespace through nsenter, which switches that namespace only (and execs, so
    # the PID is the daemon's): `ip netns exec` would also mount a fresh /sys, without the cgroup tree
    # that slurmd needs.
    if [[ "$NODES" == 1 ]]; then
        spawn slurmctld slurmctld -D -c -f "$CONF"
    else
        spawn slurmctld nsenter --net="/var/run/netns/${NETNS[0]}" slurmctld -D -c -f "$CONF"
    fi
    wait_for "slurmctld answers" "SLURM_CONF='$CONF' scontrol ping 2>/dev/null | grep -q UP" \
        || die "slurmctld did not come up; see $DIR/log/slurmctld.log"
    if [[ "$NODES" == 1 ]]; then
        spawn slurmd slurmd -D -N localhost -f "$CONF"
    else
        mkdir -p "$DIR/spool/${NODE_NAMES[0]}" "$DIR/spool/${NODE_NAMES[1]}"
        spawn "slurmd-${NODE_NAMES[0]}" nsenter --net="/var/run/netns/${NETNS[0]}" slurmd -D -N "${NODE_NAMES[0]}" -f "$CONF"
        spawn "slurmd-${NODE_NAMES[1]}" nsenter --net="/var/run/netns/${NETNS[1]}" slurmd -D -N "${NODE_NAMES[1]}" -f "$CONF"
    fi
    wait_for "node(s) ${NODE_NAMES[*]} idle" "all_nodes_in '^idle$'" \
        || die "nodes not idle (states: $(for n in "${NODE_NAMES[@]}"; do printf '%s=%s ' "$n" "$(node_state "$n")"; done)); see $DIR/log/slurmd*.log and slurmctld.log"
    for name in "${DAEMONS[@]}"; do
        daemon_alive "$name" || die "$name exited after starting; see $DIR/log/"
    done
    trap - EXIT
    log "running: SLURM_CONF=$CONF, PIDs $(for name in "${DAEMONS[@]}"; do printf '%s=%s ' "$name" "$(pid_of "$name")"; done)"
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

stop() {
    stop_daemons
    if [[ "$NODES" == 2 ]]; then remove_network; fi
    unlink_default_config
}

status() {
    local name state node ok=0
    for name in "${DAEMONS[@]}"; do
        if daemon_alive "$name"; then echo "$name: running (PID $(pid_of "$name"))"
        else echo "$name: not running"; ok=1; fi
    done
    # sinfo retries a dead controller for seconds: ask only a live one.
    for node in "${NODE_NAMES[@]}"; do
        state=""
        if daemon_alive slurmctld; then state="$(node_state "$node")"; fi
        echo "node $node: ${state:-no answer}"
        [[ -n "$state" ]] || ok=1
    done
    echo "SLURM_CONF=$CONF"
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) die "usage: $0 [--nodes 1|2] start|stop|status|env   (state in \$SLURM_TEST_DIR, default /tmp/segformer-slurm, or /tmp/segformer-slurm-2n for 2 nodes)" ;;
esac
