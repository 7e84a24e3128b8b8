"""Code: Qwen2.5-Coder recipes, the fim and code_repo formats, and the code_exec evaluator.

The tiny Qwen2 model and tokenizer (conftest) carry Qwen2.5's ChatML and FIM
special tokens. FIM examples are checked token by token against the file's
text: whatever the split points drawn, prefix + middle + suffix must give the
file back, each piece must be tokenized on its own, and only the middle and
the <|endoftext|> after it train. The sandbox's hostile programs are in
tests/test_sandbox.py; here they go through the evaluator.
"""

import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl, write_recipe
from ftcore import hooks
from ftcore.data import IGNORE_INDEX
from ftcore.artifacts import read_metrics
from ftcore.data.prepare import prepare_datasets, set_chat_template
from ftcore.errors import DataError, RecipeError
from ftcore.plugins.code.evaluator import (AT, STOP, CodeExecSection, evaluate_code, load_problems, metrics, pass_at_k,
                                           program, score, shipped_problems, truncate)
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe

REPO = Path(__file__).resolve().parents[1]
PLUGINS = load_plugins()
FORMATS = hooks.dataset_formats(PLUGINS)
TEMPLATES = hooks.chat_templates(PLUGINS)

SOURCES = {
    "calc.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "pkg/shapes.py": ("class Square:\n    def __init__(self, side):\n        self.side = side\n\n"
                      "    def area(self):\n        return self.side * self.side\n"),
    "pkg/text.py": "def shout(text):\n    \"\"\"Upper case, with an é.\"\"\"\n    return text.upper() + '!'\n",
    "main.py": "from calc import add\n\nif __name__ == '__main__':\n    print(add(1, 2))\n",
}


def write_sources(folder, sources=SOURCES):
    for name, text in sources.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Path(folder)


def make_recipe(**keys):
    return validate(RawRecipe({"base_model": "unused/model", **keys}, None), PLUGINS)


def prepare(tokenizer, **keys):
    recipe = make_recipe(**keys)
    return prepare_datasets(recipe, tokenizer, FORMATS, set_chat_template(recipe, tokenizer, TEMPLATES))


def ids_of(tokenizer, *names):
    return [tokenizer.convert_tokens_to_ids(n) for n in names]


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []


def fim_pieces(tokenizer, example):
    """Split a FIM example into (order, prefix ids, suffix ids, middle ids, tail) by its sentinels."""
    pre, suf, mid, eos, pad = ids_of(tokenizer, "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
                                     "<|endoftext|>", "<|fim_pad|>")
    ids = example["input_ids"]
    while ids and ids[-1] == pad:
        ids = ids[:-1]
    assert ids[0] == pre and ids.count(pre) == ids.count(suf) == ids.count(mid) == 1 and ids[-1] == eos
    s, m = ids.index(suf), ids.index(mid)
    if s == 1:  # SPM: <pre><suf> suffix <mid> prefix middle <eos>
        return "spm", None, ids[2:m], ids[m + 1:-1]
    return "psm", ids[1:s], ids[s + 1:m], ids[m + 1:-1]


def check_fim_example(tokenizer, example, text, loss="middle"):
    """Token by token: the pieces are the text's, each tokenized alone; only middle + EOS train."""
    order, prefix, suffix, rest = fim_pieces(tokenizer, example)
    ids, labels = example["input_ids"], example["labels"]
    trained = [i for i, l in enumerate(labels) if l != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in trained)
    suffix_text = tokenizer.decode(suffix)
    assert text.endswith(suffix_text) and suffix == encode(tokenizer, suffix_text)
    head = text[: len(text) - len(suffix_text)]
    if order == "spm":  # prefix and middle follow <|fim_middle|>, tokenized separately
        if loss == "middle":
            prefix = rest[: len(rest) - (len(trained) - 1)]  # the trained ones: the middle and <|endoftext|>
        else:
            prefix = next(rest[: len(encode(tokenizer, head[:k]))] for k in range(len(head) + 1)
                          if encode(tokenizer, head[:k]) + encode(tokenizer, head[k:]) == rest)
        rest = rest[len(prefix):]
    prefix_text = tokenizer.decode(prefix)
    middle_text = head[len(prefix_text):]
    assert head.startswith(prefix_text) and prefix == encode(tokenizer, prefix_text)
    assert rest == encode(tokenizer, middle_text)
    pad = tokenizer.convert_tokens_to_ids("<|fim_pad|>")
    end = max(i for i, t in enumerate(ids) if t != pad) + 1
    if loss == "middle":
        assert trained == list(range(end - len(rest) - 1, end))  # the middle and <|endoftext|>, nothing else
    else:
        assert trained == list(range(end))
    return order, prefix_text, middle_text, suffix_text


# ── type: fim ───────────────────────────────────────────────────────────────


def test_preprocess_dump_of_a_folder_of_python_files_gives_rows_with_all_three_fim_tokens(tiny_qwen, tmp_path):
    """The issue's check, through the CLI: datasets=[{path: <folder of .py files>, type: fim}]."""
    from ftcore.cli import main

    folder = write_sources(tmp_path / "src")
    recipe = write_recipe(tmp_path / "r.yaml", base_model=str(tiny_qwen), sequence_len=256)
    dump = tmp_path / "dump.jsonl"
    assert main(["preprocess", str(recipe), f"datasets=[{{path: {folder}, type: fim}}]", "--dump", str(dump)]) == 0
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == len(SOURCES)
    assert {Path(r["file"]).relative_to(folder).as_posix() for r in rows} == set(SOURCES)
    for row in rows:
        assert all(token in row["text"] for token in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))


@pytest.mark.parametrize("spm_rate, order", [(0.0, "psm"), (1.0, "spm")])
def test_fim_examples_token_by_token(qwen, tmp_path, spm_rate, order):
    folder = write_sources(tmp_path / "src")
    data = prepare(qwen, sequence_len=512, datasets=[{"path": str(folder), "type": "fim", "fim_spm_rate": spm_rate}])
    assert len(data.train) == len(SOURCES)
    for example, (file, _row) in zip(data.examples, data.origins):
        text = Path(file).read_text()
        assert check_fim_example(qwen, example, text)[0] == order


def test_fim_loss_all_trains_every_token(qwen, tmp_path):
    folder = write_sources(tmp_path / "src")
    data = prepare(qwen, sequence_len=512, datasets=[{"path": str(folder), "type": "fim", "fim_loss": "all"}])
    for example, (file, _row) in zip(data.examples, data.origins):
        check_fim_example(qwen, example, Path(file).read_text(), loss="all")


def test_line_splits_put_whole_lines_in_the_middle(qwen, tmp_path):
    rows = [{"content": "".join(f"x{i} = {i * j}\n" for i in range(8))} for j in range(30)]
    data = prepare(qwen, sequence_len=512, datasets=[{"path": str(write_jsonl(tmp_path / "c.jsonl", rows)),
                                                      "type": "fim", "field": "content", "fim_split": "line"}])
    middles = 0
    for example, row in zip(data.examples, rows):
        _order, prefix, middle, suffix = check_fim_example(qwen, example, row["content"])
        assert prefix == "" or prefix.endswith("\n")
        assert middle == "" or middle.endswith("\n")
        middles += middle.count("\n")
    assert middles > 30  # real lines were moved, not only empty middles


def fim_kinds(tokenizer, examples):
    pre = tokenizer.convert_tokens_to_ids("<|fim_prefix|>")
    return ["fim" if pre in e["input_ids"] else "plain" for e in examples]


def test_fim_rate_sets_the_share_of_fim_examples_and_the_rest_are_plain(qwen, tmp_path):
    rows = [{"text": f"def f{i}(x):\n    return x * {i}\n"} for i in range(400)]
    path = write_jsonl(tmp_path / "code.jsonl", rows)
    data = prepare(qwen, sequence_len=128, datasets=[{"path": str(path), "type": "fim", "fim_rate": 0.3}])
    kinds = fim_kinds(qwen, data.examples)
    assert 0.24 < kinds.count("fim") / len(kinds) < 0.36
    eos = qwen.convert_tokens_to_ids("<|endoftext|>")
    for kind, example, row in zip(kinds, data.examples, rows):
        if kind == "plain":  # the file, then <|endoftext|>, every token trained
            assert example["input_ids"] == encode(qwen, row["text"]) + [eos]
            assert example["labels"] == example["input_ids"]
    for rate, expected in ((0.0, {"plain"}), (1.0, {"fim"})):
        data = prepare(qwen, sequence_len=128, datasets=[{"path": str(path), "type": "fim", "fim_rate": rate}])
        assert set(fim_kinds(qwen, data.examples)) == expected


def test_fim_draws_depend_on_seed_and_file_only(qwen, tmp_path):
    folder = write_sources(tmp_path / "src")
    entry = {"path": str(folder), "type": "fim", "fim_spm_rate": 0.5}
    first = prepare(qwen, sequence_len=512, datasets=[entry])
    again = prepare(qwen, sequence_len=512, datasets=[entry])
    assert first.examples == again.examples
    other_seed = prepare(qwen, sequence_len=512, datasets=[{**entry, "seed": 7}])
    assert other_seed.examples != first.examples
    # one file alone gives the examples it gives among the others: draws never depend on order or neighbours
    alone = prepare(qwen, sequence_len=512, datasets=[{**entry, "path": str(folder / "pkg" / "shapes.py")}])
    position = [Path(f).name for f, _ in first.origins].index("shapes.py")
    assert alone.examples == [first.examples[position]]


def test_fim_is_the_same_with_worker_processes(qwen, tmp_path, monkeypatch):
    from ftcore.data import prepare as prepare_module

    rows = [{"text": f"def g{i}():\n    return {i}\n" * (1 + i % 5)} for i in range(60)]
    path = write_jsonl(tmp_path / "code.jsonl", rows)
    keys = dict(sequence_len=48, datasets=[{"path": str(path), "type": "fim", "fim_rate": 0.7}])
    one = prepare(qwen, **keys)
    monkeypatch.setattr(prepare_module, "PARALLEL_MIN_ROWS", 1)
    monkeypatch.setattr(prepare_module, "CHUNK_ROWS", 7)
    two = prepare(qwen, dataset_processes=2, **keys)
    assert one.examples == two.examples and one.origins == two.origins


def test_a_long_file_is_cut_into_chunks_of_sequence_len_that_give_the_file_back(qwen, tmp_path):
    text = "".join(f"def function_{i}(value):\n    return value + {i}  # é\n\n" for i in range(40))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "long.py").write_text(text)
    size = 64
    data = prepare(qwen, sequence_len=size, datasets=[{"path": str(tmp_path / "src"), "type": "fim",
                                                       "fim_rate": 0.5}])
    examples = data.examples
    assert len(examples) > 10
    assert all(len(e["input_ids"]) == size for e in examples[:-1]) and len(examples[-1]["input_ids"]) <= size
    pad = qwen.convert_tokens_to_ids("<|fim_pad|>")
    pieces = []
    for kind, example in zip(fim_kinds(qwen, examples), examples):
        padding = [i for i, t in enumerate(example["input_ids"]) if t == pad]
        assert all(example["labels"][i] == IGNORE_INDEX for i in padding)
        if kind == "plain":
            ids = [t for t in example["input_ids"] if t != pad]
            eos = qwen.convert_tokens_to_ids("<|endoftext|>")
            pieces.append(qwen.decode([t for t in ids if t != eos]))
        else:
            rest = text[len("".join(pieces)):]
            order, prefix, middle, suffix = check_fim_example(qwen, example, rest[: _chunk_length(qwen, example, rest)])
            pieces.append(prefix + middle + suffix)
    assert "".join(pieces) == text
    assert set(fim_kinds(qwen, examples)) == {"fim", "plain"}


def _chunk_length(tokenizer, example, rest):
    """How many characters of ``rest`` a FIM chunk holds: its three pieces' decoded lengths."""
    specials = set(ids_of(tokenizer, "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>",
                          "<|fim_pad|>"))
    return len(tokenizer.decode([t for t in example["input_ids"] if t not in specials]))


def test_text_that_spells_a_special_token_stays_text(qwen, tmp_path):
    row = {"text": 'EOS = "<|endoftext|>"\nFIM = "<|fim_middle|>"\n'}
    data = prepare(qwen, sequence_len=256, datasets=[{"path": str(write_jsonl(tmp_path / "c.jsonl", [row])),
                                                      "type": "fim", "fim_rate": 0.0}])
    ids = data.examples[0]["input_ids"]
    eos, mid = ids_of(qwen, "<|endoftext|>", "<|fim_middle|>")
    assert ids[-1] == eos and eos not in ids[:-1] and mid not in ids


def test_include_exclude_hidden_empty_and_binary_files(qwen, tmp_path):
    folder = write_sources(tmp_path / "src")
    (folder / "README.md").write_text("# Title\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "config.py").write_text("x = 1\n")
    (folder / "empty.py").write_text("")
    (folder / "blob.py").write_bytes(b"\x00\x01\x02binary")
    (folder / "tests").mkdir()
    (folder / "tests" / "test_calc.py").write_text("def test():\n    assert True\n")
    data = prepare(qwen, sequence_len=512, datasets=[{"path": str(folder), "type": "fim", "include": ["*.py"],
                                                      "exclude": ["tests/*"]}])
    assert sorted(Path(f).relative_to(folder).as_posix() for f, _ in data.origins) == sorted(SOURCES)
    globbed = prepare(qwen, sequence_len=512, datasets=[{"path": f"{folder}/pkg/*.py", "type": "fim"}])
    assert sorted(Path(f).name for f, _ in globbed.origins) == ["shapes.py", "text.py"]


def test_the_cache_is_rebuilt_when_a_source_file_changes_and_reused_otherwise(qwen, tmp_path):
    from ftcore.data.cache import load_or_prepare

    folder = write_sources(tmp_path / "src")
    keys = dict(sequence_len=256, dataset_prepared_path=str(tmp_path / "prepared"),
                datasets=[{"path": str(folder), "type": "fim", "include": ["*.py"]}])
    first = load_or_prepare(make_recipe(**keys), qwen, FORMATS)
    again = load_or_prepare(make_recipe(**keys), qwen, FORMATS)
    assert again.stats["cache"]["reused"] and again.examples == first.examples
    (folder / "calc.py").write_text(SOURCES["calc.py"] + "\n\ndef mul(a, b):\n    return a * b\n")
    changed = load_or_prepare(make_recipe(**keys), qwen, FORMATS)
    assert not changed.stats["cache"]["reused"] and changed.examples != first.examples


def test_a_tokenizer_without_fim_tokens_is_a_clear_error(llama, tmp_path):
    folder = write_sources(tmp_path / "src")
    with pytest.raises(DataError, match=r"lacks <\|fim_prefix\|>, <\|fim_suffix\|>, <\|fim_middle\|>.*tokens:"):
        prepare(llama, sequence_len=256, datasets=[{"path": str(folder), "type": "fim"}])


@pytest.mark.parametrize("entry, key", [({"fim_rate": 1.5}, "datasets[0].fim_rate"),
                                        ({"fim_split": "word"}, "datasets[0].fim_split"),
                                        ({"fim_ratio": 0.5}, "datasets[0].fim_ratio")])
def test_bad_fim_options_name_their_key(entry, key):
    with pytest.raises(RecipeError) as err:
        make_recipe(datasets=[{"path": "src", "type": "fim", **entry}])
    assert key in str(err.value)


# ── type: code_repo ─────────────────────────────────────────────────────────


def test_code_repo_joins_the_files_in_path_order_with_qwen_repo_tokens(qwen, tmp_path):
    folder = write_sources(tmp_path / "myrepo")
    (folder / "NOTES.md").write_text("notes\n")
    data = prepare(qwen, sequence_len=2048, datasets=[{"path": str(folder), "type": "code_repo",
                                                       "exclude": ["*.md"]}])
    assert len(data.examples) == 1
    repo, sep, eos = ids_of(qwen, "<|repo_name|>", "<|file_sep|>", "<|endoftext|>")
    expected = [repo] + encode(qwen, "myrepo\n")
    for name in sorted(SOURCES):  # calc.py, main.py, pkg/shapes.py, pkg/text.py
        expected += [sep] + encode(qwen, f"{name}\n{SOURCES[name]}")
    expected += [eos]
    assert data.examples[0]["input_ids"] == expected
    assert data.examples[0]["labels"] == expected  # every token trains


def test_code_repo_is_cut_into_sequence_len_chunks_and_takes_a_name(qwen, tmp_path):
    folder = write_sources(tmp_path / "myrepo")
    whole = prepare(qwen, sequence_len=2048, datasets=[{"path": str(folder), "type": "code_repo",
                                                        "repo_name": "acme/tools"}])
    stream = whole.examples[0]["input_ids"]
    assert stream[1:1 + len(encode(qwen, "acme/tools\n"))] == encode(qwen, "acme/tools\n")
    cut = prepare(qwen, sequence_len=32, datasets=[{"path": str(folder), "type": "code_repo",
                                                    "repo_name": "acme/tools"}])
    assert all(len(e["input_ids"]) == 32 for e in cut.examples[:-1])
    assert [t for e in cut.examples for t in e["input_ids"]] == stream


def test_code_repo_from_rows_of_a_data_set(qwen, tmp_path):
    rows = [{"path": "a.py", "content": "A = 1\n"}, {"path": "b.py", "content": "B = 2"}]
    data = prepare(qwen, sequence_len=256, datasets=[{"path": str(write_jsonl(tmp_path / "files.jsonl", rows)),
                                                      "type": "code_repo", "field": "content", "repo_name": "r"}])
    repo, sep, eos = ids_of(qwen, "<|repo_name|>", "<|file_sep|>", "<|endoftext|>")
    assert data.examples[0]["input_ids"] == ([repo] + encode(qwen, "r\n") + [sep] + encode(qwen, "a.py\nA = 1\n")
                                             + [sep] + encode(qwen, "b.py\nB = 2\n") + [eos])


# ── pass@k ──────────────────────────────────────────────────────────────────


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 5), (5, 0, 1), (5, 5, 3), (10, 8, 3), (200, 50, 100),
                                     (200, 1, 10), (1, 1, 1), (1, 0, 1)])
def test_pass_at_k_is_the_unbiased_estimator(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(4, 2, 3) == 1.0  # fewer failures than k: every k-subset holds a pass
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_truncation_at_stop_sequences():
    body = "    total = a + b\n    return total"
    for stop in ("\ndef helper():\n", "\nclass X:\n", "\nif __name__ == '__main__':\n", "\nprint(1)\n",
                 "\n# done\n"):
        assert truncate(body + stop + "    more", STOP) == body
    assert truncate("    return 1<|im_end|>junk", ("<|im_end|>",)) == "    return 1"
    assert truncate(body, STOP) == body


# ── the code_exec evaluator ─────────────────────────────────────────────────

PROBLEMS = load_problems(shipped_problems())


def test_the_shipped_problem_set_is_small_and_well_formed():
    assert 8 <= len(PROBLEMS) <= 12
    assert len({p["task_id"] for p in PROBLEMS}) == len(PROBLEMS)
    for p in PROBLEMS:
        assert p["prompt"].count("def ") == 1 and f"def {p['entry_point']}(" in p["prompt"]


def test_canonical_solutions_pass_and_wrong_ones_fail():
    settings = CodeExecSection()
    passes, results = score(PROBLEMS, [[p["canonical_solution"]] for p in PROBLEMS], settings)
    assert metrics(1, passes, [1]) == {"code_pass@1": 1.0}
    passes, _ = score(PROBLEMS, [["    return None\n"] for _ in PROBLEMS], settings)
    assert metrics(1, passes, [1]) == {"code_pass@1": 0.0}


def test_pass_at_k_over_problems_with_several_completions():
    settings = CodeExecSection(n=4, k=[1, 2, 4])
    chosen = PROBLEMS[:3]
    wrong = "    raise NotImplementedError\n"
    completions = [[p["canonical_solution"]] * c + [wrong] * (4 - c) for p, c in zip(chosen, (0, 1, 3))]
    passes, _ = score(chosen, completions, settings)
    assert passes == [0, 1, 3]
    got = metrics(4, passes, [1, 2, 4])
    assert got["code_pass@1"] == pytest.approx((0 + 0.25 + 0.75) / 3)
    assert got["code_pass@2"] == pytest.approx((0 + 0.5 + 1.0) / 3)
    assert got["code_pass@4"] == pytest.approx(2 / 3)


HOSTILE = {
    "infinite loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        os.fork()\n",
    "memory": "    data = bytearray(64 * 1024 ** 3)\n    return a + b\n",
    "write outside": "    open({target!r}, 'w').write('escaped')\n    return a + b\n",
    "environment": "    import os\n    assert 'FTCORE_TEST_SECRET' in os.environ\n    return a + b\n",
    "network": "    import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return a + b\n",
    "megabytes": "    import sys\n    sys.stdout.write('x' * (8 * 1024 * 1024))\n    return a + b\n",
}


def test_hostile_completions_fail_without_escaping_or_hanging(tmp_path, monkeypatch):
    import time

    from test_sandbox import processes_mentioning

    monkeypatch.setenv("FTCORE_TEST_SECRET", "hunter2")
    target = tmp_path / "open" / "escaped.txt"
    target.parent.mkdir()
    target.parent.chmod(0o777)
    problem = PROBLEMS[0]  # add_numbers(a, b): each hostile body would pass if it ran unhindered
    settings = CodeExecSection(timeout=2, memory_mb=256, max_output_kb=64)
    started = time.monotonic()
    bodies = [body.format(target=str(target)) for body in HOSTILE.values()]
    passes, results = score([problem], [bodies + [problem["canonical_solution"]]], settings)
    assert time.monotonic() - started < 30
    statuses = dict(zip([*HOSTILE, "canonical"], [r.status for r in results[0]]))
    assert statuses.pop("canonical") == "passed" and passes == [1]
    assert statuses["infinite loop"] == "timeout" and statuses["megabytes"] == "output limit"
    assert all(status != "passed" for status in statuses.values()), statuses
    assert not target.exists()
    assert all(not processes_mentioning(r.folder) for r in results[0])


class CannedModel(torch.nn.Module):
    """A stand-in for a model whose ``generate`` appends, to each (left-padded) prompt, a fixed answer."""

    def __init__(self, tokenizer, answers):
        super().__init__()
        self.tokenizer, self.answers, self.calls = tokenizer, answers, []

    def generate(self, input_ids, attention_mask, **options):
        self.calls.append({**options, "batch": len(input_ids)})
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tokenizer.decode([t for t, m in zip(ids, mask) if m])
            answer = self.tokenizer(self.answers[prompt], add_special_tokens=False)["input_ids"]
            rows += [ids + answer] * options["num_return_sequences"]
        width = max(map(len, rows))
        return torch.tensor([row + [options["pad_token_id"]] * (width - len(row)) for row in rows])


def eval_context(model, tokenizer, evaluation=None, **section):
    """The ``EvalContext`` of one evaluation: ``evaluation`` holds its ``step``, ``max_steps`` and ``phase``
    (by default the final one); ``section`` is the recipe's ``code_exec:``."""
    from ftcore.testing import eval_context as kit_eval_context

    recipe = make_recipe(evaluators=["loss", "code_exec"], val_set_size=0.1, code_exec=section)
    return kit_eval_context(model, tokenizer, [], recipe, collator=list, batch_size=1, plugins=PLUGINS,
                            **(evaluation or {}))


def test_the_evaluator_generates_cuts_runs_and_scores(qwen):
    # each canonical answer is followed by text a model might go on with: cut at the stop sequence
    answers = {p["prompt"]: p["canonical_solution"] + "\n\ndef unrelated():\n    raise SystemExit(1)\n"
               for p in PROBLEMS}
    model = CannedModel(qwen, answers)
    got = evaluate_code(eval_context(model, qwen))
    assert got == {"code_pass@1": 1.0, "code_problems": len(PROBLEMS)}
    assert all(call["do_sample"] is False and call["num_return_sequences"] == 1 for call in model.calls)
    assert [call["batch"] for call in model.calls] == [12]  # batch_size 16: the 12 prompts in one call
    assert "\ndef " in model.calls[0]["stop_strings"]
    wrong = CannedModel(qwen, {p["prompt"]: "    return 'wrong'<|im_end|>" for p in PROBLEMS})
    assert evaluate_code(eval_context(wrong, qwen, n=3, k=[1, 3], max_problems=4)) == {
        "code_pass@1": 0.0, "code_pass@3": 0.0, "code_problems": 4}
    assert wrong.calls[0]["do_sample"] is True and wrong.calls[0]["num_return_sequences"] == 3


def test_a_tokenizer_without_a_pad_token_generates_one_prompt_at_a_time(llama):
    assert llama.pad_token is None
    model = CannedModel(llama, {llama.bos_token + p["prompt"]: p["canonical_solution"] for p in PROBLEMS})
    assert evaluate_code(eval_context(model, llama, max_problems=3))["code_pass@1"] == 1.0
    assert [call["batch"] for call in model.calls] == [1, 1, 1]


def evaluation_at(step, max_steps=10):
    """What the trainer tells an evaluator at ``step`` (``EvalContext.step``, ``max_steps``, ``phase``)."""
    from ftcore.evaluation import phase_of

    return {"step": step, "max_steps": max_steps, "phase": phase_of(step, max_steps)}


def test_code_exec_runs_only_at_the_evaluations_at_names(qwen):
    model = CannedModel(qwen, {p["prompt"]: p["canonical_solution"] for p in PROBLEMS})
    ran = {}
    for step, expected in ((0, "start"), (5, "steps"), (10, "end")):
        evaluation = evaluation_at(step)
        assert AT[eval_context(model, qwen, evaluation).phase] == expected
        ran[expected] = evaluate_code(eval_context(model, qwen, evaluation, max_problems=1))
    assert ran["steps"] == {} and ran["start"] == ran["end"] == {"code_pass@1": 1.0, "code_problems": 1}
    during = eval_context(model, qwen, evaluation_at(5), max_problems=1, at=["steps"])
    assert evaluate_code(during)["code_pass@1"] == 1.0


def test_code_exec_errors_name_the_plugin_or_the_file(qwen, tmp_path):
    """Through the core's wrapper (as a run calls it): a crash names the plugin; a bad file is the user's."""
    from ftcore.errors import PluginError

    class Broken(CannedModel):
        def generate(self, input_ids, attention_mask, **options):
            raise RuntimeError("CUDA out of memory")

    recipe = make_recipe(evaluators=["code_exec"], val_set_size=0.1)
    evaluator = hooks.chosen_evaluators(PLUGINS, recipe)["code_exec"]
    with pytest.raises(PluginError) as err:
        evaluator(eval_context(Broken(qwen, {}), qwen, max_problems=1))
    message = str(err.value)
    assert "plugin 'code'" in message and "its evaluator 'code_exec'" in message
    assert "RuntimeError: CUDA out of memory" in message and "FTCORE_DISABLE_PLUGINS=code" in message
    problems = write_jsonl(tmp_path / "mine.jsonl", PROBLEMS[:1])
    context = eval_context(CannedModel(qwen, {}), qwen, problems=str(problems))
    problems.unlink()  # gone between validation and the evaluation
    with pytest.raises(DataError, match=r"^code_exec.problems: .*mine.jsonl: no such file$"):
        evaluator(context)


def test_a_problem_file_of_the_users(qwen, tmp_path):
    rows = [{"task_id": "mine/0", "prompt": "def double(x):\n", "test": "def check(f):\n    assert f(2) == 4\n",
             "entry_point": "double", "canonical_solution": "    return 2 * x\n"}]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    model = CannedModel(qwen, {"def double(x):\n": "    return x + x\n"})
    assert evaluate_code(eval_context(model, qwen, problems=str(path)))["code_pass@1"] == 1.0
    assert program(rows[0], "    return x + x\n").endswith("check(double)\n")


def test_code_exec_without_an_evaluation_split_is_an_error():
    with pytest.raises(RecipeError, match=r"evaluators: code_exec runs at evaluations.*val_set_size"):
        make_recipe(evaluators=["loss", "code_exec"], val_set_size=0)


def test_bad_problem_files_and_settings_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "a", "prompt": "def f():\\n", "test": "", "entry_point": "f"}\n{"task_id": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: .*missing or not text: prompt, test, entry_point"):
        load_problems(bad)
    with pytest.raises(RecipeError, match=r"code_exec.problems.*no such file"):
        make_recipe(evaluators=["code_exec"], val_set_size=0.1, code_exec={"problems": str(tmp_path / "none.jsonl")})
    with pytest.raises(RecipeError, match=r"code_exec.*k must be"):
        make_recipe(evaluators=["code_exec"], code_exec={"n": 2, "k": [1, 5]})
    with pytest.raises(RecipeError, match=r"code_exec.temprature.*unknown key"):
        make_recipe(evaluators=["code_exec"], code_exec={"temprature": 0.2})


# ── runs through `ftcore run` ───────────────────────────────────────────────


def code_rows(n, seed=0):
    """Small code instructions in alpaca form: tiny functions the tiny model can start to learn."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        k, op = r.randint(1, 9), r.choice(["+", "-", "*"])
        name = {"+": "add", "-": "sub", "*": "mul"}[op]
        rows.append({"instruction": f"Write a Python function {name}_{k}(x) that returns x {op} {k}.",
                     "output": f"def {name}_{k}(x):\n    return x {op} {k}\n"})
    return rows


def run_shipped(recipe_name, tiny_qwen, tmp_path, *overrides):
    from test_run import run_recipe

    data = write_jsonl(tmp_path / "code.jsonl", code_rows(64))
    return run_recipe(REPO / "recipes" / f"{recipe_name}.yaml", f"base_model={tiny_qwen}",
                      f"datasets=[{{path: {data}, type: alpaca}}]", f"output_dir={tmp_path / 'out'}",
                      "optimizer=adamw_torch", "sequence_len=256", "micro_batch_size=4",
                      "gradient_accumulation_steps=1", "learning_rate=5e-3", "lr_scheduler=constant",
                      "warmup_ratio=0", "val_set_size=8", "evals_per_epoch=null",
                      *overrides)


@pytest.mark.slow
def test_shipped_lora_recipe_trains_a_tiny_qwen_on_code_and_reports_pass_at_1(tiny_qwen, tmp_path):
    result = run_shipped("qwen25-coder-lora", tiny_qwen, tmp_path, "max_steps=14", "eval_steps=5",
                         "code_exec.max_problems=2", "code_exec.max_new_tokens=24", "code_exec.at=[start, end]")
    m = result.metrics
    assert m["eval_loss_final"] < m["eval_loss_initial"]
    assert m["train_loss_last"] < m["train_loss_first"]
    assert m["eval_code_problems_initial"] == m["eval_code_problems_final"] == 2
    assert 0.0 <= m["eval_code_pass@1_final"] <= 1.0
    # at: [start, end]: code_exec ran before and after training, not at steps 5 and 10 (loss did)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 5, 10, 14]
    assert [r["step"] for r in evals if "eval_code_pass@1" in r] == [0, 14]
    assert (result.output_dir / "adapter_model.safetensors").is_file()
    # the tokenizer saved with the adapter carries the qwen_25 template and pads with <|endoftext|>
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(result.output_dir)
    assert saved.pad_token == "<|endoftext|>"
    text = saved.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


@pytest.mark.slow
def test_shipped_qlora_recipe_trains_a_tiny_qwen_on_code(tiny_qwen, tmp_path):
    # Evaluated before, during and after training: on CPU, bitsandbytes would repack the 4-bit weights
    # at the first no-grad forward, and a training step after that failed on layers with a bias (Qwen2's
    # q/k/v projections have one) until qlora.prepare_model kept them unpacked.
    result = run_shipped("qwen25-coder-qlora", tiny_qwen, tmp_path, "max_steps=10", "evaluators=[loss]",
                         "eval_on_start=true", "eval_steps=5")
    model, m = result.model, result.metrics
    layers = {type(mod.base_layer).__name__ for name, mod in model.named_modules() if hasattr(mod, "base_layer")}
    assert layers == {"Linear4bit"}
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    assert m["train_loss_last"] < m["train_loss_first"]
    assert "eval_loss_final" in m and "eval_code_pass@1_final" not in m
    assert [r["step"] for r in read_metrics(result.output_dir) if "eval_loss" in r] == [0, 5, 10]


def test_code_instructions_under_qwen_25_train_the_reply_and_im_end_only(qwen, tmp_path):
    rows = code_rows(4)
    data = prepare(qwen, chat_template="qwen_25", datasets=[{"path": str(write_jsonl(tmp_path / "c.jsonl", rows)),
                                                             "type": "alpaca"}])
    im_end = qwen.convert_tokens_to_ids("<|im_end|>")
    for example, row in zip(data.examples, rows):
        text = qwen.decode(example["input_ids"])
        assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
                               "You are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
        trained = [t for t, l in zip(example["input_ids"], example["labels"]) if l != IGNORE_INDEX]
        assert trained[-1] == im_end and trained.count(im_end) == 1
        assert qwen.decode(trained[:-1]) == row["output"]


def test_the_shipped_code_recipes_validate():
    from ftcore.recipe import load_raw

    for name in ("qwen25-coder-lora", "qwen25-coder-qlora"):
        recipe = validate(load_raw(str(REPO / "recipes" / f"{name}.yaml")), PLUGINS)
        assert recipe.base_model == "Qwen/Qwen2.5-Coder-7B-Instruct" and recipe.chat_template == "qwen_25"
        assert "code_exec" in recipe.evaluators and recipe.section("code_exec").n == 1
        assert recipe.section("code_exec").at == ["end"]
        first = (REPO / "recipes" / f"{name}.yaml").read_text().splitlines()[0]
        assert first == f"# ftcore run recipes/{name}.yaml"



# ── the plugin boundary: code is one plugin, and ftcore works without it ────


def ftcore_cli(*args, cwd, **env):
    import os
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k not in ("FTCORE_DISABLE_PLUGINS", "PYTHONPATH")}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
    return subprocess.run([sys.executable, "-m", "ftcore", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=300)


def test_without_the_code_plugin_quickstart_validates_and_its_formats_are_gone(tmp_path):
    """Deleted from a copy of the tree (package and BUILTINS line), or blocked by its short name `code`:
    the quickstart still validates, and `type: fim` / `type: code_repo` are unknown formats."""
    from ftcore.testing import tree_without

    site = tree_without("code", tmp_path / "site")
    folder = write_sources(tmp_path / "src")
    recipe = write_recipe(tmp_path / "fim.yaml", base_model="unused/model",
                          datasets=[{"path": str(folder), "type": "fim"}, {"path": str(folder), "type": "code_repo"}])
    assert ftcore_cli("validate", str(recipe), cwd=tmp_path).returncode == 0  # with the plugin: valid
    for how, env in (("deleted", {"PYTHONPATH": site}), ("blocked", {"FTCORE_DISABLE_PLUGINS": "code"})):
        imported = ftcore_cli("plugins", "--json", cwd=tmp_path, **env)
        names = {row["name"] for row in json.loads(imported.stdout)["plugins"]}
        assert "code" not in names and "alpaca" in names, how
        quickstart = ftcore_cli("validate", "quickstart", cwd=tmp_path, **env)
        assert quickstart.returncode == 0, (how, quickstart.stdout + quickstart.stderr)
        done = ftcore_cli("validate", str(recipe), cwd=tmp_path, **env)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (how, done.stderr)
        assert "datasets[0].type: unknown format 'fim'" in done.stderr, (how, done.stderr)
        assert "datasets[1].type: unknown format 'code_repo'" in done.stderr, (how, done.stderr)
        if how == "blocked":
            assert "plugins disabled by FTCORE_DISABLE_PLUGINS may provide it: code" in done.stderr, done.stderr
