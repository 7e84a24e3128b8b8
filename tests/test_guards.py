"""Issue 13: stopping a run safely (core/guards.py): the loss watchdog, a plugin that raises mid-run,
a second Ctrl-C, and signal handlers given back to a library caller.

The single-signal CLI cases (SIGINT 130, SIGTERM 143, resume command, resume finishes) live in
tests/test_lifecycle.py.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftcore.api import hookimpl
from ftcore.testing import OFFLINE_ENV, add_plugin, fresh_plugins, run_recipe

RECIPE = ["val_set_size=0", "evaluators=[loss]", "logging_steps=1", "max_steps=6", "save_steps=2"]


class Poison:
    """A test plugin whose callback fills the trainable weights with NaN at the end of step 3."""

    FTCORE_CONTRACT = "1"

    @hookimpl
    def trainer_callbacks(self, recipe, register, stash):
        from transformers import TrainerCallback

        class Nan(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step == 3:
                    import torch

                    with torch.no_grad():
                        for p in model.parameters():
                            if p.requires_grad:
                                p.fill_(math.nan)

        register(Nan())


class Raises:
    FTCORE_CONTRACT = "1"

    @hookimpl
    def trainer_callbacks(self, recipe, register, stash):
        from transformers import TrainerCallback

        class Boom(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 3:
                    raise RuntimeError("boom at step 3")

        register(Boom())


@pytest.mark.slow
def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from ftcore.guards import NonFiniteLoss

    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"(training loss|gradient norm) became nan at step 4.*checkpoint-2.*learning_rate"):
        run_recipe("quickstart", RECIPE, plugins=add_plugin(fresh_plugins(), Poison(), "poison"), output_dir=out)
    assert not (out / "adapter_model.safetensors").exists(), "the NaN weights were saved as the final adapter"
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert not list(out.glob("checkpoint-4*"))
    from safetensors.torch import load_file

    kept = load_file(str(out / "checkpoint-2" / "adapter_model.safetensors"))
    assert all(t.isfinite().all() for t in kept.values())
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_a_plugin_raising_mid_run_is_named_and_the_last_checkpoint_is_kept(tmp_path):
    from ftcore.errors import PluginError

    out = tmp_path / "run"
    with pytest.raises(PluginError, match=r"raises.*boom at step 3|boom at step 3.*raises") as caught:
        run_recipe("quickstart", RECIPE, plugins=add_plugin(fresh_plugins(), Raises(), "raises"), output_dir=out)
    assert "raises" in str(caught.value)
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_the_watchdog_checks_grad_norm_and_lets_finite_values_pass(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ftcore.guards import NonFiniteLoss, StopRequested, callback

    guard = callback(StopRequested())
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state = TrainerState()
    state.global_step = 5
    guard.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": 0.3})  # fine
    with pytest.raises(NonFiniteLoss, match=r"gradient norm became inf at step 5.*no checkpoint was saved"):
        guard.on_log(args, state, TrainerControl(), logs={"loss": 1.5, "grad_norm": math.inf})
    assert NonFiniteLoss("x").exit_code != 0


def test_a_signal_asks_for_a_checkpoint_and_a_stop_at_the_step_end_and_handlers_come_back():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ftcore.guards import callback, signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with signals() as stop:
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        guard = callback(stop)
        control = TrainerControl()
        state = TrainerState()
        state.global_step = 7
        guard.on_step_end(None, state, control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.signal == signal.SIGTERM
        guard.on_step_end(None, state, control)
        assert control.should_save and control.should_training_stop and guard.stopped_at == 7
        with pytest.raises(KeyboardInterrupt):  # a second signal: stop at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_resume_command_is_the_command_as_typed_shell_quoted(monkeypatch):
    from ftcore.guards import resume_command

    monkeypatch.setattr(sys, "argv", ["/x/ftcore", "run", "my recipe.yaml", "learning_rate=1e-4", "--overwrite"])
    assert resume_command() == "ftcore run 'my recipe.yaml' learning_rate=1e-4 --resume"


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_non_zero_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "ftcore", "run", "quickstart", *RECIPE[:-2], "max_steps=100000", "save_steps=2",
         "--log-format", "plain", f"output_dir={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **OFFLINE_ENV})
    try:
        end = time.time() + 300
        while not (out / "checkpoint-2" / "trainer_state.json").exists():
            assert time.time() < end and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        started = time.time()
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0, output[-2000:]
    assert time.time() - started < 30
    assert "Traceback" not in output
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert not list(out.glob(".partial-*")) or (out / "checkpoint-2" / "adapter_model.safetensors").exists()


class FillsTheDisk:
    """A test plugin: after checkpoint-2 is saved, fill the output folder's disk but a few kilobytes."""

    FTCORE_CONTRACT = "1"

    @hookimpl
    def trainer_callbacks(self, recipe, register, stash):
        from transformers import TrainerCallback

        class Fill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == 2:
                    filler = Path(args.output_dir) / "filler"
                    with open(filler, "wb") as f:
                        try:
                            while True:
                                f.write(b"\0" * 65536)
                                f.flush()
                        except OSError:
                            pass
                    os.truncate(filler, max(0, filler.stat().st_size - 256 * 1024))

        register(Fill())


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_is_one_clear_error_and_the_previous_checkpoint_stays(tmp_path):
    from ftcore.guards import SaveFailed

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (needs root)")
    try:
        out = disk / "run"
        with pytest.raises(SaveFailed, match=r"No space left on device.*checkpoint-2") as caught:
            run_recipe("quickstart", RECIPE, plugins=add_plugin(fresh_plugins(), FillsTheDisk(), "fill"),
                       output_dir=out)
        assert str(out) in str(caught.value)
        assert (out / "checkpoint-2" / "trainer_state.json").exists()
        assert not (out / "checkpoint-4").exists()
        assert not (out / "adapter_model.safetensors").exists()
        run = out / "run.json"
        assert json.loads(run.read_text())["status"] == "failed"
    finally:
        subprocess.run(["umount", "-l", str(disk)])


# ── several processes (WORLD_SIZE > 1): one request counted once, a grace period, the launcher's side ──


def test_with_several_processes_the_copies_of_one_request_count_once_and_a_later_ctrl_c_stops_at_once(monkeypatch):
    from ftcore import guards

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv(guards.STOP_FILE, raising=False)
    monkeypatch.setattr(guards, "SAME_REQUEST", 0.3)
    with guards.signals() as stop:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's copy
            time.sleep(0.05)
            assert stop.signal == signal.SIGINT and stop._timer is not None  # the grace period runs
            os.kill(os.getpid(), signal.SIGINT)  # the launcher's copy, a moment later: the same request
            os.kill(os.getpid(), signal.SIGTERM)  # another kind (the scheduler's): the same request
            time.sleep(0.05)
            time.sleep(0.3)
            with pytest.raises(KeyboardInterrupt):  # a Ctrl-C later than that: stop at once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
        finally:
            stop.disarm()  # the test process must not exit when its 5 s are up


def test_at_the_agreed_step_every_process_stops_for_the_same_signal_and_the_grace_period_ends(monkeypatch):
    from transformers import TrainerControl, TrainerState

    from ftcore import guards

    stop = guards.StopRequested()
    guard = guards.callback(stop)
    monkeypatch.setattr(guards, "_shared", lambda signum: int(signal.SIGTERM))  # another process was told
    stop.arm(30, 143, "test")
    control, state = TrainerControl(), TrainerState()
    state.global_step = 4
    guard.on_step_end(None, state, control)
    assert stop.signal == signal.SIGTERM and stop._timer is None
    assert control.should_save and control.should_training_stop and guard.stopped_at == 4


def test_only_rank_0_says_how_to_resume_with_the_launchers_command(monkeypatch, tmp_path):
    from ftcore import guards

    stop = guards.StopRequested()
    stop.signal = signal.SIGTERM
    monkeypatch.setenv(guards.RESUME_COMMAND, "ftcore run r.yaml --nproc 2 --resume")
    monkeypatch.setenv("RANK", "0")
    first = guards.stopped(stop, tmp_path, 3)
    assert first.exit_code == 143 and not first.quiet
    assert str(first).endswith("Resume with: ftcore run r.yaml --nproc 2 --resume")
    monkeypatch.setenv("RANK", "1")
    other = guards.stopped(stop, tmp_path, 3)
    assert other.exit_code == 143 and other.quiet and "Resume with" not in str(other)


WORKER = '''
import os, signal, sys, time
from ftcore import guards
with guards.signals() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end and stop.signal is None:
        time.sleep(0.01)
    print("asked", stop.signal, flush=True)
    time.sleep(float(sys.argv[2]))  # a peer that never comes: the step does not end
print("done", flush=True)
'''


@pytest.mark.parametrize("marked, grace, code, said", [
    ("missing", "20", -signal.SIGTERM, ""),  # ftcore's launcher ending the run after a failure: at once
    ("written", "0.5", 143, "asked 15"),  # a request that the launcher marked; no peer: out after the grace
    (None, "0.5", 143, "asked 15"),  # another launcher: every signal is a request
])
def test_a_worker_tells_a_stop_request_from_the_launcher_ending_the_run_and_never_waits_past_the_grace(
        tmp_path, marked, grace, code, said):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "FTCORE_STOP_GRACE": grace}
    env.pop("FTCORE_STOP_FILE", None)
    if marked:
        env["FTCORE_STOP_FILE"] = str(tmp_path / "stop")
        if marked == "written":
            (tmp_path / "stop").write_text("15")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WORKER, "3", "30"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    assert time.monotonic() - started < 15
    assert done.stdout.strip() == said
    if code == 143:
        assert "FTCORE_STOP_GRACE" in done.stderr and "exits now" in done.stderr


LAUNCHER = '''
import json, os, signal, subprocess, sys, time
from ftcore import guards
CHILD = """
import os, signal, sys, time
def handler(signum, frame):
    marked = os.path.exists(os.environ["FTCORE_STOP_FILE"])
    print(signum, marked, os.environ["FTCORE_RESUME_COMMAND"], flush=True)
    time.sleep(0.5)  # finishing the step and saving
    os._exit(143)
signal.signal(signal.SIGTERM, handler)
print("ready", flush=True)
time.sleep(60)
"""
sys.argv = ["ftcore", "run", "r.yaml", "--nproc=2", "--overwrite"]
with guards.launcher_signals(lambda signum: RuntimeError("before start")) as stop:
    children = [subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                                 start_new_session=True) for _ in range(2)]
    for child in children:
        assert child.stdout.readline() == "ready\\n"
    started = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)  # returns when both children have exited
    waited = time.monotonic() - started
    codes = [child.wait() for child in children]  # still the launcher's to collect
    lines = [child.stdout.read().strip() for child in children]
print(json.dumps({"signal": stop.signal, "codes": codes, "lines": lines, "waited": waited,
                  "left": "FTCORE_STOP_FILE" in os.environ}))
try:
    with guards.launcher_signals(lambda signum: RuntimeError(f"before start {signum}")):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
except RuntimeError as exc:
    print(exc)
'''


def test_the_launcher_marks_the_request_passes_it_on_once_and_waits_for_every_worker(tmp_path):
    done = subprocess.run([sys.executable, "-c", LAUNCHER], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result, before = done.stdout.strip().splitlines()
    result = json.loads(result)
    assert result["signal"] == signal.SIGTERM and result["codes"] == [143, 143]
    assert result["lines"] == ["15 True ftcore run r.yaml --nproc=2 --resume"] * 2
    assert result["waited"] >= 0.5 and not result["left"]
    assert before == f"before start {int(signal.SIGINT)}"
