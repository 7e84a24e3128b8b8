"""Run untrusted Python (model-written code) in a separate, limited process.

``run_python(source)`` writes ``source`` to ``program.py`` in a fresh temporary
folder and runs it with ``python -I -S`` (no site-packages, no user site, no
``PYTHON*`` variables) through ``sandbox_child.py``, which sets up the limits
(see its docstring). From here:

- a new session and process group (``start_new_session``); past the wall-clock
  ``timeout`` the whole group is killed (``SIGKILL``), and again when the program
  ends, so nothing it started outlives it;
- an environment of ``PATH``, ``LANG``, ``HOME`` and ``TMPDIR`` only: none of
  this process's variables (tokens, keys) reach the program;
- standard output and error read as they come; a program that prints more
  than ``max_output`` bytes is killed there and fails ("output limit"), so
  printing gigabytes costs nothing;
- the folder removed afterwards.

What holds where (``Result.isolation`` lists what one run achieved):

- network: a new network namespace (no interface but a loopback that is down)
  where the kernel lets this user create one; the audit hook refuses sockets
  in any case;
- processes: a new PID namespace (every process dies with the program),
  ``RLIMIT_NPROC`` (counted per user: as root the program runs as ``nobody``
  so the limit applies), the process-group kill, and the audit hook refusing
  ``fork``/``exec``/``subprocess``;
- files: the audit hook refuses writes outside the folder and reads outside
  it and the Python installation; as root, running as ``nobody`` adds the
  operating system's permissions. ``RLIMIT_FSIZE`` bounds any file's size.

The audit hook is a Python-level guard: code that reaches native code without
``ctypes`` (a C extension with a bug, an interpreter exploit) is not stopped by
it. It is a good fence for model-written test programs, not a security boundary
against a determined attacker: for that, run evaluation in a container or VM.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
NOBODY = 65534


@dataclass
class Result:
    status: str  # "passed" (exit 0), "failed" (non-zero exit), "timeout", "output limit" (killed past max_output)
    returncode: int | None
    output: str  # the first max_output bytes of stdout and stderr, interleaved
    output_truncated: bool = False
    seconds: float = 0.0
    isolation: list = field(default_factory=list)  # what the launcher achieved (sandbox_child.py)
    folder: str = ""  # the working folder (removed by now)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _nobody() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return NOBODY, NOBODY


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(source: str, timeout: float = 10.0, memory_mb: int = 1024, file_mb: int = 16,
               max_output: int = 64 * 1024, processes: int = 16, namespaces: bool = True,
               python_guard: bool = True) -> Result:
    """Run ``source`` as a Python program in the sandbox; never raises for what the program does."""
    folder = Path(tempfile.mkdtemp(prefix="ftcore-sandbox-"))
    report_read, report_write = os.pipe()
    started = time.monotonic()
    proc = None
    try:
        (folder / "program.py").write_text(source, encoding="utf-8")
        uid, gid = _nobody()
        if os.geteuid() == 0:  # the program will run as nobody: its folder must be its own
            os.chown(folder, uid, gid)
            os.chmod(folder / "program.py", 0o644)
        config = {"folder": str(folder), "report_fd": report_write, "cpu_seconds": max(1, int(timeout) + 1),
                  "memory_mb": memory_mb, "file_mb": file_mb, "processes": processes, "uid": uid, "gid": gid,
                  "namespaces": namespaces, "python_guard": python_guard}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder), "TMPDIR": str(folder)}
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(CHILD), json.dumps(config)], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=(report_write,))
        os.close(report_write)
        report_write = None
        output, truncated, timed_out = _read_bounded(proc, started + timeout, max_output)
        if timed_out or truncated:
            _kill_group(proc.pid)
        try:
            returncode = proc.wait(timeout=max(0.1, started + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            returncode = proc.wait()
        status = ("timeout" if timed_out else "output limit" if truncated else
                  "passed" if returncode == 0 else "failed")
        return Result(status, None if timed_out else returncode, output.decode("utf-8", "replace"), truncated,
                      time.monotonic() - started, _read_report(report_read), str(folder))
    finally:
        if proc is not None:
            _kill_group(proc.pid)  # whatever the program left behind in its group
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
        for fd in (report_read, report_write):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        shutil.rmtree(folder, ignore_errors=True)


def _read_bounded(proc, deadline: float, max_output: int) -> tuple[bytes, bool, bool]:
    """Read the program's output until it closes or ``deadline``; keep ``max_output`` bytes."""
    kept, truncated = bytearray(), False
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(kept), truncated, True
            if not selector.select(timeout=min(left, 0.5)):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return bytes(kept), truncated, False
            room = max_output - len(kept)
            kept += chunk[:room]
            if len(chunk) > room:
                return bytes(kept), True, False


def _read_report(fd: int) -> list:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 65536)
    except (BlockingIOError, OSError):
        return []
    try:
        return json.loads(data.decode().splitlines()[0]) if data else []
    except (ValueError, IndexError):
        return []
