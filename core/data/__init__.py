"""Rows -> formatted -> tokens and labels -> batches.

- ``read.py``: rows from local files (json, jsonl, csv, parquet, arrow) or the Hub,
  each with its file and row number.
- ``formats.py``: which function formats a dataset entry: a registered format,
  or a ``module.function`` named by its dotted path.
- ``chat.py``: conversations (``messages``) rendered by the chat template, with the
  label spans of the trained turns; non-text content parts go to their handlers.
- ``templates.py``: the text of the named chat templates and the Alpaca prompt.
- ``fields.py``: helpers formats share (a text field, source files, chunking).
- ``tokenize.py``: a format's ``(text, trained)`` segments -> ``input_ids`` and
  ``labels``; this is where untrained tokens get ``-100``.
- ``prepare.py``: every dataset of a recipe -> train and eval examples + stats.
- ``cache.py``: prepared examples kept under ``dataset_prepared_path`` by a key of
  everything they depend on, and reused (``load_or_prepare``).
- ``pack.py``: examples -> ``sequence_len`` bins (``sample_packing``), position ids
  restarting at each example.
- ``collate.py``: examples -> padded batches, or packed bins.

An example is a dict: ``input_ids``, ``labels`` and any JSON-serialisable extras
its format gave (a vision plugin's image references, say). The core keeps the
extras with the example, caches them, dumps them (``ftcore preprocess --dump``)
and hands them to the collator without knowing what they are; the plugin that
made them is the one that reads them.

Plugins see this package through ``ftcore.api``: ``FormatContext``, ``RowError``,
``ContentPart`` and ``ContentRow`` are defined here.
"""

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
EXAMPLE_FIELDS = ("input_ids", "labels")  # an example's own fields; every other key is an extra


def extras_of(example: dict) -> dict:
    """An example's extras: every key but ``input_ids`` and ``labels``."""
    return {key: value for key, value in example.items() if key not in EXAMPLE_FIELDS}


class RowError(ValueError):
    """Raised by a format for a row it cannot use; the core adds file and row."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


@dataclass
class FormatContext:
    """What a format function may use besides the row and its dataset entry."""

    tokenizer: Any
    recipe: Any
    chat_template: str | None = None
    extras: dict = field(default_factory=dict)  # "file" and "row": where the row being formatted comes from
    parts: dict = field(default_factory=dict)  # content-part type -> (handler, plugin) (register_content_parts)
    stash: Any = None  # the run's Stash

    @property
    def eos_token(self) -> str:
        return self.tokenizer.eos_token or ""


# ── content parts: the non-text parts of chat messages (register_content_parts) ──


@dataclass
class ContentRow:
    """One row of a conversation format, as the content-part handlers see it.

    A conversation format (``type: chat_template``, ``sharegpt``) makes one for
    each row. Every handler's ``finish(row)`` (when it has one) is called with
    it once the row's parts were handled and before the conversation is rendered,
    whether or not the row has parts of the handler's type.
    """

    row: dict  # the row as read
    dataset: Any  # its validated dataset entry (format options under ``dataset.options``)
    ctx: FormatContext
    # the conversation: [{"role", "content", "train"}], each content as text (every part replaced by the text
    # its handler returned); ``finish`` may edit the contents (put a part's text where a column's part stands)
    messages: list = field(default_factory=list)
    parts: dict = field(default_factory=dict)  # part type -> [ContentPart] of the row, in order
    # part type -> (column name, [items]): a column of parts beside the messages that the format reads
    # (``field_images`` for "image"); the items are [] when the row has none
    columns: dict = field(default_factory=dict)
    # what the example carries beside input_ids and labels (JSON-serialisable; the handler's plugin reads it
    # back, in its collator say): ``row.extras["images"] = [...]``
    extras: dict = field(default_factory=dict)
    # texts never trained wherever they occur in the rendered conversation; every text a handler returned
    # is in it already, ``finish`` adds those it writes itself
    untrained: set = field(default_factory=set)


@dataclass
class ContentPart:
    """One non-text part of a chat message (``{"type": "image", "path": "a.png"}``), as its handler gets it.

    The handler registered for the part's type is called ``handler(part) -> str`` and returns the text
    that stands for the part in the message (an image token; it never trains). It raises ``RowError``
    for a part it cannot use. What the example needs goes into ``part.row.extras``, at once or in the
    handler's ``finish(row)`` (see ``ContentRow``).
    """

    type: str
    data: dict  # the part as the row gives it, "type" included
    message: int  # which message it is in, counted from 0
    where: str  # how error messages name it ("message 2")
    row: ContentRow = field(repr=False, compare=False)  # the row it belongs to (``row.ctx``: tokenizer, recipe)


__all__ = ["ContentPart", "ContentRow", "FormatContext", "RowError", "IGNORE_INDEX"]
