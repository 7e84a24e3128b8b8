"""Read rows from a dataset entry: local files or folders, or the Hub.

Every row comes with its origin (file and 1-based row number) so errors can
name them. Each local file's sha256 is recorded for the run manifest. Formats
that train on code (``type: fim``, ``code_repo``) read source files whole, one
row per file (see "source files" below).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import sys
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
    if base.is_dir() and not spec.data_files and reads_source_files(spec):
        return _source_files(spec, base, sorted(base.rglob("*")))
    if spec.data_files:
        names = [spec.data_files] if isinstance(spec.data_files, str) else spec.data_files
        root = base if base.is_dir() else base.parent
        files = []
        for name in names:
            matches = sorted(root.glob(name)) if any(c in name for c in "*?[") else [root / name]
            files.extend(matches)
        for f in files:
            if os.path.lexists(f) and not f.is_file():
                check_regular_file(f)  # a folder, a FIFO, a symlink loop: said as such
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


def check_regular_file(path: Path) -> None:
    """DataError unless ``path`` is a regular file: a folder, a FIFO, a device or a symlink loop is never opened
    (opening a FIFO would wait forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:
            raise DataError(f"{path}: a symbolic link that loops (it points back to itself); point it at a data "
                            f"file") from None
        if os.path.islink(path):
            raise DataError(f"{path}: a broken symbolic link (its target does not exist)") from None
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder, where a data file was expected; name a file (.jsonl, .json, .csv, "
                        f".parquet, .arrow), or give the folder as path without data_files")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"
        raise DataError(f"{path}: not a regular file ({kind}); ftcore reads data only from regular files")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_UTF16 = (b"\xff\xfe", b"\xfe\xff")


def _not_utf16(path: Path, start: bytes) -> None:
    if start.startswith(_UTF16):
        raise DataError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); ftcore reads "
                        f"UTF-8: save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")


def _text(path: Path) -> str:
    """The whole file as text (a UTF-8 BOM is dropped); DataError naming the line of a bad byte."""
    raw = path.read_bytes()
    _not_utf16(path, raw[:2])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _read_jsonl(path: Path):
    with path.open("rb") as fh:
        _not_utf16(path, fh.read(2))
        fh.seek(0)
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
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
            except RecursionError:
                yield number, RowProblem("JSON nested too deeply to read", "JSON nested too deeply")
                continue
            if not isinstance(row, dict):
                yield number, RowProblem(f"expected a JSON object, got {type(row).__name__}", "not an object")
                continue
            yield number, row


def _read_json(path: Path):
    text = _text(path)
    if not text.strip():
        return  # an empty file: read_rows says it holds no rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # a JSON-lines file named .json
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}: malformed JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    except RecursionError:
        raise DataError(f"{path}: line 1: JSON nested too deeply to read; rows are JSON objects of text fields, "
                        f"a list of them, or JSON lines") from None
    if isinstance(data, dict):
        data = [data]  # one JSON object: one row
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON object, a list of them, or JSON lines; got a JSON "
                        f"{type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            yield number, RowProblem(f"expected a JSON object, got {type(row).__name__}", "not an object")
        else:
            yield number, row


def _read_csv(path: Path):
    """Every cell is text ("007" stays "007", "NA" stays "NA"); an empty cell is missing."""
    csv.field_size_limit(sys.maxsize if sys.maxsize < 2**63 else 2**63 - 1)  # a huge cell: the length rule decides
    reader = csv.DictReader(io.StringIO(_text(path), newline=""), strict=True)  # strict: an unclosed quote is said
    last = 1  # the header
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "end of data" in str(exc):  # the row that opened the quote starts after the last one read
                raise DataError(f"{path}: line {last + 1}: not valid CSV (a quote opened in this row is never "
                                f"closed, so the row runs on to the end of the file)") from None
            raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
        last = reader.line_num
        if None in row:  # more cells than the header names
            cells = len(reader.fieldnames) + len(row[None])
            yield reader.line_num, RowProblem(f"{cells} cells, but the header names {len(reader.fieldnames)} "
                                              f"columns ({', '.join(reader.fieldnames)})", "wrong number of cells")
            continue
        yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}


def _read_text(path: Path):
    """``ds_type: text``: each non-empty line is a row ``{"text": line}``."""
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if line.strip():
            yield number, {"text": line}


def _read_arrow(path: Path, kind: str):
    """Parquet and Arrow files through pyarrow (no cache written anywhere)."""
    import pyarrow.ipc
    import pyarrow.parquet

    try:
        if kind == "parquet":
            table = pyarrow.parquet.read_table(path)
        else:
            with pyarrow.memory_map(str(path)) as source:
                try:
                    table = pyarrow.ipc.open_file(source).read_all()
                except pyarrow.ArrowInvalid:
                    source.seek(0)
                    table = pyarrow.ipc.open_stream(source).read_all()
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as {kind}: {exc}") from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


# ── source files: formats that train on code (type: fim, code_repo) read files whole ──
#
# A format whose options model has a ``source_file(relative_path) -> bool`` method reads
# source files: a folder gives every file under it that the method accepts (sorted by
# path; hidden paths, empty and binary files left out), ``path`` may be a glob
# (``src/**/*.py``), and each such file is one row ``{"text": its text, "path": its path
# relative to the folder}``. A file named directly (``path``, ``data_files``) whose suffix
# is a data file's (.jsonl, .parquet, ...), or any file under ``ds_type``, is read as rows.


def reads_source_files(spec) -> bool:
    return callable(getattr(spec.options, "source_file", None))


def has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def source_root(spec) -> Path:
    """The folder source paths are relative to: the folder, the part of a glob before its first wildcard,
    or the file's own folder."""
    base = Path(spec.path).expanduser()
    if base.is_dir():
        return base
    if has_glob(spec.path):
        parts = base.parts
        fixed = parts[: next(i for i, part in enumerate(parts) if has_glob(part))]
        return Path(*fixed) if fixed else Path(".")
    return base.parent


def _source_files(spec, root: Path, candidates) -> list[Path]:
    files = []
    for path in candidates:
        relative = path.relative_to(root)
        if (path.is_file() and not any(part.startswith(".") for part in relative.parts)
                and spec.options.source_file(relative.as_posix())):
            files.append(path)
    if not files:
        raise DataError(f"{spec.path}: no source file there (after include/exclude and leaving out hidden paths)")
    return files


def _source_row(path: Path, root: Path):
    """One source file -> ``[(1, {"text", "path"})]``; nothing for an empty or binary (NUL byte) file."""
    raw = path.read_bytes()
    if not raw.strip() or b"\0" in raw[:8192]:
        return []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return [(line, RowProblem(f"not valid UTF-8 text ({exc.reason} at byte {exc.start})", "not UTF-8 text"))]
    return [(1, {"text": text, "path": path.relative_to(root).as_posix()})]


def local_files(spec) -> list[Path] | None:
    """The files a dataset entry reads, in reading order; ``None`` for a Hub dataset."""
    base = Path(spec.path).expanduser()
    if not base.exists() and has_glob(spec.path) and reads_source_files(spec):
        root = source_root(spec)
        pattern = Path(spec.path).expanduser().relative_to(root).as_posix() if root != Path(".") else spec.path
        return _source_files(spec, root, sorted(root.glob(pattern)))
    if os.path.lexists(base) and not base.exists():
        check_regular_file(base)  # a symlink loop or a broken link: said as such
    if not base.exists():
        if spec.path.startswith((".", "/", "~")) or Path(spec.path).suffix in LOCAL_SUFFIXES:
            raise DataError(f"{spec.path}: no such file or folder")
        return None
    return _files(spec, base)


def read_rows(spec, limit: int | None = None, key: str = "datasets[?].path") -> ReadResult:
    """Rows of one dataset entry, each as ``((file, row_number), row)``; ``key`` names the entry's ``path``
    in the recipe (for the one line said when a Hub dataset cannot be reached)."""
    files = local_files(spec)
    if files is None:
        require_hub_dataset(spec, key)
        return _read_hub(spec, limit)
    result = ReadResult()
    source = reads_source_files(spec) and not spec.ds_type
    whole_folder = source and Path(spec.path).expanduser().is_dir() and not spec.data_files
    for path in files:
        check_regular_file(path)
        if source and (whole_folder or path.suffix not in LOCAL_SUFFIXES):
            rows = _source_row(path, source_root(spec))
        else:
            rows = _rows_of(path, spec)
        source_info = Source(str(path), sha256=file_sha256(path))
        for number, row in rows:
            result.rows.append(((str(path), number), row))
            source_info.rows += 1
            if limit and len(result.rows) >= limit:
                break
        if not source_info.rows and not source:
            raise DataError(f"{path}: holds no rows (the file is empty or only whitespace); a data file needs at "
                            f"least one row, or leave it out of the recipe")
        result.sources.append(source_info)
        if limit and len(result.rows) >= limit:
            break
    if spec.shards:
        result.rows = result.rows[:: spec.shards]
    return result


def _rows_of(path: Path, spec):
    kind = _kind(path, spec)
    if kind in ("parquet", "arrow"):
        return _read_arrow(path, kind)
    return {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "text": _read_text}[kind](path)


def require_hub_dataset(spec, key: str) -> None:
    """A dataset path that is not local needs the Hub: one line at once when it is offline (not datasets' retries)."""
    from ftcore.hub import require_hub

    require_hub(key, spec.path, "a Hugging Face Hub dataset", kind="dataset")


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
