"""Every dataset of a recipe -> tokenized train and eval examples, with stats.

Bad rows follow ``on_invalid_example`` (``error``: stop naming the file and
row; ``skip``: count by reason). Over-long examples follow
``excess_length_strategy`` (``drop`` or ``truncate``). An empty result is an
error, never a silent no-op.

An example is ``input_ids``, ``labels`` and the JSON-serialisable extras its
format gave, kept as they are (their JSON form). An exception a format, its
``combine`` or a content-part handler raises (other than ``RowError`` and
``FtcoreError``) is the plugin's: a ``PluginError`` (exit 3) naming the plugin,
the data file and the row.

Two steps: ``tokenize_datasets`` reads, formats, tokenizes and length-checks
every row, in dataset order (the expensive part, what ``cache.py`` stores, and
what ``dataset_processes`` spreads over worker processes); ``split`` then holds
out the validation examples (cheap, so it is redone on every load).
``prepare_datasets`` is the two together.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import sys
import weakref
from collections import Counter
from dataclasses import dataclass, field

from ftcore.data import IGNORE_INDEX, FormatContext, RowError, extras_of
from ftcore.data.formats import USER_FUNCTION, resolve_format
from ftcore.data.read import RowProblem, read_rows
from ftcore.data.tokenize import BadExample, tokenize_segments
from ftcore.errors import DataError, FtcoreError, PluginError
from ftcore.stash import Stash


@dataclass
class PreparedData:
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    # Every kept example in dataset order (``datasets``, then ``test_datasets``), before the split;
    # ``origins[i]`` is the (file, row number) of ``examples[i]``, ``eval_index`` the positions
    # in ``examples`` that went to evaluation. ``train`` and ``eval`` hold the same dicts.
    examples: list = field(default_factory=list)
    origins: list = field(default_factory=list)
    eval_index: list = field(default_factory=list)


@dataclass
class Tokenized:
    """What ``tokenize_datasets`` gives: the examples in dataset order, not yet split (what the cache stores)."""

    train: list  # examples of ``datasets``
    test: list  # examples of ``test_datasets``
    origins: list  # (file, row number) of each example, train then test
    sources: list
    counts: dict  # {"train": counts, "test": counts (only with test_datasets)}


class _Counts:
    def __init__(self):
        self.read = 0
        self.kept = 0
        self.dropped = Counter()
        self.tokens = 0
        self.trained = 0
        self.files = {}  # file -> Counter of "read", "kept" and each reason a row was dropped for
        self.longest = None  # (tokens, file, row, exact) of the longest row dropped as too long

    def count(self, file, what):
        self.files.setdefault(file, Counter())[what] += 1

    def too_long(self, tokens, origin, exact=True):
        if self.longest is None or tokens > self.longest[0]:
            self.longest = (tokens, *origin, exact)

    def nothing_left(self, recipe, what="no training examples left after formatting") -> DataError:
        """The error for a dataset list that gave no example: each file with what became of its rows."""
        lines = []
        for file, counts in self.files.items():
            reasons = ", ".join(f"{n} {reason}" for reason, n in counts.items() if reason not in ("read", "kept"))
            lines.append(f"{file}: {counts['read']} row{'s' if counts['read'] != 1 else ''} read"
                         + (f", dropped: {reasons}" if reasons else ""))
        text = f"{what}: {lines[0]}" if len(lines) == 1 else "\n  ".join([f"{what}; every row was dropped:", *lines])
        if self.longest is not None:
            tokens, file, row, exact = self.longest
            wanted = f" (to {1 << (tokens - 1).bit_length():,} to keep it)" if exact else ""
            where = f"row {row}" if len(lines) == 1 else f"{file} row {row}"
            text += (f"{';' if len(lines) == 1 else chr(10)} the longest, {where}, is {'' if exact else 'at least '}{tokens:,} tokens against "
                     f"sequence_len ({recipe.sequence_len}): raise sequence_len{wanted}, or set "
                     f"excess_length_strategy: truncate")
        return DataError(text)

    def as_dict(self):
        return {"rows_read": self.read, "rows_kept": self.kept, "rows_dropped": dict(self.dropped),
                "tokens": self.tokens, "trained_tokens": self.trained}


def _progress(rows, total, description):
    from ftcore.console import track  # the live line on a terminal; nothing otherwise

    return track(rows, total, description)


def format_row(row, spec, function, ctx) -> dict:
    """One row -> ``{"input_ids", "labels", **extras}`` through its format; ``BadExample`` if it gave no example."""
    result = function(row, spec, ctx)
    if not isinstance(result, dict):
        if not isinstance(result, (list, tuple)):
            raise BadExample(f"a format returns a list of (text, trained) segments or a dict with input_ids and "
                             f"labels, got {type(result).__name__}")
        _check_length(result, ctx)
        return tokenize_segments(result, ctx.tokenizer)
    if "input_ids" not in result or "labels" not in result:
        raise BadExample("a format returning a dict must give input_ids and labels")
    if len(result["input_ids"]) != len(result["labels"]):
        raise BadExample("input_ids and labels differ in length")
    example = {"input_ids": list(result["input_ids"]), "labels": list(result["labels"])}
    for key, value in result.items():
        if key not in example:
            example[key] = _extra(key, value)
    return example


def too_long_reason(recipe) -> str:
    return f"longer than sequence_len ({recipe.sequence_len})"


class TooLong(RowError):
    """A row whose text is certainly longer than ``sequence_len`` tokens, found before it is tokenized."""

    def __init__(self, tokens: int, reason: str):
        super().__init__(f"at least {tokens:,} tokens", reason)
        self.tokens = tokens


def _check_length(segments, ctx) -> None:
    """``TooLong`` for a row under ``excess_length_strategy: drop`` whose text cannot fit: tokenizing megabytes
    only to drop them costs minutes and gigabytes.

    A token covers at most as many characters as the longest entry of the vocabulary (bytes, for a byte-level
    vocabulary: never fewer than characters), so ``len(text) / longest`` tokens is a lower bound; half of it
    leaves room for a normalizer that shortens the text. Only a row beyond that is dropped here, never one
    that would fit."""
    recipe = getattr(ctx, "recipe", None)
    if recipe is None or recipe.excess_length_strategy != "drop":
        return
    chars = sum(len(item[0]) for item in segments if isinstance(item, tuple) and item and isinstance(item[0], str))
    if chars <= 2 * recipe.sequence_len:
        return
    at_least = chars // (2 * _longest_token(ctx.tokenizer))
    if at_least > recipe.sequence_len:
        raise TooLong(at_least, too_long_reason(recipe))


_LONGEST_TOKEN = weakref.WeakKeyDictionary()


def _longest_token(tokenizer) -> int:
    """The length in characters of the longest token of the vocabulary (added tokens included)."""
    try:
        return _LONGEST_TOKEN[tokenizer]
    except (KeyError, TypeError):
        pass
    longest = max((len(token) for token in tokenizer.get_vocab()), default=1) or 1
    try:
        _LONGEST_TOKEN[tokenizer] = longest
    except TypeError:  # not weakly referenceable: computed each time
        pass
    return longest


def _extra(key, value):
    """An example's extra as the cache and ``--dump`` keep it: its JSON form (a tuple becomes a list)."""
    if not isinstance(key, str):
        raise BadExample(f"the example's extras must have string names, got {key!r}")
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadExample(f"the example's extra '{key}' is not JSON-serialisable ({exc})") from None


def format_one(row, spec, function, ctx, origin=(None, None)):
    """One read row -> an example, or the ``RowError`` that makes it a bad row.

    While the row is formatted, ``ctx.extras["file"]`` and ``ctx.extras["row"]`` are its origin (a
    format, or a content-part handler, resolves paths in the row against the file). A ``PluginError``
    (from a ``Blamed`` format or handler) gets the origin in front.
    """
    ctx.extras["file"], ctx.extras["row"] = origin
    try:
        if isinstance(row, RowProblem):
            raise RowError(row.message, row.reason)
        return format_row(row, spec, function, ctx)
    except RowError as exc:
        return exc
    except PluginError as exc:
        raise PluginError(f"{_where(origin)}{exc}") from exc
    except BadExample as exc:
        if isinstance(function, Blamed):
            raise PluginError(f"{_where(origin)}{function.bad_example(exc)}") from exc
        raise


def _where(origin) -> str:
    file, number = origin
    return f"{file}: row {number}: " if file is not None else ""


class Blamed:
    """A format, its ``combine`` or a content-part handler, called so that an exception it raises names it.

    ``RowError`` and ``FtcoreError`` pass unchanged (the plugin speaking to the user); any other exception
    becomes a ``PluginError`` (exit 3) saying ``who`` raised in ``what``, with ``hint`` (how to disable the
    plugin). A plain object, so it pickles to ``dataset_processes`` workers with the function it wraps.
    """

    def __init__(self, function, who: str, what: str, hint: str = ""):
        self.function, self.who, self.what, self.hint = function, who, what, hint

    def __call__(self, *args, **kwargs):
        try:
            return self.function(*args, **kwargs)
        except (RowError, FtcoreError):
            raise
        except Exception as exc:
            raise PluginError(f"{self.who} raised{' in ' + self.what if self.what else ''}: "
                              f"{type(exc).__name__}: {exc}{self._hint()}") from exc

    def bad_example(self, exc) -> str:
        return f"{self.who}{': ' + self.what if self.what else ''} gave no usable example: {exc}{self._hint()}"

    def _hint(self) -> str:
        return (f"; {self.hint}" if self.hint else "") + " (run with --debug for the traceback)"


def _blamed(function, plugin, what, plugins, type_name=None):
    """``function`` registered by ``plugin`` as a ``Blamed``, named as ``plugins`` (the manager) knows it.

    A user function (``type: module.function``) is named by ``type_name``.
    """
    if plugin == USER_FUNCTION:
        return Blamed(function, f"the user function '{type_name}'", what)
    label, hint = plugins._label(plugin) if plugins is not None else (f"'{plugin}'", "")
    return Blamed(function, f"plugin {label}", what, hint)


def _blamed_parts(parts, plugins) -> dict:
    """The content-part handlers (and their ``finish``) as ``Blamed``."""
    out = {}
    for kind, (handler, plugin) in parts.items():
        blamed = _blamed(handler, plugin, f"its '{kind}' content-part handler", plugins)
        finish = getattr(handler, "finish", None)
        if finish is not None:
            blamed.finish = _blamed(finish, plugin, f"its '{kind}' content-part handler (finish)", plugins)
        out[kind] = (blamed, plugin)
    return out


def _examples(specs, recipe, ctx, formats, counts, sources, origins, limit=None, plugins=None, key="datasets"):
    out = []
    for index, spec in enumerate(specs):
        (raw, _options), plugin = resolve_format(spec.type, formats)
        user = plugin == USER_FUNCTION  # type: module.function
        function = _blamed(raw, plugin, "" if user else f"its dataset format '{spec.type}'", plugins, spec.type)
        combine = getattr(raw, "combine", None)  # type: pretrain: documents -> sequence_len chunks
        if combine is not None:
            step = f"its combine step (for {spec.path})"
            combine = _blamed(combine, plugin, step if user else f"{step} of dataset format '{spec.type}'", plugins,
                              spec.type)
        read = read_rows(spec, limit=limit, key=f"{key}[{index}].path")
        sources.extend(read.sources)
        results = _formatted(read.rows, spec, function, ctx, recipe.dataset_processes or 1)
        try:
            shown = _progress(results, len(read.rows), f"formatting {spec.path}")
            if combine is None:
                _keep(read.rows, shown, recipe, counts, out, origins, spec)
            else:
                _keep_combined(read.rows, shown, combine, spec, ctx, recipe, counts, out, origins)
        finally:
            results.close()  # stops the worker processes at once when a bad row ends the run
    return out


def _keep(rows, results, recipe, counts, out, origins, spec=None):
    """Apply ``on_invalid_example``, the length rule and the no-trained-token rule; count everything."""
    for ((file, number), row), example in zip(rows, results):
        counts.read += 1
        counts.count(file, "read")
        if isinstance(example, RowError):
            _bad_row(file, number, example, recipe, counts, row, spec)
            continue
        kept = _add(example, (file, number), recipe, counts, out, origins)
        counts.kept += kept


def _keep_combined(rows, results, combine, spec, ctx, recipe, counts, out, origins):
    """``_keep`` for a format with ``combine`` (see hookspecs): bad rows as in ``_keep``, then the
    entry's good examples are combined, and the length and no-trained-token rules apply to what
    comes out. ``rows_kept`` counts the rows that went in."""
    good = []
    for ((file, number), row), example in zip(rows, results):
        counts.read += 1
        counts.count(file, "read")
        if isinstance(example, RowError):
            _bad_row(file, number, example, recipe, counts, row, spec)
            continue
        counts.kept += 1
        good.append(((file, number), example))
    for origin, example in combine(good, spec, ctx):
        _add(example, origin, recipe, counts, out, origins)


def _bad_row(file, number, error, recipe, counts, row=None, spec=None):
    """``on_invalid_example``: stop, naming the file and row, or count the row by its reason.

    A row too long to train on (``TooLong``, found before tokenizing) is dropped by the length rule whatever
    ``on_invalid_example`` says; a column the format reads that a columnar file lacks is the file's
    mistake, said once for the file."""
    if isinstance(error, TooLong):
        counts.too_long(error.tokens, (file, number), exact=False)
        counts.dropped[error.reason] += 1
        counts.count(file, error.reason)
        return
    if error.reason == "missing field" and isinstance(row, dict) and str(file).endswith((".parquet", ".arrow")):
        _check_columns(file, row, spec, str(error))
    if recipe.on_invalid_example == "error":
        raise DataError(
            f"{file}: row {number}: {error} "
            f"(set on_invalid_example: skip to drop such rows and count them)"
        ) from error
    counts.dropped[error.reason] += 1
    counts.count(file, error.reason)


def _check_columns(file, row, spec, message) -> None:
    """DataError when a parquet or arrow file lacks the column a row missed and the format's ``field_*`` options
    name: every row misses it, so it is said once, for the file."""
    import re

    options = getattr(spec, "options", None)
    fields = {name: value for name, value in (dict(options) if options is not None else {}).items()
              if name.startswith("field_") and isinstance(value, str)}
    missed = re.match(r"missing field '([^']+)'", message)
    absent = [missed.group(1)] if missed and missed.group(1) not in row else []
    if not fields or not absent or absent[0] not in fields.values():
        return
    reads = ", ".join(f"{name}: {value}" for name, value in fields.items())
    raise DataError(f"{file}: the file has no column {', '.join(repr(a) for a in absent)}; its columns are "
                    f"{', '.join(sorted(row)) or 'none'}, and type '{spec.type}' reads the columns its field_* keys "
                    f"name ({reads}); rename the columns, or map them in the dataset entry (e.g. "
                    f"{next(iter(fields))}: {sorted(row)[0] if row else 'NAME'})")


def _add(example, origin, recipe, counts, out, origins) -> bool:
    """The length rule and the no-trained-token rule; keep and count the example if it passes."""
    if len(example["input_ids"]) > recipe.sequence_len:
        if recipe.excess_length_strategy == "drop":
            counts.dropped[too_long_reason(recipe)] += 1  # (the same reason as a TooLong row's)
            counts.count(origin[0], too_long_reason(recipe))
            counts.too_long(len(example["input_ids"]), origin)
            return False
        example = {k: v[: recipe.sequence_len] if k in ("input_ids", "labels") else v for k, v in example.items()}
    trained = sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)
    if trained == 0:
        counts.dropped["no trained tokens"] += 1
        counts.count(origin[0], "no trained tokens")
        return False
    counts.tokens += len(example["input_ids"])
    counts.trained += trained
    counts.count(origin[0], "kept")
    out.append(example)
    origins.append(origin)
    return True


# ── dataset_processes: formatting and tokenizing in worker processes ─────────
#
# Rows are cut into chunks in order and ``imap`` hands the results back in that
# order, so the examples, the counts and the first bad row named are exactly
# those of one process. Everything that decides what is kept (bad rows, length,
# counts) stays in the main process. Workers get the rows and the format through
# the pool's initializer: inherited without copying under ``fork`` (Linux),
# pickled once per worker under ``spawn`` (elsewhere).

PARALLEL_MIN_ROWS = 2000  # below this, starting workers costs more than it saves
CHUNK_ROWS = 256
_WORK: dict = {}


def _formatted(rows, spec, function, ctx, processes):
    """Each row formatted and tokenized (an example or a ``RowError``), in row order."""
    if processes <= 1 or len(rows) < max(PARALLEL_MIN_ROWS, 2):
        return (format_one(row, spec, function, ctx, origin) for origin, row in rows)  # a generator too: same .close()
    return _parallel(rows, spec, function, ctx, processes)


def _parallel(rows, spec, function, ctx, processes):
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    chunks = [(i, min(i + CHUNK_ROWS, len(rows))) for i in range(0, len(rows), CHUNK_ROWS)]
    with multiprocessing.get_context(method).Pool(min(processes, len(chunks)), initializer=_start_worker,
                                                  initargs=(rows, spec, function, ctx)) as pool:
        for chunk in pool.imap(_work_on, chunks):
            for first, second, extras in chunk:
                if first is None:
                    raise PluginError(second)
                if isinstance(first, str):
                    yield RowError(first, second) if extras is None else TooLong(extras, second)
                else:
                    yield {"input_ids": first.tolist(), "labels": second.tolist(), **(extras or {})}


def _start_worker(rows, spec, function, ctx):
    _WORK.update(rows=rows, spec=spec, function=function, ctx=ctx)


def _work_on(chunk):
    from array import array

    start, end = chunk
    out = []
    for origin, row in _WORK["rows"][start:end]:
        try:
            example = format_one(row, _WORK["spec"], _WORK["function"], _WORK["ctx"], origin)
        except PluginError as exc:  # raised in the main process when its row is reached: after earlier bad rows
            out.append((None, str(exc), None))
            break
        if isinstance(example, RowError):
            # a RowError does not survive pickling with its reason; a TooLong sends its token count
            out.append((str(example), example.reason, getattr(example, "tokens", None)))
        else:  # typed arrays pickle as bytes: far cheaper to send back than lists of ints
            out.append((array("q", example["input_ids"]), array("q", example["labels"]), extras_of(example)))
    return out


def validation_index(n, size, seed) -> list[int]:
    """Which of ``n`` examples to hold out: a fraction (< 1) or a count, chosen by seed; sorted."""
    if not size:
        return []
    count = int(size) if size >= 1 else max(1, round(n * size))
    if count >= n:
        raise DataError(f"val_set_size {size} leaves no training examples ({n} in all)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:count])


def tokenize_datasets(recipe, tokenizer, formats, chat_template=None, limit=None, parts=None,
                      stash=None, plugins=None) -> Tokenized:
    """Read, format, tokenize and length-check every dataset, in dataset order.

    ``formats`` and ``parts`` are ``{name: (registered, plugin)}`` as ``ftcore.hooks`` collects them;
    ``plugins`` (the plugin manager) names a plugin whose callable raises by its package and version.
    ``limit`` reads only the first rows of each dataset entry (``ftcore preprocess --limit``).
    """
    ctx = FormatContext(tokenizer=tokenizer, recipe=recipe, chat_template=chat_template,
                        parts=_blamed_parts(parts or {}, plugins), stash=stash if stash is not None else Stash())
    sources, origins = [], []
    train_counts, test_counts = _Counts(), _Counts()
    train = _examples(recipe.datasets or [], recipe, ctx, formats, train_counts, sources, origins, limit, plugins)
    if not train:
        raise train_counts.nothing_left(recipe)
    counts = {"train": train_counts.as_dict()}
    test = []
    if recipe.test_datasets:
        test = _examples(recipe.test_datasets, recipe, ctx, formats, test_counts, sources, origins, limit, plugins,
                         key="test_datasets")
        if not test:
            raise test_counts.nothing_left(recipe, "test_datasets gave no examples")
        counts["test"] = test_counts.as_dict()
    return Tokenized(train, test, origins, sources, counts)


def deduplicate(tokenized: Tokenized) -> tuple[Tokenized, dict]:
    """``dataset_exact_deduplication``: the first of each set of identical examples (tokens, labels and
    extras) is kept, in order; an evaluation example identical to a training one is dropped too."""
    seen: set[str] = set()
    dropped = {"train": 0, "test": 0}
    kept = {"train": [], "test": []}
    origins = []
    for part, start in (("train", 0), ("test", len(tokenized.train))):
        for i, example in enumerate(getattr(tokenized, part)):
            key = json.dumps(example, sort_keys=True, default=str)
            if key in seen:
                dropped[part] += 1
                continue
            seen.add(key)
            kept[part].append(example)
            origins.append(tokenized.origins[start + i])
    return Tokenized(kept["train"], kept["test"], origins, tokenized.sources, tokenized.counts), dropped


def split(tokenized: Tokenized, recipe) -> PreparedData:
    """Hold out the evaluation examples: ``test_datasets``, or ``val_set_size`` of ``datasets`` by ``seed``."""
    duplicates = None
    if recipe.get("dataset_exact_deduplication"):  # a plugin's key (compat_keys); cheap, so redone on every load
        tokenized, duplicates = deduplicate(tokenized)
        if not tokenized.train:
            raise DataError("no training examples left after dataset_exact_deduplication")
        from ftcore.log import get_logger

        get_logger(__name__).info(f"dataset_exact_deduplication: dropped {duplicates['train']} duplicate training "
                                  f"example(s)" + (f" and {duplicates['test']} evaluation example(s) (duplicates, "
                                                   f"or equal to a training one)" if recipe.test_datasets else ""))
    examples = tokenized.train + tokenized.test
    if recipe.test_datasets:
        eval_index = list(range(len(tokenized.train), len(examples)))
    else:
        eval_index = validation_index(len(tokenized.train), recipe.val_set_size, recipe.seed)
    held = set(eval_index)
    data = PreparedData(train=[e for i, e in enumerate(examples) if i not in held],
                        eval=[examples[i] for i in eval_index], sources=list(tokenized.sources),
                        examples=examples, origins=list(tokenized.origins), eval_index=eval_index)
    data.stats = {"train": dict(tokenized.counts["train"]), "train_examples": len(data.train),
                  "eval_examples": len(data.eval)}
    if "test" in tokenized.counts:
        data.stats["test"] = dict(tokenized.counts["test"])
    if duplicates is not None:
        data.stats["duplicates_dropped"] = duplicates if recipe.test_datasets else {"train": duplicates["train"]}
    return data


def prepare_datasets(recipe, tokenizer, formats, chat_template=None, limit=None, parts=None,
                     stash=None, plugins=None) -> PreparedData:
    """Read, format, tokenize and split the recipe's datasets (no cache; see ``cache.load_or_prepare``)."""
    return split(tokenize_datasets(recipe, tokenizer, formats, chat_template, limit, parts, stash, plugins), recipe)


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
    from ftcore.data.chat import check_template_syntax

    check_template_syntax(text)
    tokenizer.chat_template = text
    return text


def _special_tokens_in(template: str) -> list[str]:
    import re

    return sorted(set(re.findall(r"<\|[A-Za-z0-9_]+\|>", template)))
