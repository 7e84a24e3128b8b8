"""Helpers dataset formats share: reading a text field, a document, choosing source files, cutting documents.

Public through ``ftcore.api`` (the built-in formats use them as a third-party
format would).
"""

from __future__ import annotations

from ftcore.data import RowError


def text_field(row, name, required=True):
    """A string field of a row, or ``RowError`` naming what is wrong."""
    value = row.get(name)
    if value is None:
        if required:
            raise RowError(f"missing field '{name}' (row has: {', '.join(sorted(row)) or 'nothing'})", "missing field")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{name}' must be a string, got {type(value).__name__}", "wrong type")
    return value


def document_segments(row, name, ctx):
    """The row's text field ``name`` as one document, every token trained: ``[(text, True), (EOS, True)]``
    (``type: completion``, and each document of ``type: pretrain``); RowError when it is missing or blank."""
    text = text_field(row, name)
    if not text.strip():
        raise RowError(f"field '{name}' is empty", "empty text")
    return [(text, True), (ctx.eos_token, True)]


def glob_match(path: str, pattern: str) -> bool:
    """``path`` (relative, with ``/``) matches ``pattern``: a pattern without ``/`` matches the file name at
    any depth (``*.py``); one with ``/`` matches the whole path, ``*`` crossing folders (``tests/*``), and a
    leading ``**/`` also matches at the top (``**/*.py``)."""
    from fnmatch import fnmatchcase

    if "/" not in pattern:
        return fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatchcase(path, pattern) or (pattern.startswith("**/") and fnmatchcase(path, pattern[3:]))


class SourceFileOptions:
    """Mixin for the options of a format that reads source files whole (``ftcore.data.read``):
    ``include`` and ``exclude`` globs choose the files of a folder or glob."""

    def source_file(self, path: str) -> bool:
        if self.include and not any(glob_match(path, p) for p in self.include):
            return False
        return not any(glob_match(path, p) for p in self.exclude or ())


def chunk_documents(items, dataset, ctx):
    """``[(origin, document)]`` -> ``[(origin, chunk)]``: the documents joined in order and cut every
    ``sequence_len`` tokens; a chunk is named after the row it starts in; the last one may be shorter."""
    size = ctx.recipe.sequence_len
    input_ids, labels, starts = [], [], []  # starts: (token offset, origin) of each document
    for origin, document in items:
        starts.append((len(input_ids), origin))
        input_ids.extend(document["input_ids"])
        labels.extend(document["labels"])
    chunks, doc = [], 0
    for begin in range(0, len(input_ids), size):
        while doc + 1 < len(starts) and starts[doc + 1][0] <= begin:
            doc += 1
        chunks.append((starts[doc][1], {"input_ids": input_ids[begin:begin + size],
                                        "labels": labels[begin:begin + size]}))
    return chunks
