"""The sandbox's launcher: run as ``python -I -S sandbox_child.py CONFIG`` by ``sandbox.py`` beside it.

Standard library only, in a fresh interpreter with one thread (no ``preexec_fn``
in a multi-threaded trainer). In order:

1. new network, PID and IPC namespaces (``unshare``; as an unprivileged user
   inside a new user namespace too), when the platform allows it;
2. in a forked child (process 1 of the new PID namespace, so every process it
   starts dies with it): resource limits (CPU time, address space, file size,
   open files, no core files, processes), privileges dropped to ``nobody``
   when started as root (so the process limit counts and the user's files are
   out of reach), death with the launcher (``PR_SET_PDEATHSIG``);
3. a Python audit hook that refuses, from then on: writing, creating, removing
   or renaming anything outside the working folder; reading outside it and the
   Python installation; other processes' ``/proc`` entries; sockets; starting
   processes (``fork``, ``exec``, ``system``, ``subprocess``); ``ctypes``; signals
   to other processes;
4. the program, ``program.py`` in the working folder, as ``__main__``.

What was achieved is written as one JSON line to the report descriptor, which
is closed before the program runs.
"""

import json
import os
import resource
import signal
import sys

CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWIPC = 0x40000000, 0x20000000, 0x10000000, 0x08000000
PR_SET_PDEATHSIG = 1

SPAWN_EVENTS = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
                "subprocess.Popen", "pty.spawn"}
NETWORK_EVENTS = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                  "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo"}
NATIVE_EVENTS = {"ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.call_function"}
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
               "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.lchmod", "os.lchown", "os.mkfifo",
               "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
               "shutil.move", "shutil.chown", "os.removexattr", "os.setxattr"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

# Imported before privileges are dropped: the Python installation may not be readable by ``nobody``
# (one installed under /root), and these are what test programs and solutions commonly import.
PRELOAD = ("math", "cmath", "re", "string", "itertools", "functools", "collections", "collections.abc", "heapq",
           "bisect", "typing", "random", "statistics", "fractions", "decimal", "datetime", "json", "copy",
           "operator", "hashlib", "array", "numbers", "textwrap", "unicodedata", "enum", "dataclasses", "time",
           "struct", "binascii", "base64", "calendar", "difflib", "pprint", "io", "contextlib", "queue", "socket",
           "ast", "traceback", "encodings.idna")


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def unshare(libc) -> list:
    """Enter new namespaces; the names of those entered."""
    wanted = CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
    tries = [wanted, CLONE_NEWNET] if os.geteuid() == 0 else [wanted | CLONE_NEWUSER, CLONE_NEWNET | CLONE_NEWUSER]
    for flags in tries:
        if libc.unshare(flags) == 0:
            return [name for bit, name in ((CLONE_NEWNET, "network namespace"), (CLONE_NEWPID, "pid namespace"),
                                           (CLONE_NEWUSER, "user namespace")) if flags & bit]
    return []


def _tasks_of(uid: int) -> int:
    """Threads of ``uid`` on the machine (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    count += int(fields.get("Threads", "1"))
            except (OSError, ValueError, KeyError):
                pass
    return count


def limit(config, achieved) -> None:
    mb = 1024 * 1024
    cpu = int(config["cpu_seconds"])
    for name, soft, hard in (("RLIMIT_CPU", cpu, cpu + 1), ("RLIMIT_AS", config["memory_mb"] * mb, None),
                             ("RLIMIT_FSIZE", config["file_mb"] * mb, None), ("RLIMIT_NOFILE", 64, None),
                             ("RLIMIT_CORE", 0, None)):
        try:
            resource.setrlimit(getattr(resource, name), (soft, soft if hard is None else hard))
            achieved.append(name)
        except (ValueError, OSError):
            pass


def drop_privileges(config, achieved, uid: int) -> None:
    """As root: become ``nobody`` (the process limit then applies; other users' files are out of reach).
    ``uid``: the user before any new user namespace (whose processes the limit counts)."""
    if uid == 0:
        import importlib

        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        try:
            os.setgroups([])
            os.setgid(config["gid"])
            os.setuid(config["uid"])
            achieved.append("unprivileged user")
            uid = config["uid"]
        except OSError:
            return
    processes = _tasks_of(uid) + int(config["processes"])
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
        achieved.append("RLIMIT_NPROC")
    except (ValueError, OSError):
        pass


def guard(folder: str, readable: list):
    """The audit hook (see the module docstring)."""
    def inside(path, roots) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        real = os.path.realpath(os.fsdecode(path))
        return any(real == root or real.startswith(root + os.sep) for root in roots)

    def proc_of_another(path) -> bool:
        if isinstance(path, int):
            return False
        parts = os.path.abspath(os.fsdecode(path)).split(os.sep)
        return len(parts) > 2 and parts[1] == "proc" and parts[2] not in ("self", "thread-self")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if proc_of_another(path) or not inside(path, [folder] if writing else [folder] + readable):
                raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path!r} is not allowed")
        elif event in PATH_EVENTS:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg, [folder]):
                    raise PermissionError(f"sandbox: {event} on {arg!r} is not allowed")
        elif event in SPAWN_EVENTS or event in NETWORK_EVENTS or event in NATIVE_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in ("os.kill", "os.killpg", "signal.pthread_kill") and args and args[0] not in (0, os.getpid()):
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


def run_program(folder: str) -> None:
    path = os.path.join(folder, "program.py")
    with open(path, encoding="utf-8") as fh:
        code = compile(fh.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})


def main() -> None:
    config = json.loads(sys.argv[1])
    folder = os.path.realpath(config["folder"])
    report = os.fdopen(config["report_fd"], "w")
    achieved = []
    uid = os.getuid()  # before a new user namespace maps it to an overflow id
    libc = _libc() if config["namespaces"] else None
    if libc is not None:
        achieved += unshare(libc)
    if "pid namespace" in achieved:
        child = os.fork()  # the child is process 1 of the new namespace: everything it starts dies with it
        if child:
            report.close()
            signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
            _, status = os.waitpid(child, 0)
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    limit(config, achieved)
    drop_privileges(config, achieved, uid)
    if libc is not None and libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        achieved.append("dies with the launcher")
    os.chdir(folder)
    readable = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                     sys.base_exec_prefix, *sys.path) if p}
                      | {"/dev/null", "/dev/urandom", "/dev/zero", "/usr/share/zoneinfo", "/etc/localtime"})
    if config["python_guard"]:
        sys.addaudithook(guard(folder, readable))
        achieved.append("python audit guard")
    report.write(json.dumps(achieved) + "\n")
    report.close()
    run_program(folder)


if __name__ == "__main__":
    main()
