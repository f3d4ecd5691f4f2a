"""Start the training stage on one device, or data-parallel through msrun.

    python workflow_scripts/launch_train.py --devices 2 --nodes 1 --log_dir results/b0/msrun -- \
        --variant b0 --train_list ... (the arguments of workflow_scripts/train.py)

Several nodes (inside a SLURM job, one launcher per node via srun): the node rank comes from
--node_rank, else SLURM_NODEID, else NODE_RANK; the master address from --master_addr, else
MASTER_ADDR, else the allocation's first host. Every node must see the same --log_dir path (the
master port is derived from it).

msrun (--join=True) already tails every worker's log into standard output, so the rule's log holds
the workers' output as it happens; the logs stay in --log_dir (listed at the end, in rank order).
A worker that dies ends the job: msrun kills the others, and the launcher kills whatever still
waits (msrun's scheduler) --failure_grace_s seconds later and exits non-zero; SIGTERM/SIGINT to
the launcher take every worker down with it. A rerun resumes from the training's state folder.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from segformer.engine.launch import (FAILURE_GRACE_S, describe, explain_exit, log_files, run_msrun,
                                     slurm_master_addr, train_command)

TRAIN_SCRIPT = str(Path(__file__).with_name("train.py"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1, help="workers on this node")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--log_dir", required=True, help="msrun's worker logs")
    parser.add_argument("--node_rank", type=int, default=None,
                        help="this node's rank when --nodes > 1 (default: SLURM_NODEID, else NODE_RANK)")
    parser.add_argument("--master_addr", default=None,
                        help="the node of rank 0 when --nodes > 1 (default: MASTER_ADDR, else the first host of "
                             "the SLURM allocation)")
    parser.add_argument("--failure_grace_s", type=float, default=FAILURE_GRACE_S,
                        help="after a worker failed, seconds msrun gets to end by itself before the launcher kills "
                             "the job (default %(default)s)")
    parser.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train.py's arguments")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    node_rank = master_addr = None
    if args.nodes > 1:
        node_rank = args.node_rank
        if node_rank is None:
            node_rank = int(os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK", "-1")))
        if not 0 <= node_rank < args.nodes:
            parser.error(f"--nodes {args.nodes} needs a node rank in 0..{args.nodes - 1} (got {node_rank}): "
                         "--node_rank, SLURM_NODEID (one launcher per node with srun) or NODE_RANK")
        master_addr = args.master_addr or slurm_master_addr()
    command = train_command(TRAIN_SCRIPT, train_args, devices=args.devices, nodes=args.nodes,
                            log_dir=args.log_dir, job_key=str(Path(args.log_dir).resolve()),
                            node_rank=node_rank, master_addr=master_addr)
    print(f"launch: {describe(command)}", flush=True)
    if args.dry_run:
        return 0
    environment = None  # several devices of this node: reserve their slots, show msrun's workers only those
    device = train_args[train_args.index("--device") + 1] if "--device" in train_args[:-1] else "CPU"
    if args.devices * args.nodes > 1 and device != "CPU":
        from segformer.devices import visible_devices_env

        environment = {**os.environ, **visible_devices_env(device, args.devices)}  # locks held until we exit
    if args.devices * args.nodes == 1:
        returncode, why = explain_exit(subprocess.call(command, env=environment))
        if why:
            print(why, file=sys.stderr, flush=True)
        return returncode
    returncode = run_msrun(command, failure_grace_s=args.failure_grace_s, env=environment)
    logs = ", ".join(path.name for path in log_files(args.log_dir))
    print(f"launch: exit status {returncode}; msrun's logs (shown above as they were written): "
          f"{args.log_dir}/ {logs}", flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
