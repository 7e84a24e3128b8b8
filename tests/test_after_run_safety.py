"""Issue 13, after a run: ``ftcore merge``, ``eval``, ``generate`` and ``chat`` on what a run left.

A run folder that did not complete (run.json "running", "interrupted", "failed", or no run.json) is
refused by ``merge`` (exit 2, one line naming the status, ``--force`` merges with a warning) and
warned about by ``eval``, ``generate`` and ``chat``; a folder without any model is an error naming
the status; a base model that is a Hub id fails at once, offline, naming the id (a cached one loads).

Run folders are built by hand (recipe.yaml, run.json, a tokenizer and a random LoRA adapter on the
tiny Llama); one slow test stops a real run with Ctrl-C and checks the message against the folder.
"""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ftcore.testing import OFFLINE_ENV, alpaca_rows, write_jsonl

STARTED = "2026-01-01T00:00:00+0000"  # run.json's start, before the adapter files were written


@pytest.fixture(scope="module")
def made_run(tiny_llama, tmp_path_factory):
    """A completed LoRA run folder, built by hand: recipe.yaml, run.json, tokenizer, a random adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tmp_path_factory.mktemp("after-run")
    data = write_jsonl(tmp / "data.jsonl", alpaca_rows(8))
    folder = tmp / "run"
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    recipe = dict(base_model=str(tiny_llama), adapter="lora", lora_r=4, lora_alpha=8,
                  lora_target_modules=["q_proj", "v_proj"], datasets=[{"path": str(data), "type": "alpaca"}],
                  chat_template="llama3", sequence_len=128, val_set_size=0.25, evaluators=["loss"],
                  output_dir=str(folder))
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (folder / "run.json").write_text(json.dumps({"status": "completed", "started": STARTED}))
    return folder


def copy_run(made_run, tmp_path, status="completed", checkpoint=None, weights=True, **recipe):
    """A copy of the hand-made run with run.json's ``status`` (None: no run.json), a ``checkpoint``
    (step, max_steps), without weights, or with recipe keys changed."""
    folder = tmp_path / "run"
    shutil.copytree(made_run, folder)
    if status is None:
        (folder / "run.json").unlink()
    else:
        (folder / "run.json").write_text(json.dumps({"status": status, "started": STARTED}))
    if checkpoint:
        step, total = checkpoint
        saved = folder / f"checkpoint-{step}"
        saved.mkdir()
        for file in folder.iterdir():  # as a trainer's checkpoint: adapter, tokenizer, chat template, recipe.yaml
            if file.is_file() and file.name != "run.json":
                shutil.copy(file, saved / file.name)
        (saved / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": total}))
    if not weights:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (folder / name).unlink()
    if recipe:
        keys = yaml.safe_load((folder / "recipe.yaml").read_text())
        (folder / "recipe.yaml").write_text(yaml.safe_dump({**keys, **recipe}))
    return folder


def cli(*args):
    """``ftcore ARGS`` in this process: (exit code, stdout, stderr)."""
    from ftcore.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def one_error(err):
    """The single ``error:`` line of a refusal (libraries may warn before it), with no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ── merge: refused unless the run completed ──────────────────────────────────

# run.json's status (None: no run.json) -> (a checkpoint: step, max_steps; words the one-line error must have)
UNFINISHED = {
    "interrupted": ((4, 10), ["run.json says the run was interrupted at step 4 of 10 (Ctrl-C or SIGTERM)",
                              "the same as checkpoint-4", "partly trained", "recipe.yaml --resume`",
                              "or merge anyway with --force"]),
    "running": ((4, 10), ['run.json says "running", but no process is training in', "killed",
                          "checkpoint-4 (step 4 of 10)", "recipe.yaml --resume`", "or merge anyway with --force"]),
    "failed": (None, ["run.json says the run failed", "saves no final model", "it saved no checkpoint",
                      "recipe.yaml --resume`", "or merge anyway with --force"]),
    None: (None, ["has no run.json, so the run never started training", "or merge anyway with --force"]),
}


@pytest.mark.parametrize("status", list(UNFINISHED), ids=str)
def test_merge_refuses_a_run_that_did_not_complete(made_run, tmp_path, status):
    checkpoint, words = UNFINISHED[status]
    folder = copy_run(made_run, tmp_path, status, checkpoint)
    code, out, err = cli("merge", folder)
    line = one_error(err)
    assert code == 2
    for words_ in words:
        assert words_ in line
    assert not (folder / "merged").exists() and "merge: base" not in out


def test_merge_force_merges_an_interrupted_run_with_a_warning(made_run, tmp_path):
    folder = copy_run(made_run, tmp_path, "interrupted", (4, 10))
    code, out, err = cli("merge", folder, "--force")
    assert code == 0, err[-3000:]
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "interrupted at step 4 of 10" in warnings[0]
    assert warnings[0].endswith("merging it anyway (--force)")
    assert (folder / "merged" / "config.json").is_file() and any((folder / "merged").glob("*.safetensors"))


def test_an_interrupted_run_whose_weights_predate_it_says_they_are_an_earlier_attempts(made_run, tmp_path):
    folder = copy_run(made_run, tmp_path, "interrupted", (6, 10))
    old = time.mktime(time.strptime("2025-06-01", "%Y-%m-%d"))  # a second Ctrl-C saved nothing: an older adapter
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        os.utime(folder / name, (old, old))
    line = one_error(cli("merge", folder)[2])
    assert "second Ctrl-C" in line and "from an earlier attempt" in line and "checkpoint-6 (step 6 of 10)" in line
    assert "the same as" not in line


HOLD = ("import fcntl, json, os, socket, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}).encode())\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n")


def test_a_run_still_training_is_named_as_such(made_run, tmp_path):
    folder = copy_run(made_run, tmp_path, "running", (2, 10))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / ".ftcore-run.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_error(cli("merge", folder)[2])
        assert "says the run is still training" in line and f"pid {holder.pid} on host" in line
        assert "wait for it to finish, or merge anyway with --force" in line and "killed" not in line
    finally:
        holder.kill()
        holder.wait()
    line = one_error(cli("merge", folder)[2])  # the lock's holder is gone: the run was killed
    assert "killed" in line and "still training" not in line


# ── eval, generate, chat: a warning; no model at all: an error ───────────────


def test_eval_generate_and_chat_warn_about_a_run_that_did_not_complete(made_run, tmp_path, monkeypatch):
    folder = copy_run(made_run, tmp_path, "interrupted", (4, 10))
    expected = "run.json says the run was interrupted at step 4 of 10"

    def warnings(text):
        return [line for line in text.splitlines() if line.startswith("warning: ")]

    code, out, err = cli("generate", folder, "--prompt", "red green", "--max-new-tokens", "2")
    assert code == 0, err[-3000:]
    assert len(warnings(err)) == 1 and expected in warnings(err)[0] and warnings(err)[0].endswith("using it anyway")
    assert not warnings(out)  # only replies on stdout

    monkeypatch.setattr("sys.stdin", io.StringIO("/exit\n"))
    code, out, err = cli("chat", folder)
    assert code == 0, err[-3000:]
    assert len(warnings(out)) == 1 and expected in warnings(out)[0]

    code, out, err = cli("eval", folder, "--baseline")
    assert code == 0, err[-3000:]
    assert len(warnings(out)) == 1 and expected in warnings(out)[0]  # once, though two models load
    assert json.loads((folder / "eval.json").read_text())["run_status"] == "interrupted"


@pytest.mark.parametrize("command", ["eval", "generate", "chat", "merge"])
def test_a_run_folder_without_a_model_is_an_error_naming_its_status(made_run, tmp_path, command):
    folder = copy_run(made_run, tmp_path, "running", (4, 10), weights=False)
    code, out, err = cli(command, folder, *(["--prompt", "hi"] if command == "generate" else []))
    line = one_error(err)
    assert code == 2
    assert f"{folder} holds no trained model" in line and 'run.json says "running"' in line
    assert f"{folder / 'checkpoint-4'} (step 4 of 10)" in line and "--resume" in line


def test_a_checkpoint_folder_loads_with_a_warning(made_run, tmp_path):
    folder = copy_run(made_run, tmp_path, "interrupted", (4, 10))
    code, out, err = cli("generate", folder / "checkpoint-4", "--prompt", "red", "--max-new-tokens", "2")
    assert code == 0, err[-3000:]
    assert "warning: " in err and "is a checkpoint saved at step 4 of 10, not the final model" in err


# ── offline: a base model that is a Hub id ───────────────────────────────────

HUB_ID = "ftcore-tests/never-downloaded"


@pytest.mark.parametrize("command", ["eval", "generate", "chat", "merge", "merge --base"])
def test_a_hub_base_model_offline_fails_at_once_naming_it(made_run, tmp_path, command):
    folder = copy_run(made_run, tmp_path, base_model=HUB_ID)
    args = {"eval": ["eval", folder], "generate": ["generate", folder, "--prompt", "hi"], "chat": ["chat", folder],
            "merge": ["merge", folder, "--out", tmp_path / "merged"],
            "merge --base": ["merge", "--base", HUB_ID, "--adapter", made_run, "--out", tmp_path / "merged"]}[command]
    start = time.time()
    code, out, err = cli(*args)
    line = one_error(err)
    assert code == 2, (out, err)
    assert f"'{HUB_ID}'" in line and "HF_HUB_OFFLINE=1 is set" in line and "not in the local Hugging Face cache" in line
    assert ("--base" if command == "merge --base" else "base_model") in line
    assert time.time() - start < 30 and not (tmp_path / "merged").exists()


def hub_cache(tmp_path, model, repo_id):
    """A Hugging Face cache folder holding ``model``'s files as the snapshot of ``repo_id`` (as a download leaves)."""
    cache = tmp_path / "hub-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


def test_a_cached_hub_base_model_still_loads_offline(made_run, tiny_llama, tmp_path, monkeypatch):
    repo_id = "ftcore-tests/cached-llama"
    folder = copy_run(made_run, tmp_path, base_model=repo_id)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub_cache(tmp_path, tiny_llama, repo_id)))
    code, out, err = cli("generate", folder, "--prompt", "red green", "--max-new-tokens", "2")
    assert code == 0 and "error:" not in err, err[-3000:]
    code, out, err = cli("merge", folder, "--out", tmp_path / "merged")
    assert code == 0, err[-3000:]
    assert (tmp_path / "merged" / "config.json").is_file() and any((tmp_path / "merged").glob("*.safetensors"))


# ── what a real run stopped by Ctrl-C leaves, and what merge says of it ─────


@pytest.mark.slow
def test_merge_of_a_run_stopped_by_ctrl_c_names_the_step_its_adapter_is_from(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    env = {**os.environ, **OFFLINE_ENV}
    process = subprocess.Popen([sys.executable, "-m", "ftcore", "run", "quickstart", "val_set_size=0",
                                "evaluators=[loss]", "logging_steps=1", "max_steps=300", f"output_dir={out}",
                                "--log-format", "plain"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    try:
        end = time.time() + 300
        while not ((out / "metrics.jsonl").is_file() and '"step": 2' in (out / "metrics.jsonl").read_text()):
            assert time.time() < end and process.poll() is None, "the run did not reach step 2"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output[-2000:]
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    checkpoint = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]

    line = one_error(cli("merge", out)[2])
    assert f"interrupted at step {step} of 300" in line and f"the same as {checkpoint.name}" in line
    top, saved = load_file(str(out / "adapter_model.safetensors")), load_file(str(checkpoint / "adapter_model.safetensors"))
    assert top.keys() == saved.keys() and all(bool((top[k] == saved[k]).all()) for k in top)  # the message is true
    assert f"ftcore run {out / 'recipe.yaml'} --resume" in line and not (out / "merged").exists()
