"""The sandbox that runs model-written code (ftcore.plugins.code.sandbox).

Each hostile program must end as a failure within its time limit, leave
nothing behind (no process, no file outside its folder, no folder) and leave
this process unharmed. The fork bomb runs with short limits: under the audit
guard it is refused at the first fork; without the guard (the operating
system's limits alone) it is bounded by RLIMIT_NPROC and the PID namespace /
process-group kill.
"""

import os
import socket
import time
from pathlib import Path

import pytest

from ftcore.plugins.code.sandbox import run_python


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def left_behind(result, wait: float = 5.0) -> list[int]:
    """Processes of the run still alive after up to ``wait`` seconds (SIGKILLed ones take a moment to go)."""
    deadline = time.monotonic() + wait
    while (alive := processes_mentioning(result.folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def check_contained(result):
    assert not result.passed
    assert result.folder and not Path(result.folder).exists()
    assert left_behind(result) == []


def test_a_correct_program_passes_and_its_output_comes_back():
    result = run_python("print(sum(range(10)))\n")
    assert result.passed and result.returncode == 0 and result.output == "45\n"
    assert not Path(result.folder).exists()


def test_a_failing_assertion_fails():
    result = run_python("assert 1 + 1 == 3\n")
    assert result.status == "failed" and result.returncode == 1 and "AssertionError" in result.output


def test_an_infinite_loop_is_killed_at_the_timeout():
    started = time.monotonic()
    result = run_python("while True:\n    pass\n", timeout=1.5)
    assert result.status == "timeout" and result.returncode is None
    assert time.monotonic() - started < 5
    check_contained(result)


def test_an_infinite_loop_that_ignores_signals_and_sleeps_is_killed_too():
    source = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)\n"
    result = run_python(source, timeout=1.0)
    assert result.status == "timeout"
    check_contained(result)


FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


def test_a_fork_bomb_is_refused_at_its_first_fork():
    result = run_python("import os\nwhile True:\n    os.fork()\n", timeout=3)
    assert result.status == "failed" and "os.fork is not allowed" in result.output
    check_contained(result)
    # one that keeps trying runs into its timeout, still without a single child
    result = run_python(FORK_BOMB, timeout=1.5)
    assert result.status == "timeout"
    check_contained(result)


def test_a_fork_bomb_without_the_python_guard_is_bounded_by_the_process_limit_and_killed():
    result = run_python(FORK_BOMB, timeout=2, processes=8, python_guard=False)
    assert "RLIMIT_NPROC" in result.isolation  # as root the program runs as nobody, so the limit applies
    assert result.status == "timeout"
    check_contained(result)


def test_a_huge_allocation_fails_with_memory_error():
    result = run_python("data = bytearray(8 * 1024 ** 3)\nprint('allocated')\n", memory_mb=256)
    assert result.status == "failed" and "MemoryError" in result.output and "allocated" not in result.output
    check_contained(result)


def test_growing_memory_step_by_step_fails_too():
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n",
                        memory_mb=256, timeout=10)
    assert result.status == "failed" and "MemoryError" in result.output
    check_contained(result)


@pytest.mark.parametrize("guard", [True, False], ids=["python guard", "os permissions only"])
def test_writing_outside_its_folder_leaves_no_file(tmp_path, guard):
    target = tmp_path / "open" / "escaped.txt"
    target.parent.mkdir()
    target.parent.chmod(0o777)  # even a folder anyone may write to
    tmp_path.chmod(0o755)
    source = f"open({str(target)!r}, 'w').write('escaped')\n"
    result = run_python(source, python_guard=guard)
    assert not target.exists()
    assert result.status == "failed" and ("PermissionError" in result.output)
    check_contained(result)


def test_writing_inside_its_folder_works():
    result = run_python("open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())\n")
    assert result.passed and result.output == "ok\n"


def test_removing_or_renaming_outside_its_folder_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    result = run_python(f"import os\nos.remove({str(victim)!r})\n")
    assert result.status == "failed" and victim.read_text() == "keep me"


def test_the_parents_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("FTCORE_TEST_SECRET", "hunter2")
    source = ("import os\n"
              "assert 'FTCORE_TEST_SECRET' not in os.environ, 'secret visible'\n"
              "print(sorted(os.environ))\n")
    result = run_python(source)
    assert result.passed, result.output
    assert "hunter2" not in result.output and set(eval(result.output)) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}
    # nor through /proc: the parent's environment file is refused
    stolen = run_python(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())\n")
    assert stolen.status == "failed" and "hunter2" not in stolen.output
    check_contained(stolen)


@pytest.mark.parametrize("guard", [True, False], ids=["python guard", "network namespace only"])
def test_a_network_connection_never_reaches_a_listening_socket(guard):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        source = (f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
                  f"s.sendall(b'stolen')\nprint('connected')\n")
        result = run_python(source, python_guard=guard)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.status == "failed" and "connected" not in result.output
    if not guard:
        assert "network namespace" in result.isolation
    check_contained(result)


def test_printing_megabytes_is_cut_off_and_fails_fast():
    started = time.monotonic()
    result = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", max_output=4096, timeout=10)
    assert result.status == "output limit" and result.output_truncated
    assert len(result.output) == 4096
    assert time.monotonic() - started < 5
    check_contained(result)


def test_a_child_process_left_running_is_killed_with_the_group():
    source = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('parent done')\n"
    result = run_python(source, python_guard=False, timeout=3)
    assert left_behind(result) == []


def test_the_isolation_in_effect_is_reported():
    result = run_python("pass\n")
    for layer in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "python audit guard"):
        assert layer in result.isolation
