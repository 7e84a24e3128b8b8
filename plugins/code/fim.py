"""``type: fim``: source code -> fill-in-the-middle examples with Qwen2.5-Coder's tokens.

Rows are source files (a folder or a glob of them, read whole by the core: ``SourceFileOptions``)
or rows of a data set whose ``field`` holds code. Each file is tokenized once and cut
into chunks that fit ``sequence_len``; each chunk becomes, with probability
``fim_rate``, a fill-in-the-middle example, otherwise a plain one:

- PSM (prefix-suffix-middle)::

      <|fim_prefix|>PREFIX<|fim_suffix|>SUFFIX<|fim_middle|>MIDDLE<|endoftext|>

- SPM (suffix-prefix-middle, with probability ``fim_spm_rate`` among FIM examples;
  the variant of Bavarian et al. 2022, where prefix and middle stay contiguous)::

      <|fim_prefix|><|fim_suffix|>SUFFIX<|fim_middle|>PREFIX MIDDLE<|endoftext|>

- plain: the chunk's text, every token trained, ``<|endoftext|>`` after the
  file's last chunk only.

The two split points are uniform random character positions of the chunk
(``fim_split: char``) or line starts (``fim_split: line``: the middle is whole
lines). Prefix, middle and suffix are tokenized separately, as they are at
inference. With ``fim_loss: middle`` (the default) only the middle and the
``<|endoftext|>`` that ends it are trained; ``fim_loss: all`` trains every token.
Text in a file that spells a special token (``<|endoftext|>`` in a tokenizer's
source) stays text: it is never read as the token.

Every random draw comes from a generator seeded by ``seed`` and the file's text
alone, so the examples of a file do not depend on the other files, their order,
or ``dataset_processes``. Chunks are cut only between characters; every chunk
but a file's last is filled to exactly ``sequence_len`` tokens with
``<|fim_pad|>`` (never trained; a FIM chunk needs four tokens more than its
text, and a split may cost a token or two more).
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ftcore.api import IGNORE_INDEX, DataError, RowError, SourceFileOptions, text_field

FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD = "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>"
END_OF_TEXT = "<|endoftext|>"


class FimOptions(SourceFileOptions, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field("text", description="the field holding code, for rows of a data set")
    fim_rate: float = Field(1.0, ge=0, le=1, description="share of chunks turned into FIM examples (the rest plain)")
    fim_spm_rate: float = Field(0.5, ge=0, le=1, description="share of FIM examples in SPM order")
    fim_split: Literal["char", "line"] = "char"
    fim_loss: Literal["middle", "all"] = "middle"
    seed: int = 42
    include: list[str] | None = Field(None, description="globs of files to read from a folder (default: all)")
    exclude: list[str] | None = None


def special_ids(tokenizer, names) -> list[int]:
    """The ids of ``names``; a ``DataError`` naming the missing ones."""
    vocab = tokenizer.get_vocab()
    missing = [name for name in names if name not in vocab]
    if missing:
        raise DataError(f"the tokenizer lacks {', '.join(missing)}, which this code format needs; use a "
                        f"Qwen2.5(-Coder) tokenizer, or add them with tokens: [{', '.join(missing)}]")
    return [vocab[name] for name in names]


def end_of_text_id(ctx) -> int:
    """``<|endoftext|>`` (Qwen's end of a document) when the tokenizer has it, else its EOS token."""
    vocab = ctx.tokenizer.get_vocab()
    if END_OF_TEXT in vocab:
        return vocab[END_OF_TEXT]
    return special_ids(ctx.tokenizer, [ctx.eos_token or END_OF_TEXT])[0]


def encode(tokenizer, text: str) -> list[int]:
    """Text -> ids, no special tokens added and none read from the text."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def file_rng(seed: int, text: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0".encode() + text.encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_points(chunk: str, mode: str, u: float, v: float) -> tuple[int, int]:
    """Two sorted character positions in ``chunk`` from uniform draws ``u``, ``v`` in [0, 1)."""
    if mode == "line":
        starts = [0] + [k + 1 for k, c in enumerate(chunk[:-1]) if c == "\n"] + [len(chunk)]
        a, b = starts[int(u * len(starts))], starts[int(v * len(starts))]
    else:
        a, b = int(u * (len(chunk) + 1)), int(v * (len(chunk) + 1))
    return min(a, b), max(a, b)


def fim_example(tokenizer, chunk: str, spm: bool, a: int, b: int, sentinels, eos: int, loss: str):
    """``(input_ids, labels)`` of one FIM example of ``chunk`` split at ``a`` <= ``b``."""
    pre, suf, mid = sentinels
    prefix, middle, suffix = encode(tokenizer, chunk[:a]), encode(tokenizer, chunk[a:b]), encode(tokenizer, chunk[b:])
    if spm:
        context = [pre, suf] + suffix + [mid] + prefix
    else:
        context = [pre] + prefix + [suf] + suffix + [mid]
    target = middle + [eos]
    labels = (context if loss == "all" else [IGNORE_INDEX] * len(context)) + target
    return context + target, labels


def fim_examples(text: str, options: FimOptions, ctx) -> list[tuple[list[int], list[int]]]:
    """One file -> its examples, in order; all but the last exactly ``sequence_len`` tokens long."""
    tokenizer, size = ctx.tokenizer, ctx.recipe.sequence_len
    sentinels = special_ids(tokenizer, [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE])
    pad = special_ids(tokenizer, [FIM_PAD])[0]
    eos = end_of_text_id(ctx)
    starts = [s for s, _ in tokenizer(text, add_special_tokens=False, split_special_tokens=True,
                                      return_offsets_mapping=True)["offset_mapping"]]
    rng = file_rng(options.seed, text)
    examples, i, n = [], 0, len(starts)
    while i < n:
        fim, spm = rng.random() < options.fim_rate, rng.random() < options.fim_spm_rate
        u, v = rng.random(), rng.random()  # drawn for every chunk, so one chunk's kind never shifts the next's draws
        j = min(n, i + size - 4)  # room for three sentinels and <|endoftext|>
        while True:
            while i + 1 < j < n and starts[j] == starts[j - 1]:
                j -= 1  # never cut inside a character (byte-level tokens can share one)
            chunk = text[starts[i]:starts[j] if j < n else len(text)]
            last = j >= n
            if fim and chunk:
                a, b = split_points(chunk, options.fim_split, u, v)
                ids, labels = fim_example(tokenizer, chunk, spm, a, b, sentinels, eos, options.fim_loss)
            else:
                ids = encode(tokenizer, chunk) + ([eos] if last else [])
                labels = list(ids)
            over = len(ids) - size
            if over <= 0 or j <= i + 1:
                break
            j = max(i + 1, j - over)  # a split cost tokens: give the chunk's end to the next one
        if not last:
            ids, labels = ids + [pad] * (size - len(ids)), labels + [IGNORE_INDEX] * (size - len(labels))
        if ids:
            examples.append((ids, labels))
        i = j
    return examples


def fim(row, dataset, ctx):
    """One file (or row) -> its examples joined; ``cut_examples`` separates them again."""
    text = text_field(row, dataset.options.field)
    if not text.strip():
        raise RowError(f"field '{dataset.options.field}' is empty", "empty text")
    input_ids, labels = [], []
    for ids, example_labels in fim_examples(text, dataset.options, ctx):
        input_ids.extend(ids)
        labels.extend(example_labels)
    return {"input_ids": input_ids, "labels": labels}


def cut_examples(items, dataset, ctx):
    """``combine`` step: each file's joined examples -> the examples, every ``sequence_len`` tokens
    (each but a file's last is exactly that long)."""
    size = ctx.recipe.sequence_len
    return [(origin, {"input_ids": example["input_ids"][k:k + size], "labels": example["labels"][k:k + size]})
            for origin, example in items for k in range(0, len(example["input_ids"]), size)]


fim.combine = cut_examples
