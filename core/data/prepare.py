"""Every dataset of a recipe -> tokenized train and eval examples, with stats.

Bad rows follow ``on_invalid_example`` (``error``: stop naming the file and
row; ``skip``: count by reason). Over-long examples follow
``excess_length_strategy`` (``drop`` or ``truncate``). An empty result is an
error, never a silent no-op.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field

from ftcore.data import IGNORE_INDEX, FormatContext, RowError
from ftcore.data.read import RowProblem, read_rows
from ftcore.data.tokenize import tokenize_segments
from ftcore.errors import DataError


@dataclass
class PreparedData:
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)


class _Counts:
    def __init__(self):
        self.read = 0
        self.kept = 0
        self.dropped = Counter()
        self.tokens = 0
        self.trained = 0

    def as_dict(self):
        return {"rows_read": self.read, "rows_kept": self.kept, "rows_dropped": dict(self.dropped),
                "tokens": self.tokens, "trained_tokens": self.trained}


def _progress(rows, description):
    from tqdm.auto import tqdm

    return tqdm(rows, desc=description, unit=" rows", disable=len(rows) < 2000 or not sys.stderr.isatty(),
                leave=False)


def format_row(row, spec, function, ctx) -> dict:
    """One row -> ``{"input_ids", "labels"}`` through its format."""
    result = function(row, spec, ctx)
    if isinstance(result, dict):
        if "input_ids" not in result or "labels" not in result:
            raise TypeError("a format returning a dict must give input_ids and labels")
        if len(result["input_ids"]) != len(result["labels"]):
            raise TypeError("input_ids and labels differ in length")
        return {"input_ids": list(result["input_ids"]), "labels": list(result["labels"])}
    return tokenize_segments(result, ctx.tokenizer)


def _examples(specs, recipe, ctx, formats, counts, sources, limit=None):
    out = []
    for spec in specs:
        function, _options = formats[spec.type][0]
        read = read_rows(spec, limit=limit)
        sources.extend(read.sources)
        for (file, number), row in _progress(read.rows, f"formatting {spec.path}"):
            counts.read += 1
            try:
                if isinstance(row, RowProblem):
                    raise RowError(row.message, row.reason)
                example = format_row(row, spec, function, ctx)
            except RowError as exc:
                if recipe.on_invalid_example == "error":
                    raise DataError(
                        f"{file}: row {number}: {exc} "
                        f"(set on_invalid_example: skip to drop such rows and count them)"
                    ) from exc
                counts.dropped[exc.reason] += 1
                continue
            if len(example["input_ids"]) > recipe.sequence_len:
                if recipe.excess_length_strategy == "drop":
                    counts.dropped[f"longer than sequence_len ({recipe.sequence_len})"] += 1
                    continue
                example = {k: v[: recipe.sequence_len] for k, v in example.items()}
            trained = sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)
            if trained == 0:
                counts.dropped["no trained tokens"] += 1
                continue
            counts.kept += 1
            counts.tokens += len(example["input_ids"])
            counts.trained += trained
            out.append(example)
    return out


def split_validation(examples, size, seed):
    """Deterministic hold-out: a fraction (< 1) or a count of examples, chosen by seed."""
    if not size:
        return examples, []
    n = int(size) if size >= 1 else max(1, round(len(examples) * size))
    if n >= len(examples):
        raise DataError(f"val_set_size {size} leaves no training examples ({len(examples)} in all)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def prepare_datasets(recipe, tokenizer, formats, chat_template=None, limit=None) -> PreparedData:
    """Read, format, tokenize and split the recipe's datasets."""
    ctx = FormatContext(tokenizer=tokenizer, recipe=recipe, chat_template=chat_template)
    data = PreparedData()
    train_counts, eval_counts = _Counts(), _Counts()
    train = _examples(recipe.datasets or [], recipe, ctx, formats, train_counts, data.sources, limit)
    if not train:
        hint = ""
        if any(reason.startswith("longer than") for reason in train_counts.dropped):
            hint = "; raise sequence_len, or set excess_length_strategy: truncate"
        raise DataError(
            "no training examples left after formatting: "
            f"{train_counts.read} rows read, dropped: {dict(train_counts.dropped) or 'none'}{hint}"
        )
    if recipe.test_datasets:
        data.eval = _examples(recipe.test_datasets, recipe, ctx, formats, eval_counts, data.sources, limit)
        if not data.eval:
            raise DataError(f"test_datasets gave no examples: dropped {dict(eval_counts.dropped)}")
        data.train = train
    else:
        data.train, data.eval = split_validation(train, recipe.val_set_size, recipe.seed)
    data.stats = {"train": train_counts.as_dict(), "train_examples": len(data.train),
                  "eval_examples": len(data.eval)}
    if recipe.test_datasets:
        data.stats["test"] = eval_counts.as_dict()
    return data


def set_chat_template(recipe, tokenizer, templates: dict) -> str | None:
    """Put the recipe's ``chat_template`` on the tokenizer; return the Jinja text in use.

    ``templates`` is ``{name: (jinja string or callable(tokenizer, recipe), plugin)}``.
    Without ``chat_template`` the tokenizer's own template (if any) is used.
    """
    from ftcore.errors import FtcoreError

    if recipe.chat_template is None:
        return getattr(tokenizer, "chat_template", None)
    template, _plugin = templates[recipe.chat_template]
    text = template(tokenizer, recipe) if callable(template) else template
    if not text:
        return None  # tokenizer_default without a template: formats that need one say so
    missing = [t for t in _special_tokens_in(text) if t not in tokenizer.get_vocab()]
    if missing:
        raise FtcoreError(f"chat_template: {recipe.chat_template} uses tokens the tokenizer lacks: "
                          f"{', '.join(missing)}; add them with tokens: [...] (or special_tokens:), "
                          f"or choose a template made for this model")
    tokenizer.chat_template = text
    return text


def _special_tokens_in(template: str) -> list[str]:
    import re

    return sorted(set(re.findall(r"<\|[A-Za-z0-9_]+\|>", template)))
