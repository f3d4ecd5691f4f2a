#!/usr/bin/env bash
# The workflow's training of b0 on two SLURM nodes of this machine, through Snakemake and a profile.
#
#   sudo scripts/slurm_two_nodes.sh [--profile profiles/slurm-test] [--timeout_s 900] [--keep] [WORK_DIR]
#
# 1. starts the two-node test cluster (scripts/slurm_cluster.sh --nodes 2: slurmctld and slurmd
#    segformer-n1 in one network namespace, slurmd segformer-n2 in another, joined by veth pairs);
# 2. copies the working tree (without tests/ and benchmarks/) to WORK_DIR/workflow (default: a new
#    folder under /tmp) and writes a tiny config there: the demo at 64x32, `devices: 1`, `nodes: 2`,
#    two iterations;
# 3. runs `snakemake --profile PROFILE results/b0/model.ckpt --configfile tiny.yaml`: the train rule
#    becomes one SLURM job of two nodes in which srun starts one launch_train.py per node (node rank
#    from SLURM_NODEID, master address: the first host of the allocation, segformer-n1);
# 4. shows from SLURM's records that the training job ran on both nodes (squeue while it ran, the
#    completed-job record, each slurmd's log of the steps it launched) and from the rule's log that
#    both launchers ran msrun (node ranks 0 and 1), and that the model was written;
# 5. stops the cluster (if this script started it), and removes the copy unless --keep.
#
# Prints the wall time, the peak of the summed memory (PSS) of every process working in the copy
# (Snakemake, the launchers, msrun and its workers, on both nodes), and one last line
# `RESULT {json}`; exits 0 only when everything above held. Ctrl-C (or SIGTERM) stops Snakemake with
# SIGINT (it cancels its SLURM jobs), then the cluster. Needs root; run one MindSpore job at a time.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE=profiles/slurm-test
TIMEOUT_S=900
KEEP=0
WORK=""
while (( $# )); do
    case "$1" in
        --profile) PROFILE="$2"; shift 2 ;;
        --timeout_s) TIMEOUT_S="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "slurm_two_nodes.sh: unknown option $1" >&2; exit 2 ;;
        *) WORK="$1"; shift ;;
    esac
done

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
# msrun and the workflow's python must be found on both nodes: srun passes this PATH on.
export PATH="$(dirname "$PYTHON"):$PATH"
export SLURM_TEST_NODES=2
export SLURM_TEST_DIR="${SLURM_TEST_DIR:-/tmp/segformer-slurm-2n}"
export SLURM_CONF="$SLURM_TEST_DIR/slurm.conf"
CLUSTER=("$ROOT/scripts/slurm_cluster.sh" --nodes 2)

log() { echo "slurm_two_nodes.sh: $*" >&2; }
[[ "$(id -u)" == 0 ]] || { log "needs root (network namespaces, /etc/hosts, SLURM daemons)"; exit 1; }

if [[ -z "$WORK" ]]; then WORK="$(mktemp -d /tmp/slurm_two_nodes.XXXXXX)"; MADE_WORK=1; else MADE_WORK=0; mkdir -p "$WORK"; fi
WORKFLOW="$WORK/workflow"
SNAKEMAKE_PID="" SAMPLER_PID="" STARTED_CLUSTER=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$SNAKEMAKE_PID" ]] && kill -0 "$SNAKEMAKE_PID" 2>/dev/null; then
        log "stopping snakemake (SIGINT: it cancels its SLURM jobs)"
        kill -INT "$SNAKEMAKE_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$SNAKEMAKE_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$SNAKEMAKE_PID" 2>/dev/null || true
    fi
    if [[ -n "$SAMPLER_PID" ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; fi
    if (( STARTED_CLUSTER )); then
        # Jobs still known to SLURM (a killed Snakemake): cancel them, give their steps a moment.
        if [[ -n "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ]]; then
            scancel --full $(squeue -h -t PD,R -o %i 2>/dev/null) 2>/dev/null || true
            for _ in $(seq 20); do [[ -z "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ]] && break; sleep 0.5; done
        fi
        "${CLUSTER[@]}" stop >&2 || status=1
    fi
    if (( MADE_WORK && ! KEEP )); then rm -rf "$WORK"; elif (( KEEP )); then log "kept $WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- 1. the cluster ----
if "${CLUSTER[@]}" status >/dev/null 2>&1; then
    log "the two-node cluster already runs: using it (and leaving it running)"
else
    STARTED_CLUSTER=1
    "${CLUSTER[@]}" start
fi
sinfo -N -o "%N %T %c %m" >&2

# ---- 2. the copy and the tiny config ----
"$PYTHON" - "$ROOT" "$WORKFLOW" <<'EOF'
import shutil, subprocess, sys
from pathlib import Path
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                       capture_output=True, text=True, check=True).stdout.splitlines()
for name in names:
    if name.startswith(("tests/", "benchmarks/")) or not (root / name).is_file():
        continue
    (dest / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / name, dest / name)
EOF
cat >"$WORKFLOW/tiny.yaml" <<'EOF'
# Two nodes of one device each: one SLURM job, one launcher per node, msrun with 2 workers in all.
demo: {seed: 0, width: 64, height: 32, train_images: 4, val_images: 4}
labels: {nproc: 1}
devices: 1
nodes: 2
train:
  iterations: 2
  batch_size: 1
  crop_size: [64, 64]
  base_scale: [64, 32]
  log_interval: 1
  checkpoint_interval: 0
  num_workers: 1
  schedule: {warmup_iters: 1}
EOF

# ---- 3. the run, with a sampler of the queue and of memory ----
SAMPLES="$WORK/samples"
mkdir -p "$SAMPLES"
sample() {   # every second: the queue (node lists while jobs run), and the memory of the copy's processes
    local pid cwd rss total peak=0 base_avail avail used peak_used=0
    base_avail="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
    while true; do
        squeue -h -o "%i %j %T %D %N" 2>/dev/null | sed "s/^/$(date +%T) /" >>"$SAMPLES/squeue.txt" || true
        total=0
        for pid in /proc/[0-9]*; do
            cwd="$(readlink "$pid/cwd" 2>/dev/null)" || continue
            [[ "$cwd" == "$WORKFLOW"* ]] || continue
            # Proportional set size: shared pages (MindSpore's libraries) split among their users.
            rss="$(awk '/^Pss:/ {print $2}' "$pid/smaps_rollup" 2>/dev/null)" || continue
            total=$(( total + ${rss:-0} ))
        done
        (( total > peak )) && peak=$total
        avail="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
        used=$(( base_avail - avail ))
        (( used > peak_used )) && peak_used=$used
        echo "$peak $peak_used" >"$SAMPLES/peak_kb"
        sleep 1
    done
}
sample &
SAMPLER_PID=$!

log "snakemake --profile $PROFILE results/b0/model.ckpt in $WORKFLOW (log: $WORKFLOW/snakemake.out)"
began=$(date +%s.%N)
# A background job of a script starts with SIGINT ignored, and Python then keeps ignoring it: restore
# the default, so that SIGINT reaches Snakemake (which then cancels its SLURM jobs).
(cd "$WORKFLOW" && exec env --default-signal=INT "$PYTHON" -m snakemake --profile "$PROFILE" results/b0/model.ckpt --configfile tiny.yaml \
    >"$WORKFLOW/snakemake.out" 2>&1) &
SNAKEMAKE_PID=$!
waited=0 rc=""
while kill -0 "$SNAKEMAKE_PID" 2>/dev/null; do
    if (( waited >= TIMEOUT_S )); then log "snakemake ran past $TIMEOUT_S s"; tail -40 "$WORKFLOW/snakemake.out" >&2; exit 1; fi
    sleep 1; waited=$(( waited + 1 ))
done
wait "$SNAKEMAKE_PID" && rc=0 || rc=$?
SNAKEMAKE_PID=""
wall=$(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=""
read -r peak_pss_kb peak_used_kb <"$SAMPLES/peak_kb" || { peak_pss_kb=0; peak_used_kb=0; }

# ---- 4. the evidence ----
failures=()
if [[ "$rc" != 0 ]]; then failures+=("snakemake exit $rc"); tail -60 "$WORKFLOW/snakemake.out" >&2; fi
train_job="$(grep -oE 'Job [0-9]+ has been submitted with SLURM jobid [0-9]+ \(log: [^)]*rule_train[^)]*\)' \
    "$WORKFLOW/snakemake.out" | grep -oE 'jobid [0-9]+' | awk '{print $2}' | tail -1 || true)"
echo "== SLURM job of rule train: ${train_job:-none}"
record="" ran_on=""
if [[ -n "$train_job" ]]; then
    echo "== squeue while it ran (time jobid name state nodes nodelist):"
    awk -v j="$train_job" '$2 == j' "$SAMPLES/squeue.txt" | uniq -f1 | head -5
    ran_on="$(awk -v j="$train_job" '$2 == j && $4 == "RUNNING" {print $6}' "$SAMPLES/squeue.txt" | tail -1)"
    record="$(grep -E "^JobId=$train_job " "$SLURM_TEST_DIR/log/jobcomp.log" || true)"
    echo "== completed-job record (jobcomp/filetxt):"
    echo "$record" | tr ' ' '\n' | grep -E '^(JobId|JobState|NodeList|NodeCnt|ProcCnt|StartTime|EndTime|ExitCode)=' | paste -sd' '
    [[ "$record" == *"JobState=COMPLETED"* && "$record" == *"ExitCode=0:0"* ]] || failures+=("job $train_job did not complete with exit 0")
    [[ "$record" == *"NodeCnt=2 "* && "$record" == *"NodeList=segformer-n[1-2] "* ]] || failures+=("job $train_job was not on both nodes")
    for node in segformer-n1 segformer-n2; do
        echo "== slurmd $node: steps of job $train_job it launched"
        grep -E "launch task StepId=$train_job\.|\[$train_job\.[0-9]+\] done with job" "$SLURM_TEST_DIR/log/slurmd-$node.log" || true
        grep -qE "launch task StepId=$train_job\.[0-9]+ " "$SLURM_TEST_DIR/log/slurmd-$node.log" \
            || failures+=("slurmd $node launched no step of job $train_job")
    done
else
    failures+=("rule train was not submitted to SLURM")
fi
train_log="$WORKFLOW/results/logs/train_b0.log"
echo "== the rule's log: the two launchers"
grep -E '^launch: ' "$train_log" 2>/dev/null | cut -c1-220 || true
for rank in 0 1; do
    grep -qE "^launch: msrun .*--node_rank=$rank --master_addr=segformer-n1" "$train_log" 2>/dev/null \
        || failures+=("no launcher of node rank $rank in $train_log")
done
grep -q "global batch 2 = 2 devices x 1 per device" "$train_log" 2>/dev/null || failures+=("training did not see 2 devices")
# msrun's scheduler on node rank 0 only (segformer-n1 is its own address there alone), and the workers'
# connections to it from both nodes' addresses (MindSpore logs each connection's source).
n1_addr="$(getent hosts segformer-n1 | awk '{print $1}' || true)"
n2_addr="$(getent hosts segformer-n2 | awk '{print $1}' || true)"
schedulers="$(grep -c "Start scheduler process" "$train_log" 2>/dev/null || true)"
echo "== msrun schedulers started: ${schedulers:-0}; connections to the scheduler by source node:"
for addr in "$n1_addr" "$n2_addr"; do
    count="$(grep -cE "source: ${addr//./\\.}:[0-9]+, destination: ${n1_addr//./\\.}:" "$train_log" 2>/dev/null || true)"
    echo "   from $addr: ${count:-0}"
    (( ${count:-0} > 0 )) || failures+=("no connection from $addr to the scheduler in $train_log")
done
[[ "${schedulers:-0}" == 1 ]] || failures+=("expected one msrun scheduler, found ${schedulers:-0}")
model="$WORKFLOW/results/b0/model.ckpt"
model_bytes=0
[[ -f "$model" ]] && model_bytes="$(stat -c %s "$model")"
echo "== model: $model ($model_bytes bytes)"
(( model_bytes > 1000000 )) || failures+=("no model written")
echo "== wall time of snakemake: $wall s; peak summed PSS of the copy's processes: $(( peak_pss_kb / 1024 )) MiB;" \
     "peak memory in use on the machine above the start: $(( peak_used_kb / 1024 )) MiB (other work included)"

ok=true
(( ${#failures[@]} == 0 )) || ok=false
printf 'RESULT {"ok": %s, "wall_s": %s, "train_job": "%s", "nodelist_running": "%s", "peak_pss_mib": %d, "peak_machine_used_mib": %d, "model_bytes": %d, "work_dir": "%s"}\n' \
    "$ok" "$wall" "$train_job" "$ran_on" $(( peak_pss_kb / 1024 )) $(( peak_used_kb / 1024 )) "$model_bytes" "$WORK"
if [[ "$ok" != true ]]; then
    log "FAILED: ${failures[*]}"
    [[ -f "$train_log" ]] && { echo "----- $train_log (last 40 lines)"; tail -40 "$train_log"; } >&2
    exit 1
fi
