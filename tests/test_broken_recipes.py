"""The broken-recipe corpus (tests/fixtures/broken_recipes/): every entry fails cleanly, before anything loads.

Each ``*.yaml`` there is a recipe that must be refused. Header comments say how:

- ``# expect: TEXT``: TEXT must be in the error (repeatable): the key, and what is allowed;
- ``# args: k=v ...``: command-line overrides to pass (the entry is about a bad override);
- ``# line: N``: a syntax error that must name line N;
- ``# not: TEXT``: TEXT must not be in the error (an override error does not blame the file).

Through ``ftcore validate``, ``ftcore preprocess`` and ``ftcore run`` in-process: exit 2, the expected
text in stderr, no traceback, no output folder, and no code from the recipe imported (the canary module
``_code/broken_canary.py`` writes a file when imported).
"""

import shlex
import sys
from pathlib import Path

import pytest

from ftcore.cli import main

CORPUS = Path(__file__).parent / "fixtures" / "broken_recipes"
ENTRIES = sorted(CORPUS.glob("*.yaml"))


def header(path: Path) -> dict:
    found = {"expect": [], "args": [], "line": None, "not": []}
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        if key == "args":
            found["args"] = shlex.split(value)
        elif key == "line":
            found["line"] = int(value)
        elif key in ("expect", "not"):
            found[key].append(value)
    return found


def test_the_corpus_is_large_enough():
    assert len(ENTRIES) >= 45
    assert all(header(p)["expect"] for p in ENTRIES), [p.name for p in ENTRIES if not header(p)["expect"]]


@pytest.fixture
def canary(tmp_path, monkeypatch):
    flag = tmp_path / "canary-imported"
    monkeypatch.setenv("FTCORE_CANARY_FILE", str(flag))
    monkeypatch.syspath_prepend(str(CORPUS / "_code"))
    yield flag
    sys.modules.pop("broken_canary", None)


@pytest.mark.parametrize("command", ["validate", "preprocess", "run"])
@pytest.mark.parametrize("entry", ENTRIES, ids=[p.stem for p in ENTRIES])
def test_broken_recipe_is_refused_cleanly(entry, command, tmp_path, monkeypatch, capsys, canary):
    monkeypatch.chdir(tmp_path)  # relative paths in the entries resolve here, and nothing lands in the repo
    spec = header(entry)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    argv = [command, str(entry), *spec["args"], f"output_dir={out}", f"dataset_prepared_path={cache}"]
    if spec["args"] and not all("=" in a for a in spec["args"]):
        argv = [command, str(entry), *spec["args"]]  # the entry's own override is broken: add none after it
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err, captured.out)
    assert err.startswith("error: "), err
    for text in spec["expect"]:
        assert text in err, (text, err)
    for text in spec["not"]:
        assert text not in err, (text, err)
    if spec["line"] is not None:
        assert f"line {spec['line']}" in err, err
    assert "Traceback" not in err + captured.out
    assert not out.exists() and not cache.exists()
    assert not (tmp_path / "outputs").exists()
    assert not canary.exists() and "broken_canary" not in sys.modules


def test_the_canary_works(tmp_path, monkeypatch, capsys, canary):
    # the same module named by a valid recipe is imported (so the corpus's "not imported" means something)
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(f"base_model: {CORPUS / '_model'}\nplugins: [broken_canary]\n"
                      f"datasets:\n  - path: {CORPUS / '_data' / 'alpaca.jsonl'}\n    type: alpaca\n")
    assert main(["validate", str(recipe)]) == 0
    shown = capsys.readouterr().out
    assert canary.exists()
    assert "code this recipe runs:" in shown and "plugins: broken_canary (" in shown
    assert str(CORPUS / "_code" / "broken_canary.py") in shown
