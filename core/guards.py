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
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from ftcore.errors import FtcoreError

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
SAME_REQUEST = 1.5  # seconds: a second signal this soon after the first is the same request (several processes)
STOP_FILE = "FTCORE_STOP_FILE"  # set by ftcore's launcher: the file it writes before passing a signal on
RESUME_COMMAND = "FTCORE_RESUME_COMMAND"  # set by ftcore's launcher: the command as the user typed it


def stop_grace() -> float:
    """Seconds a process of a multi-process run has, after a stop request, to reach the end of its step
    (``FTCORE_STOP_GRACE``, default 20): past it, a peer is taken to be gone and the process exits."""
    try:
        return max(0.1, float(os.environ.get("FTCORE_STOP_GRACE", "20")))
    except ValueError:
        return 20.0


class StopRequested:
    """Set by the signal handler, read by the callback."""

    def __init__(self):
        self.signal = None
        self.at = None  # time.monotonic() of the first signal
        self._timer = None

    def arm(self, seconds: float, code: int, why: str) -> None:
        """Exit the process with ``code`` in ``seconds`` unless :meth:`disarm` comes first."""
        self.disarm()

        def expire():
            print(f"rank {os.environ.get('RANK', '0')}: {why} within {seconds:g} s (FTCORE_STOP_GRACE); "
                  f"another process is gone or stalled, so this one exits now; the last complete checkpoint "
                  f"is kept", file=sys.stderr, flush=True)
            os._exit(code)

        self._timer = threading.Timer(seconds, expire)
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class NonFiniteLoss(FtcoreError):
    """The training loss became NaN or infinite."""

    exit_code = 1


class Stopped(FtcoreError):
    """The run stopped on a signal after saving a checkpoint."""

    def __init__(self, message, exit_code, quiet=False):
        super().__init__(message)
        self.exit_code = exit_code
        self.quiet = quiet  # another process (rank 0) says it: a CLI may leave this one unprinted


def _asked_by_user(marker: str | None) -> bool:
    """Under ftcore's launcher a signal is a stop request only when the launcher wrote ``marker`` (it
    does before passing one on); otherwise the launcher is stopping the processes because one of them
    failed. The marker may come a moment after a signal sent to every process at once (SLURM)."""
    if not marker:
        return True  # another launcher (torchrun, srun, accelerate): every signal is a request
    end = time.monotonic() + 1.0
    while not os.path.exists(marker):
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


@contextmanager
def signals():
    """Catch SIGINT and SIGTERM for the run (main thread only); the previous handlers come back after.

    With several processes (``WORLD_SIZE`` > 1) each one stops at the same step (agreed at each step's
    end, :func:`_shared`); the copies of one request that reach a process (the scheduler's, the
    launcher's) count once: a second signal less than ``SAME_REQUEST`` seconds after the first, or of
    another kind, is the same request, and only a later Ctrl-C stops at once. A process that does not
    reach the end of its step within ``stop_grace()`` seconds (a peer died) exits. Under ftcore's
    launcher, a signal the launcher did not mark as a request (its SIGTERM after another process failed)
    ends the process at once, as it would without a handler.
    """
    stop = StopRequested()
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    marker = os.environ.get(STOP_FILE)

    def handler(signum, frame):
        now = time.monotonic()
        if stop.signal is None:
            if several and not _asked_by_user(marker):  # the launcher ends the run after a failure
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            stop.signal, stop.at = signal.Signals(signum), now
            if several:
                stop.arm(stop_grace(), SIGNAL_EXIT[signum], "did not reach the end of its step")
            if int(os.environ.get("RANK", "0")) == 0:
                name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                print(f"\n{name}: stopping after this step and saving a checkpoint "
                      f"(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
            return
        if several and (signum != signal.SIGINT or stop.signal != signal.SIGINT or now - stop.at < SAME_REQUEST):
            return  # the same request again (the terminal's and the launcher's copy)
        signal.signal(signum, signal.SIG_DFL)  # the second time: stop now
        if several:  # a peer may be inside a collective that never ends: do not wait for it long
            stop.arm(5.0, SIGNAL_EXIT[signum], "did not stop at once")
            stop.at_once = True
        raise KeyboardInterrupt

    stop.at_once = False
    try:
        with _handling(handler):
            yield stop
    finally:
        if not stop.at_once:
            stop.disarm()  # the run got past its training and saving: nothing more to wait for


@contextmanager
def _handling(handler):
    """``handler`` for SIGINT and SIGTERM while the block runs; the previous handlers come back after."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNAL_EXIT}
    for sig in SIGNAL_EXIT:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _shared(signum) -> int:
    """The signal any process was given (the highest number: SIGTERM over SIGINT), 0 when none.

    Every process calls it at each step's end, so they all stop at the same step."""
    signum = int(signum or 0)
    try:
        import torch.distributed as dist
    except ImportError:
        return signum
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return signum
    import torch

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([signum], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


@contextmanager
def launcher_signals(before_start: Callable[[int], BaseException]):
    """In the process that launched the workers of a multi-process run: own SIGINT and SIGTERM.

    The first signal is written to a marker file (``FTCORE_STOP_FILE``, which tells a worker that a
    signal is a stop request and not the launcher ending the run after a failure) and passed on to
    each worker (its process group); the handler then waits for every worker to exit, so that the
    launcher does not stop the slower ones when the first has finished. A later Ctrl-C is passed on
    too (the workers stop at once), and workers still there 5 s after it are killed. A signal before
    any worker has started raises ``before_start(signum)``. Yields a :class:`StopRequested`: its
    ``signal`` is the first signal, or None. The workers' resume command is this process's.
    """
    state = StopRequested()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    folder = tempfile.mkdtemp(prefix="ftcore-stop-")
    marker = os.path.join(folder, "stop")
    env = {STOP_FILE: marker, RESUME_COMMAND: resume_command()}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    workers: list[int] = []

    def handler(signum, frame):
        now = time.monotonic()
        if state.signal is None:
            state.signal, state.at = signal.Signals(signum), now
            with open(marker, "w") as f:
                f.write(str(int(signum)))
            workers[:] = _children()
            if not workers:
                raise before_start(signum)
            _send(workers, signum)
            _wait(workers)  # further signals come in here (nested calls of this handler)
            return
        if signum == signal.SIGINT and now - state.at >= SAME_REQUEST and workers and not state.at_once:
            state.at_once = True
            _send(workers, signal.SIGINT)  # the workers stop at once
            end = time.monotonic() + 5
            while _alive(workers) and time.monotonic() < end:
                time.sleep(0.05)
            _send(_alive(workers), signal.SIGKILL)

    state.at_once = False
    try:
        with _handling(handler):
            yield state
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def _children() -> list[int]:
    """This process's child processes (the workers)."""
    try:
        import psutil

        return [p.pid for p in psutil.Process().children()]
    except ImportError:  # Linux without psutil
        import glob

        pids = []
        for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
            with open(path) as f:
                pids += [int(pid) for pid in f.read().split()]
        return pids


def _send(pids, signum) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signum)  # the worker and what it started (a launcher starts each in its own group)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _alive(pids) -> list[int]:
    """Those of ``pids`` still running; an exited child is left for its parent's code to collect."""
    alive = []
    for pid in pids:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                alive.append(pid)
        except ChildProcessError:
            pass
    return alive


def _wait(pids) -> None:
    while _alive(pids):
        time.sleep(0.05)


def callback(stop: StopRequested):
    """The trainer callback: save and stop on a signal; stop on a non-finite loss."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        stopped_at = None

        def on_step_end(self, args, state, control, **kwargs):
            told = _shared(stop.signal)
            if told:
                stop.signal = signal.Signals(told)  # every process stops at this step, for the same reason
                stop.at = stop.at or time.monotonic()  # told by another process: its request arrived now
                stop.disarm()  # all reached it: no process is gone, the save may take its time
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
    """The command line that resumes this run: as it was typed, with --resume (a launched worker: as the
    user typed the launching command, which ftcore's launcher passes on)."""
    if os.environ.get(RESUME_COMMAND):
        return os.environ[RESUME_COMMAND]
    argv = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    return " ".join(shlex.quote(a) for a in ["ftcore", *argv, "--resume"])


def stopped(stop: StopRequested, output_dir, step) -> Stopped:
    code = SIGNAL_EXIT.get(stop.signal, 130)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # rank 0 prints the resume command, once
        return Stopped(f"rank {rank} stopped with the other processes at step {step}", code, quiet=True)
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
