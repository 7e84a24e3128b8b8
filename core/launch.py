"""What the core knows about several processes: the plan from the command line, and whether this
process was started by a launcher.

Starting the processes is a plugin's answer to the ``launch_processes`` hook
(the built-in distributed plugin starts them with torchrun, accelerate or
deepspeed); joining them into a process group is that plugin's
``run_started``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftcore.errors import FtcoreError

LAUNCHED_BY = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Plan:
    """``ftcore run``'s ``--nproc``, ``--nnodes``, ``--node-rank``, ``--master-addr``, ``--master-port``."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


def launched() -> bool:
    """True inside a process a launcher started (its rank is in the environment, or ftcore started it)."""
    return all(os.environ.get(name) for name in LAUNCHED_BY) or os.environ.get("FTCORE_LAUNCHED") == "1"


def check(plan: Plan) -> None:
    if plan.nproc < 1 or plan.nnodes < 1:
        raise FtcoreError("--nproc and --nnodes must be at least 1")
    if not 0 <= plan.node_rank < plan.nnodes:
        raise FtcoreError(f"--node-rank {plan.node_rank} must be between 0 and --nnodes - 1 ({plan.nnodes - 1})")
    if plan.nnodes > 1 and not plan.master_addr:
        raise FtcoreError("--nnodes > 1 needs --master-addr: the address of the machine with --node-rank 0, "
                          "which every machine can reach")


def child_command(args) -> list[str]:
    """The ``ftcore run`` command line each process runs (same recipe and overrides)."""
    command = ["run", args.recipe, *args.overrides]
    if args.overwrite:
        command.append("--overwrite")
    if getattr(args, "debug", False):
        command.append("--debug")
    return command
