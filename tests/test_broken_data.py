"""Broken data files: each one is a clear error (exit 2) naming the file and the row or line, never a traceback.

The committed corpus is tests/fixtures/broken_data/ (small files); cases that must be built at test time
(a FIFO, a symlink loop, a row of megabytes, a CSV cell over 131,072 characters, deeply nested JSON) are
made in tmp_path. Each case runs through ``ftcore preprocess`` in-process; a selection through ``ftcore run``.
With ``on_invalid_example: skip`` the cases whose bad rows can be skipped prepare, the bad rows counted.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import write_recipe

from ftcore.cli import main

CORPUS = Path(__file__).parent / "fixtures" / "broken_data"

# file, format type, extra dataset keys, what stderr must say (besides the file name), skippable
ALPACA = "alpaca"
CHAT = "chat_template"
CASES = [
    ("invalid_json_line3.jsonl", ALPACA, {}, ["row 3", "malformed JSON"], True),
    ("truncated_last_line.jsonl", ALPACA, {}, ["row 3", "malformed JSON"], True),
    ("missing_field.jsonl", ALPACA, {}, ["row 2", "missing field 'output'"], True),
    ("mistyped_field.jsonl", ALPACA, {}, ["row 2", "must be a string"], True),
    ("number_field.jsonl", ALPACA, {}, ["row 2", "must be a string"], True),
    ("null_field.jsonl", ALPACA, {}, ["row 2", "missing field 'output'"], True),
    ("not_object.jsonl", ALPACA, {}, ["row 2", "JSON object"], True),
    ("string_row.jsonl", ALPACA, {}, ["row 2", "JSON object"], True),
    ("nan_value.json", ALPACA, {}, ["row 2", "output"], True),
    ("malformed.json", ALPACA, {}, ["line 3", "malformed JSON"], False),
    ("truncated.json", ALPACA, {}, ["line 3", "malformed JSON"], False),
    ("scalar.json", ALPACA, {}, ["expected a JSON object"], False),
    ("list_of_strings.json", ALPACA, {}, ["row 1", "JSON object"], True),
    ("empty_list.json", ALPACA, {}, ["holds no rows"], False),
    ("empty.jsonl", ALPACA, {}, ["holds no rows"], False),
    ("whitespace.jsonl", ALPACA, {}, ["holds no rows"], False),
    ("empty.json", ALPACA, {}, ["holds no rows"], False),
    ("empty.csv", ALPACA, {}, ["holds no rows"], False),
    ("header_only.csv", ALPACA, {}, ["holds no rows"], False),
    ("whitespace.txt", "completion", {"ds_type": "text"}, ["holds no rows"], False),
    ("not_utf8.jsonl", ALPACA, {}, ["row 2", "UTF-8"], True),
    ("not_utf8.csv", ALPACA, {}, ["line 3", "UTF-8"], False),
    ("not_utf8.json", ALPACA, {}, ["line 3", "UTF-8"], False),
    ("not_utf8.txt", "completion", {"ds_type": "text"}, ["line 2", "UTF-8"], False),
    ("csv_missing_column.csv", ALPACA, {}, ["row 2", "missing field 'output'"], True),
    ("csv_empty_cell.csv", ALPACA, {}, ["row 3", "missing field 'output'"], True),
    ("unknown_role.jsonl", CHAT, {}, ["row 2", "wizard"], True),
    ("empty_conversation.jsonl", CHAT, {}, ["row 2"], True),
    ("no_assistant.jsonl", CHAT, {}, ["row 2"], True),
    ("messages_not_list.jsonl", CHAT, {}, ["row 2"], True),
    ("message_content_null.jsonl", CHAT, {}, ["row 2"], True),
    ("message_no_role.jsonl", CHAT, {}, ["row 2"], True),
    ("sharegpt_bad_from.jsonl", "sharegpt", {}, ["row 2", "alien"], True),
    ("completion_empty_text.jsonl", "completion", {}, ["row 2", "empty"], True),
    ("completion_missing_text.jsonl", "completion", {}, ["row 2", "missing field 'text'"], True),
    ("combo_many_bad.jsonl", ALPACA, {}, ["row 3", "malformed JSON"], True),
    ("all_too_long.jsonl", ALPACA, {}, ["sequence_len", "32", "excess_length_strategy: truncate"], False),
    ("wrong_columns.parquet", ALPACA, {}, ["question", "answer", "instruction", "output"], False),
    ("wrong_columns.arrow", ALPACA, {}, ["question", "answer", "instruction", "output"], False),
    ("null_cell.parquet", ALPACA, {}, ["row 2", "missing field 'instruction'"], True),
    ("nan_cell.parquet", ALPACA, {}, ["row 1", "must be a string"], True),
    ("garbage.parquet", ALPACA, {}, ["cannot read as parquet"], False),
    ("garbage.arrow", ALPACA, {}, ["cannot read as arrow"], False),
    ("csv_unclosed_quote.csv", ALPACA, {}, ["line 2", "never closed"], False),
    ("csv_extra_cells.csv", ALPACA, {}, ["row 2", "4 cells", "header names 2"], True),
    ("utf16.jsonl", ALPACA, {}, ["UTF-16", "save it as UTF-8"], False),
]
TEMPLATE_CASES = {"unknown_role.jsonl", "empty_conversation.jsonl", "no_assistant.jsonl", "messages_not_list.jsonl",
                  "message_content_null.jsonl", "message_no_role.jsonl", "sharegpt_bad_from.jsonl"}
ALL_BAD = {"list_of_strings.json", "csv_missing_column.csv", "nan_cell.parquet", "csv_extra_cells.csv"}  # no row of these is usable
GOOD = [("bom.jsonl", ALPACA, {}), ("bom.json", ALPACA, {}), ("bom.csv", ALPACA, {}),
        ("bom.txt", "completion", {"ds_type": "text"})]


def _recipe(tmp_path, model, data, type_, extra=None, **keys):
    spec = {"path": str(data), "type": type_, **(extra or {})}
    keys.setdefault("sequence_len", 32)
    return write_recipe(tmp_path / "recipe.yaml", base_model=str(model), datasets=[spec],
                        output_dir=str(tmp_path / "out"), max_steps=1, micro_batch_size=1, **keys)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_clear(code, err, data, expected, tmp_path):
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error:") or "\nerror:" in err, err
    assert Path(data).name in err, err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "out").exists()


def test_corpus_is_large_enough():
    assert len(CASES) >= 32
    assert all((CORPUS / name).is_file() for name, *_ in CASES + GOOD)
    assert sum(f.stat().st_size for f in CORPUS.iterdir()) < 100_000


@pytest.mark.parametrize("name,type_,extra,expected,skippable", CASES, ids=[c[0] for c in CASES])
def test_preprocess_names_file_and_row(name, type_, extra, expected, skippable, tiny_llama, tmp_path, capsys):
    data = tmp_path / name
    shutil.copy(CORPUS / name, data)
    keys = {"chat_template": "llama3"} if name in TEMPLATE_CASES else {}
    recipe = _recipe(tmp_path, tiny_llama, data, type_, extra, **keys)
    code, _out, err = _run(capsys, "preprocess", str(recipe))
    _assert_clear(code, err, data, expected, tmp_path)


@pytest.mark.parametrize("name,type_,extra", [c[:3] for c in CASES if c[4]], ids=[c[0] for c in CASES if c[4]])
def test_skip_counts_bad_rows(name, type_, extra, tiny_llama, tmp_path, capsys):
    data = tmp_path / name
    shutil.copy(CORPUS / name, data)
    keys = {"chat_template": "llama3"} if name in TEMPLATE_CASES else {}
    recipe = _recipe(tmp_path, tiny_llama, data, type_, extra, on_invalid_example="skip", sequence_len=256, **keys)
    code, out, err = _run(capsys, "preprocess", str(recipe))
    assert "Traceback" not in err
    if name in ALL_BAD:  # nothing left to train on: an error naming the file and what each row was dropped for
        assert code == 2, err
        assert "no training examples left" in err and data.name in err and "2 rows read, dropped: 2 " in err, err
        return
    assert code == 0, err
    assert "dropped" in out


@pytest.mark.parametrize("name,type_,extra", GOOD, ids=[c[0] for c in GOOD])
def test_byte_order_mark_is_accepted(name, type_, extra, tiny_llama, tmp_path, capsys):
    recipe = _recipe(tmp_path, tiny_llama, CORPUS / name, type_, extra, sequence_len=256)
    code, out, err = _run(capsys, "preprocess", str(recipe))
    assert code == 0, err
    assert "Traceback" not in err


RUN_CASES = ["invalid_json_line3.jsonl", "empty.jsonl", "all_too_long.jsonl", "wrong_columns.parquet",
             "not_utf8.csv", "unknown_role.jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_CASES)
def test_run_names_file_and_row(name, tiny_llama, tmp_path, capsys):
    name, type_, extra, expected, _skip = next(c for c in CASES if c[0] == name)
    data = tmp_path / name
    shutil.copy(CORPUS / name, data)
    keys = {"chat_template": "llama3"} if name in TEMPLATE_CASES else {}
    recipe = _recipe(tmp_path, tiny_llama, data, type_, extra, **keys)
    code, _out, err = _run(capsys, "run", str(recipe))
    _assert_clear(code, err, data, expected, tmp_path)


# ── built at test time ─────────────────────────────────────────────────────


def _good_rows(n=2):
    return "".join(json.dumps({"instruction": f"say {i}", "output": f"ok {i}"}) + "\n" for i in range(n))


def _built(kind, tmp_path):
    """(data path, dataset extra keys, what stderr must say) for a case made here."""
    if kind == "fifo":
        path = tmp_path / "pipe.jsonl"
        os.mkfifo(path)
        return path, {}, ["not a regular file"]
    if kind == "symlink_loop":
        path = tmp_path / "loop.jsonl"
        os.symlink(tmp_path / "loop2.jsonl", path)
        os.symlink(path, tmp_path / "loop2.jsonl")
        return path, {}, ["symbolic link"]
    if kind == "folder_as_file":
        folder = tmp_path / "data"
        (folder / "train.jsonl").mkdir(parents=True)
        return folder, {"data_files": "train.jsonl"}, ["folder"]
    if kind == "big_csv_cell":
        path = tmp_path / "big_cell.csv"
        path.write_text("instruction,output\na,b\n" + "x" * 131_073 + ",c\n", encoding="utf-8")
        return path, {}, ["row 3", "sequence_len"]  # line 1 is the header
    if kind == "deep_json":
        path = tmp_path / "deep.jsonl"
        path.write_text(_good_rows() + '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + ', "output": "x"}\n',
                        encoding="utf-8")
        return path, {}, ["row 3", "nested"]
    if kind == "deep_json_file":
        path = tmp_path / "deep.json"
        path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
        return path, {}, ["nested"]
    if kind == "empty_folder":
        folder = tmp_path / "nothing"
        folder.mkdir()
        (folder / "notes.md").write_text("hi", encoding="utf-8")
        return folder, {}, ["holds no"]
    raise AssertionError(kind)


BUILT = ["fifo", "symlink_loop", "folder_as_file", "big_csv_cell", "deep_json", "deep_json_file", "empty_folder"]


@pytest.mark.parametrize("kind", BUILT)
def test_built_cases(kind, tiny_llama, tmp_path, capsys):
    data, extra, expected = _built(kind, tmp_path)
    recipe = _recipe(tmp_path, tiny_llama, data, ALPACA, extra)
    start = time.monotonic()
    code, _out, err = _run(capsys, "preprocess", str(recipe))
    assert time.monotonic() - start < 60
    _assert_clear(code, err, data, expected, tmp_path)


@pytest.mark.parametrize("kind", ["big_csv_cell", "deep_json"])
def test_built_cases_skip(kind, tiny_llama, tmp_path, capsys):
    data, extra, _expected = _built(kind, tmp_path)
    recipe = _recipe(tmp_path, tiny_llama, data, ALPACA, extra, on_invalid_example="skip", sequence_len=256)
    code, out, err = _run(capsys, "preprocess", str(recipe))
    assert code == 0, err
    assert "dropped" in out


def test_missing_path_without_extension(tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, tiny_llama, "mydataset", ALPACA)
    start = time.monotonic()
    code, _out, err = _run(capsys, "preprocess", str(recipe))
    assert time.monotonic() - start < 10
    assert code == 2, err
    assert "Traceback" not in err
    assert "datasets[0].path" in err and "mydataset" in err


def test_validate_says_when_a_hub_dataset_or_model_cannot_be_fetched_offline(tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _recipe(tmp_path, tiny_llama, "mydataset", ALPACA)
    code, out, err = _run(capsys, "validate", str(recipe))
    assert code == 0, err  # the recipe is valid; it cannot run here now, and validate says so
    assert "note: datasets[0].path: 'mydataset'" in out and "HF_HUB_OFFLINE=1 is set" in out
    assert "base_model" not in out.split("note:", 1)[1]  # a local model needs no Hub
    recipe = write_recipe(tmp_path / "hub.yaml", base_model="someone/some-model",
                          datasets=[{"path": str(CORPUS / "bom.jsonl"), "type": ALPACA}])
    code, out, err = _run(capsys, "validate", str(recipe))
    assert code == 0 and "note: base_model: 'someone/some-model'" in out and "datasets[0]" not in out.split("note:", 1)[1]


# ── a row of megabytes is dropped before it is tokenized ───────────────────


def test_a_huge_row_is_dropped_as_too_long_without_being_tokenized(tiny_llama, tmp_path, capsys, monkeypatch):
    from ftcore.data import prepare

    seen = []
    real = prepare.tokenize_segments
    monkeypatch.setattr(prepare, "tokenize_segments",
                        lambda segments, tok: seen.append(sum(len(t) for t, _ in segments)) or real(segments, tok))
    path = tmp_path / "huge.jsonl"
    path.write_text(_good_rows(3) + json.dumps({"instruction": "say", "output": "word " * 4_000_000}) + "\n",
                    encoding="utf-8")  # 20 MB in one row
    recipe = _recipe(tmp_path, tiny_llama, path, ALPACA, sequence_len=256)
    code, out, err = _run(capsys, "preprocess", str(recipe))
    assert code == 0, err
    assert "longer than sequence_len (256)" in out
    assert len(seen) == 3 and max(seen) < 10_000  # the three short rows only


@pytest.mark.parametrize("text", ["word " * 3000, " " * 20_000, "\n" * 5000, "ééé " * 2000, "日本語" * 3000,
                                  "<|eot_id|>" * 800, "x" * 30_000, "0123456789" * 2000])
def test_the_length_bound_used_before_tokenizing_never_exceeds_the_real_count(text, tiny_llama):
    from transformers import AutoTokenizer

    from ftcore.data.prepare import _longest_token

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    real = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(text) // (2 * _longest_token(tokenizer)) <= real


# ── chat templates render in Jinja's sandbox; what it refuses is a clear error ──

TEMPLATES = {  # template, what stderr must say
    "escape": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", ["refused by Jinja's sandbox", "__class__"]),
    "raise": ("{{ raise_exception('only user and assistant roles are supported') }}",
              ["chat.jsonl: row 1: the chat template refused this conversation: only user and assistant"]),
    "syntax": ("{% for m in messages %}{{ m['content'] }", ["chat template: line 1: not valid Jinja"]),
    "undefined": ("{{ messages.foo() }}", ["chat.jsonl: row 1: the chat template refused", "foo"]),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_chat_template_error_or_sandbox_refusal_is_one_clear_line(name, tiny_llama, tmp_path, capsys):
    template, expected = TEMPLATES[name]
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n", encoding="utf-8")
    recipe = _recipe(tmp_path, tiny_llama, data, CHAT, chat_template="jinja", chat_template_jinja=template)
    code, _out, err = _run(capsys, "preprocess", str(recipe))
    assert code == 2, err
    assert "Traceback" not in err and "FTCORE_DISABLE_PLUGINS" not in err  # the recipe's template, not a plugin
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "out").exists()
