"""Starting the processes of ``ftcore run --nproc N`` and joining them into one process group.

This is the distributed plugin's answer to ``launch_processes``: ``ftcore run``
has checked the recipe once and asks the plugin to start the processes. The
default launcher is PyTorch's own (``torch.distributed.run``, what
``torchrun`` runs), called through its Python API: the elastic agent starts
``python -m ftcore run ...`` N times with ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and the rendezvous set (and ``FTCORE_LAUNCHED=1``, which the
core reads as "started by a launcher"). A process started that way (or by
``accelerate launch``, ``deepspeed`` or ``srun`` with those variables) trains
at once and never launches again: the core does not ask this hook there.

``launcher: accelerate`` or ``launcher: deepspeed`` in the recipe hands the
same command to that launcher instead.

When a process dies, the agent stops the others (SIGTERM, then SIGKILL) and
ftcore prints which rank failed and how, and exits non-zero: a dead rank ends
the run within seconds instead of leaving the others waiting on a collective
until ``ddp_timeout``.

Ctrl-C or SIGTERM to ``ftcore run --nproc N`` (or to all its processes, as
SLURM sends it) is a stop request, not a failure: this process, not the agent,
handles both (``guards.launcher_signals``). It marks the request, passes it on
to every worker once and waits for them: they finish the current step, agree on
it, rank 0 writes the checkpoint and prints the resume command, and ftcore
exits 130 (Ctrl-C) or 143 (SIGTERM). A SIGTERM the agent sends after a failure
carries no mark: the workers end at once, as before.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from typing import Literal, get_args

from ftcore.api import SIGNAL_EXIT, FtcoreError, Plan, get_logger, launcher_signals

log = get_logger(__name__)

Launcher = Literal["torchrun", "accelerate", "deepspeed"]  # the recipe's ``launcher:`` (validated there)


class LaunchError(FtcoreError):
    """A training process failed; the message names its rank."""

    exit_code = 1


def world_size() -> int:
    """How many processes train together (``WORLD_SIZE``, set by every launcher; 1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def _quiet_agent():
    """The elastic agent's own log lines (a wall of WARNING/ERROR per stopped process) are replaced by
    one message; its logger is restored afterwards."""
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


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


def launch(plan: Plan, command: list[str], launcher: Launcher) -> int:
    """Start the processes of ``plan`` running ``ftcore <command>``; wait; 0 when every rank succeeded."""
    if launcher not in get_args(Launcher):
        raise FtcoreError(f"launcher: '{launcher}' is not known; use one of {', '.join(get_args(Launcher))}")
    nodes = f" on each of {plan.nnodes} machines (this one is node {plan.node_rank})" if plan.nnodes > 1 else ""
    log.info(f"launch: {plan.nproc} process(es){nodes} with {launcher}")
    os.environ["FTCORE_LAUNCHED"] = "1"  # the processes train, whatever the launcher sets: never launch again
    if launcher == "accelerate":
        from accelerate.commands.launch import launch_command, launch_command_parser

        return _run_other(lambda: launch_command(launch_command_parser().parse_args(accelerate_argv(plan, command))))
    if launcher == "deepspeed":
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

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, plan.nproc))))
    config, entrypoint, arguments = config_from_args(get_args_parser().parse_args(torchrun_argv(plan, command)))
    config.signals_to_handle = "SIGHUP,SIGQUIT"  # SIGINT and SIGTERM are ftcore's: a stop request (guards)

    def before_start(signum):
        return SignalException(f"got signal {signum}", signal.Signals(signum))

    stop = None
    try:
        with _quiet_agent(), launcher_signals(before_start) as stop:
            elastic_launch(config=config, entrypoint=entrypoint)(*arguments)
    except ChildFailedError as exc:
        if stopped_on_request(stop, exc.failures):
            return SIGNAL_EXIT[stop.signal]  # rank 0 said where the checkpoint is and how to resume
        raise LaunchError(failure_message(exc.failures, plan)) from None
    except SignalException as exc:
        if stop is not None and stop.signal is not None:  # before any process started: nothing to save
            return SIGNAL_EXIT[stop.signal]
        raise LaunchError(f"the launcher received {exc.sigval.name}; every training process was stopped") from None
    return 0  # also after a signal that came when every process had finished: the run is complete


# How a process ends when asked to stop: it saved and stopped (130, 143); it was killed by the signal before
# its training began, or after a second Ctrl-C (by the signal, or SIGKILL when it did not stop at once).
STOP_EXITS = {130, 143, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL}


def stopped_on_request(stop, failures: dict) -> bool:
    """True when the launcher was asked to stop and every process ended as a stop request ends it."""
    if stop is None or stop.signal is None:
        return False
    if any(f.exitcode == -signal.SIGKILL for f in failures.values()) and not getattr(stop, "at_once", False):
        return False  # killed from outside (out of memory) while stopping
    return all(f.exitcode in STOP_EXITS for f in failures.values())


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


def start_process_group(recipe) -> None:
    """In a launched process: join the process group now, with ``ddp_timeout`` (default 1800 s).

    Done before anything else touches ``torch.distributed`` (the first ``TrainingArguments``
    would otherwise start it with its defaults). NCCL on GPUs, with gloo beside it under FSDP
    (its full state dict is gathered on CPU); gloo on CPU. accelerate and DeepSpeed use this group.
    """
    if world_size() < 2:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "cuda:nccl,cpu:gloo" if (recipe.fsdp or recipe.fsdp_config) else "nccl"  # FSDP, either form
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
    if world_size() < 2 or isinstance(exc, FtcoreError):  # no other process to lose; or already a message
        return None
    import torch.distributed as dist

    text = str(exc)
    words = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe",
             "NCCL communicator was aborted", "Socket Timeout")
    if not (isinstance(exc, getattr(dist, "DistError", ())) or any(w in text for w in words)):
        return None
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:300]
    return (f"rank {os.environ.get('RANK', '?')} lost contact with the other processes ({first}); "
            f"another rank failed or stalled longer than ddp_timeout")
