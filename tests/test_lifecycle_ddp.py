"""Issue 13 under DDP with two processes (``ftcore run --nproc 2``, CPU, gloo): kill -9 after a checkpoint
and resume, and a graceful stop on SIGTERM or Ctrl-C; each resumed adapter must equal an uninterrupted
two-process run's with the same seed (to 1e-6), as numbers.

One uninterrupted run is shared by the tests (module fixture). A test plugin slows each step down (a
sleep, which changes no number) so that a signal or a kill lands in the middle of the run.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import alpaca_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
PACE = '''
import os, time
from transformers import TrainerCallback
from ftcore import hookimpl

class Pace(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        time.sleep(float(os.environ.get("TEST_STEP_SLEEP", "0")))

@hookimpl
def trainer_callbacks(recipe, register):
    register(Pace())
'''


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle_ddp")
    data = write_jsonl(root / "data.jsonl", alpaca_rows(32))
    (root / "pace_plugin.py").write_text(PACE)
    setup = {"root": root, "data": data, "model": tiny_llama}
    started = time.monotonic()
    done = subprocess.run(command(setup, root / "whole"), capture_output=True, text=True, env=env(setup), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    print(f"uninterrupted 2-process run: {time.monotonic() - started:.0f} s")
    setup["whole"] = root / "whole"
    return setup


def command(setup, out, *extra):
    """The shipped LoRA recipe on the tiny model, two processes: 2 examples per process and step."""
    return [sys.executable, "-m", "ftcore", "run", str(REPO / "recipes/llama31-lora.yaml"),
            f"base_model={setup['model']}", f"datasets=[{{path: {setup['data']}, type: alpaca}}]", "val_set_size=0",
            "sequence_len=256", "lora_dropout=0", f"max_steps={STEPS}", "learning_rate=1e-2", "warmup_ratio=null",
            "saves_per_epoch=null", "save_steps=2", "gradient_accumulation_steps=1", "logging_steps=1",
            "plugins=[pace_plugin]", f"output_dir={out}", *extra, "--nproc=2"]


def env(setup, sleep=0.0):
    return {**os.environ, "PYTHONPATH": str(setup["root"]), "TEST_STEP_SLEEP": str(sleep)}


def start(setup, out, sleep):
    return subprocess.Popen(command(setup, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(setup, sleep), start_new_session=True)


def wait_for(predicate, process, timeout=300):
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)


def kill_all(process):
    """SIGKILL the launcher and every process under it (the workers run in their own sessions)."""
    import psutil

    tree = [process.pid, *(p.pid for p in psutil.Process(process.pid).children(recursive=True))]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.communicate()
    for pid in tree[1:]:
        end = time.time() + 30
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.time() < end
            time.sleep(0.05)


def complete(out):
    from ftcore.checkpoints import complete_checkpoints

    return [p.name for p in complete_checkpoints(out)]


def logged_steps(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "loss" in r]


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert x.keys() == y.keys() and x
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def resume(setup, out, argv=None):
    done = subprocess.run(argv or [*command(setup, out), "--resume"], capture_output=True, text=True,
                          env=env(setup), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_sigkill_of_every_process_after_a_checkpoint_then_resume_gives_the_uninterrupted_adapter(setup):
    out = setup["root"] / "killed"
    process = start(setup, out, sleep=0.5)
    try:
        wait_for(lambda: "checkpoint-2" in complete(out), process)
    finally:
        kill_all(process)
    left = complete(out)
    assert not (out / "adapter_model.safetensors").exists() and f"checkpoint-{STEPS}" not in left
    resumed = resume(setup, out)
    assert "resuming from checkpoint-" in resumed.stdout
    difference = max_difference(setup["whole"], out)
    print(f"kill -9 with {left} complete: max abs difference {difference:.3g}")
    assert difference < 1e-6
    assert logged_steps(out) == list(range(1, STEPS + 1))  # no step twice after the resume
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["world_size"] == 2
    assert manifest["resumed_from"].startswith("checkpoint-")


def send(process, sig, to):
    """``sig`` to the launcher (a terminal's Ctrl-C: the workers run in their own sessions), or to every
    process at once (SLURM signals every process of the job)."""
    import psutil

    pids = [process.pid]
    if to == "every process":
        pids += [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    for pid in pids:
        os.kill(pid, sig)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, to", [(signal.SIGTERM, 143, "launcher"), (signal.SIGINT, 130, "launcher"),
                                           (signal.SIGTERM, 143, "every process")])
def test_a_signal_stops_every_process_at_one_step_and_resume_finishes_identically(setup, sig, code, to):
    out = setup["root"] / f"signal-{sig.name}-{to.replace(' ', '-')}"
    process = start(setup, out, sleep=0.5)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and 3 in logged_steps(out), process)
        started = time.monotonic()
        send(process, sig, to)
        stdout, stderr = process.communicate(timeout=120)
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            kill_all(process)
    assert process.returncode == code, stdout[-2000:] + stderr[-4000:]
    assert "Traceback" not in stderr
    stopped = re.findall(r"stopped by (\S+) at step (\d+); a checkpoint is saved in (\S+)\. Resume with: (.+)", stderr)
    assert len(stopped) == 1, stderr[-4000:]  # said once, by rank 0
    assert stderr.count("Resume with:") == 1
    name, step, _, again = stopped[0]
    step = int(step)
    assert name == ("Ctrl-C" if sig == signal.SIGINT else sig.name) and 3 <= step < STEPS
    assert f"checkpoint-{step}" in complete(out)  # saved at the step where both processes stopped
    assert "--nproc=2" in again and again.endswith("--resume")  # the command the user typed, not a worker's
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    argv = shlex.split(again)
    assert argv[:2] == ["ftcore", "run"]
    resumed = resume(setup, out, [sys.executable, "-m", "ftcore", *argv[1:]])
    assert f"resuming from checkpoint-{step}" in resumed.stdout
    difference = max_difference(setup["whole"], out)
    print(f"{sig.name} to {to}: stopped at step {step} in {seconds:.1f} s; "
          f"after the resume max abs difference {difference:.3g}")
    assert difference < 1e-6
    assert logged_steps(out) == list(range(1, STEPS + 1))
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_processes_that_ended_as_a_stop_request_ends_them_are_not_a_failure():
    from types import SimpleNamespace as Ns

    from ftcore.plugins.distributed.launch import stopped_on_request

    asked, at_once = Ns(signal=signal.SIGTERM, at_once=False), Ns(signal=signal.SIGINT, at_once=True)
    saved = {0: Ns(exitcode=143), 1: Ns(exitcode=143)}
    assert stopped_on_request(asked, saved)
    assert stopped_on_request(asked, {0: Ns(exitcode=-signal.SIGTERM), 1: Ns(exitcode=143)})  # before training
    assert not stopped_on_request(Ns(signal=None, at_once=False), saved)  # nobody asked: a failure
    assert not stopped_on_request(asked, {0: Ns(exitcode=1), 1: Ns(exitcode=143)})  # an error while stopping
    assert not stopped_on_request(asked, {0: Ns(exitcode=-signal.SIGKILL), 1: Ns(exitcode=143)})  # out of memory
    assert stopped_on_request(at_once, {0: Ns(exitcode=-signal.SIGKILL), 1: Ns(exitcode=130)})  # Ctrl-C twice
