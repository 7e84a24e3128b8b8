"""The prepared-data cache, ``ftcore preprocess`` and ``dataset_processes``.

Only tokenizers are loaded (the tiny Llama 3 one from conftest), except one
test that runs ``ftcore run`` twice to see the second run reuse the cache.
Whether the cache was used is checked by counting calls to the format
function, not only by the message: a hit must not format or tokenize a row.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import alpaca_rows, chat_rows, write_jsonl, write_recipe

from ftcore import hooks
from ftcore.cli import main
from ftcore.cli.preprocess import marked, percentile, summary, use_color
from ftcore.data import IGNORE_INDEX, cache, prepare
from ftcore.data.cache import cache_key, load_or_prepare, tokenizer_fingerprint
from ftcore.data.prepare import prepare_datasets, set_chat_template
from ftcore.errors import DataError
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe

REPO = Path(__file__).resolve().parents[1]
PLUGINS = load_plugins()
FORMATS = hooks.dataset_formats(PLUGINS)
TEMPLATES = hooks.chat_templates(PLUGINS)


# ── helpers ────────────────────────────────────────────────────────────────


@pytest.fixture(autouse=True)
def _messages_on_stdout():
    """ftcore's messages (data: cached to ..., notices) on stdout, as the CLI shows them."""
    from ftcore.log import console

    with console():
        yield


@pytest.fixture
def llama(tiny_llama):
    """A fresh tokenizer per test: some tests add tokens to it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def make_recipe(**keys):
    return validate(RawRecipe({"base_model": "unused/model", **keys}, None), PLUGINS)


class Counting:
    """The built-in formats, each call counted: a cache hit must make none."""

    def __init__(self):
        self.calls = 0
        self.formats = {}
        for name, ((function, options), plugin) in FORMATS.items():
            self.formats[name] = ((self._counted(function), options), plugin)

    def _counted(self, function):
        def counted(row, spec, ctx):
            self.calls += 1
            return function(row, spec, ctx)

        counted.__qualname__ = function.__qualname__
        return counted


def load(tokenizer, counting=None, template_text=None, **keys):
    """``load_or_prepare`` as ``ftcore run`` calls it; returns (data, format calls made)."""
    recipe = make_recipe(**keys)
    template = template_text or set_chat_template(recipe, tokenizer, TEMPLATES)
    counting = counting or Counting()
    before = counting.calls
    data = load_or_prepare(recipe, tokenizer, counting.formats, template)
    return data, counting.calls - before


def entries(root):
    return sorted(p.name for p in Path(root).iterdir()) if Path(root).exists() else []


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def same_examples(a, b):
    assert a.train == b.train and a.eval == b.eval
    assert a.examples == b.examples and a.origins == b.origins and a.eval_index == b.eval_index
    assert {k: v for k, v in a.stats.items() if k != "cache"} == {k: v for k, v in b.stats.items() if k != "cache"}
    assert [(s.path, s.sha256, s.rows) for s in a.sources] == [(s.path, s.sha256, s.rows) for s in b.sources]


def alpaca_keys(path, prepared, **keys):
    return {"datasets": [{"path": str(path), "type": "alpaca"}], "dataset_prepared_path": str(prepared), **keys}


# ── the cache: hit, miss, what the key covers ──────────────────────────────


def test_second_identical_prepare_reuses_the_cache_without_tokenizing(llama, alpaca_file, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    keys = alpaca_keys(alpaca_file, prepared, val_set_size=0.25)
    first, calls = load(llama, **keys)
    assert calls == 48
    folder = prepared / entries(prepared)[0]
    assert f"data: cached to {folder}" in capsys.readouterr().out
    assert first.stats["cache"] == {"path": str(folder), "reused": False}

    counting = Counting()
    second, calls = load(llama, counting, **keys)
    assert calls == 0, "a cache hit formatted rows"
    assert f"data: reused cache {folder}" in capsys.readouterr().out
    assert second.stats["cache"] == {"path": str(folder), "reused": True}
    same_examples(first, second)
    same_examples(second, prepare_datasets(make_recipe(**keys), llama, FORMATS))
    assert entries(prepared) == [folder.name]


def test_without_dataset_prepared_path_nothing_is_cached(llama, alpaca_file, tmp_path, capsys):
    data, calls = load(llama, datasets=[{"path": str(alpaca_file), "type": "alpaca"}])
    assert calls == 48 and "cache" not in data.stats and "cache" not in capsys.readouterr().out


def _edit_data(path, keys):
    rows = alpaca_rows(48)
    rows[7]["output"] = "changed"
    write_jsonl(path, rows)  # same file name, other bytes
    return keys


def _tokenizer_with_a_new_token(tokenizer):
    tokenizer.add_tokens(["zebra"])


# (what changes, how): each must give another key, so the data is prepared again.
CHANGES = {
    "data bytes": lambda keys, path, tok: _edit_data(path, keys),
    "format option": lambda keys, path, tok: {**keys, "datasets": [{**keys["datasets"][0], "system_prompt": "Hi."}]},
    "format field name": lambda keys, path, tok: {**keys, "datasets": [{**keys["datasets"][0],
                                                                         "field_input": "context"}]},
    "tokenizer": lambda keys, path, tok: _tokenizer_with_a_new_token(tok) or keys,
    "sequence_len": lambda keys, path, tok: {**keys, "sequence_len": 1024},
    "train_on_inputs": lambda keys, path, tok: {**keys, "train_on_inputs": True},
    "excess_length_strategy": lambda keys, path, tok: {**keys, "excess_length_strategy": "truncate"},
    "on_invalid_example": lambda keys, path, tok: {**keys, "on_invalid_example": "skip"},
    "default_system_message": lambda keys, path, tok: {**keys, "default_system_message": "Be brief."},
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_to_the_key_rebuilds(llama, alpaca_file, tmp_path, change, capsys):
    prepared = tmp_path / "prepared"
    keys = alpaca_keys(alpaca_file, prepared)
    load(llama, **keys)
    first = entries(prepared)
    keys = CHANGES[change](keys, alpaca_file, llama)
    data, calls = load(llama, **keys)
    assert calls == 48, f"{change}: the data was not prepared again"
    assert len(entries(prepared)) == 2 and "data: cached to" in capsys.readouterr().out
    same_examples(data, prepare_datasets(make_recipe(**keys), llama, FORMATS))
    assert entries(prepared) != first


def test_the_chat_template_text_is_in_the_key(llama, chat_file, tmp_path):
    from ftcore.api import CHAT_TEMPLATES

    LLAMA3 = CHAT_TEMPLATES["llama3"]

    prepared = tmp_path / "prepared"
    keys = {"datasets": [{"path": str(chat_file), "type": "chat_template"}], "chat_template": "llama3",
            "dataset_prepared_path": str(prepared)}
    _, calls = load(llama, **keys)
    assert calls == 48
    _, calls = load(llama, **keys)
    assert calls == 0
    tweaked = LLAMA3 + "{# the same turns, another text #}"
    _, calls = load(llama, template_text=tweaked, **keys)
    assert calls == 48 and len(entries(prepared)) == 2


def test_the_code_version_is_in_the_key(llama, alpaca_file, tmp_path, monkeypatch):
    keys = alpaca_keys(alpaca_file, tmp_path / "prepared")
    load(llama, **keys)
    monkeypatch.setattr(cache, "CODE_VERSION", cache.CODE_VERSION + 1)
    _, calls = load(llama, **keys)
    assert calls == 48 and len(entries(tmp_path / "prepared")) == 2


@pytest.mark.parametrize("override", [{"val_set_size": 0.1}, {"seed": 7, "val_set_size": 5}, {"learning_rate": 1e-3},
                                      {"dataset_processes": 2}, {"sample_packing": True}, {"output_dir": "elsewhere"}])
def test_keys_that_do_not_change_the_examples_reuse_the_cache(llama, alpaca_file, tmp_path, override):
    keys = alpaca_keys(alpaca_file, tmp_path / "prepared")
    load(llama, **keys)
    data, calls = load(llama, **keys, **override)
    assert calls == 0 and len(entries(tmp_path / "prepared")) == 1
    # the split is made again from the cached examples: the same as without a cache
    same_examples(data, prepare_datasets(make_recipe(**keys, **override), llama, FORMATS))


def test_the_same_tokenizer_loaded_from_elsewhere_has_the_same_fingerprint(tiny_llama, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    a, b = AutoTokenizer.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(copy)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    b.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_the_key_lists_what_it_was_built_from(llama, alpaca_file, tmp_path):
    import hashlib

    recipe = make_recipe(**alpaca_keys(alpaca_file, tmp_path / "p"), test_datasets=[
        {"path": str(alpaca_file), "type": "alpaca"}])
    key, parts = cache_key(recipe, llama, FORMATS, "template text")
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    entry = parts["datasets"][0]
    assert entry["files"] == [[str(alpaca_file.resolve()), hashlib.sha256(alpaca_file.read_bytes()).hexdigest()]]
    assert entry["format"]["type"] == "alpaca" and entry["format"]["plugin"] == "alpaca"
    assert entry["format"]["package_version"] and entry["format"]["source"]
    assert entry["options"]["field_output"] == "output"
    assert parts["test_datasets"][0]["files"] == entry["files"]
    assert parts["recipe"]["sequence_len"] == 2048 and parts["recipe"]["train_on_inputs"] is False
    assert parts["chat_template"] == hashlib.sha256(b"template text").hexdigest()
    assert parts["code"]["version"] == cache.CODE_VERSION
    assert all(parts["code"][m] for m in cache.CODE_MODULES)


def test_a_hub_dataset_is_keyed_by_name_and_revision(llama, tmp_path, capsys):
    recipe = make_recipe(datasets=[{"path": "someone/some-data", "type": "alpaca", "revision": "abc123"}])
    _, parts = cache_key(recipe, llama, FORMATS)
    hub = parts["datasets"][0]["hub"]
    assert hub["path"] == "someone/some-data" and hub["revision"] == "abc123" and hub["split"] == "train"
    assert hub["resolved"] is None  # HF_HUB_OFFLINE in the tests: the Hub is not asked
    assert "keyed by its name and revision only" in capsys.readouterr().out


def test_every_recipe_key_a_builtin_format_reads_is_in_the_key():
    read, owned_reads = set(), set()
    for path in [*(REPO / "plugins" / "formats").glob("*.py"), REPO / "core" / "data" / "chat.py"]:
        text = path.read_text(encoding="utf-8")
        read |= set(re.findall(r"\brecipe\.([a-z_]+)", text)) - {"get"}
        owned_reads |= set(re.findall(r"\brecipe\.get\(\"([a-z_]+)\"", text))
    assert read, "the formats read no recipe key? the pattern is wrong"
    missing = read - set(cache.RECIPE_KEYS)
    assert not missing, f"formats read {sorted(missing)}: add them to cache.RECIPE_KEYS"
    # a plugin's key (recipe.get) is in the key through the plugins' key models
    from ftcore.hooks import recipe_keys
    from ftcore.plugins_manager import load_plugins

    assert owned_reads, "no format reads a plugin's key? the pattern is wrong"
    unowned = owned_reads - set(recipe_keys(load_plugins()))
    assert not unowned, f"formats read {sorted(unowned)} with recipe.get, which no plugin's recipe_keys declares"


# ── a broken or half-written cache ─────────────────────────────────────────


def _truncate(folder):
    npz = folder / "examples.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])


def _flip_a_byte(folder):
    npz = folder / "examples.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))


def _bad_offsets(folder):
    import numpy as np

    with np.load(folder / "examples.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["offsets"][3] = 10**6
    np.savez(folder / "examples.npz", **arrays)


CORRUPTIONS = {
    "truncated arrays": _truncate,
    "a flipped byte": _flip_a_byte,
    "inconsistent offsets": _bad_offsets,
    "no meta.json": lambda folder: (folder / "meta.json").unlink(),
    "garbled meta.json": lambda folder: (folder / "meta.json").write_text("{not json", encoding="utf-8"),
    "empty folder": lambda folder: [p.unlink() for p in folder.iterdir()],
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_a_corrupt_entry_is_rebuilt_with_a_notice(llama, alpaca_file, tmp_path, corrupt, capsys):
    prepared = tmp_path / "prepared"
    keys = alpaca_keys(alpaca_file, prepared, val_set_size=0.25)
    good, _ = load(llama, **keys)
    folder = prepared / entries(prepared)[0]
    CORRUPTIONS[corrupt](folder)
    capsys.readouterr()
    data, calls = load(llama, **keys)
    out = capsys.readouterr().out
    assert f"notice: the data cache {folder} cannot be read" in out and f"data: cached to {folder}" in out
    assert calls == 48
    same_examples(data, good)
    assert entries(prepared) == [folder.name]  # replaced in place, nothing left beside it
    _, calls = load(llama, **keys)
    assert calls == 0


def test_a_crash_while_writing_leaves_no_entry(llama, alpaca_file, tmp_path, monkeypatch):
    import numpy as np

    prepared = tmp_path / "prepared"
    keys = alpaca_keys(alpaca_file, prepared)

    def crash(path, **arrays):
        Path(path).write_bytes(b"PK half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        load(llama, **keys)
    assert entries(prepared) == []  # the temporary folder is gone, no entry was renamed into place
    monkeypatch.undo()
    _, calls = load(llama, **keys)
    assert calls == 48 and len(entries(prepared)) == 1


def test_an_unwritable_cache_is_a_notice_not_an_error(llama, alpaca_file, tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x", encoding="utf-8")
    data, calls = load(llama, **alpaca_keys(alpaca_file, blocker / "prepared"))
    assert calls == 48 and len(data.train) == 48
    assert "notice: could not write the data cache" in capsys.readouterr().out


def test_a_bad_row_writes_no_cache(llama, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(alpaca_rows(1)[0]) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl: row 2: malformed JSON"):
        load(llama, **alpaca_keys(path, tmp_path / "prepared"))
    with pytest.raises(DataError, match="val_set_size 10.0 leaves no training examples"):
        load(llama, **alpaca_keys(path, tmp_path / "prepared", val_set_size=10, on_invalid_example="skip"))
    assert not (tmp_path / "prepared").exists()


def test_cached_files_hold_no_pickle(llama, alpaca_file, tmp_path):
    import numpy as np

    keys = alpaca_keys(alpaca_file, tmp_path / "prepared")
    data, _ = load(llama, **keys)
    folder = tmp_path / "prepared" / entries(tmp_path / "prepared")[0]
    assert sorted(p.name for p in folder.iterdir()) == ["examples.npz", "meta.json"]
    with np.load(folder / "examples.npz", allow_pickle=False) as npz:
        assert npz["input_ids"].dtype == np.int32 and npz["labels"].dtype == np.int32
        assert npz["input_ids"].tolist() == [t for e in data.train for t in e["input_ids"]]
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["key"].startswith(folder.name) and meta["train_examples"] == 48
    assert meta["built_from"]["datasets"][0]["files"][0][0] == str(alpaca_file.resolve())


# ── dataset_processes ──────────────────────────────────────────────────────


@pytest.fixture
def parallel(monkeypatch):
    """Workers even for small data, in several small chunks; counts the parallel runs."""
    monkeypatch.setattr(prepare, "PARALLEL_MIN_ROWS", 1)
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 7)
    runs = []
    original = prepare._parallel

    def spy(*args):
        runs.append(args[-1])
        yield from original(*args)

    monkeypatch.setattr(prepare, "_parallel", spy)
    return runs


def _mixed_file(tmp_path):
    lines = [json.dumps(r) for r in alpaca_rows(40)]
    lines[5] = '{"instruction": "x", '
    lines[17] = json.dumps({"instruction": "no output"})
    lines[30] = json.dumps({"instruction": "Repeat.", "output": " ".join(["red"] * 400)})  # too long
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_two_processes_give_exactly_the_examples_of_one(llama, tmp_path, chat_file, parallel):
    mixed = _mixed_file(tmp_path)
    keys = {"datasets": [{"path": str(mixed), "type": "alpaca"}, {"path": str(chat_file), "type": "chat_template"}],
            "chat_template": "llama3", "on_invalid_example": "skip", "sequence_len": 400, "val_set_size": 0.2}
    template = set_chat_template(make_recipe(**keys), llama, TEMPLATES)
    one = prepare_datasets(make_recipe(**keys), llama, FORMATS, template)
    assert not parallel
    two = prepare_datasets(make_recipe(**keys, dataset_processes=2), llama, FORMATS, template)
    assert parallel == [2, 2]  # both datasets went through the workers
    same_examples(one, two)
    assert one.stats["train"]["rows_dropped"] == {"malformed JSON": 1, "missing field": 1,
                                                  "longer than sequence_len (400)": 1}


def test_two_processes_stop_at_the_same_first_bad_row(llama, tmp_path, parallel):
    keys = {"datasets": [{"path": str(_mixed_file(tmp_path)), "type": "alpaca"}]}
    with pytest.raises(DataError) as one:
        prepare_datasets(make_recipe(**keys), llama, FORMATS)
    with pytest.raises(DataError) as two:
        prepare_datasets(make_recipe(**keys, dataset_processes=2), llama, FORMATS)
    assert str(one.value) == str(two.value) and "mixed.jsonl: row 6: malformed JSON" in str(two.value)
    assert parallel == [2]


def test_a_cache_written_with_two_processes_is_reused_by_one(llama, alpaca_file, tmp_path, parallel):
    keys = alpaca_keys(alpaca_file, tmp_path / "prepared")
    two, _ = load(llama, **keys, dataset_processes=2)
    assert parallel == [2]
    one, calls = load(llama, **keys)
    assert calls == 0
    same_examples(one, two)


# ── the summary table, by hand ─────────────────────────────────────────────

SIZED = textwrap.dedent('''
    """type: sized -- rows {"length": n, "trained": k}: n tokens, the last k trained."""
    from ftcore import hookimpl
    from ftcore.api import RowError

    FTCORE_CONTRACT = "1"


    def sized(row, dataset, ctx):
        if "length" not in row:
            raise RowError("missing field 'length'", "missing field")
        ids = [10 + i % 50 for i in range(row["length"])]
        untrained = row["length"] - row["trained"]
        return {"input_ids": ids, "labels": [-100] * untrained + ids[untrained:]}


    @hookimpl
    def register_dataset_formats(register):
        register("sized", sized)
''')

# length, trained; kept ones marked
SIZED_ROWS = [{"length": 4, "trained": 2},  # kept: 2 trained
              {"length": 10, "trained": 3},  # kept: 3
              {"trained": 1},  # missing field
              {"length": 7, "trained": 0},  # no trained tokens
              {"length": 40, "trained": 5},  # longer than sequence_len (32)
              {"length": 6, "trained": 6},  # kept: 5 (the first token never counts)
              {"length": 20, "trained": 1},  # kept: 1
              {"length": 12, "trained": 4}]  # kept: 4
TEST_ROWS = [{"length": 9, "trained": 1}, {"length": 8, "trained": 2}]


@pytest.fixture
def sized_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "sized_format.py").write_text(SIZED, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return "sized_format"


def test_editing_a_format_function_rebuilds(llama, tmp_path, sized_plugin):
    from ftcore.plugins_manager import load_plugins as fresh_plugins

    write_jsonl(tmp_path / "sized.jsonl", SIZED_ROWS[:2])
    plugins = fresh_plugins()
    plugins.add_recipe_plugins([sized_plugin])
    keys = {"base_model": "unused/model", "plugins": [sized_plugin], "sequence_len": 32,
            "datasets": [{"path": str(tmp_path / "sized.jsonl"), "type": "sized"}],
            "dataset_prepared_path": str(tmp_path / "prepared")}
    recipe = validate(RawRecipe(keys, None), plugins)
    formats = hooks.dataset_formats(plugins)
    first, parts = cache_key(recipe, llama, formats)
    assert parts["datasets"][0]["format"]["plugin"] == sized_plugin
    source = tmp_path / "plugin" / "sized_format.py"
    source.write_text(source.read_text(encoding="utf-8") + "# a change\n", encoding="utf-8")
    assert cache_key(recipe, llama, formats)[0] != first


def _table(text):
    """``{row label: [cells]}`` from the summary table."""
    out = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 1:
            out[cells[0]] = cells[1:]
    return out


def test_the_summary_table_against_a_hand_computed_case(tiny_llama, tmp_path, sized_plugin, capsys, monkeypatch):
    write_jsonl(tmp_path / "sized.jsonl", SIZED_ROWS)
    write_jsonl(tmp_path / "test.jsonl", TEST_ROWS)
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), plugins=[sized_plugin], sequence_len=32,
                          on_invalid_example="skip", datasets=[{"path": "sized.jsonl", "type": "sized"}],
                          test_datasets=[{"path": "test.jsonl", "type": "sized"}])
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 0
    table = _table(capsys.readouterr().out)
    assert table["rows"] == ["datasets", "test_datasets"]
    assert table["read"] == ["8", "2"] and table["kept"] == ["5", "2"] and table["dropped"] == ["3", "0"]
    assert table["missing field"] == ["1", "0"] and table["no trained tokens"] == ["1", "0"]
    assert table["longer than sequence_len (32)"] == ["1", "0"]
    assert table["split"] == ["train", "eval"] and table["examples"] == ["5", "2"]
    # train lengths 4, 10, 6, 20, 12 (sorted 4 6 10 12 20); eval 9, 8
    assert table["tokens"] == ["52", "17"] and table["trained tokens"] == ["15", "3"]
    assert table["length min"] == ["4", "8"] and table["length max"] == ["20", "9"]
    assert table["length p50"] == ["10", "8"]  # nearest rank: the 3rd of 5, the 1st of 2
    assert table["length p90"] == ["20", "9"] and table["length p99"] == ["20", "9"]
    assert table["length mean"] == ["10.4", "8.5"]


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (1, 50, 90, 99, 100)] == [1, 50, 90, 99, 100]
    assert percentile([7], 50) == 7 and percentile([1, 2], 50) == 1 and percentile([1, 2], 51) == 2


def test_summary_without_eval_shows_dashes(llama, alpaca_file):
    data = prepare_datasets(make_recipe(datasets=[{"path": str(alpaca_file), "type": "alpaca"}]), llama, FORMATS)
    table = _table(summary(data))
    assert table["split"] == ["train", "eval"] and table["length min"][1] == "-"
    assert table["tokens"][0] == f"{data.stats['train']['tokens']:,}"
    assert table["trained tokens"][0] == f"{data.stats['train']['trained_tokens']:,}"


# ── ftcore preprocess: --dump, --limit, --show ──────────────────────────────


@pytest.fixture
def preprocess_recipe(tiny_llama, tmp_path):
    rows = alpaca_rows(12)
    lines = [json.dumps(r) for r in rows]
    lines.insert(4, json.dumps({"instruction": "no output"}))  # row 5: dropped under skip
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_jsonl(tmp_path / "chat.jsonl", chat_rows(5))
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), chat_template="llama3",
                          datasets=[{"path": "data.jsonl", "type": "alpaca"},
                                    {"path": "chat.jsonl", "type": "chat_template"}],
                          val_set_size=4, on_invalid_example="skip", dataset_prepared_path="prepared")
    return recipe, rows


def _trained_text(tokenizer, record):
    ids = [t for t, label in zip(record["input_ids"], record["labels"]) if label != IGNORE_INDEX]
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def test_dump_is_in_dataset_order_with_decoded_text_and_labels(preprocess_recipe, tmp_path, llama, monkeypatch,
                                                                 capsys):
    recipe, rows = preprocess_recipe
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe), "--dump", "dump.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "data: cached to prepared/" in out and "dump: 17 examples written to dump.jsonl" in out
    records = [json.loads(line) for line in (tmp_path / "dump.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 17  # 12 of the 13 alpaca rows, then the 5 conversations
    alpaca = [r for r in records if r["file"] == "data.jsonl"]
    assert [r["row"] for r in alpaca] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13]  # file order, row 5 dropped
    assert [r["row"] for r in records if r["file"] == "chat.jsonl"] == [1, 2, 3, 4, 5]
    assert records[: len(alpaca)] == alpaca  # the datasets in recipe order
    for record, row in zip(alpaca, rows):
        assert record["text"] == llama.decode(record["input_ids"], clean_up_tokenization_spaces=False)
        assert record["text"].startswith("<|begin_of_text|>") and record["text"].count("<|begin_of_text|>") == 1
        # with the recipe's chat_template, alpaca rows are rendered as a user turn and the reply
        assert (f"<|start_header_id|>user<|end_header_id|>\n\n{row['instruction']}\n\n{row['input']}<|eot_id|>"
                in record["text"])
        assert _trained_text(llama, record) == row["output"] + "<|eot_id|>"
        assert len(record["labels"]) == len(record["input_ids"])
    assert sum(r["split"] == "eval" for r in records) == 4
    # the same examples as prepare gives, split marked the same way
    data = prepare_datasets(make_recipe(**{**_recipe_keys(recipe), "dataset_prepared_path": None}), llama, FORMATS,
                            set_chat_template(make_recipe(chat_template="llama3"), llama, TEMPLATES))
    assert [r["input_ids"] for r in records if r["split"] == "eval"] == [e["input_ids"] for e in data.eval]
    assert [r["input_ids"] for r in records if r["split"] == "train"] == [e["input_ids"] for e in data.train]

    # a second run reuses the cache and dumps the same
    assert main(["preprocess", str(recipe), "--dump", "again.jsonl"]) == 0
    assert "data: reused cache prepared/" in capsys.readouterr().out
    assert (tmp_path / "again.jsonl").read_bytes() == (tmp_path / "dump.jsonl").read_bytes()


def _recipe_keys(path):
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def test_limit_reads_the_first_rows_of_each_dataset_and_skips_the_cache(preprocess_recipe, tmp_path, monkeypatch,
                                                                         capsys):
    recipe, _ = preprocess_recipe
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe), "val_set_size=1", "--limit", "3", "--dump", "d.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "the cache is neither read nor written" in out and not (tmp_path / "prepared").exists()
    assert _table(out)["read"] == ["6"]  # 3 + 3
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["file"], r["row"]) for r in records] == [("data.jsonl", 1), ("data.jsonl", 2), ("data.jsonl", 3),
                                                         ("chat.jsonl", 1), ("chat.jsonl", 2), ("chat.jsonl", 3)]


@pytest.mark.parametrize("bad", ["0", "-2", "x"])
def test_limit_and_show_must_be_positive(preprocess_recipe, tmp_path, bad):
    recipe, _ = preprocess_recipe
    for option in ("--limit", "--show"):
        with pytest.raises(SystemExit) as info:
            main(["preprocess", str(recipe), option, bad])
        assert info.value.code == 2


def test_show_marks_trained_text_without_colour_off_a_terminal(preprocess_recipe, tmp_path, monkeypatch, capsys):
    recipe, rows = preprocess_recipe
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe), "--show", "2"]) == 0
    out = capsys.readouterr().out
    assert "\033[" not in out
    assert "first 2 of 17 examples ([[trained]], the rest not trained):" in out
    assert re.search(r"── example 1 · (train|eval) · data.jsonl row 1 · \d+ tokens, \d+ trained ──", out)
    assert f"<|start_header_id|>assistant<|end_header_id|>\n\n[[{rows[0]['output']}<|eot_id|>]]\n" in out
    assert f"[[{rows[1]['output']}<|eot_id|>]]" in out and f"[[{rows[2]['output']}" not in out


def test_marked_text_in_colour(llama, alpaca_file):
    data = prepare_datasets(make_recipe(datasets=[{"path": str(alpaca_file), "type": "alpaca"}]), llama, FORMATS)
    coloured = marked(data.train[0], llama, color=True)
    assert coloured.startswith("\033[2m<|begin_of_text|>")
    assert "\033[1;32m" + alpaca_rows(1)[0]["output"] + "<|eot_id|>\033[0m" in coloured
    assert re.sub(r"\033\[[0-9;]*m", "", coloured) == llama.decode(data.train[0]["input_ids"])


def _on_a_terminal(args, env):
    """Run ``ftcore`` with stdout on a pseudo-terminal; return what it printed."""
    import pty

    master, slave = pty.openpty()
    done = subprocess.run([sys.executable, "-m", "ftcore", *args], stdout=slave, stderr=subprocess.PIPE,
                          env=env, timeout=120, cwd=env["CWD"])
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert done.returncode == 0, done.stderr
    return b"".join(chunks).decode("utf-8", "replace")


def test_show_uses_colour_on_a_terminal(preprocess_recipe, tmp_path):
    recipe, _ = preprocess_recipe
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["CWD"] = str(tmp_path)
    coloured = _on_a_terminal(["preprocess", str(recipe), "val_set_size=1", "--show", "1", "--limit", "2"], env)
    assert "\033[1;32m" in coloured and "[[" not in coloured


class _Terminal:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty, no_color, expected", [(True, None, True), (True, "1", False), (True, "", True),
                                                     (False, None, False)])
def test_colour_only_on_a_terminal_without_no_color(monkeypatch, tty, no_color, expected):
    monkeypatch.delenv("NO_COLOR", raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    assert use_color(_Terminal(tty)) is expected


# ── errors: exit 2, the file and row named, nothing written ────────────────


def test_a_bad_row_exits_2_naming_file_and_row_and_writes_nothing(tiny_llama, tmp_path):
    lines = [json.dumps(r) for r in alpaca_rows(3)]
    lines.insert(2, json.dumps({"instruction": "Do it."}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), dataset_prepared_path="prepared",
                          datasets=[{"path": "data.jsonl", "type": "alpaca"}])
    before = listing(tmp_path)
    done = subprocess.run([sys.executable, "-m", "ftcore", "preprocess", str(recipe), "--dump", "dump.jsonl",
                           "--show", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert done.stderr.startswith("error: data.jsonl: row 3: missing field 'output'"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert listing(tmp_path) == before  # no dump, no cache folder


@pytest.mark.parametrize("args, message", [
    (["lerning_rate=1"], "lerning_rate"),
    (["val_set_size=100", "on_invalid_example=skip"], "val_set_size 100.0 leaves no training examples"),
    (["datasets[0].path=./missing.jsonl"], "no such file"),
    (["--show", "2", "--dump", "no/such/folder/d.jsonl"], "--dump: no such folder"),
])
def test_other_errors_exit_2_and_write_nothing(tiny_llama, tmp_path, args, message, monkeypatch, capsys):
    write_jsonl(tmp_path / "data.jsonl", alpaca_rows(4))
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), dataset_prepared_path="prepared",
                          datasets=[{"path": "data.jsonl", "type": "alpaca"}])
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    dump = [] if "--dump" in args else ["--dump", "dump.jsonl"]
    assert main(["preprocess", str(recipe), *args, *dump]) == 2
    assert message in capsys.readouterr().err
    assert listing(tmp_path) == before


def test_help_lists_preprocess_without_importing_torch():
    probe = ("import sys\nfrom ftcore.cli import main\ntry:\n    main(['preprocess', '--help'])\n"
             "except SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "--dump FILE" in done.stdout and "--limit N" in done.stdout and "--show N" in done.stdout
    assert "TORCH False False" in done.stdout


# ── ftcore run reuses the cache ────────────────────────────────────────────


def test_a_second_run_reuses_the_prepared_data(tiny_llama, alpaca_file, tmp_path, capsys):
    from ftcore.recipe import load_raw
    from ftcore.run import run

    def run_once(output):
        plugins = load_plugins()
        raw = load_raw(str(recipe), [f"output_dir={tmp_path / output}"], {})
        return run(validate(raw, plugins), plugins)

    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), adapter="lora", max_steps=1,
                          datasets=[{"path": str(alpaca_file), "type": "alpaca"}], val_set_size=0.25,
                          dataset_prepared_path=str(tmp_path / "prepared"), micro_batch_size=2)
    run_once("first")
    assert "data: cached to" in capsys.readouterr().out
    run_once("second")
    out = capsys.readouterr().out
    assert "data: reused cache" in out and "notice: dataset_prepared_path" not in out
    manifests = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("first", "second")]
    assert [m["data"]["cache"]["reused"] for m in manifests] == [False, True]
    assert manifests[0]["data"]["files"] == manifests[1]["data"]["files"]
    assert manifests[0]["data"]["train"] == manifests[1]["data"]["train"]


# ── a third party's examples: extras, and formats or handlers that raise ────

EXTRAS = textwrap.dedent('''
    """Formats giving extras, formats that fail, an ``audio`` part whose handler fails, a collator that looks."""
    import json
    import os

    from ftcore import hookimpl
    from ftcore.api import PaddingCollator, RecipeKeys

    FTCORE_CONTRACT = "1"


    class Keys(RecipeKeys):
        weight_scale: float = 1.0


    def weighted(row, dataset, ctx):
        ids = [10 + i for i in range(row["length"])]
        scale = ctx.recipe.weight_scale
        return {"input_ids": ids, "labels": ids, "weights": [row["weight"] * scale] * row["length"],
                "source": {"id": row["id"], "tags": ("a", "b")}}


    def boom(row, dataset, ctx):
        return {"input_ids": [10, 11, 12], "labels": [10, 11, 12], "note": row["note"]}  # KeyError without a note


    def unjsonable(row, dataset, ctx):
        return {"input_ids": [10, 11, 12], "labels": [10, 11, 12], "weights": {1.5}}


    def audio(part):
        raise ValueError("no audio decoder here")


    class Looking:
        """Pads, and writes each batch's weights to $EXTRAS_SEEN."""

        def __init__(self, tokenizer):
            self.padding = PaddingCollator(tokenizer.pad_token_id)

        def __call__(self, examples):
            with open(os.environ["EXTRAS_SEEN"], "a", encoding="utf-8") as fh:
                fh.write(json.dumps([e.get("weights") for e in examples]) + "\\n")
            return self.padding(examples)


    @hookimpl(tryfirst=True)
    def build_collator(recipe, tokenizer, stash):
        return Looking(tokenizer) if os.environ.get("EXTRAS_SEEN") else None


    @hookimpl
    def recipe_keys(register):
        register(Keys)


    @hookimpl
    def register_dataset_formats(register):
        register("weighted", weighted)
        register("boom", boom)
        register("unjsonable", unjsonable)


    @hookimpl
    def register_content_parts(register):
        register("audio", audio)
''')

WEIGHTED_ROWS = [{"length": 4 + i % 3, "weight": 0.5 + i, "id": f"r{i}"} for i in range(8)]


@pytest.fixture
def extras_plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "extras_format.py").write_text(EXTRAS, encoding="utf-8")
    monkeypatch.delitem(sys.modules, "extras_format", raising=False)  # this test's copy, not an earlier one's
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return "extras_format"


def extras_recipe(tmp_path, model, plugin, rows, type, **keys):
    write_jsonl(tmp_path / f"{type}.jsonl", rows)
    return write_recipe(tmp_path / "r.yaml", **{**dict(base_model=str(model), plugins=[plugin], sequence_len=32,
                                                       datasets=[{"path": f"{type}.jsonl", "type": type}],
                                                       dataset_prepared_path="prepared"), **keys})


def test_a_formats_extras_are_cached_reused_and_dumped(tiny_llama, tmp_path, extras_plugin, monkeypatch, capsys):
    recipe = extras_recipe(tmp_path, tiny_llama, extras_plugin, WEIGHTED_ROWS, "weighted")
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 0
    assert "data: cached to prepared/" in capsys.readouterr().out
    assert main(["preprocess", str(recipe), "--dump", "dump.jsonl"]) == 0
    assert "data: reused cache prepared/" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "dump.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["weights"] for r in records] == [[row["weight"]] * row["length"] for row in WEIGHTED_ROWS]
    assert [r["source"] for r in records] == [{"id": row["id"], "tags": ["a", "b"]} for row in WEIGHTED_ROWS]
    assert [r["row"] for r in records] == list(range(1, 9))
    # the reused examples carry their extras as the format gave them (in their JSON form)
    from ftcore.api import Stash

    plugins = load_plugins()
    plugins.add_recipe_plugins([extras_plugin])
    from ftcore.recipe import load_raw

    validated = validate(load_raw(str(recipe), [], {}), plugins)
    tokenizer = hooks.load_tokenizer(plugins, validated, Stash())
    template = set_chat_template(validated, tokenizer, hooks.chat_templates(plugins))
    data = load_or_prepare(validated, tokenizer, hooks.dataset_formats(plugins), template,
                           parts=hooks.content_parts(plugins), plugins=plugins)
    assert data.stats["cache"]["reused"]
    fresh = prepare_datasets(validated, tokenizer, hooks.dataset_formats(plugins), template)
    assert data.examples == fresh.examples and data.examples[0]["weights"] == [0.5] * 4


def test_a_plugin_key_that_changes_examples_rebuilds_the_cache(tiny_llama, tmp_path, extras_plugin, monkeypatch,
                                                              capsys):
    recipe = extras_recipe(tmp_path, tiny_llama, extras_plugin, WEIGHTED_ROWS, "weighted")
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 0
    assert main(["preprocess", str(recipe), "weight_scale=2", "--dump", "dump.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "reused" not in out and len(entries(tmp_path / "prepared")) == 2
    first = json.loads((tmp_path / "dump.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first["weights"] == [1.0] * 4


@pytest.mark.parametrize("processes", [1, 2])
def test_a_format_that_raises_names_its_plugin_the_file_and_the_row(tiny_llama, tmp_path, extras_plugin,
                                                                    monkeypatch, capsys, processes):
    rows = [{"note": f"n{i}"} for i in range(2100)]  # over PARALLEL_MIN_ROWS: two processes do share the work
    del rows[2049]["note"]
    recipe = extras_recipe(tmp_path, tiny_llama, extras_plugin, rows, "boom", dataset_processes=processes)
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: boom.jsonl: row 2050: plugin '{extras_plugin}' ({extras_plugin}, "), err
    assert "raised in its dataset format 'boom': KeyError: 'note'" in err
    assert f"remove '{extras_plugin}' from the recipe's plugins: list" in err and "Traceback" not in err
    assert not (tmp_path / "prepared").exists()


def test_a_bad_row_before_a_failing_row_is_reported_first_with_two_processes(tiny_llama, tmp_path, extras_plugin,
                                                                            monkeypatch, capsys):
    rows = [{"note": f"n{i}"} for i in range(2100)]
    del rows[2049]["note"]
    write_jsonl(tmp_path / "boom.jsonl", rows)
    lines = (tmp_path / "boom.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2048] = "{not json"  # row 2049, in the same chunk of rows as row 2050 (CHUNK_ROWS)
    (tmp_path / "boom.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), plugins=[extras_plugin],
                          datasets=[{"path": "boom.jsonl", "type": "boom"}], dataset_processes=2)
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 2
    assert capsys.readouterr().err.startswith("error: boom.jsonl: row 2049: malformed JSON")


def test_extras_that_are_not_json_are_the_plugins_error(tiny_llama, tmp_path, extras_plugin, monkeypatch, capsys):
    recipe = extras_recipe(tmp_path, tiny_llama, extras_plugin, [{"n": 1}], "unjsonable")
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: unjsonable.jsonl: row 1: plugin '{extras_plugin}' ({extras_plugin}, "), err
    assert "its dataset format 'unjsonable' gave no usable example: the example's extra 'weights' is not " \
           "JSON-serialisable" in err


def test_a_content_part_handler_that_raises_names_its_own_plugin(tiny_llama, tmp_path, extras_plugin, monkeypatch,
                                                                  capsys):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": [{"type": "audio", "path": "a.wav"}]},
                          {"role": "assistant", "content": "Hello"}]}]
    recipe = extras_recipe(tmp_path, tiny_llama, extras_plugin, rows, "chat_template", chat_template="llama3")
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", str(recipe)]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"error: chat_template.jsonl: row 2: plugin '{extras_plugin}' ({extras_plugin}, "), err
    assert "raised in its 'audio' content-part handler: ValueError: no audio decoder here" in err


def test_the_key_covers_the_content_part_handlers_source(llama, tmp_path, alpaca_file, extras_plugin):
    import importlib

    module = importlib.import_module(extras_plugin)
    recipe = make_recipe(**alpaca_keys(alpaca_file, tmp_path / "p"))
    plain, _ = cache_key(recipe, llama, FORMATS)
    first, parts = cache_key(recipe, llama, FORMATS, None, {"audio": (module.audio, extras_plugin)})
    assert first != plain and parts["content_parts"]["audio"]["plugin"] == extras_plugin
    source = tmp_path / "plugin" / f"{extras_plugin}.py"
    source.write_text(source.read_text(encoding="utf-8") + "# a change\n", encoding="utf-8")
    assert cache_key(recipe, llama, FORMATS, None, {"audio": (module.audio, extras_plugin)})[0] != first


@pytest.mark.slow
def test_a_formats_extras_reach_the_collator(tiny_llama, tmp_path, extras_plugin, monkeypatch):
    from test_run import run_recipe

    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("EXTRAS_SEEN", str(seen))
    monkeypatch.chdir(tmp_path)
    recipe = extras_recipe(tmp_path, tiny_llama, extras_plugin, WEIGHTED_ROWS, "weighted", val_set_size=0,
                           micro_batch_size=4, max_steps=2, learning_rate=1e-3, output_dir=str(tmp_path / "out"),
                           dataset_prepared_path=str(tmp_path / "prepared"))
    run_recipe(recipe)
    batches = [json.loads(line) for line in seen.read_text(encoding="utf-8").splitlines()]
    given = sorted(map(json.dumps, ([row["weight"]] * row["length"] for row in WEIGHTED_ROWS)))
    assert batches and all(len(b) == 4 for b in batches)
    assert sorted(json.dumps(w) for b in batches[:2] for w in b) == given
