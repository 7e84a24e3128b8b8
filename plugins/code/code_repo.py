"""``type: code_repo``: the files of one repository as one document, for repository-level training.

The dataset entry is one repository: a folder (or a glob) of source files, read
whole in sorted path order (by the core: ``SourceFileOptions``; ``include``/``exclude`` globs
choose the files), or rows of a data set with the file's path and text
(``path_field``, ``field``), in row order. They are joined as Qwen2.5-Coder
writes a repository::

    <|repo_name|>NAME
    <|file_sep|>path/of/first.py
    ...its text...
    <|file_sep|>path/of/second.py
    ...its text...<|endoftext|>

(each file's text ends with a newline). ``NAME`` is ``repo_name``, or the
folder's name. The document is cut into ``sequence_len`` chunks as ``type:
pretrain`` cuts documents, every token trained. Two dataset entries (two
repositories) never share a chunk. Text in a file that spells a special token
stays text.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ftcore.api import SourceFileOptions, chunk_documents, has_glob, source_root, text_field

from .fim import encode, end_of_text_id, special_ids

REPO_NAME, FILE_SEP = "<|repo_name|>", "<|file_sep|>"


class CodeRepoOptions(SourceFileOptions, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repo_name: str | None = Field(None, description="the repository's name (default: the folder's name)")
    field: str = Field("text", description="the field holding a file's text, for rows of a data set")
    path_field: str = Field("path", description="the field holding a file's path, for rows of a data set")
    include: list[str] | None = Field(None, description="globs of files to read from a folder (default: all)")
    exclude: list[str] | None = None


def repo_file(row, dataset, ctx):
    """One file -> ``<|file_sep|>path\\ntext\\n``, every token trained."""
    options = dataset.options
    path, text = text_field(row, options.path_field), text_field(row, options.field)
    (file_sep,) = special_ids(ctx.tokenizer, [FILE_SEP])
    ids = [file_sep] + encode(ctx.tokenizer, f"{path}\n{text}" + ("" if text.endswith("\n") else "\n"))
    return {"input_ids": ids, "labels": list(ids)}


def repository_name(dataset) -> str:
    """``repo_name``, else the folder's name (for a file or glob: the folder holding it), else the data set's."""
    if dataset.options.repo_name:
        return dataset.options.repo_name
    if Path(dataset.path).expanduser().exists() or has_glob(dataset.path):
        return source_root(dataset).resolve().name
    return dataset.path.rstrip("/").rsplit("/", 1)[-1]


def join_repository(items, dataset, ctx):
    """``combine`` step: the header, the files in order, ``<|endoftext|>``; cut every ``sequence_len``."""
    if not items:
        return []
    (repo_name,) = special_ids(ctx.tokenizer, [REPO_NAME])
    header = [repo_name] + encode(ctx.tokenizer, repository_name(dataset) + "\n")
    eos = end_of_text_id(ctx)
    (first_origin, first), *rest = items
    documents = [(first_origin, {"input_ids": header + first["input_ids"], "labels": header + first["labels"]}),
                 *rest]
    last_origin, last = documents[-1]
    documents[-1] = (last_origin, {"input_ids": last["input_ids"] + [eos], "labels": last["labels"] + [eos]})
    return chunk_documents(documents, dataset, ctx)


repo_file.combine = join_repository
