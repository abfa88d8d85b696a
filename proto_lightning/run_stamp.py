"""One run folder for every rank of a multi-process launch (`${run_stamp:<strftime format>}`).

Hydra names a run folder from the time, and each process resolves it itself. Lightning's own
launcher passes rank 0's folder to the processes it starts, but under torchrun or srun every rank
starts on its own, possibly seconds apart, and would write into a folder of its own. The resolver
`run_stamp` (conf/hydra/default.yaml) gives every rank the same stamp:

- torchrun (RANK, WORLD_SIZE > 1, MASTER_ADDR, MASTER_PORT in the environment): rank 0 publishes
  its local time in the key-value store at MASTER_ADDR:MASTER_PORT and the others read it. That is
  the store torch.distributed's env:// rendezvous uses next: torchrun's agent store where it serves
  that address (TORCHELASTIC_USE_AGENT_STORE), else a multi-tenant TCPStore hosted by rank 0, which
  the process group's own store then shares, as `torch.distributed.rendezvous` does;
- srun (SLURM_NTASKS > 1): `slurm-<job id>.<step id>`, the same on every task of one step;
- one process: the local time, like `${now:...}`.
"""

from __future__ import annotations

import functools
import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.distributed import TCPStore

RENDEZVOUS_TIMEOUT = timedelta(minutes=5)
_stores: list[TCPStore] = []  # kept open: the process group's store shares rank 0's server


@functools.cache
def run_stamp(fmt: str) -> str:
    """The run's time stamp in `fmt`, equal on every rank of a torchrun or srun launch."""
    env = os.environ
    if int(env.get("WORLD_SIZE", 1)) > 1 and {"RANK", "MASTER_ADDR", "MASTER_PORT"} <= env.keys():
        return _published_by_rank_zero(
            fmt, int(env["RANK"]), env["MASTER_ADDR"], env["MASTER_PORT"]
        )
    if int(env.get("SLURM_NTASKS", 1)) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', 0)}"
    return datetime.now().strftime(fmt)


def _published_by_rank_zero(fmt: str, rank: int, host: str, port: str) -> str:
    """Rank 0's local time in `fmt`, shared through the launch's TCP key-value store."""
    from torch.distributed import TCPStore  # here: composing a config never waits for torch

    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = TCPStore(
        host,
        int(port),
        is_master=rank == 0 and not agent_serves,
        timeout=RENDEZVOUS_TIMEOUT,
        wait_for_workers=False,
        multi_tenant=True,
    )
    _stores.append(store)
    key = f"proto_lightning/run_stamp/{fmt}"
    if rank == 0:
        store.set(key, datetime.now().strftime(fmt))
    return store.get(key).decode()
