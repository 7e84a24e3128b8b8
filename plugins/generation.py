"""The ``generation`` evaluator: generate each evaluation example's last reply and score it.

Selected with ``evaluators: [loss, generation]`` and set up in the recipe's
``generation:`` section (``GenerationSection``). For every validation (or
``test_datasets``) example, already formatted with the run's chat template and
tokenized, the prompt is everything before the last trained reply
(``last_reply``) and the reference is that reply's text. The prompts go
through ``model.generate`` ``batch_size`` at a time, left-padded, greedy unless
``do_sample``; each row stops at the end of its turn (``stop_ids``: the
tokenizer's eos, the end-of-turn tokens of the chat templates, and the token
that closes the reference reply). Rows with images (Llama 3.2 Vision's
``images`` extra) are batched through the run's collator too, which builds
``pixel_values`` and the cross-attention mask.

Metrics (``generation.metrics``), each reported as ``eval_<name>``:

- ``exact_match``: share of predictions equal to the reference once case and
  whitespace are normalised (``normalize``);
- ``contains``: share of predictions that contain the normalised reference;
- ``chrf``, ``bleu``: sacrebleu's corpus-level chrF and BLEU, on sacrebleu's
  0-100 scale;
- ``rouge_l``: rouge-score's ROUGE-L F-measure, the mean over samples (0-1);

plus ``generated``, the number of examples generated. sacrebleu and
rouge-score are the optional extra ``ftcore[eval]``. Under torch.distributed
each process generates its share; counts are summed with ``ctx.reduce_sum``
and the corpus-level scores are computed on every process's texts.

Each generated sample (the first ``record_samples`` of each evaluation) goes
to ``ctx.record`` with its prompt, reference, prediction and per-sample scores.

``exact_match`` is the older name (it was the vision plugin's evaluator): the
same generation with metrics ``[exact_match]`` at every evaluation, reported
as ``eval_accuracy``, generating at most ``vision.eval_max_new_tokens`` tokens
when the recipe has a ``vision:`` section. docs/evaluation.md.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from typing import Literal

from pydantic import Field, field_validator

from ftcore.api import IGNORE_INDEX, FtcoreError, RecipeKeys, hookimpl

FTCORE_CONTRACT = "1"

METRICS = ("exact_match", "contains", "chrf", "bleu", "rouge_l")
# The metrics that need the optional extra, and the module each imports.
LIBRARIES = {"chrf": "sacrebleu", "bleu": "sacrebleu", "rouge_l": "rouge_score"}
INSTALL = "pip install 'ftcore[eval]'"
# End-of-turn and end-of-text tokens of the chat templates ftcore knows (used when in the vocabulary).
END_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>")
# The evaluation's phase (``EvalContext.phase``) -> the ``generation.at`` name that selects it.
AT = {"initial": "start", "training": "steps", "final": "end"}
# Batch entries with one value per token position ([batch, length, ...]): moved together to left padding.
PER_TOKEN = ("input_ids", "attention_mask", "cross_attention_mask", "token_type_ids")


class GenerationSection(RecipeKeys):
    """The ``generation:`` recipe section."""

    metrics: list[Literal["exact_match", "contains", "chrf", "bleu", "rouge_l"]] = Field(
        default_factory=lambda: ["exact_match"],
        description="scores to report: exact_match, contains, chrf, bleu (0-100), rouge_l")
    max_new_tokens: int = Field(64, ge=1, description="tokens generated per reply at most")
    batch_size: int = Field(16, ge=1, description="prompts generated together")
    max_samples: int | None = Field(None, ge=1, description="evaluate only the first examples (default: all)")
    do_sample: bool = Field(False, description="sample instead of greedy decoding")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (with do_sample)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling (with do_sample)")
    record_samples: int | None = Field(
        8, ge=0, description="generated samples kept per evaluation (samples.jsonl); null: all")
    at: list[Literal["start", "steps", "end"]] = Field(
        default_factory=lambda: ["start", "end"],
        description="which evaluations run it: before training (eval_on_start), during, after")
    seed: int | None = Field(None, description="seed for sampling (default: the recipe's seed)")

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, value):
        if not value:
            raise ValueError(f"name at least one metric; allowed: {', '.join(METRICS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a metric twice: {value}")
        return value


def settings_of(recipe) -> GenerationSection:
    section = recipe.section("generation") if hasattr(recipe, "section") else None
    return section or GenerationSection()


# ── prompts and references ───────────────────────────────────────────────────


def normalize(text: str) -> str:
    """Lower case, runs of whitespace as one space, no leading or trailing space."""
    return " ".join(text.lower().split())


def last_reply(example) -> tuple[int, int] | None:
    """``(start, end)`` of the last run of trained labels (the final reply and its end-of-turn token)."""
    labels = example["labels"]
    end = next((i + 1 for i in range(len(labels) - 1, -1, -1) if labels[i] != IGNORE_INDEX), None)
    if end is None:
        return None
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def stop_ids(tokenizer, examples=()) -> list[int]:
    """Token ids that end a reply: eos, the known end-of-turn tokens in the vocabulary, and the special
    token each reference reply ends with (what the chat template closes a turn with)."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[token] for token in END_TOKENS if token in vocab}
    eos = tokenizer.eos_token_id
    ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    special = set(tokenizer.all_special_ids)
    for example in examples:
        span = last_reply(example)
        if span and example["input_ids"][span[1] - 1] in special:
            ids.add(example["input_ids"][span[1] - 1])
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


def _share(items):
    """This process's share of ``items`` under torch.distributed (all of them otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return items[dist.get_rank()::dist.get_world_size()]
    return items


def _gathered(items: list) -> list:
    """Every process's ``items``, concatenated (``items`` itself in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return items
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


# ── generation ───────────────────────────────────────────────────────────────


def _left_padded(batch: dict, lengths: list[int]) -> dict:
    """A right-padded batch (as the run's collators make) with each row's tokens moved to the right end,
    so new tokens follow every prompt directly; labels and position ids are dropped (generate makes its own)."""
    import torch

    rows, width = batch["input_ids"].shape
    out = {}
    for key, value in batch.items():
        if key in ("labels", "position_ids", "use_cache"):
            continue
        if key in PER_TOKEN and hasattr(value, "shape") and tuple(value.shape[:2]) == (rows, width):
            value = torch.stack([torch.roll(value[row], width - n, dims=0) for row, n in enumerate(lengths)])
        out[key] = value
    return out


def generate_replies(ctx, prompts: list[dict], settings, seed: int, stops: list[int]) -> list[str]:
    """The generated reply to each prompt example (``input_ids``, maybe ``images``), decoded without
    special tokens and cut at its first token of ``stops`` (``stop_ids``). Rows with and without images are never mixed in one
    batch; each batch is seeded with ``seed`` plus its first prompt's place."""
    import torch

    tokenizer = ctx.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    options = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=stops or None, pad_token_id=pad,
                   use_cache=True, do_sample=settings.do_sample)
    if settings.do_sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    replies = []
    place = 0
    for _images, group in itertools.groupby(prompts, key=lambda p: bool(p.get("images"))):
        group = list(group)
        for first in range(0, len(group), settings.batch_size):
            chunk = group[first:first + settings.batch_size]
            examples = [{**p, "labels": [IGNORE_INDEX] * len(p["input_ids"])} for p in chunk]
            lengths = [len(p["input_ids"]) for p in chunk]
            batch = ctx.on_device(_left_padded(ctx.collator(examples), lengths))
            with torch.random.fork_rng(devices=[]):  # the training's random state is left as it was
                torch.manual_seed(seed + place)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed + place)
                output = ctx.model.generate(**batch, **options)
            width = batch["input_ids"].shape[1]
            for row in output[:, width:].tolist():
                cut = next((i for i, token in enumerate(row) if token in stops), len(row))
                replies.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
            place += len(chunk)
    return replies


# ── scores ───────────────────────────────────────────────────────────────────


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def missing_libraries(metrics) -> list[str]:
    """``"<metric> needs <module>"`` for each metric whose library is not installed."""
    return [f"{m} needs {LIBRARIES[m]}" for m in metrics if m in LIBRARIES and not _installed(LIBRARIES[m])]


def _require(metrics) -> None:
    missing = missing_libraries(metrics)
    if missing:
        raise FtcoreError(f"generation.metrics: {'; '.join(missing)}, which is not installed: {INSTALL}")


def sample_scores(prediction: str, reference: str, metrics, rouge=None) -> dict:
    """The per-sample scores among ``metrics``: exact_match, contains (1.0 or 0.0), rouge_l."""
    scores = {}
    if "exact_match" in metrics:
        scores["exact_match"] = float(normalize(prediction) == normalize(reference))
    if "contains" in metrics:
        scores["contains"] = float(normalize(reference) in normalize(prediction))
    if "rouge_l" in metrics:
        scores["rouge_l"] = rouge.score(reference, prediction)["rougeL"].fmeasure
    return scores


def corpus_scores(predictions: list[str], references: list[str], metrics) -> dict:
    """sacrebleu's corpus-level chrF and BLEU (0-100) among ``metrics``."""
    if not predictions or not ({"chrf", "bleu"} & set(metrics)):
        return {}
    import sacrebleu

    scores = {}
    if "chrf" in metrics:
        scores["chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score
    if "bleu" in metrics:
        scores["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    return scores


def _images_of(example) -> list[str]:
    return [ref.get("path") or ref.get("url") or "(image)" for ref in example.get("images") or []]


def evaluate(ctx, settings, metrics) -> dict:
    """Generate the last reply of each example of ``ctx.dataset`` (the first ``max_samples``), score it
    with ``metrics``, record the first ``record_samples``: ``{metric: value, "generated": count}``."""
    _require(metrics)
    rouge = None
    if "rouge_l" in metrics:
        from rouge_score import rouge_scorer

        rouge = rouge_scorer.RougeScorer(["rougeL"])
    tokenizer = ctx.tokenizer
    items = []
    for index, example in enumerate(ctx.dataset[:settings.max_samples]):
        span = last_reply(example)
        if span is None or span[0] == 0:  # nothing trained, or nothing before the reply to prompt with
            continue
        start, end = span
        prompt = {"input_ids": list(example["input_ids"][:start])}
        if example.get("images"):
            prompt["images"] = example["images"]
        items.append((index, prompt, tokenizer.decode(example["input_ids"][start:end], skip_special_tokens=True)))
    mine = _share(items)
    seed = settings.seed if settings.seed is not None else (getattr(ctx.recipe, "seed", None) or 0)
    stops = stop_ids(tokenizer, ctx.dataset[:settings.max_samples])
    predictions = generate_replies(ctx, [prompt for _, prompt, _ in mine], settings, seed, stops) if mine else []
    sums = dict.fromkeys([m for m in metrics if m in ("exact_match", "contains", "rouge_l")], 0.0)
    kept = 0
    for (_index, prompt, reference), prediction in zip(mine, predictions):
        scores = sample_scores(prediction, reference, metrics, rouge)
        for key, value in scores.items():
            sums[key] += value
        if settings.record_samples is None or kept < settings.record_samples:
            extra = {"images": _images_of(prompt)} if prompt.get("images") else {}
            ctx.record(prompt=tokenizer.decode(prompt["input_ids"], skip_special_tokens=False),
                       reference=reference, prediction=prediction, **scores, **extra)
            kept += 1
    *totals, count = ctx.reduce_sum(*sums.values(), len(mine))
    count = int(count)
    out = {key: total / max(count, 1) for key, total in zip(sums, totals)}
    if {"chrf", "bleu"} & set(metrics):
        pairs = sorted(_gathered([(i, p, r) for (i, _, r), p in zip(mine, predictions)]))
        out.update(dict.fromkeys([m for m in metrics if m in ("chrf", "bleu")], 0.0))
        out.update(corpus_scores([p for _, p, _ in pairs], [r for _, _, r in pairs], metrics))
    out = {m: out[m] for m in metrics}  # in the order the recipe lists them
    out["generated"] = count
    return out


def evaluate_generation(ctx) -> dict:
    """The ``generation`` evaluator: ``{"exact_match": ..., ..., "generated": n}``, or nothing at an
    evaluation ``generation.at`` leaves out."""
    settings = settings_of(ctx.recipe)
    if AT.get(ctx.phase, "end") not in settings.at:
        return {}
    return evaluate(ctx, settings, settings.metrics)


def evaluate_exact_match(ctx) -> dict:
    """``exact_match``, the older name: generation scored by exact match at every evaluation,
    ``{"accuracy": share}``; at most ``vision.eval_max_new_tokens`` new tokens where that section exists."""
    settings = settings_of(ctx.recipe)
    vision = ctx.recipe.section("vision") if hasattr(ctx.recipe, "section") else None
    if getattr(vision, "eval_max_new_tokens", None):
        settings = settings.model_copy(update={"max_new_tokens": vision.eval_max_new_tokens})
    return {"accuracy": evaluate(ctx, settings, ["exact_match"])["exact_match"]}


# ── hooks ────────────────────────────────────────────────────────────────────


@hookimpl(trylast=True)
def recipe_sections(register):
    register("generation", GenerationSection)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    chosen = [name for name in ("generation", "exact_match") if name in recipe.evaluators]
    if not chosen:
        return
    if not recipe.val_set_size and not recipe.test_datasets:
        error("evaluators", f"{chosen[0]} generates replies to the evaluation examples, and this recipe has no "
                            f"evaluation split: set val_set_size (e.g. 0.05) or test_datasets")
    if "generation" in chosen:
        missing = missing_libraries(settings_of(recipe).metrics)
        if missing:
            error("generation.metrics", f"{'; '.join(missing)}, which is not installed: {INSTALL}")


@hookimpl(trylast=True)
def register_evaluators(register):
    register("generation", evaluate_generation)
    register("exact_match", evaluate_exact_match)
