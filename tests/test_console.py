"""The run's console: formatted numbers, before/after table, JSON lines, no ANSI off a terminal, one final eval."""

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from ftcore.console import final_summary, number, run_console
from ftcore.log import console

ANSI = re.compile(r"\x1b\[")
QUOTED_NUMBER = re.compile(r"""['"]-?\d+(\.\d+)?(e-?\d+)?['"]""")

PLAN = {"output_dir": "out", "model": "tiny-llama", "method": "lora", "precision": "fp32", "device": "cpu",
        "world_size": 1, "trainable_parameters": 131072, "parameters": 869504, "global_batch": 8,
        "micro_batch_size": 8, "gradient_accumulation_steps": 1, "evaluators": ["loss"], "logging_steps": 10,
        "rows_read": 1200, "rows_kept": 1200, "rows_dropped": {}, "train_examples": 1080, "eval_examples": 120,
        "train_tokens": 62975, "eval_tokens": 6997, "trained_tokens": 4977}


def _drive():
    """A synthetic run through the callback: start, two train logs, an eval, the trainer's summary."""
    shown = run_console(PLAN)
    args = SimpleNamespace(num_train_epochs=2, max_steps=-1)
    control = SimpleNamespace()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=270, global_step=0, epoch=0.0)
    shown.on_train_begin(args, state, control)
    for step in range(1, 11):
        state.global_step, state.epoch = step, step / 135
        shown.on_step_end(args, state, control)
    shown.on_log(args, state, control, logs={"loss": 4.76812, "grad_norm": 0.91534, "learning_rate": 0.0019287})
    state.global_step = 270
    shown.on_log(args, state, control, logs={"eval_loss": 2.02541, "eval_perplexity": 7.5791, "eval_exact_match": 0.85})
    shown.on_log(args, state, control, logs={"train_runtime": 61.2, "train_loss": 2.26})
    shown.on_train_end(args, state, control)


def test_numbers_are_formatted_for_people():
    assert number(4.76812) == "4.7681" and number(211.2213) == "211.2" and number(131072) == "131,072"
    assert number(0.0019287, "learning_rate") == "1.93e-03" and number(0) == "0" and number(7.5791) == "7.5791"


def test_plain_console_shows_formatted_lines_without_dicts_or_escapes(capsys):
    with console(format="plain"):
        _drive()
    out = capsys.readouterr().out
    assert not ANSI.search(out) and "{" not in out and not QUOTED_NUMBER.search(out)
    assert "run:" in out and "131,072 of 869,504 parameters trained (15.07%)" in out
    assert "global batch 8 = 8 x 1 x 1 (per device x accumulation x processes)" in out and "steps:      270" in out
    assert "step 10/270 | loss 4.7681 | lr 1.93e-03 | grad norm 0.9153" in out
    assert "eval step 270/270 (final) | loss 2.0254 | perplexity 7.5791 | exact match 0.8500" in out
    assert "time: about" in out  # estimated once the first steps were measured
    assert "train_runtime" not in out


def test_json_lines_are_parseable_events_with_numbers(capsys):
    with console(format="json"):
        _drive()
        final_summary("out", {"eval_loss_initial": 5.35, "eval_loss_final": 2.03})
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "train" in kinds and "eval" in kinds and kinds[-1] == "done"
    start = events[0]
    assert start["max_steps"] == 270 and start["trainable_parameters"] == 131072
    assert start["trainable_share"] == pytest.approx(131072 / 869504)
    train = next(e for e in events if e["event"] == "train")
    assert train["loss"] == 4.76812 and train["step"] == 10 and isinstance(train["tokens_per_second"], float)
    evaluation = next(e for e in events if e["event"] == "eval")
    assert evaluation["metrics"] == {"loss": 2.02541, "perplexity": 7.5791, "exact_match": 0.85}
    assert evaluation["phase"] == "final" and events[-1]["metrics"]["eval_loss_final"] == 2.03


def test_final_table_has_before_and_after_and_lists_the_files(tmp_path, capsys):
    for name in ("adapter_model.safetensors", "recipe.yaml", "run.json", "loss.png"):
        (tmp_path / name).write_text("x")
    metrics = {"eval_loss_initial": 5.35291, "eval_loss_final": 2.02541, "eval_exact_match_initial": 0.0,
               "eval_exact_match_final": 0.925, "train_loss_first": 5.465, "train_loss_last": 1.973,
               "train_runtime": 75.0}
    with console(format="plain"):
        final_summary(tmp_path, metrics)
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    assert "eval loss: 5.3529 -> 2.0254" in out and "training took 1m 15s" in out
    header = next(line for line in out.splitlines() if "metric" in line and "before" in line)
    assert header.index("before") < header.index("after")
    assert re.search(r"exact match\s+0\.0000\s+0\.9250", out) and re.search(r"train loss\s+5\.4650\s+1\.9730", out)
    assert f"saved to {tmp_path}" in out and "recipe.yaml" in out and "loss.png" in out
    assert "metrics.jsonl" not in out  # only what exists


def test_quiet_hides_the_console_but_not_warnings(capsys):
    import logging

    with console(logging.WARNING, format="plain"):
        _drive()
        logging.getLogger("ftcore.x").warning("a real problem")
    assert capsys.readouterr().out == "a real problem\n"


def test_a_real_run_prints_one_final_evaluation_and_a_summary(tmp_path):
    out_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "ftcore", "run", "quickstart", f"output_dir={out_dir}",
                           "max_steps=6", "val_set_size=8", "logging_steps=2", "evals_per_epoch=null", "eval_steps=5"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    # eval_steps=5 of 6: the evaluation at step 5 would repeat the final one; only the final one runs
    assert re.findall(r"^eval step (\d+)/6", out, re.M) == ["0", "6"]
    assert "FutureWarning" not in out + done.stderr and "Loading weights" not in done.stderr
    assert not ANSI.search(out) and "{'" not in out and not QUOTED_NUMBER.search(out)
    assert re.search(r"^\s*loss\s+\d\.\d{4}\s+\d\.\d{4}\s*$", out, re.M)  # the before | after table
    assert "it/s" not in done.stderr  # no tqdm bar
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 6]


def test_counts_read_as_counts_and_shares_as_shares():
    from ftcore.console import number

    assert number(38.0, "eval_generated") == "38"  # "generated" holds "rate" but is a count
    assert number(1.0, "eval_exact_match") == "1.0000" and number(0.0, "exact_match") == "0.0000"
    assert number(0.0019, "learning_rate") == "1.90e-03" and number(499.0, "eval_tokens") == "499"


def test_the_start_summary_counts_the_trainable_parameters_the_trainer_has(capsys):
    """A plugin may unfreeze parameters when the trainer is built (unfrozen_parameters beside an adapter): the
    summary counts them as the model is when training begins, not as it was when the plan was made."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))  # 20 + 10 parameters
    for p in model[1].parameters():
        p.requires_grad_(False)
    with console(format="json"):
        shown = run_console({**PLAN, "trainable_parameters": 20, "parameters": 30})
        for p in model[1].parameters():
            p.requires_grad_(True)  # unfrozen after the plan, as the full plugin does at the trainer's init
        shown.on_train_begin(SimpleNamespace(num_train_epochs=1, max_steps=2), SimpleNamespace(
            is_world_process_zero=True, max_steps=2, global_step=0, epoch=0.0), SimpleNamespace(), model=model)
    start = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (start["trainable_parameters"], start["parameters"]) == (30, 30)
