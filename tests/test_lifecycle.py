"""Issue 13: checkpoints you can trust, --resume, signals, the loss watchdog.

Whole runs go through the CLI in a subprocess on the shipped quickstart recipe (a 0.85 M parameter
Llama), killed with SIGKILL or stopped with SIGTERM, then resumed: the resumed adapter must equal an
uninterrupted run's, as numbers.
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

from ftcore.testing import OFFLINE_ENV

BASE = ["quickstart", "val_set_size=0", "evaluators=[loss]", "logging_steps=1", "--log-format", "plain"]


def _env():
    return {**os.environ, **OFFLINE_ENV}


def _run(out, *extra, check=True):
    done = subprocess.run([sys.executable, "-m", "ftcore", "run", *BASE, f"output_dir={out}", *extra],
                          capture_output=True, text=True, env=_env(), timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def _start(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "ftcore", "run", *BASE, f"output_dir={out}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())


def _wait_for(predicate, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    raise AssertionError("timed out")


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def _max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["sample_packing=true", "sequence_len=256"],
                                   ["gradient_accumulation_steps=2", "micro_batch_size=4"]],
                         ids=["plain", "packing", "accumulation"])
def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_weights(tmp_path, extra):
    settings = ["max_steps=6", "save_steps=2", *extra]
    _run(tmp_path / "whole", *settings)
    killed = tmp_path / "killed"
    process = _start(killed, *settings)
    try:
        _wait_for(lambda: (killed / "checkpoint-2" / "trainer_state.json").exists())
    finally:
        process.kill()
        process.wait()
    assert not (killed / "checkpoint-6").exists()
    resumed = _run(killed, *settings, "--resume")
    assert "resuming from checkpoint-" in resumed.stdout
    assert _max_difference(_adapter(tmp_path / "whole"), _adapter(killed)) < 1e-6
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after the resume"
    run = json.loads((killed / "run.json").read_text())
    assert run["status"] == "completed" and run["resumed_from"].startswith("checkpoint-")


@pytest.mark.slow
def test_a_partial_checkpoint_is_never_resumed_and_another_recipe_is_refused(tmp_path):
    out = tmp_path / "run"
    _run(out, "max_steps=4", "save_steps=2")
    (out / "checkpoint-4").rename(out / "keep")  # the newest complete one is now checkpoint-2
    (out / "adapter_model.safetensors").unlink()  # as if killed before the end: a completed run is not resumed
    broken = out / "checkpoint-3"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"half")  # a save killed before its trainer state
    (out / ".partial-checkpoint-5").mkdir()
    resumed = _run(out, "max_steps=4", "save_steps=2", "--resume")
    assert "resuming from checkpoint-2 (step 2" in resumed.stdout
    assert not broken.exists() and not (out / ".partial-checkpoint-5").exists()
    (out / "adapter_model.safetensors").unlink()  # not completed (the resume above completed it)
    refused = _run(out, "max_steps=4", "save_steps=2", "learning_rate=1e-3", "--resume", check=False)
    assert refused.returncode == 2
    assert "written by a different recipe" in refused.stderr and "learning_rate" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_resume_with_nothing_there_starts_from_step_zero(tmp_path):
    done = _run(tmp_path / "fresh", "max_steps=2", "--resume")
    assert "starting from step 0" in done.stdout
    assert json.loads((tmp_path / "fresh" / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_prints_the_resume_command_and_resume_finishes(tmp_path, sig, code):
    out = tmp_path / "run"
    process = _start(out, "max_steps=300")
    try:
        _wait_for(lambda: (out / "metrics.jsonl").exists() and '"step": 2' in (out / "metrics.jsonl").read_text())
        process.send_signal(sig)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code, output[-2000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "trainer_state.json").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted"
    assert "Resume with: ftcore run quickstart" in output and output.rstrip().endswith("--resume")
    resumed = _run(out, "max_steps=300", "--resume")
    assert f"resuming from {checkpoints[-1].name}" in resumed.stdout
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_metrics_after_the_checkpoint_step_are_dropped_on_resume(tmp_path):
    from ftcore.checkpoints import trim_metrics

    file = tmp_path / "metrics.jsonl"
    file.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    trim_metrics(tmp_path, 4)
    assert [json.loads(line)["step"] for line in file.read_text().splitlines()] == [1, 2, 3, 4]


def test_the_watchdog_stops_on_a_non_finite_loss_naming_the_step_and_the_last_checkpoint(tmp_path):
    from types import SimpleNamespace

    from ftcore.guards import NonFiniteLoss, StopRequested, callback

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    guard = callback(StopRequested())
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=7)
    guard.on_log(args, state, None, logs={"loss": 2.5, "grad_norm": 1.0})  # finite: nothing happens
    for logs in ({"loss": math.nan}, {"loss": 1.0, "grad_norm": math.inf}):
        with pytest.raises(NonFiniteLoss, match=r"became (nan|inf) at step 7.*checkpoint-4") as caught:
            guard.on_log(args, state, None, logs=logs)
        assert caught.value.exit_code != 0


def test_a_changed_data_file_is_named(tmp_path):
    from ftcore.checkpoints import data_changes
    from ftcore.data.read import Source

    (tmp_path / "run.json").write_text(json.dumps({"data": {"files": [{"path": "a.jsonl", "sha256": "1"},
                                                                      {"path": "b.jsonl", "sha256": "2"}]}}))
    assert data_changes(tmp_path, [Source("a.jsonl", "1"), Source("b.jsonl", "3")]) == ["b.jsonl"]


def test_a_checkpoint_with_only_pickle_weights_is_refused_without_allow_pickle(tmp_path):
    from ftcore.checkpoints import ResumeError, check_no_pickle

    (tmp_path / "adapter_model.bin").write_bytes(b"x")
    (tmp_path / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(ResumeError, match="adapter_model.bin.*allow_pickle: true"):
        check_no_pickle(str(tmp_path), allow_pickle=False)
    check_no_pickle(str(tmp_path), allow_pickle=True)
