"""Read rows from a dataset entry: local files or folders, or the Hub.

Every row comes with its origin (file and 1-based row number) so errors can
name them. Each local file's sha256 is recorded for the run manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ftcore.errors import DataError

LOCAL_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class Source:
    """What was read, for ``run.json``: a file with its sha256, or a Hub dataset."""

    path: str
    sha256: str | None = None
    revision: str | None = None
    rows: int = 0


@dataclass
class ReadResult:
    rows: list = field(default_factory=list)  # [(origin, row dict | RowProblem)]
    sources: list = field(default_factory=list)


@dataclass
class RowProblem:
    """A row that could not even be parsed (malformed JSON, not an object)."""

    message: str
    reason: str


def _files(spec, base: Path) -> list[Path]:
    if spec.data_files:
        names = [spec.data_files] if isinstance(spec.data_files, str) else spec.data_files
        root = base if base.is_dir() else base.parent
        files = []
        for name in names:
            matches = sorted(root.glob(name)) if any(c in name for c in "*?[") else [root / name]
            files.extend(matches)
        missing = [f for f in files if not f.is_file()]
        if missing or not files:
            raise DataError(f"{spec.path}: data_files {names} matched no file ({', '.join(map(str, missing)) or 'no match'})")
        return files
    if base.is_dir():
        files = sorted(p for p in base.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{base}: folder holds no {', '.join(sorted(LOCAL_SUFFIXES))} files")
        return files
    return [base]


def _kind(path: Path, spec) -> str:
    if spec.ds_type:
        return "jsonl" if spec.ds_type == "json" and path.suffix == ".jsonl" else spec.ds_type
    kind = LOCAL_SUFFIXES.get(path.suffix)
    if kind is None:
        raise DataError(f"{path}: cannot tell the file format from '{path.suffix}'; "
                        f"use .json, .jsonl, .csv, .parquet or .arrow, or set ds_type")
    return kind


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_jsonl(path: Path):
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, RowProblem(f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})", "undecodable line")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, RowProblem(f"malformed JSON: {exc.msg} at column {exc.colno}", "malformed JSON")
                continue
            if not isinstance(row, dict):
                yield number, RowProblem(f"expected a JSON object, got {type(row).__name__}", "not an object")
                continue
            yield number, row


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a JSON-lines file named .json
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}: malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of JSON objects (or JSON lines)")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            yield number, RowProblem(f"expected a JSON object, got {type(row).__name__}", "not an object")
        else:
            yield number, row


def _read_with_datasets(path: Path, kind: str):
    import datasets

    builder = {"csv": "csv", "parquet": "parquet", "arrow": "arrow"}[kind]
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:
        raise DataError(f"{path}: cannot read as {kind}: {exc}") from exc
    offset = 2 if kind == "csv" else 1  # csv: line 1 is the header
    for number, row in enumerate(table, start=offset):
        yield number, row


def read_rows(spec, limit: int | None = None) -> ReadResult:
    """Rows of one dataset entry, each as ``((file, row_number), row)``."""
    base = Path(spec.path).expanduser()
    result = ReadResult()
    if not base.exists():
        if spec.path.startswith((".", "/", "~")) or Path(spec.path).suffix in LOCAL_SUFFIXES:
            raise DataError(f"{spec.path}: no such file or folder")
        return _read_hub(spec, limit)
    for path in _files(spec, base):
        kind = _kind(path, spec)
        reader = {"jsonl": _read_jsonl, "json": _read_json}.get(kind)
        rows = reader(path) if reader else _read_with_datasets(path, kind)
        source = Source(str(path), sha256=_sha256(path))
        for number, row in rows:
            result.rows.append(((str(path), number), row))
            source.rows += 1
            if limit and len(result.rows) >= limit:
                break
        result.sources.append(source)
        if limit and len(result.rows) >= limit:
            break
    if spec.shards:
        result.rows = result.rows[:: spec.shards]
    return result


def _read_hub(spec, limit):
    try:
        import datasets

        table = datasets.load_dataset(spec.path, spec.name, split=spec.split or "train",
                                      revision=spec.revision, data_files=spec.data_files)
    except Exception as exc:
        raise DataError(f"{spec.path}: not a local file or folder, and loading it from the "
                        f"Hugging Face Hub failed: {type(exc).__name__}: {exc}") from exc
    fingerprint = getattr(table, "_fingerprint", None)
    result = ReadResult(sources=[Source(spec.path, revision=spec.revision or fingerprint)])
    for number, row in enumerate(table, start=1):
        result.rows.append(((spec.path, number), row))
        if limit and number >= limit:
            break
    result.sources[0].rows = len(result.rows)
    return result
