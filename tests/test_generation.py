"""The ``generation`` evaluator: replies generated for the evaluation prompts, scored.

A tiny Llama is trained here for a few seconds to echo its input (plain torch
steps on examples formatted with the llama3 chat template, as a run formats
them); it must then answer held-out echo prompts exactly, where the untrained
model does not. The metrics are checked against sacrebleu and rouge-score
called directly on the same texts, batching against one prompt at a time,
and the vision path on the tiny Llama 3.2 Vision.
"""

import random
import sys

import pytest
import torch

from ftcore.api import EVAL_SAMPLES, FtcoreError, run_evaluators
from ftcore.plugins import generation
from ftcore.testing import COLORS, eval_context, fresh_plugins, recipe_problems, run_format

PLUGINS = fresh_plugins()
RECIPE = {"chat_template": "llama3"}


def echo_rows(n, seed):
    r = random.Random(seed)
    words = [" ".join(r.choice(COLORS) for _ in range(3)) for _ in range(n)]
    return [{"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w}]} for w in words]


def examples_of(rows, model_dir, recipe=RECIPE):
    return [run_format("chat_template", row, model_dir, recipe=recipe, plugins=PLUGINS) for row in rows]


@pytest.fixture(scope="module")
def echo(ftcore_tiny_llama):
    """(model folder, untrained model, trained model, held-out examples, their rows)."""
    from transformers import AutoModelForCausalLM

    from ftcore.api import PaddingCollator

    train = examples_of(echo_rows(256, 0), ftcore_tiny_llama)
    rows = echo_rows(16, 1)
    held_out = examples_of(rows, ftcore_tiny_llama)
    untrained = AutoModelForCausalLM.from_pretrained(ftcore_tiny_llama, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(ftcore_tiny_llama, dtype=torch.float32)
    collate = PaddingCollator(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    draw = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        for _step in range(200):  # about 10 s; the loss ends near 0.01
            batch = collate([train[i] for i in torch.randint(len(train), (32,), generator=draw).tolist()])
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return ftcore_tiny_llama, untrained, model.eval(), held_out, rows


def context(model, model_dir, examples, **section):
    """The evaluator's context, with ``section`` as the recipe's ``generation:`` keys."""
    recipe = {**RECIPE, "generation": {"max_new_tokens": 12, **section}}
    return eval_context(model, model_dir, examples, recipe=recipe, plugins=PLUGINS)


# ── known answers ────────────────────────────────────────────────────────────


def test_a_model_trained_to_echo_answers_held_out_prompts_exactly_and_the_untrained_one_does_not(echo):
    model_dir, untrained, trained, held_out, rows = echo
    assert not {r["messages"][0]["content"] for r in rows} <= {r["messages"][0]["content"] for r in echo_rows(256, 0)}
    after = generation.evaluate_generation(context(trained, model_dir, held_out, metrics=["exact_match", "contains"]))
    before = generation.evaluate_generation(context(untrained, model_dir, held_out, metrics=["exact_match",
                                                                                              "contains"]))
    assert after == {"exact_match": 1.0, "contains": 1.0, "generated": 16}
    assert before["exact_match"] <= 0.1 and before["contains"] <= 0.1 and before["generated"] == 16


def test_batched_generation_gives_the_same_replies_as_one_prompt_at_a_time(echo):
    model_dir, untrained, trained, held_out, _rows = echo
    assert len({len(e["input_ids"]) for e in held_out}) > 1  # prompts of different lengths: padding happens
    for model in (untrained, trained):
        replies = {}
        for size in (1, 16):
            ctx = context(model, model_dir, held_out, batch_size=size, record_samples=None)
            generation.evaluate_generation(ctx)
            replies[size] = [s["prediction"] for s in ctx.samples]
        assert len(replies[1]) == 16 and replies[16] == replies[1]


# ── each metric against an independent computation ──────────────────────────

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris.",
             "Reverse the words. Sort the numbers.", "red green blue yellow black white"]
# what the fake model answers to each: exact (but for case and space), containing it, partly right, wrong
ANSWERS = ["the quick  brown fox jumps over the LAZY dog.", "I think: What is the capital of France? Paris. Yes",
           "Reverse the words. Count the letters.", "0 1 2 3"]


class Replying:
    """A stand-in model whose ``generate`` answers each (left-padded) prompt with ``ANSWERS`` by its question."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []

    def generate(self, input_ids, attention_mask, **options):
        self.calls.append(options)
        end = self.tokenizer.convert_tokens_to_ids("<|eot_id|>")
        replies = []
        for row, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(row[mask.bool()])
            assert mask[-1] == 1  # left padding: the prompt ends where new tokens start
            answer = ANSWERS[next(i for i, s in enumerate(SENTENCES) if s in prompt)]
            replies.append(self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [end, end])
        width = max(len(r) for r in replies)
        tail = torch.tensor([r + [end] * (width - len(r)) for r in replies])
        return torch.cat([input_ids, tail], dim=1)


def test_each_metric_matches_the_libraries_called_directly_on_the_same_texts(ftcore_tiny_llama):
    import sacrebleu
    from rouge_score import rouge_scorer
    from transformers import AutoTokenizer

    rows = [{"messages": [{"role": "user", "content": f"Say: {s}"}, {"role": "assistant", "content": s}]}
            for s in SENTENCES]
    examples = examples_of(rows, ftcore_tiny_llama)
    model = Replying(AutoTokenizer.from_pretrained(ftcore_tiny_llama))
    ctx = context(model, ftcore_tiny_llama, examples, batch_size=3,
                  metrics=["exact_match", "contains", "chrf", "bleu", "rouge_l"])
    got = generation.evaluate_generation(ctx)
    assert [s["prediction"] for s in ctx.samples] == ANSWERS
    assert [s["reference"] for s in ctx.samples] == SENTENCES

    def norm(text):
        return " ".join(text.lower().split())

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = {
        "exact_match": sum(norm(a) == norm(s) for a, s in zip(ANSWERS, SENTENCES)) / 4,  # 1 of 4
        "contains": sum(norm(s) in norm(a) for a, s in zip(ANSWERS, SENTENCES)) / 4,  # 2 of 4
        "chrf": sacrebleu.corpus_chrf(ANSWERS, [SENTENCES]).score,
        "bleu": sacrebleu.corpus_bleu(ANSWERS, [SENTENCES]).score,
        "rouge_l": sum(scorer.score(s, a)["rougeL"].fmeasure for a, s in zip(ANSWERS, SENTENCES)) / 4,
        "generated": 4,
    }
    assert expected["exact_match"] == 0.25 and expected["contains"] == 0.5 and 0 < expected["bleu"] < 100
    assert list(got) == list(expected)
    assert got == pytest.approx(expected, rel=1e-9)
    assert [s["exact_match"] for s in ctx.samples] == [1.0, 0.0, 0.0, 0.0]
    assert [s["contains"] for s in ctx.samples] == [1.0, 1.0, 0.0, 0.0]
    assert all(call["do_sample"] is False and call["max_new_tokens"] == 12 for call in model.calls)
    assert len(model.calls) == 2  # 4 prompts, 3 at a time


# ── recorded samples, phases, the older name ─────────────────────────────────


def test_samples_are_recorded_with_prompt_reference_prediction_and_scores(echo):
    model_dir, _untrained, trained, held_out, rows = echo
    ctx = context(trained, model_dir, held_out, record_samples=3)
    metrics = run_evaluators({"generation": generation.evaluate_generation}, ctx)
    assert metrics == {"eval_exact_match": 1.0, "eval_generated": 16.0}
    assert len(ctx.samples) == 3 and ctx.stash[EVAL_SAMPLES] == ctx.samples
    for sample, row in zip(ctx.samples, rows):
        question = row["messages"][0]["content"]
        assert sample["evaluator"] == "generation" and sample["phase"] == "final"
        assert sample["prompt"].endswith(f"{question}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        assert sample["reference"] == sample["prediction"] == question and sample["exact_match"] == 1.0
    everything = context(trained, model_dir, held_out, record_samples=None, max_samples=5)
    assert generation.evaluate_generation(everything)["generated"] == 5 and len(everything.samples) == 5


def test_it_runs_only_at_the_evaluations_at_names(echo):
    model_dir, _untrained, trained, held_out, _rows = echo
    few = held_out[:2]
    for phase, at, runs in [("training", None, False), ("initial", None, True), ("final", None, True),
                            ("training", ["steps"], True), ("final", ["start"], False)]:
        ctx = context(trained, model_dir, few, **({"at": at} if at else {}))
        ctx.phase = phase
        assert bool(generation.evaluate_generation(ctx)) == runs, (phase, at)


def test_exact_match_is_the_older_name_reporting_accuracy_at_every_evaluation(echo):
    model_dir, untrained, trained, held_out, _rows = echo
    ctx = context(trained, model_dir, held_out, at=["end"])
    ctx.phase = "training"
    assert generation.evaluate_exact_match(ctx) == {"accuracy": 1.0}
    assert generation.evaluate_exact_match(context(untrained, model_dir, held_out))["accuracy"] <= 0.1


# ── settings and the optional libraries ──────────────────────────────────────


def keys(problems):
    return {key: message for key, message in problems}


def test_bad_settings_name_the_key_and_what_is_allowed():
    base = {"base_model": "unused/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], "val_set_size": 2,
            "evaluators": ["loss", "generation"]}
    problems = keys(recipe_problems({**base, "generation": {"metrics": ["exact_match", "blue"], "at": ["middle"],
                                                            "batch_size": 0, "max_tokens": 3}}))
    assert problems["generation.metrics[1]"].endswith("allowed: exact_match, contains, chrf, bleu, rouge_l")
    assert "did you mean 'bleu'" in problems["generation.metrics[1]"]
    assert problems["generation.at[0]"].endswith("allowed: start, steps, end")
    assert "greater than or equal to 1" in problems["generation.batch_size"]
    assert "unknown key" in problems["generation.max_tokens"] and "max_new_tokens" in problems["generation.max_tokens"]
    assert "at least one metric" in keys(recipe_problems({**base, "generation": {"metrics": []}}))["generation.metrics"]
    no_split = keys(recipe_problems({**base, "val_set_size": 0}))
    assert "no evaluation split" in no_split["evaluators"] and "val_set_size" in no_split["evaluators"]
    assert recipe_problems({**base, "generation": {"metrics": ["chrf", "bleu", "rouge_l"], "at": ["end"]}}) == []


@pytest.mark.parametrize("module, metric", [("sacrebleu", "bleu"), ("sacrebleu", "chrf"), ("rouge_score", "rouge_l")])
def test_a_metric_whose_library_is_missing_fails_at_validation_with_the_install_command(monkeypatch, module, metric):
    monkeypatch.setitem(sys.modules, module, None)  # import fails, as when it is not installed
    recipe = {"base_model": "unused/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], "val_set_size": 2,
              "evaluators": ["loss", "generation"], "generation": {"metrics": ["exact_match", metric]}}
    problems = keys(recipe_problems(recipe))
    assert list(problems) == ["generation.metrics"]
    assert f"{metric} needs {module}" in problems["generation.metrics"]
    assert "pip install 'ftcore[eval]'" in problems["generation.metrics"]
    assert recipe_problems({**recipe, "generation": {"metrics": ["exact_match", "contains"]}}) == []
    with pytest.raises(FtcoreError, match=r"pip install 'ftcore\[eval\]'"):
        generation.evaluate(None, generation.GenerationSection(), [metric])


# ── vision: Llama 3.2 Vision rows with images ────────────────────────────────


def test_image_rows_are_batched_through_the_collator_with_the_same_replies_as_one_at_a_time(ftcore_tiny_mllama,
                                                                                           tmp_path):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    rows = []
    for i, (colour, size) in enumerate([("red", (30, 56)), ("green", (43, 34)), ("blue", (36, 56)),
                                        ("red", (49, 30))]):
        Image.new("RGB", size, {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}[colour]).save(
            tmp_path / f"{i}.png")
        question = "What colour is the shape?" if i % 2 else "Which colour?"
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image", "path": str(tmp_path / f"{i}.png")},
                                         {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": colour}]}]})
    recipe = {"chat_template": "llama3_2_vision"}
    examples = examples_of(rows, ftcore_tiny_mllama, recipe)
    assert all(e["images"] for e in examples) and len({len(e["input_ids"]) for e in examples}) > 1
    model = AutoModelForImageTextToText.from_pretrained(ftcore_tiny_mllama, dtype=torch.float32).eval()
    replies = {}
    for size in (1, 4):
        ctx = eval_context(model, ftcore_tiny_mllama, examples, plugins=PLUGINS, batch_size=2,
                           recipe={**recipe, "generation": {"max_new_tokens": 6, "batch_size": size,
                                                            "metrics": ["exact_match", "contains"]}})
        got = generation.evaluate_generation(ctx)
        assert got["generated"] == 4
        replies[size] = [s["prediction"] for s in ctx.samples]
        assert [s["reference"] for s in ctx.samples] == ["red", "green", "blue", "red"]
        assert [s["images"] for s in ctx.samples] == [[str(tmp_path / f"{i}.png")] for i in range(4)]
    assert all(replies[1]) and replies[4] == replies[1]
