"""``ftcore preprocess RECIPE [key=value ...] [--dump FILE] [--limit N] [--show N]``: the data, without a model.

Validates the recipe like ``run``, loads only the tokenizer, prepares the data
(through the cache when ``dataset_prepared_path`` is set, writing it) and
prints a summary: rows read, kept and dropped by reason, tokens, trained
tokens, and the length distribution of the train and eval examples.

- ``--dump FILE``: one JSON object per example, in dataset order (``datasets``
  file by file, row by row, then ``test_datasets``; before the validation
  split): ``input_ids``, ``labels``, the decoded ``text``, where it came
  from (``split``, ``file``, ``row``), and the extras its format gave, each
  under its own name as the format gave it (a vision example's ``images``:
  their references), except that a string longer than ``LONG_TEXT``
  characters (a base64 image) is written as its length: ``"<12,345 characters>"``.
- ``--show N``: the first N examples with trained text in colour (``[[...]]``
  around it when stdout is not a terminal or ``NO_COLOR`` is set).
- ``--limit N``: read only the first N rows of each dataset entry (the cache
  is then neither read nor written).

Nothing is written when the recipe or the data has a problem (exit 2).
"""

import argparse
import os
import sys
from pathlib import Path

NAME = "preprocess"
HELP = "tokenize and mask the recipe's data (and cache it) without loading a model; --dump, --show to inspect it"
TAKES_RECIPE = True

TRAINED, UNTRAINED, RESET = "\033[1;32m", "\033[2m", "\033[0m"
PERCENTILES = (50, 90, 99)
LONG_TEXT = 256  # --dump writes a longer string of an example's extras as its length


def _count(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def configure(parser):
    parser.add_argument("--dump", metavar="FILE", help="write every example as a JSON line: input_ids, labels, "
                                                       "text, split, file, row, extras (dataset order, before the "
                                                       "split)")
    parser.add_argument("--limit", metavar="N", type=_count, help="read only the first N rows of each dataset")
    parser.add_argument("--show", metavar="N", type=_count, default=0,
                        help="print the first N examples, trained text in colour ([[...]] without colour)")


def handle(args) -> int:
    from ftcore.cli import load_recipe
    from ftcore.cli.validate import path_problems, print_notes
    from ftcore.errors import FtcoreError, RecipeError

    recipe, raw, skipped = load_recipe(args)
    problems = path_problems(recipe)
    if problems:
        raise RecipeError(problems, source=raw.source)
    dump = Path(args.dump).expanduser() if args.dump else None
    if dump is not None and not dump.parent.is_dir():
        raise FtcoreError(f"--dump: no such folder: {dump.parent}")
    if dump is not None and dump.is_dir():
        raise FtcoreError(f"--dump: {dump} is a folder; name a file")
    print_notes(recipe, skipped)

    # transformers loads from here on (for the tokenizer; a model is never loaded)
    from ftcore import hooks
    from ftcore.data.cache import load_or_prepare
    from ftcore.data.prepare import set_chat_template

    plugins = args.plugins
    from ftcore.stash import Stash

    stash = Stash()  # the same steps as a run's data preparation
    tokenizer = hooks.load_tokenizer(plugins, recipe, stash)
    template = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
    data = load_or_prepare(recipe, tokenizer, hooks.dataset_formats(plugins), template, limit=args.limit,
                           parts=hooks.content_parts(plugins), stash=stash, plugins=plugins)

    print(summary(data))
    if recipe.sample_packing or recipe.eval_sample_packing:
        from ftcore.data import pack

        packed = pack.pack_datasets(recipe, data)
        if "packing" in packed.stats:
            print(pack.describe(packed.stats["packing"]))
    if args.show:
        print(show(data, tokenizer, args.show, use_color(sys.stdout)))
    if dump is not None:
        write_dump(data, tokenizer, dump)
        print(f"dump: {len(data.examples):,} examples written to {dump}")
    return 0


# ── the summary table ────────────────────────────────────────────────────────


def trained_count(example) -> int:
    """Trained tokens as the data stats count them: the first token predicts nothing."""
    from ftcore.data import IGNORE_INDEX

    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


def percentile(sorted_values, p) -> int:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    rank = max(1, -(-p * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def length_stats(examples) -> dict:
    lengths = sorted(len(e["input_ids"]) for e in examples)
    if not lengths:
        return {}
    return {"min": lengths[0], **{f"p{p}": percentile(lengths, p) for p in PERCENTILES}, "max": lengths[-1],
            "mean": sum(lengths) / len(lengths)}


def summary(data) -> str:
    """The table ``ftcore preprocess`` prints."""
    rows = [("rows", "datasets", "test_datasets" if "test" in data.stats else "")]
    groups = [data.stats["train"]] + ([data.stats["test"]] if "test" in data.stats else [])
    rows.append(("  read", *(f"{g['rows_read']:,}" for g in groups)))
    rows.append(("  kept", *(f"{g['rows_kept']:,}" for g in groups)))
    rows.append(("  dropped", *(f"{sum(g['rows_dropped'].values()):,}" for g in groups)))
    reasons = sorted({reason for g in groups for reason in g["rows_dropped"]})
    for reason in reasons:
        rows.append((f"    {reason}", *(f"{g['rows_dropped'].get(reason, 0):,}" for g in groups)))
    rows.append(("",))
    splits = [data.train, data.eval]
    rows.append(("split", "train", "eval"))
    rows.append(("  examples", *(f"{len(s):,}" for s in splits)))
    rows.append(("  tokens", *(f"{sum(len(e['input_ids']) for e in s):,}" for s in splits)))
    rows.append(("  trained tokens", *(f"{sum(trained_count(e) for e in s):,}" for s in splits)))
    lengths = [length_stats(s) for s in splits]
    for name in ("min", *(f"p{p}" for p in PERCENTILES), "max", "mean"):
        cells = []
        for stats in lengths:
            value = stats.get(name)
            cells.append("-" if value is None else f"{value:,.1f}" if name == "mean" else f"{value:,}")
        rows.append((f"  length {name}", *cells))
    width = max(len(r[0]) for r in rows) + 2
    columns = max(len(c) for r in rows for c in r[1:]) + 2
    lines = [(r[0].ljust(width) + "".join(c.rjust(max(columns, 14)) for c in r[1:])).rstrip() for r in rows]
    return "\n".join(lines)


# ── --show and --dump ─────────────────────────────────────────────────────────


def use_color(stream) -> bool:
    """Colour on a terminal, unless ``NO_COLOR`` is set to anything but an empty string (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def runs(example):
    """``[(token ids, trained)]``: consecutive tokens with the same trained state."""
    from ftcore.data import IGNORE_INDEX

    out = []
    for token, label in zip(example["input_ids"], example["labels"]):
        trained = label != IGNORE_INDEX
        if out and out[-1][1] == trained:
            out[-1][0].append(token)
        else:
            out.append(([token], trained))
    return out


def marked(example, tokenizer, color: bool) -> str:
    """The example's text with its trained parts in colour, or between ``[[`` and ``]]``."""
    parts = []
    for ids, trained in runs(example):
        text = decode(tokenizer, ids)
        if color:
            parts.append(f"{TRAINED if trained else UNTRAINED}{text}{RESET}")
        else:
            parts.append(f"[[{text}]]" if trained else text)
    return "".join(parts)


def show(data, tokenizer, n: int, color: bool) -> str:
    held = set(data.eval_index)
    legend = f"{TRAINED}trained{RESET} / {UNTRAINED}not trained{RESET}" if color else "[[trained]], the rest not trained"
    out = [f"first {min(n, len(data.examples))} of {len(data.examples):,} examples ({legend}):"]
    for i, example in enumerate(data.examples[:n]):
        file, row = data.origins[i]
        out.append(f"── example {i + 1} · {'eval' if i in held else 'train'} · {file} row {row} · "
                   f"{len(example['input_ids'])} tokens, {trained_count(example)} trained ──")
        out.append(marked(example, tokenizer, color))
    return "\n".join(out)


def write_dump(data, tokenizer, path: Path) -> None:
    """One JSON line per example; written beside ``path`` and renamed, so a failure leaves no half file."""
    import json

    from ftcore.data import extras_of

    held = set(data.eval_index)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for i, example in enumerate(data.examples):
                file, row = data.origins[i]
                record = {"input_ids": example["input_ids"], "labels": example["labels"],
                          "text": decode(tokenizer, example["input_ids"]), "split": "eval" if i in held else "train",
                          "file": file, "row": row}
                record.update((key, _shortened(value)) for key, value in extras_of(example).items()
                              if key not in record)  # the fields above keep their meaning
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shortened(value):
    """An extra for the dump: as it is, but each string longer than ``LONG_TEXT`` as its length."""
    if isinstance(value, str) and len(value) > LONG_TEXT:
        return f"<{len(value):,} characters>"
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    return value
