"""Is this process part of an msrun job? Decided from the variables msrun itself exports.

MindSpore 2.10's msrun (mindspore/parallel/cluster/process_entity/_api.py) sets, before it starts
each process of a job:

- every process (`_Node.run`): MS_WORKER_NUM (the job's total worker count), MS_SCHED_HOST,
  MS_SCHED_PORT (where the scheduler listens), MS_TOPO_TIMEOUT (--cluster_time_out);
- the scheduler (`_MetaServerNode.run`): MS_ROLE=MS_SCHED;
- each worker (`_ComputeGraphNode.run`): MS_ROLE=MS_WORKER and, when msrun assigns ranks itself
  (one node, or --node_rank given), MS_NODE_ID = node_rank x local_worker_num + i (also exported as
  RANK_ID); without --node_rank on several nodes the rank is only known after
  `mindspore.communication.init()`;
- and, in `_ProcessManager.run`, RANK_SIZE = worker_num, DEVICE_ID = local rank.

RANK_SIZE and RANK_ID are also what Ascend rank-table scripts export, and hosts often keep them in
their environment: a stale RANK_SIZE=8 must not make a plain `python train.py` wait for 7 peers
that never come. So the decision rests on MS_ROLE + MS_WORKER_NUM + MS_SCHED_HOST/PORT only, which
nothing but msrun (or someone deliberately imitating it) sets. (msrun's dry-run simulation mode,
--sim_level / MS_SIMULATION_LEVEL, sets no MS_ROLE and is not a distributed job here.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

ROLES = ("MS_WORKER", "MS_SCHED")


class MsrunWorld(NamedTuple):
    is_msrun: bool          # started by msrun (worker or scheduler): call mindspore.communication.init()
    world_size: int         # MS_WORKER_NUM under msrun, else 1 (whatever RANK_SIZE says)
    rank_hint: int | None   # MS_NODE_ID for a worker when msrun assigned it, else None (ask get_rank())


def msrun_world(environ: Mapping[str, str] | None = None) -> MsrunWorld:
    """(is_msrun, world_size, rank_hint) from msrun's own variables; RANK_SIZE / RANK_ID are ignored.

    The scheduler process (MS_ROLE=MS_SCHED) runs the same script and must call init() too (init()
    then serves the cluster and ends the process): it gets is_msrun=True and rank_hint=None.
    A half-set msrun environment (MS_ROLE without the rest, or values that are not numbers) is an
    error naming the variable, not a silent single-process run.
    """
    env = os.environ if environ is None else environ
    role = env.get("MS_ROLE")
    if not role:
        return MsrunWorld(False, 1, None)
    if role not in ROLES:
        raise ValueError(f"MS_ROLE={role!r}: msrun sets MS_WORKER or MS_SCHED")
    missing = [name for name in ("MS_WORKER_NUM", "MS_SCHED_HOST", "MS_SCHED_PORT") if not env.get(name)]
    if missing:
        raise ValueError(f"MS_ROLE={role} but {', '.join(missing)} unset: not a complete msrun environment")
    world_size = _integer(env, "MS_WORKER_NUM")
    if world_size < 1:
        raise ValueError(f"MS_WORKER_NUM={world_size}: must be >= 1")
    rank_hint = None
    if role == "MS_WORKER" and env.get("MS_NODE_ID", "") != "":
        rank_hint = _integer(env, "MS_NODE_ID")
        if not 0 <= rank_hint < world_size:
            raise ValueError(f"MS_NODE_ID={rank_hint} outside 0..{world_size - 1} (MS_WORKER_NUM={world_size})")
    return MsrunWorld(True, world_size, rank_hint)


def _integer(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not an integer") from None
