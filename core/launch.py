"""``ftcore run RECIPE --nproc N``: start N training processes per machine.

The default launcher is PyTorch's own (``torch.distributed.run``, what
``torchrun`` runs), called through its Python API: ftcore checks the recipe
once, then the elastic agent starts ``python -m ftcore run ...`` N times with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous set. A process
started that way (or by ``accelerate launch``, ``deepspeed`` or ``srun`` with
those variables) trains at once and never launches again.

``launcher: accelerate`` or ``launcher: deepspeed`` in the recipe hands the
same command to that launcher instead.

When a process dies, the agent stops the others (SIGTERM, then SIGKILL) and
ftcore prints which rank failed and how, and exits non-zero: a dead rank ends
the run within seconds instead of leaving the others waiting on a collective
until ``ddp_timeout``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

from ftcore.errors import FtcoreError

LAUNCHERS = ("torchrun", "accelerate", "deepspeed")
LAUNCHED_BY = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class LaunchError(FtcoreError):
    """A training process failed; the message names its rank."""

    exit_code = 1


@dataclass(frozen=True)
class Plan:
    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "torchrun"

    @property
    def distributed(self) -> bool:
        return self.nproc > 1 or self.nnodes > 1


def launched() -> bool:
    """True inside a process a launcher started (its rank is in the environment, or ftcore started it)."""
    return all(os.environ.get(name) for name in LAUNCHED_BY) or os.environ.get("FTCORE_LAUNCHED") == "1"


def check(plan: Plan) -> None:
    if plan.launcher not in LAUNCHERS:
        raise FtcoreError(f"launcher: '{plan.launcher}' is not known; use one of {', '.join(LAUNCHERS)}")
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_argv(plan: Plan, command: list[str]) -> list[str]:
    """Arguments for ``torch.distributed.run``'s parser."""
    argv = [f"--nproc-per-node={plan.nproc}", f"--nnodes={plan.nnodes}", f"--node-rank={plan.node_rank}",
            "--max-restarts=0", "--monitor-interval=0.5"]
    argv += [f"--master-addr={plan.master_addr or '127.0.0.1'}", f"--master-port={_port(plan)}"]
    return [*argv, "-m", "ftcore", *command]


def accelerate_argv(plan: Plan, command: list[str]) -> list[str]:
    argv = ["--num_processes", str(plan.nproc * plan.nnodes), "--num_machines", str(plan.nnodes),
            "--machine_rank", str(plan.node_rank), "--main_process_port", str(_port(plan)),
            "--dynamo_backend", "no", "--mixed_precision", "no"]
    if plan.master_addr:
        argv += ["--main_process_ip", plan.master_addr]
    if plan.nproc * plan.nnodes > 1:
        argv.append("--multi_gpu")  # its torchrun path; accelerate's --cpu would need mpirun for several processes
    return [*argv, "-m", "ftcore", *command]


def deepspeed_argv(plan: Plan, command: list[str]) -> list[str]:
    argv = ["--num_gpus", str(plan.nproc), "--num_nodes", str(plan.nnodes), "--no_local_rank",
            "--master_port", str(_port(plan))]
    if plan.master_addr:
        argv += ["--master_addr", plan.master_addr]
    return [*argv, "--module", "ftcore", *command]


def _port(plan: Plan) -> int:
    """``--master-port``, or on one machine a free port (two runs side by side do not collide)."""
    if plan.master_port:
        return plan.master_port
    return free_port() if plan.nnodes == 1 else 29500


def launch(plan: Plan, command: list[str]) -> int:
    """Start the processes of ``plan`` running ``ftcore <command>``; wait; 0 when every rank succeeded."""
    check(plan)
    nodes = f" on each of {plan.nnodes} machines (this one is node {plan.node_rank})" if plan.nnodes > 1 else ""
    print(f"launch: {plan.nproc} process(es){nodes} with {plan.launcher}", flush=True)
    os.environ["FTCORE_LAUNCHED"] = "1"  # the processes train, whatever the launcher sets: never launch again
    if plan.launcher == "accelerate":
        from accelerate.commands.launch import launch_command, launch_command_parser

        return _run_other(lambda: launch_command(launch_command_parser().parse_args(accelerate_argv(plan, command))))
    if plan.launcher == "deepspeed":
        from deepspeed.launcher.runner import main as deepspeed_main

        return _run_other(lambda: deepspeed_main(deepspeed_argv(plan, command)))
    return _torchrun(plan, command)


def _run_other(start) -> int:
    try:
        start()
    except SystemExit as exc:  # these launchers exit with the failed process's code
        if exc.code:
            raise LaunchError(f"a training process failed (exit code {exc.code}); its error is above") from None
    except Exception as exc:
        raise LaunchError(f"a training process failed: {exc}") from None
    return 0


def _torchrun(plan: Plan, command: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    # the agent's own log lines (a wall of WARNING/ERROR per stopped process) are replaced by one message
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, plan.nproc))))
    config, entrypoint, arguments = config_from_args(get_args_parser().parse_args(torchrun_argv(plan, command)))
    try:
        elastic_launch(config=config, entrypoint=entrypoint)(*arguments)
    except ChildFailedError as exc:
        raise LaunchError(failure_message(exc.failures, plan)) from None
    except SignalException as exc:
        raise LaunchError(f"the launcher received {exc.sigval.name}; every training process was stopped") from None
    return 0


def failure_message(failures: dict, plan: Plan) -> str:
    """Which rank failed first, on which node, and how; the ranks the agent then stopped are only counted."""
    stopped = {rank for rank, f in failures.items() if f.exitcode == -signal.SIGTERM}
    causes = sorted(set(failures) - stopped) or sorted(failures)
    lines = []
    for rank in causes:
        failure = failures[rank]
        node = f" on node {plan.node_rank}" if plan.nnodes > 1 else ""
        where = f"rank {rank} (local rank {failure.local_rank}{node}, pid {failure.pid})"
        if failure.exitcode < 0:
            try:
                name = signal.Signals(-failure.exitcode).name
            except ValueError:
                name = f"signal {-failure.exitcode}"
            how = f"was killed by {name}" + (" (out of memory, or killed from outside)" if name == "SIGKILL" else "")
        else:
            how = f"exited with code {failure.exitcode} (its error is above)"
        lines.append(f"{where} {how}")
    others = sorted(set(failures) - set(causes))
    then = f"; rank(s) {', '.join(map(str, others))} were then stopped" if others else ""
    return f"training process {'; '.join(lines)}{then}. The run is incomplete."


def silence_other_ranks() -> None:
    """In a launched process other than rank 0, drop ordinary output (errors still go to stderr)."""
    if launched() and os.environ.get("RANK", "0") != "0":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process


def start_process_group(recipe) -> None:
    """In a launched process: join the process group now, with ``ddp_timeout`` (default 1800 s).

    Done before anything else touches ``torch.distributed`` (the first ``TrainingArguments``
    would otherwise start it with its defaults). NCCL on GPUs, with gloo beside it under FSDP
    (its full state dict is gathered on CPU); gloo on CPU. accelerate and DeepSpeed use this group.
    """
    if not launched() or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "cuda:nccl,cpu:gloo" if recipe.fsdp else "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=recipe.ddp_timeout or 1800))


def end_process_group() -> None:
    """After a completed run: wait for the other processes, then close the group.

    Left to interpreter exit, the group's background threads can be torn down while still
    running, and a process that has already saved everything aborts ("terminate called without
    an active exception"), failing the whole run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def lost_contact(exc: BaseException) -> str | None:
    """A one-line message when ``exc`` says another process died or hung (a failed collective), else None."""
    import torch.distributed as dist

    text = str(exc)
    words = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe",
             "NCCL communicator was aborted", "Socket Timeout")
    if not (isinstance(exc, getattr(dist, "DistError", ())) or any(w in text for w in words)):
        return None
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:300]
    return (f"rank {os.environ.get('RANK', '?')} lost contact with the other processes ({first}); "
            f"another rank failed or stalled longer than ddp_timeout")
