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
