"""Rows -> formatted -> tokens and labels -> batches.

- ``read.py``: rows from local files (json, jsonl, csv, parquet, arrow) or the Hub,
  each with its file and row number.
- ``formats.py``: which function formats a dataset entry: a registered format,
  or a ``module.function`` named by its dotted path.
- ``tokenize.py``: a format's ``(text, trained)`` segments -> ``input_ids`` and
  ``labels``; this is where untrained tokens get ``-100``.
- ``prepare.py``: every dataset of a recipe -> train and eval examples + stats.
- ``cache.py``: prepared examples kept under ``dataset_prepared_path`` by a key of
  everything they depend on, and reused (``load_or_prepare``).
- ``pack.py``: examples -> ``sequence_len`` bins (``sample_packing``), position ids
  restarting at each example.
- ``collate.py``: examples -> padded batches, or packed bins.

A format plugin needs only ``FormatContext`` and ``RowError`` from here.
"""

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


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
    extras: dict = field(default_factory=dict)

    @property
    def eos_token(self) -> str:
        return self.tokenizer.eos_token or ""


__all__ = ["FormatContext", "RowError", "IGNORE_INDEX"]
