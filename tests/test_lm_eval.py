"""The lm_eval evaluator: EleutherAI's harness on the model in memory, checked against plain torch.

The task is tests/fixtures/lm_eval/colors.yaml: ten multiple-choice questions read from a local
JSONL file, so nothing is downloaded. A multiple-choice task's accuracy is the share of rows where
the right choice has the highest summed log-probability after the prompt; the tests compute that
with the model's own forward pass and compare it with what the harness reported.
"""

import json
import math
from pathlib import Path

import pytest

from ftcore.testing import eval_context, load_recipe, recipe_problems, run_recipe, write_jsonl

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
TASK = FIXTURES / "colors.yaml"
ROWS = [json.loads(line) for line in (FIXTURES / "colors.jsonl").read_text().splitlines() if line]


def prompt(row) -> str:
    return f"Question: {row['question']}\nAnswer:"


def accuracy(model, tokenizer, rows=ROWS) -> float:
    """Share of rows whose answer has the highest log-likelihood of its tokens after the prompt (plain torch)."""
    import torch

    model.eval()
    right = 0
    for row in rows:
        context = tokenizer(prompt(row))["input_ids"]
        scores = []
        for choice in row["choices"]:
            ids = tokenizer(prompt(row) + " " + choice)["input_ids"]
            assert ids[:len(context)] == context  # the choice's tokens follow the prompt's
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            scores.append(sum(float(logprobs[i - 1, ids[i]]) for i in range(len(context), len(ids))))
        right += max(range(len(scores)), key=scores.__getitem__) == row["answer"]
    return right / len(rows)


def recipe_keys(model, data, **lm_eval):
    return dict(base_model=str(model), datasets=[{"path": str(data), "type": "input_output"}],
                test_datasets=[{"path": str(data), "type": "input_output"}], sequence_len=64, micro_batch_size=10,
                max_steps=30, learning_rate=1e-2, lr_scheduler="constant", eval_on_start=True, logging_steps=10, eval_steps=10,
                evaluators=["loss", "lm_eval"], lm_eval={"tasks": [str(TASK)], **lm_eval})


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    """A short full fine-tuning run on the task's answers, evaluated by the harness before and after."""
    folder = tmp_path_factory.mktemp("lm-eval-run")
    data = write_jsonl(folder / "colors.jsonl", [  # only the answers train
        {"segments": [{"text": prompt(row), "label": False}, {"text": f" {row['choices'][row['answer']]}", "label": True}]}
        for row in ROWS])
    return run_recipe(recipe_keys(tiny_llama, data), output_dir=folder / "out")


# ── the names of the metrics ─────────────────────────────────────────────────


def test_results_flatten_to_task_metric_names_without_stderr_unless_asked():
    from ftcore.plugins.lm_eval import flatten

    results = {"arc_easy": {"alias": "arc_easy", "sample_len": 10, "acc,none": 0.5, "acc_stderr,none": 0.1,
                            "acc_norm,none": 0.6, "acc_norm_stderr,none": "N/A"},
               "gsm8k": {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.5}}
    assert flatten(results) == {"lm_eval_arc_easy_acc": 0.5, "lm_eval_arc_easy_acc_norm": 0.6,
                                "lm_eval_gsm8k_exact_match_strict-match": 0.25,
                                "lm_eval_gsm8k_exact_match_flexible-extract": 0.5}
    assert flatten(results, stderr=True)["lm_eval_arc_easy_acc_stderr"] == 0.1
    assert "lm_eval_arc_easy_acc_norm_stderr" not in flatten(results, stderr=True)  # "N/A" is no number


# ── validation ───────────────────────────────────────────────────────────────


def test_without_the_harness_the_recipe_stops_at_validation_with_the_install_command(monkeypatch, tmp_path):
    import ftcore.plugins.lm_eval as plugin

    monkeypatch.setattr(plugin, "installed", lambda: False)
    problems = recipe_problems({"base_model": "x/y", "val_set_size": 0.1, "evaluators": ["loss", "lm_eval"],
                                "lm_eval": {"tasks": [str(TASK)]}})
    assert [key for key, _ in problems] == ["evaluators"]
    assert "pip install 'ftcore[lm-eval]'" in problems[0][1]


def test_a_missing_task_file_or_section_is_named_at_validation(tmp_path):
    problems = dict(recipe_problems({"base_model": "x/y", "evaluators": ["lm_eval"],
                                     "lm_eval": {"tasks": ["hellaswag", str(tmp_path / "nope.yaml")]}}))
    assert "lm_eval.tasks[1]" in problems and "no such task file" in problems["lm_eval.tasks[1]"]
    assert "lm_eval.tasks[0]" not in problems  # a name: looked up in the harness's catalogue when it runs
    assert "lm_eval" in dict(recipe_problems({"base_model": "x/y", "evaluators": ["lm_eval"]}))
    assert load_recipe({"base_model": "x/y", "evaluators": ["lm_eval"], "lm_eval": {"tasks": [str(TASK)]}})


# ── the harness on a model, against plain torch ──────────────────────────────


def test_a_folder_of_tasks_runs_each_and_matches_plain_torch(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.plugins.lm_eval import evaluate_lm_eval

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    recipe = {"base_model": str(tiny_llama), "evaluators": ["lm_eval"],
              "lm_eval": {"tasks": [str(FIXTURES)], "limit": 4, "batch_size": 3}}
    ctx = eval_context(model, tiny_llama, [], recipe=recipe, phase="final")
    metrics = evaluate_lm_eval(ctx)
    assert metrics == {"lm_eval_ftcore_colors_acc": pytest.approx(accuracy(model, tokenizer, ROWS[:4]))}  # limit: 4
    assert [s["task"] for s in ctx.samples] == ["ftcore_colors"] * 3  # samples: 3 rows kept by default


def test_a_run_reports_the_harness_before_and_after_training_as_plain_torch_computes(trained, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    before = accuracy(AutoModelForCausalLM.from_pretrained(tiny_llama), tokenizer)
    after = accuracy(trained.model, tokenizer)
    m = trained.metrics
    assert m["eval_lm_eval_ftcore_colors_acc_initial"] == pytest.approx(before)
    assert m["eval_lm_eval_ftcore_colors_acc_final"] == pytest.approx(after)
    assert after > before and after >= 0.9  # trained on the answers, the model picks them
    evaluations = [r for r in trained.records if "eval_lm_eval_ftcore_colors_acc" in r]
    assert [r["step"] for r in evaluations] == [0, 30]  # at: [start, end], not at steps 10 and 20
    assert [r["step"] for r in trained.records if "eval_loss" in r] == [0, 10, 20, 30]


def test_the_run_keeps_a_few_harness_rows_in_samples_jsonl(trained):
    path = trained.output_dir / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    mine = [r for r in rows if r["evaluator"] == "lm_eval"]
    assert len(mine) == 6 and {r["phase"] for r in mine} == {"initial", "final"}
    final = [r for r in mine if r["phase"] == "final"]
    for r, row in zip(final, ROWS):
        assert r["prompt"] == prompt(row) and r["reference"] == row["choices"][row["answer"]]
        assert r["acc"] == float(r["prediction"] == r["reference"])
    assert all(math.isfinite(r["step"]) for r in mine)
