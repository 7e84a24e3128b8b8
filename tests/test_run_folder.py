"""The run folder: ftcore deletes only what it wrote, one run per folder, checks before anything loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftcore.artifacts import (LOCK, MARKER, check_output_dir, clear_output_dir, lock_output_dir, output_dir_note,
                              record_files)
from ftcore.cli import main
from ftcore.errors import FtcoreError
from ftcore.testing import alpaca_rows, write_jsonl, write_recipe


def _project(tmp_path, tiny_llama, **keys):
    """A user's project folder: their recipe.yaml (output_dir: .), a source file, their data."""
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    (tmp_path / "train.py").write_text("print('my own code')\n")
    recipe = write_recipe(tmp_path / "recipe.yaml", base_model=str(tiny_llama), adapter="lora",
                          datasets=[{"path": str(data), "type": "alpaca"}], output_dir=".", max_steps=2,
                          micro_batch_size=2, optimizer="adamw_torch", **keys)
    return recipe


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_with_output_dir_dot_deletes_nothing_of_the_users_project(tmp_path, tiny_llama, capsys,
                                                                             monkeypatch):
    _project(tmp_path, tiny_llama)
    before = _snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["run", "recipe.yaml", "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ftcore did not write it" in err and "never deletes" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before


def test_a_folder_holding_other_runs_never_suggests_overwrite(tmp_path):
    outputs = tmp_path / "outputs"
    (outputs / "quickstart").mkdir(parents=True)
    (outputs / "quickstart" / MARKER).write_text('{"files": []}')
    (outputs / "quickstart" / "run.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(FtcoreError) as exc:
            check_output_dir(outputs, overwrite, resume=None)
        message = str(exc.value)
        assert "holds other runs: quickstart; choose output_dir=" in message and "outputs/<name>" in message
        assert "--overwrite" not in message
    note = output_dir_note(outputs, None)
    assert "holds other runs: quickstart" in note and "--overwrite" not in note
    assert (outputs / "quickstart" / "run.json").is_file()


def test_validate_note_says_only_what_is_true(tmp_path):
    assert output_dir_note(tmp_path / "missing", None) is None
    assert output_dir_note(tmp_path, None) is None  # empty
    (tmp_path / "notes.txt").write_text("mine")
    note = output_dir_note(tmp_path, None)
    assert "ftcore did not write it" in note and "--overwrite to" not in note
    own = tmp_path / "run"
    own.mkdir()
    (own / MARKER).write_text('{"files": ["run.json"]}')
    (own / "run.json").write_text("{}")
    assert "--overwrite" in output_dir_note(own, None)
    assert output_dir_note(own, "auto") is None


def test_a_run_folder_from_before_the_marker_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "run.json").write_text('{"status": "completed"}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(FtcoreError, match="earlier ftcore version.*delete it by hand"):
        check_output_dir(tmp_path, True, resume=None)
    assert (tmp_path / "run.json").is_file()


def test_overwrite_deletes_only_what_the_marker_lists_and_says_what_it_kept(tmp_path, caplog):
    clear_output_dir(tmp_path, overwrite=False, resume=False)  # a run claims the empty folder
    for name in ("run.json", "adapter_model.safetensors", "metrics.jsonl", "tokenizer.json", "extra_weights.bin"):
        (tmp_path / name).write_text("run")
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_text("x")
    record_files(tmp_path)  # the end of the run: the folder's contents are listed
    assert "extra_weights.bin" in json.loads((tmp_path / MARKER).read_text())["files"]
    (tmp_path / "my_notes.txt").write_text("mine")  # added by the user afterwards
    check_output_dir(tmp_path, True, resume=None)
    with caplog.at_level("INFO"):
        kept = clear_output_dir(tmp_path, overwrite=True, resume=False)
    assert kept == ["my_notes.txt"]
    assert "my_notes.txt" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "my_notes.txt"]
    assert (tmp_path / "my_notes.txt").read_text() == "mine"


def test_a_second_run_on_a_locked_folder_is_refused_also_with_overwrite(tmp_path):
    out = tmp_path / "out"
    script = (f"import sys, time; from ftcore.artifacts import lock_output_dir\n"
              f"with lock_output_dir({str(out)!r}):\n    print('locked', flush=True); time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (out / MARKER).write_text('{"files": ["run.json"]}')
        (out / "run.json").write_text("{}")
        for overwrite in (False, True):
            with pytest.raises(FtcoreError, match=rf"another ftcore run \(pid {holder.pid} on host .+\) is using"):
                check_output_dir(out, overwrite, resume=None)
            with pytest.raises(FtcoreError, match="another ftcore run"):
                with lock_output_dir(out):
                    pass
        assert (out / "run.json").is_file()
    finally:
        holder.kill()
        holder.wait()
    with lock_output_dir(out):  # the kernel released the dead run's lock: its lock file does not block
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()


def test_a_launched_rank_does_not_refuse_itself(tmp_path, monkeypatch):
    from ftcore.artifacts import lock_for_processes, lock_holder

    with lock_output_dir(tmp_path):
        with lock_for_processes(tmp_path):
            child = subprocess.run([sys.executable, "-c", "from ftcore.artifacts import lock_holder, lock_output_dir\n"
                                    f"print(lock_holder({str(tmp_path)!r}))\n"
                                    f"with lock_output_dir({str(tmp_path)!r}): print('ok')"],
                                   capture_output=True, text=True, env=dict(os.environ))
        assert child.stdout.split() == ["None", "ok"], child.stderr
        monkeypatch.delenv("FTCORE_OUTPUT_DIR_LOCKED", raising=False)
        assert lock_holder(tmp_path) is None  # this process holds it


@pytest.mark.slow
def test_two_concurrent_runs_the_second_is_refused_and_the_first_completes(tmp_path, tiny_llama):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(16))
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), adapter="lora", lora_r=4,
                          lora_target_linear=True, datasets=[{"path": str(data), "type": "alpaca"}],
                          sequence_len=256, micro_batch_size=2, optimizer="adamw_torch", logging_steps=50,
                          output_dir=str(out))
    common = [sys.executable, "-m", "ftcore", "run", str(recipe)]
    first = subprocess.Popen([*common, "max_steps=100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "run.json").is_file():
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.2)
        assert (out / "run.json").is_file()
        for extra in ([], ["--overwrite"]):
            started = time.time()
            second = subprocess.run([*common, "max_steps=2", *extra], capture_output=True, text=True, cwd=tmp_path,
                                    timeout=120)
            assert second.returncode == 2, second.stderr[-2000:]
            assert f"another ftcore run (pid {first.pid} on host" in second.stderr
            assert "Traceback" not in second.stderr
            assert time.time() - started < 60
            assert (out / "run.json").is_file()
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert (out / "adapter_model.safetensors").is_file()


# 3. the engines and trackers a recipe asks for are installed

WITHOUT = """import importlib.util, sys
found = importlib.util.find_spec
def find_spec(name, *args, **kwargs):  # these are not installed
    return None if name.split(".")[0] in {modules!r} else found(name, *args, **kwargs)
importlib.util.find_spec = find_spec
from ftcore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def ftcore_without(modules: tuple, *args, cwd=None):
    return subprocess.run([sys.executable, "-c", WITHOUT.format(modules=modules), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [("validate",), ("run", "--nproc", "2")])
def test_deepspeed_not_installed_is_one_line_before_anything_starts(tmp_path, command):
    write_jsonl(tmp_path / "data.jsonl", alpaca_rows(4))
    path = write_recipe(tmp_path / "r.yaml", base_model=str(tmp_path / "model"), adapter="lora",
                        datasets=[{"path": str(tmp_path / "data.jsonl"), "type": "alpaca"}], deepspeed="zero3",
                        output_dir=str(tmp_path / "out"))
    (tmp_path / "model").mkdir()
    start = time.perf_counter()
    result = ftcore_without(("deepspeed",), command[0], path, *command[1:], cwd=tmp_path)
    assert result.returncode == 2, result
    assert "deepspeed: DeepSpeed is not installed; pip install 'ftcore[deepspeed]'" in result.stderr
    assert "Traceback" not in result.stderr and "launch:" not in result.stdout + result.stderr
    assert result.stderr.count("DeepSpeed is not installed") == 1
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize(("keys", "modules", "extra"), [
    ({"report_to": "tensorboard"}, ("tensorboard", "tensorboardX"), "tensorboard"),
    ({"use_tensorboard": True}, ("tensorboard", "tensorboardX"), "tensorboard"),
    ({"use_mlflow": True}, ("mlflow",), "mlflow"),
    ({"report_to": "wandb"}, ("wandb",), "wandb"),
])
def test_a_missing_tracker_is_one_line_at_validate_and_run(tmp_path, keys, modules, extra):
    write_jsonl(tmp_path / "data.jsonl", alpaca_rows(4))
    (tmp_path / "model").mkdir()
    path = write_recipe(tmp_path / "r.yaml", base_model=str(tmp_path / "model"), adapter="lora",
                        datasets=[{"path": str(tmp_path / "data.jsonl"), "type": "alpaca"}],
                        output_dir=str(tmp_path / "out"), **keys)
    for command in (("validate",), ("run", "--nproc", "2")):
        result = ftcore_without(modules, command[0], path, *command[1:], cwd=tmp_path)
        assert result.returncode == 2, result
        assert f"pip install 'ftcore[{extra}]'" in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.count("pip install") == 1
        assert not (tmp_path / "out").exists()


# --- before anything loads: writable, room for the checkpoints ------------------------------------------------

@pytest.fixture
def small_mount(tmp_path):
    """A 1 MB tmpfs (root only); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "mnt"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount is not permitted here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fake_model(folder: Path, megabytes: int, dtype="float32") -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": dtype}))
    with open(folder / "model.safetensors", "wb") as f:
        f.truncate(megabytes * 1024 * 1024)
    return folder


def _recipe_for(tmp_path, base_model, output_dir, **keys):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    return write_recipe(tmp_path / "r.yaml", base_model=str(base_model), datasets=[{"path": str(data),
                        "type": "alpaca"}], output_dir=str(output_dir), optimizer="adamw_torch", **keys)


def test_a_read_only_output_folder_is_refused_before_anything_loads(tmp_path, small_mount, capsys, monkeypatch):
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    recipe = _recipe_for(tmp_path, _fake_model(tmp_path / "model", 1), small_mount / "out")
    monkeypatch.setattr("ftcore.run.run", lambda *a, **k: pytest.fail("the run started"))
    code = main(["run", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"output_dir '{small_mount / 'out'}' is not writable" in err and "Traceback" not in err
    assert list(small_mount.iterdir()) == []


def test_a_full_disk_is_refused_with_both_numbers(tmp_path, small_mount, capsys, monkeypatch):
    model = _fake_model(tmp_path / "model", 2)  # full fine-tuning: 2 MB of weights, 6 MB per checkpoint
    recipe = _recipe_for(tmp_path, model, small_mount / "out", max_steps=4, save_steps=2)
    monkeypatch.setattr("ftcore.run.run", lambda *a, **k: pytest.fail("the run started"))
    code = main(["run", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "not enough free space: the run needs about 14.0 MB (2 checkpoint(s) of 6.0 MB" in err
    assert "1.0 MB free on" in err
    assert list(small_mount.iterdir()) == []


def test_the_size_estimate(tmp_path):
    from ftcore.artifacts import estimate_run_bytes
    from ftcore.testing import load_recipe

    mb = 1024 * 1024
    model = _fake_model(tmp_path / "model", 4, dtype="bfloat16")
    base = {"base_model": str(model), "datasets": [{"path": "d.jsonl", "type": "alpaca"}]}
    assert estimate_run_bytes(load_recipe(base)) == (4 * mb + 16 * mb, 0, 4 * mb)  # no save_steps: no checkpoint
    full = load_recipe({**base, "save_steps": 10, "max_steps": 100, "save_total_limit": 3})
    assert estimate_run_bytes(full) == (20 * mb, 3, 4 * mb)
    only_model = load_recipe({**base, "saves_per_epoch": 2, "num_epochs": 3, "save_only_model": True})
    assert estimate_run_bytes(only_model) == (4 * mb, 6, 4 * mb)
    adapter = load_recipe({**base, "adapter": "lora", "save_steps": 50, "max_steps": 100})
    assert estimate_run_bytes(adapter) == (int(0.4 * mb), 2, int(0.4 * mb))
    assert estimate_run_bytes(load_recipe({**base, "base_model": "owner/model"})) is None


def test_the_size_estimate_reads_a_hub_id_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from ftcore.artifacts import estimate_run_bytes
    from ftcore.testing import load_recipe

    mb = 1024 * 1024
    cache = tmp_path / "hub"
    snapshot = cache / "models--owner--model" / "snapshots" / ("a" * 40)
    snapshot.parent.mkdir(parents=True)
    _fake_model(snapshot, 4, dtype="bfloat16")
    (cache / "models--owner--model" / "refs").mkdir()
    (cache / "models--owner--model" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    recipe = load_recipe({"base_model": "owner/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                          "save_steps": 10, "max_steps": 100, "save_total_limit": 3})
    assert estimate_run_bytes(recipe) == (20 * mb, 3, 4 * mb)
    other = load_recipe({"base_model": "owner/other", "datasets": [{"path": "d.jsonl", "type": "alpaca"}]})
    assert estimate_run_bytes(other) is None  # not cached: its size is not known before it downloads


def test_another_processs_write_probe_does_not_make_the_folder_a_strangers(tmp_path):
    # two ranks start at once: one's check_writable probe was seen by the other as a file ftcore did not write
    from ftcore.artifacts import WRITE_TEST, check_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / f"{WRITE_TEST}abc123").write_text("")
    check_output_dir(out, overwrite=False, resume=None)  # no error: the folder is as good as empty
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="ftcore did not write it"):
        check_output_dir(out, overwrite=False, resume=None)
