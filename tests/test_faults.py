"""Issue 13, faults in the middle of a run: SIGKILL during a checkpoint save (and before the first one),
a read-only output folder during a save, ``--resume`` at its edges, and a NaN loss seen by the watchdog.

Kills are made deterministic by a test plugin (written into the test's folder, put on PYTHONPATH and
listed under ``plugins:``) that blocks at a chosen point inside the save, after writing a signal file;
the test waits for that file and sends SIGKILL. Without ``FAULT_BLOCK`` in the environment it does nothing.
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

BASE = ["quickstart", "val_set_size=0", "evaluators=[loss]", "logging_steps=1", "--log-format", "plain",
        "plugins=[fault_plugin]"]
SETTINGS = ["max_steps=6", "save_steps=2"]

# FAULT_BLOCK=POINT:STEP; FAULT_SIGNAL=a file written when the point is reached (then it sleeps)
FAULT_PLUGIN = '''
import os, time
from pathlib import Path

from ftcore import hookimpl

POINT, _, STEP = os.environ.get("FAULT_BLOCK", ":").partition(":")
FOLDER = ".partial-final" if STEP == "final" else f".partial-checkpoint-{STEP}"  # the final model, or checkpoint-STEP


def _block(where):
    Path(os.environ["FAULT_SIGNAL"]).write_text(where)
    time.sleep(600)


def _wrap(owner, name, point):
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        folders = [str(a) for a in [*args, *kwargs.values()] if isinstance(a, (str, os.PathLike))]
        if POINT == point and any(f.endswith(FOLDER) for f in folders):
            _block(next(f for f in folders if f.endswith(FOLDER)))
        return result

    setattr(owner, name, wrapped)


@hookimpl
def trainer_callbacks(recipe, register):
    if not POINT:
        return
    from transformers import TrainerCallback

    import ftcore.checkpoints
    import ftcore.train

    trainer = ftcore.train.FtcoreTrainer
    _wrap(trainer, "save_model", "model")  # the adapter is written, the optimizer not yet
    _wrap(trainer, "_save_optimizer_and_scheduler", "optimizer")  # optimizer written, no trainer state yet
    _wrap(ftcore.checkpoints, "write_recipe_into", "complete")  # every file there, not yet renamed

    class Step(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if POINT == "step" and state.global_step == int(STEP):
                _block(f"step {STEP}")

    register(Step())
'''


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_plugin")
    (root / "fault_plugin.py").write_text(FAULT_PLUGIN)
    return root


def _env(plugin_dir, **extra):
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": path, **extra}


def _command(out, *extra):
    return [sys.executable, "-m", "ftcore", "run", *BASE, f"output_dir={out}", *extra]


def _run(plugin_dir, out, *extra, check=True):
    done = subprocess.run(_command(out, *extra), capture_output=True, text=True, env=_env(plugin_dir), timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _kill_at(plugin_dir, out, block, *extra):
    """Start a run that blocks at ``block`` (POINT:STEP), SIGKILL it there; returns what the signal file says."""
    signal_file = out.parent / f"{out.name}.blocked"
    process = subprocess.Popen(_command(out, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_env(plugin_dir, FAULT_BLOCK=block, FAULT_SIGNAL=str(signal_file)))
    try:
        end = time.time() + 300
        while not signal_file.exists():
            if process.poll() is not None:
                raise AssertionError(f"the run ended before {block}: {process.stdout.read()[-3000:]}")
            assert time.time() < end, f"timed out waiting for {block}"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    return signal_file.read_text()


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _logged_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


@pytest.fixture(scope="module")
def whole(plugin_dir, tmp_path_factory):
    """The uninterrupted run every killed-and-resumed one must equal."""
    out = tmp_path_factory.mktemp("whole") / "run"
    _run(plugin_dir, out, *SETTINGS)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", ["model", "optimizer", "complete"])
def test_sigkill_during_a_checkpoint_save_then_resume_gives_the_uninterrupted_weights(plugin_dir, whole, tmp_path,
                                                                                      point):
    out = tmp_path / "killed"
    where = _kill_at(plugin_dir, out, f"{point}:4", *SETTINGS)
    assert where.endswith(".partial-checkpoint-4")
    assert (out / ".partial-checkpoint-4").is_dir() and not (out / "checkpoint-4").exists()
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    resumed = _run(plugin_dir, out, *SETTINGS, "--resume")
    assert "resuming from checkpoint-2 (step 2" in resumed.stdout, resumed.stdout[-3000:]
    assert not list(out.glob(".partial-*"))
    difference = _max_difference(_adapter(whole), _adapter(out))
    print(f"max abs difference after a kill during the save ({point}): {difference:.3g}")
    assert difference < 1e-6
    assert _logged_steps(out) == [1, 2, 3, 4, 5, 6]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["resumed_from"] == "checkpoint-2"


@pytest.mark.slow
def test_sigkill_while_the_final_adapter_is_written_then_resume_finishes_it(plugin_dir, whole, tmp_path):
    out = tmp_path / "killed"
    assert _kill_at(plugin_dir, out, "model:final", *SETTINGS).endswith(".partial-final")
    assert not (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    resumed = _run(plugin_dir, out, *SETTINGS, "--resume")
    assert "resuming from checkpoint-6 (step 6" in resumed.stdout, resumed.stdout[-3000:]
    assert not list(out.glob(".partial-*"))
    difference = _max_difference(_adapter(whole), _adapter(out))
    print(f"max abs difference after a kill during the final save: {difference:.3g}")
    assert difference < 1e-6
    assert _logged_steps(out) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_then_resume_starts_from_step_zero(plugin_dir, whole, tmp_path):
    out = tmp_path / "killed"
    _kill_at(plugin_dir, out, "step:2", *SETTINGS)  # step 1 is logged, checkpoint-2 not yet written
    assert not list(out.glob("checkpoint-*"))
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # as the kill left it
    resumed = _run(plugin_dir, out, *SETTINGS, "--resume")
    assert "starting from step 0" in resumed.stdout
    difference = _max_difference(_adapter(whole), _adapter(out))
    print(f"max abs difference after a kill before the first checkpoint: {difference:.3g}")
    assert difference < 1e-6
    assert _logged_steps(out) == [1, 2, 3, 4, 5, 6], "metrics.jsonl keeps the killed run's steps"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and "resumed_from" not in run


READ_ONLY_PLUGIN = '''
import os, subprocess

from ftcore import hookimpl


@hookimpl
def trainer_callbacks(recipe, register):
    from transformers import TrainerCallback

    class ReadOnly(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # after checkpoint-2 is complete
            if state.global_step == 2:
                out = args.output_dir
                if os.geteuid() == 0:  # root ignores permissions: a read-only bind mount of the folder on itself
                    subprocess.run(["mount", "--bind", out, out], check=True)
                    subprocess.run(["mount", "-o", "remount,bind,ro", out, out], check=True)
                else:
                    os.chmod(out, 0o555)

    register(ReadOnly())
'''


@pytest.mark.slow
def test_a_read_only_output_folder_during_a_run_is_one_clear_error_and_the_checkpoint_stays(tmp_path):
    (tmp_path / "read_only_plugin.py").write_text(READ_ONLY_PLUGIN)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ftcore", "run", *BASE[:-1], "plugins=[read_only_plugin]", f"output_dir={out}",
               *SETTINGS, "logging_steps=10"]  # nothing logged between checkpoint-2 and the save at step 4
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(out)], capture_output=True)
        else:
            os.chmod(out, 0o755)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert reason in errors[0] and "checkpoint-2" in errors[0] and "--resume" in errors[0]
    print(errors[0])
    assert "partial-checkpoint-4" in errors[0]  # the save at step 4 found it
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not list(out.glob("checkpoint-4")) and not (out / "adapter_model.safetensors").exists()
    status = json.loads((out / "run.json").read_text())["status"]
    assert status == "failed" or ('run.json still says "running"' in errors[0] and status == "running")


def _cli(out, *extra):
    return subprocess.run([sys.executable, "-m", "ftcore", "run", "quickstart", "val_set_size=0", "evaluators=[loss]",
                           "max_steps=2", f"output_dir={out}", *extra], capture_output=True, text=True,
                          env={**os.environ, **OFFLINE_ENV}, timeout=600)


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _completed_run(out):
    out.mkdir(parents=True)
    (out / ".ftcore-run.json").write_text(json.dumps({"ftcore": 1, "files": ["run.json"], "kept": []}))
    (out / "run.json").write_text(json.dumps({"status": "completed"}))
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"weights")
    return out


def test_resume_of_a_completed_run_is_refused_saying_so_and_changes_nothing(tmp_path):
    out = _completed_run(tmp_path / "done")
    before = _snapshot(out)
    done = _cli(out, "--resume")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "already completed" in done.stderr and "nothing to resume" in done.stderr
    assert "--overwrite" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(out) == before


def test_resume_into_a_folder_ftcore_did_not_write_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own files")
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    before = _snapshot(out)
    done = _cli(out, "--resume")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ftcore did not write" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(out) == before


def test_check_resumable_lets_unfinished_runs_empty_and_missing_folders_resume(tmp_path):
    from types import SimpleNamespace

    from ftcore.checkpoints import ResumeError, check_resumable

    auto = SimpleNamespace(resume_from_checkpoint="auto")
    check_resumable(tmp_path / "missing", auto)
    (tmp_path / "empty").mkdir()
    check_resumable(tmp_path / "empty", auto)
    out = _completed_run(tmp_path / "run")
    for status in ("running", "interrupted", "failed"):
        (out / "run.json").write_text(json.dumps({"status": status}))
        check_resumable(out, auto)
    (out / "run.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(ResumeError, match="already completed"):
        check_resumable(out, SimpleNamespace(resume_from_checkpoint=True))
    check_resumable(out, SimpleNamespace(resume_from_checkpoint=None))  # not resuming: check_output_dir decides
    check_resumable(out, auto, overwrite=True)  # --overwrite --resume: trained again
    (out / "adapter_model.safetensors").unlink()  # completed, but its adapter is gone: the checkpoints finish it
    check_resumable(out, auto)


class NanLossAtStep4:
    """A test plugin: the training loss is the model's own, plus a NaN constant at step 4. The gradients stay
    finite (a constant has none), so only the logged loss shows it: the gradient norm does not."""

    FTCORE_CONTRACT = "1"

    @hookimpl
    def training_loss(self, recipe, model, stash):
        import torch

        calls = []

        def loss(model, inputs, num_items_in_batch=None):
            calls.append(1)  # one call per step (no accumulation, no evaluation loss)
            outputs = model(**inputs)
            value = outputs.loss + (torch.tensor(math.nan) if len(calls) == 4 else 0.0)
            return value, outputs

        return loss


@pytest.mark.slow
def test_a_nan_training_loss_alone_stops_the_run_at_its_step(tmp_path):
    """The watchdog sees the loss itself (transformers' logging_nan_inf_filter, on by default, would log the
    running mean instead of the NaN, and the run would end "completed")."""
    from ftcore.guards import NonFiniteLoss

    out = tmp_path / "run"
    recipe = ["val_set_size=0", "evaluators=[loss]", "logging_steps=1", "max_steps=6", "save_steps=2"]
    with pytest.raises(NonFiniteLoss, match=r"training loss became nan at step 4.*checkpoint-2"):
        run_recipe("quickstart", recipe, plugins=add_plugin(fresh_plugins(), NanLossAtStep4(), "nan_loss"),
                   output_dir=out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert math.isnan(records[-1]["loss"]) and math.isfinite(records[-1]["grad_norm"])
    assert not (out / "adapter_model.safetensors").exists() and not list(out.glob("checkpoint-4*"))
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_training_arguments_log_a_nan_loss_as_nan():
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import validate
    from ftcore.recipe.load import RawRecipe
    from ftcore.train import make_arguments, training_arguments

    recipe = validate(RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}]},
                                None), load_plugins())
    arguments = training_arguments(recipe, "out", 100, False, "fp32", {})
    assert arguments["logging_nan_inf_filter"] is False
    assert make_arguments(arguments).logging_nan_inf_filter is False
