"""The prepared-data cache: ``dataset_prepared_path/<key>/``, reused when nothing it depends on changed.

What is stored is the output of ``prepare.tokenize_datasets``: every kept
example (``input_ids``, ``labels`` and its extras) in dataset order, where each came from
(file and row), the files read and the row counts. Two cheap steps are redone
on every load instead of being cached, so changing them never rebuilds the
cache: the validation split (``val_set_size``, ``seed``: a seeded shuffle of
indices) and packing (``sample_packing``: bin-packing lengths, done after
this by ``pack.py``).

The key is a sha256 over (see ``cache_key``; docs/data.md, "Cache"):

- the bytes of every local data file (their sha256), or, for a Hub dataset,
  its name, configuration, split and revision (the commit the Hub resolves
  it to, when the Hub can be asked);
- every dataset entry's settings and its format's options (with defaults);
- each format used: its name, the plugin and package version providing it,
  and the sha256 of the source files of the modules its function, its
  ``combine`` and its options model live in;
- every content-part handler passed (``register_content_parts``): its type,
  plugin, package version, and the sha256 of its (and its ``finish``'s) module;
- the tokenizer: its serialized state (``backend_tokenizer.to_str()``: vocab,
  merges, normalizer, pre-tokenizer, post-processor, added tokens), its
  special tokens, and the tokenizers/transformers versions;
- the chat template text;
- the core recipe keys that reach the data path (``RECIPE_KEYS``), and every
  plugin's flat keys and sections (a plugin's format or handler may read any of
  its keys; a key that changes nothing costs one more preparation, never a
  stale one);
- ``CODE_VERSION`` and the sha256 of the core data modules' source (``CODE_MODULES``).

Layout of one entry (no pickle anywhere)::

    <key>/meta.json      what the key was built from, counts, sources, file names
    <key>/examples.npz   input_ids, labels (int32, concatenated), offsets (int64),
                         origin_file (int32 index into meta.json's files), origin_row (int64)
    <key>/extras.json    only when examples carry extras: one JSON object (or null) per
                         example, its extras as the format gave them

An entry is written into a temporary folder and renamed into place, so a crash
never leaves half of one; an entry that cannot be read (the zip's CRC-32 checks
every array) is rebuilt with a notice.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import inspect
import itertools
import json
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ftcore.artifacts import installed_versions
from ftcore.data import extras_of
from ftcore.data.formats import resolve_format
from ftcore.data.prepare import PreparedData, Tokenized, prepare_datasets, split, tokenize_datasets
from ftcore.data.read import Source, file_sha256, local_files
from ftcore.log import get_logger

log = get_logger(__name__)

# Bump when a change to the data path changes the examples it produces for the same
# inputs in a way the source hashes below do not cover (a helper module, a library).
CODE_VERSION = 2  # 2: extras.json (any extras) in place of images.json
# the core's data path, and the public helpers formats use (``ftcore.api``)
CODE_MODULES = ("ftcore.data", "ftcore.data.read", "ftcore.data.tokenize", "ftcore.data.prepare", "ftcore.data.cache",
                "ftcore.data.chat", "ftcore.data.fields", "ftcore.data.templates")

# Top-level recipe keys that change the prepared examples. Formats see the whole
# recipe (``ctx.recipe``): a key a format reads must be listed here
# (tests/test_preprocess.py checks the built-in formats' source for it).
RECIPE_KEYS = ("sequence_len", "train_on_inputs", "on_invalid_example", "excess_length_strategy",
               "chat_template", "chat_template_jinja", "default_system_message", "special_tokens", "tokens")

KEY_CHARS = 32  # folder name: the first 128 bits of the key; meta.json holds all of it and is checked


class CorruptCache(Exception):
    pass


# ── the key ─────────────────────────────────────────────────────────────────


def cache_key(recipe, tokenizer, formats, chat_template=None, content_parts=None) -> tuple[str, dict]:
    """``(sha256 hex, the parts it was computed from)``; hashes every local data file once.

    ``content_parts`` is ``{type: (handler, plugin)}`` (``ftcore.hooks.content_parts``).
    """
    parts = {
        "code": {"version": CODE_VERSION, **{name: _module_sha256(name) for name in CODE_MODULES}},
        "datasets": [_entry(spec, formats) for spec in recipe.datasets or []],
        "test_datasets": [_entry(spec, formats) for spec in recipe.test_datasets or []],
        "content_parts": {kind: _handler_identity(handler, plugin)
                          for kind, (handler, plugin) in sorted((content_parts or {}).items())},
        "recipe": {key: _plain(getattr(recipe, key)) for key in RECIPE_KEYS},
        "plugin_keys": {plugin: _plain(keys) for plugin, keys in sorted(getattr(recipe, "_key_models", {}).items())},
        "sections": {key: _plain(section) for key, section in sorted(getattr(recipe, "_sections", {}).items())},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": _sha256_text(chat_template) if chat_template else None,
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest(), parts


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides how text becomes tokens (not where the tokenizer was loaded from)."""
    state = {
        "class": type(tokenizer).__name__,
        "special_tokens": {k: _plain(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "added_tokens": {str(i): repr(t) for i, t in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items())},
        "add_bos_token": getattr(tokenizer, "add_bos_token", None),
        "add_eos_token": getattr(tokenizer, "add_eos_token", None),
        "libraries": installed_versions(("tokenizers", "transformers")),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state["backend"] = _sha256_text(backend.to_str())
    else:  # a tokenizer without a Rust backend: its vocabulary and settings (paths left out)
        state["vocab"] = _sha256_text(json.dumps(sorted(tokenizer.get_vocab().items())))
        state["settings"] = {k: _plain(v) for k, v in sorted(getattr(tokenizer, "init_kwargs", {}).items())
                             if k != "name_or_path" and "file" not in k and "path" not in k}
    return _sha256_text(json.dumps(state, sort_keys=True, default=str))


def _entry(spec, formats) -> dict:
    options = spec.options
    entry = {"settings": spec.model_dump(mode="json"),
             "options": options.model_dump(mode="json") if options is not None else None,
             "format": _format_identity(spec.type, formats)}
    files = local_files(spec)
    if files is None:
        entry["hub"] = {"path": spec.path, "name": spec.name, "split": spec.split or "train",
                        "revision": spec.revision, "resolved": _hub_revision(spec)}
    else:
        entry["files"] = [[str(path.resolve()), file_sha256(path)] for path in files]
    return entry


def _format_identity(type_name, formats) -> dict:
    (function, options), plugin = resolve_format(type_name, formats)  # a registered name or a dotted path
    module = inspect.getmodule(function)
    return {"type": type_name, "plugin": plugin, "function": getattr(function, "__qualname__", repr(function)),
            "package_version": _package_version(module.__name__ if module else ""),
            "source": _source_sha256(function),
            "modules": _modules(function, getattr(function, "combine", None), options)}


def _handler_identity(handler, plugin) -> dict:
    module = inspect.getmodule(handler)
    return {"plugin": plugin, "handler": getattr(handler, "__qualname__", repr(handler)),
            "package_version": _package_version(module.__name__ if module else ""),
            "modules": _modules(handler, getattr(handler, "finish", None))}


def _modules(*objects) -> dict:
    """``{module name: sha256 of its source file}`` of the modules the objects are defined in."""
    found = {}
    for obj in objects:
        module = inspect.getmodule(obj) if obj is not None else None
        if module is not None:
            found[module.__name__] = _source_sha256(obj)
    return found


def _source_sha256(obj) -> str | None:
    """sha256 of the file ``obj`` (a function or class) is defined in; None when it has none."""
    try:
        return _sha256_bytes(Path(inspect.getsourcefile(obj)).read_bytes())
    except (TypeError, OSError):
        return None


def _package_version(module_name: str) -> str | None:
    top = module_name.split(".")[0]
    if top == "ftcore":
        from ftcore import __version__

        return __version__
    from importlib.metadata import PackageNotFoundError, version

    for dist in _distributions().get(top, []):
        try:
            return version(dist)
        except PackageNotFoundError:
            pass
    return getattr(sys.modules.get(top), "__version__", None)


@functools.cache
def _distributions() -> dict:
    """``{top-level module: [distribution names]}``: scans every installed package, so once per process."""
    from importlib.metadata import packages_distributions

    return packages_distributions()


def _hub_revision(spec) -> str | None:
    """The commit the Hub resolves the dataset (and its ``revision``) to; None when it cannot be asked."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec.path, revision=spec.revision).sha
    except Exception:  # offline, no such dataset, no network: keyed by name and revision as written
        log.warning(f"notice: {spec.path}: could not ask the Hugging Face Hub which commit this dataset is at; "
              f"its cache entry is keyed by its name{' and revision' if spec.revision else ''} only "
              f"(set revision: to a commit to pin it)")
        return None


def _module_sha256(name: str) -> str | None:
    from importlib.util import find_spec

    try:
        return _sha256_bytes(Path(find_spec(name).origin).read_bytes())
    except (AttributeError, TypeError, OSError, ImportError):
        return None


def _plain(value):
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _sha256_text(text: str) -> str:
    return _sha256_bytes(text.encode("utf-8"))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ── load or prepare ─────────────────────────────────────────────────────────


def load_or_prepare(recipe, tokenizer, formats, chat_template=None, limit=None, parts=None, stash=None,
                    plugins=None) -> PreparedData:
    """Prepared data from the cache when ``dataset_prepared_path`` holds it; else prepare (and cache) it.

    ``data.stats["cache"]`` says which entry and whether it was reused
    (``{"path": ..., "reused": true}``); it is absent without
    ``dataset_prepared_path``. ``limit`` (part of each dataset) bypasses the cache. ``parts``
    (content-part handlers) and ``stash`` reach the formats through their ``FormatContext``;
    ``plugins`` (the plugin manager) names a plugin whose format or handler raises.
    """
    context = {"parts": parts or {}, "stash": stash, "plugins": plugins}
    if not recipe.dataset_prepared_path:
        return prepare_datasets(recipe, tokenizer, formats, chat_template, limit, **context)
    if limit:
        log.info("data: only part of each dataset is read (--limit); the cache is neither read nor written")
        return prepare_datasets(recipe, tokenizer, formats, chat_template, limit, **context)
    key, built_from = cache_key(recipe, tokenizer, formats, chat_template, context["parts"])
    folder = Path(recipe.dataset_prepared_path).expanduser() / key[:KEY_CHARS]
    corrupt = False
    if folder.exists():
        try:
            tokenized = read_entry(folder, key, vocab=len(tokenizer))
        except CorruptCache as exc:
            corrupt = True
            log.warning(f"notice: the data cache {folder} cannot be read ({exc}); preparing the data again")
        else:
            data = split(tokenized, recipe)
            data.stats["cache"] = {"path": str(folder), "reused": True}
            log.info(f"data: reused cache {folder}")
            return data
    tokenized = tokenize_datasets(recipe, tokenizer, formats, chat_template, **context)
    data = split(tokenized, recipe)  # a bad val_set_size fails here, before anything is written
    changed = _changed_while_reading(built_from, tokenized.sources)
    if changed:
        log.warning(f"notice: {changed} changed while it was being read; the prepared data is not cached")
    elif write_entry(folder, key, built_from, tokenized, replace=corrupt):
        log.info(f"data: cached to {folder}")
    data.stats["cache"] = {"path": str(folder), "reused": False}
    return data


def _changed_while_reading(parts, sources) -> str | None:
    """A file whose sha256 when read differs from the one in the key (edited in between)."""
    hashed = {path: sha for entry in parts["datasets"] + parts["test_datasets"] for path, sha in entry.get("files", [])}
    for source in sources:
        if source.sha256 and hashed.get(str(Path(source.path).resolve()), source.sha256) != source.sha256:
            return source.path
    return None


# ── the files of one entry ──────────────────────────────────────────────────


def write_entry(folder: Path, key: str, parts: dict, tokenized: Tokenized, replace: bool = False) -> bool:
    """Write atomically: a temporary folder beside ``folder``, renamed into place. False if it could not be.

    ``replace``: ``folder`` holds an unreadable entry, moved aside and deleted first. Otherwise an
    entry that another process (another rank) finished first is kept: it holds the same examples.
    """
    import numpy as np

    root = folder.parent
    tmp = None
    try:
        arrays, files = _arrays(tokenized)
        meta = {
            "ftcore_cache": CODE_VERSION,
            "key": key,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train_examples": len(tokenized.train),
            "test_examples": len(tokenized.test),
            "tokens": len(arrays["input_ids"]),
            "counts": tokenized.counts,
            "sources": [{"path": s.path, "sha256": s.sha256, "revision": s.revision, "rows": s.rows}
                        for s in tokenized.sources],
            "files": files,
            "built_from": parts,
        }
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(root, folder.name)
        tmp = root / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        np.savez(tmp / "examples.npz", **arrays)
        extras = [extras_of(e) or None for e in tokenized.train + tokenized.test]
        if any(e is not None for e in extras):
            (tmp / "extras.json").write_text(json.dumps(extras, allow_nan=False), encoding="utf-8")
        from ftcore.secrets import redact_obj

        meta = redact_obj(json.loads(json.dumps(meta, default=str)))  # no secret read from the environment
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
        if replace and folder.exists():  # a rename cannot replace a folder: move the broken one aside
            old = root / f".{folder.name}.old-{os.getpid()}"
            os.rename(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():  # not "another process wrote the same entry first"
                raise
        return True
    except (OSError, OverflowError) as exc:  # OverflowError: a token id beyond int32, from a custom format
        log.warning(f"notice: could not write the data cache {folder} ({exc}); continuing without it")
        return False
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_abandoned(root: Path, name: str) -> None:
    """Temporary folders of writers that died (killed mid-write): their process is gone."""
    for tmp in root.glob(f".{name}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)  # raises when no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def _arrays(tokenized: Tokenized) -> tuple[dict, list]:
    """The examples as flat int32 arrays with offsets, and the file names their origins index."""
    import numpy as np

    examples = tokenized.train + tokenized.test
    lengths = [len(e["input_ids"]) for e in examples]
    total, n = sum(lengths), len(examples)
    files = sorted({file for file, _row in tokenized.origins})
    index = {file: i for i, file in enumerate(files)}
    chain = itertools.chain.from_iterable
    return {
        "input_ids": np.fromiter(chain(e["input_ids"] for e in examples), np.int32, total),
        "labels": np.fromiter(chain(e["labels"] for e in examples), np.int32, total),
        "offsets": np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64),
        "origin_file": np.fromiter((index[file] for file, _row in tokenized.origins), np.int32, n),
        "origin_row": np.fromiter((row for _file, row in tokenized.origins), np.int64, n),
    }, files


def read_entry(folder: Path, key: str, vocab: int | None = None) -> Tokenized:
    """The cached examples; ``CorruptCache`` when anything about them is off (``vocab``: every id must be below it)."""
    import zipfile

    import numpy as np

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("ftcore_cache") != CODE_VERSION:
            raise CorruptCache("it belongs to another key")
        with np.load(folder / "examples.npz", allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ("input_ids", "labels", "offsets", "origin_file", "origin_row")}
        n_train, n_test = int(meta["train_examples"]), int(meta["test_examples"])
        n = n_train + n_test
        offsets = arrays["offsets"]
        if (len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(arrays["input_ids"])
                or len(arrays["labels"]) != len(arrays["input_ids"]) or (n and (np.diff(offsets) <= 0).any())
                or len(arrays["origin_file"]) != n or len(arrays["origin_row"]) != n):
            raise CorruptCache("its arrays do not fit together")
        if vocab is not None and len(arrays["input_ids"]) and (
                int(arrays["input_ids"].max()) >= vocab or int(arrays["input_ids"].min()) < 0):
            raise CorruptCache(f"it holds token ids outside the tokenizer's vocabulary of {vocab}")
        files = meta["files"]
        with _gc_paused():  # ~10x faster: the collector would rescan the growing heap as the lists appear
            ids, labels, bounds = arrays["input_ids"].tolist(), arrays["labels"].tolist(), offsets.tolist()
            examples = [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in itertools.pairwise(bounds)]
            origins = [(files[f], r) for f, r in zip(arrays["origin_file"].tolist(), arrays["origin_row"].tolist())]
        if (folder / "extras.json").exists():  # the examples' extras, as their formats gave them
            extras = json.loads((folder / "extras.json").read_text(encoding="utf-8"))
            if not isinstance(extras, list) or len(extras) != n:
                raise CorruptCache("its extras do not fit its examples")
            for example, more in zip(examples, extras):
                if more:
                    example.update(more)
        sources = [Source(s["path"], s["sha256"], s["revision"], s["rows"]) for s in meta["sources"]]
        return Tokenized(examples[:n_train], examples[n_train:], origins, sources, meta["counts"])
    except CorruptCache:
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile) as exc:
        raise CorruptCache(f"{type(exc).__name__}: {exc}") from exc


@contextmanager
def _gc_paused():
    """Lists of ints hold no cycles: building many of them needs no cycle collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
