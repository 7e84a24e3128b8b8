"""Stopping a run safely: Ctrl-C and SIGTERM, and a loss that is no longer a number.

Ctrl-C (SIGINT) or SIGTERM (what SLURM and other schedulers send before they kill a job) asks the run
to stop: the current optimizer step finishes, a checkpoint is written (atomically: core/checkpoints.py),
and the run ends with status "interrupted", printing the command that resumes it. A second Ctrl-C stops
at once (the last complete checkpoint stays). Several processes stop at the same step: the request is
shared between them at each step's end.

The loss watchdog stops a run whose training loss (or gradient norm) becomes NaN or infinite: the
weights are no longer worth saving, so the final model is not written and the last good checkpoint
stays.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager

from ftcore.errors import FtcoreError

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequested:
    """Set by the signal handler, read by the callback."""

    def __init__(self):
        self.signal = None


class NonFiniteLoss(FtcoreError):
    """The training loss became NaN or infinite."""

    exit_code = 1


class Stopped(FtcoreError):
    """The run stopped on a signal after saving a checkpoint."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def signals():
    """Catch SIGINT and SIGTERM for the run (main thread only); the previous handlers come back after."""
    stop = StopRequested()
    # Several processes: not yet. A launcher (torchrun) stops its workers with SIGTERM when one fails; a
    # worker that caught it would keep a stalled peer alive for the launcher's whole grace period.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if several or threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNAL_EXIT}

    def handler(signum, frame):
        if stop.signal is not None:  # the second time: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        stop.signal = signum
        if int(os.environ.get("RANK", "0")) == 0:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: stopping after this step and saving a checkpoint "
                  f"(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    for sig in SIGNAL_EXIT:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _shared(flag: bool) -> bool:
    """True on every process when any process was asked to stop."""
    try:
        import torch.distributed as dist
    except ImportError:
        return flag
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def callback(stop: StopRequested):
    """The trainer callback: save and stop on a signal; stop on a non-finite loss."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        stopped_at = None

        def on_step_end(self, args, state, control, **kwargs):
            if _shared(stop.signal is not None):
                if stop.signal is None:
                    stop.signal = signal.SIGTERM  # another process was told
                control.should_save = True
                control.should_training_stop = True
                self.stopped_at = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise NonFiniteLoss(_non_finite_message(key, value, state.global_step, args.output_dir))

    return Guard()


def _non_finite_message(key, value, step, output_dir) -> str:
    from ftcore.checkpoints import complete_checkpoints

    found = complete_checkpoints(output_dir)
    kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved before it"
    what = "training loss" if key == "loss" else "gradient norm"
    return (f"the {what} became {value} at step {step}, so training stopped and the final model was not saved; "
            f"{kept}. Lower learning_rate, add warmup_steps, keep max_grad_norm on, or check the data")


def resume_command() -> str:
    """The command line that resumes this run: as it was typed, with --resume."""
    argv = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    return " ".join(shlex.quote(a) for a in ["ftcore", *argv, "--resume"])


def stopped(stop: StopRequested, output_dir, step) -> Stopped:
    code = SIGNAL_EXIT.get(stop.signal, 130)
    name = "Ctrl-C" if stop.signal == signal.SIGINT else signal.Signals(stop.signal).name
    return Stopped(f"stopped by {name} at step {step}; a checkpoint is saved in {output_dir}. "
                   f"Resume with: {resume_command()}", code)


class SaveFailed(FtcoreError):
    """Writing a checkpoint or the final model failed: a full disk, a read-only folder."""

    exit_code = 1


_DISK = ("No space left on device", "Read-only file system", "Disk quota exceeded", "os error 28", "os error 30")


def is_disk_fault(exc: BaseException) -> bool:
    """An OS error writing files, or safetensors' wrapping of one (it is not an OSError)."""
    return (isinstance(exc, OSError) and not isinstance(exc, FtcoreError)) or any(d in str(exc) for d in _DISK)


def save_failed(exc: BaseException, output_dir) -> SaveFailed:
    """The one-line error for an OS error while the run writes into ``output_dir``."""
    from ftcore.checkpoints import complete_checkpoints

    found = complete_checkpoints(output_dir)
    kept = f"the last complete checkpoint is {found[-1]}" if found else "no checkpoint was saved"
    where = getattr(exc, "filename", None) or output_dir
    reason = getattr(exc, "strerror", None) or next((d for d in _DISK[:3] if d in str(exc)), str(exc))
    return SaveFailed(f"could not write to {where}: {reason}; {kept}. Free space or make "
                      f"{output_dir} writable, then resume with: {resume_command()}")
