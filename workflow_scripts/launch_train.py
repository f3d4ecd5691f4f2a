"""Start the training stage on one device, or data-parallel through msrun.

    python workflow_scripts/launch_train.py --devices 2 --nodes 1 --log_dir results/b0/msrun -- \
        --variant b0 --train_list ... (the arguments of workflow_scripts/train.py)

Several nodes (inside a SLURM job, one launcher per node via srun): the node rank comes from
SLURM_NODEID and the master address from the allocation's first host. After a data-parallel run
the workers' logs are copied to standard output, rank 0 first, so that the rule's log holds them.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from segformer.engine.launch import describe, slurm_master_addr, train_command

TRAIN_SCRIPT = str(Path(__file__).with_name("train.py"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1, help="workers on this node")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--log_dir", required=True, help="msrun's worker logs")
    parser.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train.py's arguments")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    node_rank = master_addr = None
    if args.nodes > 1:
        node_rank = int(os.environ.get("SLURM_NODEID", os.environ.get("NODE_RANK", "-1")))
        if node_rank < 0:
            parser.error("--nodes > 1 needs SLURM_NODEID (run one launcher per node with srun) or NODE_RANK")
        master_addr = slurm_master_addr()
    command = train_command(TRAIN_SCRIPT, train_args, devices=args.devices, nodes=args.nodes,
                            log_dir=args.log_dir, job_key=str(Path(args.log_dir).resolve()),
                            node_rank=node_rank, master_addr=master_addr)
    print(f"launch: {describe(command)}", flush=True)
    if args.dry_run:
        return 0
    returncode = subprocess.call(command)
    if args.devices * args.nodes > 1:
        for worker_log in sorted(Path(args.log_dir).glob("worker_*.log")):
            print(f"----- {worker_log} -----\n{worker_log.read_text(errors='replace')}", flush=True)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
