"""Sharing recipes: ``extends:`` (paths, names, plugin:NAME, pinned URLs), ``ftcore recipes list|show|copy``,
remote recipes pinned with ``#sha256=``, rerunning ``RUN_DIR/recipe.yaml`` and ``ftcore diff``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from ftcore import hookimpl
from ftcore.errors import RecipeError
from ftcore.testing import add_plugin, fresh_plugins, write_jsonl, write_recipe, alpaca_rows

SHIPPED = Path(__file__).resolve().parents[1] / "recipes"


class RecipeSharer:
    """A third-party plugin package that ships one recipe (``register_recipes``)."""

    FTCORE_CONTRACT = "1"

    def __init__(self, path):
        self.path = path

    @hookimpl
    def register_recipes(self, register):
        register("team-chat", str(self.path))


@pytest.fixture
def sharer(tmp_path):
    shipped = tmp_path / "pkg" / "team-chat.yaml"
    shipped.parent.mkdir()
    shipped.write_text("# The team's chat recipe: QLoRA on Llama 3.1 8B\n"
                       "extends: llama31-qlora\nlearning_rate: 1.0e-4\nlora_r: 8\n", encoding="utf-8")
    return add_plugin(fresh_plugins(), RecipeSharer(shipped), "sharer")


def cli(*args, plugins=None, monkeypatch=None):
    """``ftcore ARGS`` in this process: (exit code, stdout, stderr); ``plugins`` replaces the installed ones."""
    from ftcore.cli import main

    if plugins is not None:
        monkeypatch.setattr("ftcore.plugins_manager.load_plugins", lambda *a, **k: plugins)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def load(source, plugins=None, overrides=()):
    from ftcore.api import load_recipe

    return load_recipe(str(source), overrides, plugins or fresh_plugins())


# ── extends: ──────────────────────────────────────────────────────────────────


def test_a_held_out_recipe_extending_a_shipped_one_validates_with_both_keys(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("extends: llama31-qlora\nlearning_rate: 1.0e-4\nlora_r: 64\nnum_epochs: 2\n"
                     "output_dir: ./outputs/mine\n", encoding="utf-8")
    recipe, raw = load(child)
    parent = yaml.safe_load((SHIPPED / "llama31-qlora.yaml").read_text())
    assert recipe.learning_rate == 1e-4 and recipe.lora_r == 64 and recipe.num_epochs == 2  # its own
    assert recipe.base_model == parent["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"  # its parent's
    assert recipe.adapter == "qlora" and recipe.load_in_4bit is True
    assert recipe.datasets[0].path == parent["datasets"][0]["path"]
    assert [p.name for p in raw.files] == ["llama31-qlora.yaml", "mine.yaml"]


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "base_model": "m", "lora_target_modules": ["q_proj", "k_proj", "v_proj"],
        "datasets": [{"path": "a.jsonl", "type": "alpaca"}, {"path": "b.jsonl", "type": "alpaca"}],
        "vision": {"image_size": 448, "freeze_vision_tower": True}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "lora_target_modules": ["o_proj"],
        "datasets": [{"path": "c.jsonl"}], "vision": {"image_size": 560}}))
    from ftcore.recipe.load import load_raw

    data = load_raw(str(tmp_path / "child.yaml")).data
    assert data["lora_target_modules"] == ["o_proj"]  # a list is replaced whole
    assert data["datasets"] == [{"path": "c.jsonl"}]  # list items are not merged either
    assert data["vision"] == {"image_size": 560, "freeze_vision_tower": True}  # a mapping merges key by key
    assert "extends" not in data


def test_extends_chains_and_reports_cycles(tmp_path):
    from ftcore.recipe.load import load_raw

    (tmp_path / "a.yaml").write_text("base_model: m\nlearning_rate: 0.1\nseed: 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\nseed: 2\nlora_r: 4\n")
    (tmp_path / "c.yaml").write_text("extends: sub/b.yaml\nlora_r: 8\n")
    assert load_raw(str(tmp_path / "c.yaml")).data == {"base_model": "m", "learning_rate": 0.1, "seed": 2, "lora_r": 8}

    (tmp_path / "x.yaml").write_text("extends: y.yaml\nseed: 1\n")
    (tmp_path / "y.yaml").write_text("extends: x.yaml\nseed: 2\n")
    with pytest.raises(RecipeError) as caught:
        load_raw(str(tmp_path / "x.yaml"))
    message = str(caught.value)
    assert "cycle" in message and "x.yaml -> " in message and "y.yaml" in message and "extends" in message


def test_extends_plugin_name_finds_a_recipe_an_installed_package_ships(tmp_path, sharer):
    child = tmp_path / "mine.yaml"
    child.write_text("extends: plugin:team-chat\nnum_epochs: 3\n")
    recipe, raw = load(child, sharer)
    assert recipe.num_epochs == 3 and recipe.lora_r == 8 and recipe.learning_rate == 1e-4  # child, plugin's
    assert recipe.base_model == "meta-llama/Llama-3.1-8B-Instruct"  # the plugin's recipe's own parent
    assert [p.name for p in raw.files] == ["llama31-qlora.yaml", "team-chat.yaml", "mine.yaml"]


def test_an_unknown_plugin_recipe_lists_what_is_registered_with_its_package(tmp_path, sharer, monkeypatch):
    child = tmp_path / "mine.yaml"
    child.write_text("extends: plugin:team-caht\n")
    code, out, err = cli("validate", child, plugins=sharer, monkeypatch=monkeypatch)
    assert code == 2 and out == ""
    assert "extends" in err and "no installed plugin registers a recipe named 'team-caht'" in err
    assert "team-chat" in err and "team-chat (package sharer-pkg 0.0.0)" in err and "quickstart (ftcore)" in err
    assert "Traceback" not in err


# ── ftcore recipes list | show | copy ─────────────────────────────────────────


def test_recipes_list_json_names_task_model_method_package_and_description(sharer, monkeypatch):
    code, out, _ = cli("recipes", "list", "--json", plugins=sharer, monkeypatch=monkeypatch)
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)["recipes"]}
    assert set(rows) >= {p.stem for p in SHIPPED.glob("*.yaml")} | {"team-chat"}
    assert rows["team-chat"]["package"] == "sharer-pkg" and rows["team-chat"]["method"] == "qlora"
    assert rows["team-chat"]["description"] == "The team's chat recipe: QLoRA on Llama 3.1 8B"
    assert rows["llama31-qlora"] | {} == rows["llama31-qlora"]
    assert (rows["llama31-full"]["method"], rows["llama31-lora"]["method"]) == ("full", "lora")
    assert rows["llama31-full"]["package"] == "ftcore" and rows["llama31-full"]["task"] == "chat"
    assert rows["qwen25-coder-lora"]["task"] == "code" and rows["llama32-vision-qlora"]["task"] == "vision"
    assert rows["llama31-qlora"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert rows["llama31-qlora"]["description"].startswith("QLoRA of Llama 3.1 8B Instruct")


def test_recipes_list_filters_by_task_and_prints_a_table(monkeypatch, sharer):
    code, out, _ = cli("recipes", "list", "--task", "vision", "--json", plugins=sharer, monkeypatch=monkeypatch)
    assert code == 0
    assert sorted(r["name"] for r in json.loads(out)["recipes"]) == ["llama32-vision-lora", "llama32-vision-qlora"]
    code, out, _ = cli("recipes", "list", plugins=sharer, monkeypatch=monkeypatch)
    assert code == 0 and "team-chat" in out and "sharer-pkg" in out and "qwen25-coder-qlora" in out


def test_recipes_list_imports_no_torch(tmp_path):
    code = ("import sys; from ftcore.cli import main; rc = main(['recipes', 'list', '--json']); "
            "assert rc == 0; bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_recipes_show_as_written_and_resolved_with_the_license(tmp_path, sharer, monkeypatch):
    code, out, _ = cli("recipes", "show", "llama31-qlora", plugins=sharer, monkeypatch=monkeypatch)
    assert code == 0
    assert "# license: Llama 3.1 Community License" in out and "# gated: yes" in out
    assert (SHIPPED / "llama31-qlora.yaml").read_text() in out  # the file as written, comments and all

    child = tmp_path / "mine.yaml"
    child.write_text("extends: plugin:team-chat\nnum_epochs: 3\n")
    code, out, _ = cli("recipes", "show", child, plugins=sharer, monkeypatch=monkeypatch)
    assert code == 0 and "extends: plugin:team-chat" in out and "base_model" not in out.split("# file:")[1]
    code, out, _ = cli("recipes", "show", child, "--resolved", plugins=sharer, monkeypatch=monkeypatch)
    data = yaml.safe_load(out)  # the header lines are comments: the output is a recipe
    assert data["num_epochs"] == 3 and data["lora_r"] == 8 and data["base_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "extends" not in data

    code, _, err = cli("recipes", "show", "no-such-recipe", plugins=sharer, monkeypatch=monkeypatch)
    assert code == 2 and "no recipe file 'no-such-recipe'" in err and "quickstart" in err


def test_recipes_copy_refuses_to_overwrite_and_the_copy_still_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("recipes", "copy", "quickstart", "mine.yaml")  # quickstart uses ${recipe_dir:}
    assert code == 0 and "copied quickstart to mine.yaml" in out
    assert "${recipe_dir:}" not in Path("mine.yaml").read_text()
    assert load("mine.yaml")[1].data == load("quickstart")[1].data
    code, _, _ = cli("recipes", "copy", "llama31-qlora", "qlora.yaml")  # its header says how to run it: the copy
    assert code == 0 and "# ftcore run qlora.yaml\n" in Path("qlora.yaml").read_text()
    assert "recipes/llama31-qlora.yaml" not in Path("qlora.yaml").read_text()
    before = Path("mine.yaml").read_text()
    code, _, err = cli("recipes", "copy", "llama31-lora", "mine.yaml")
    assert code == 2 and "mine.yaml exists" in err and "never overwrites" in err
    assert Path("mine.yaml").read_text() == before

    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "base.yaml").write_text("extends: llama31-lora\nlora_r: 4\n")
    (tmp_path / "team" / "child.yaml").write_text("extends: base.yaml  # ours\nlearning_rate: 0.5\n")
    (tmp_path / "elsewhere").mkdir()
    code, out, _ = cli("recipes", "copy", "team/child.yaml", "elsewhere")
    assert code == 0 and (tmp_path / "elsewhere" / "child.yaml").is_file()
    recipe, _ = load(tmp_path / "elsewhere" / "child.yaml")
    assert recipe.lora_r == 4 and recipe.learning_rate == 0.5 and recipe.adapter == "lora"


# ── remote recipes ────────────────────────────────────────────────────────────


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 serving tmp_path/site; yields (folder, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    httpd.shutdown()
    httpd.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REMOTE = "# shared\nextends: llama31-lora\nlora_r: 12\nlearning_rate: 3.0e-4\n"


def test_a_pinned_remote_recipe_downloads_checks_caches_and_works_offline(server, tmp_path, monkeypatch):
    site, base, httpd = server
    monkeypatch.setenv("FTCORE_CACHE", str(tmp_path / "cache"))
    (site / "r.yaml").write_text(REMOTE)
    digest = hashlib.sha256(REMOTE.encode()).hexdigest()
    url = f"{base}/r.yaml#sha256={digest}"
    recipe, _ = load(url)
    assert recipe.lora_r == 12 and recipe.adapter == "lora" and recipe.base_model.startswith("meta-llama/")
    cached = tmp_path / "cache" / "recipes" / digest / "r.yaml"
    assert cached.read_text() == REMOTE
    code, out, err = cli("validate", url)
    assert code == 0, err
    code, out, err = cli("recipes", "show", url)
    assert code == 0, err
    assert f"# file: {base}/r.yaml (sha256 checked; cached at {cached})" in out
    assert "lora_r: 12" in out

    httpd.shutdown()  # offline: the cache answers
    httpd.server_close()
    recipe, _ = load(url)
    assert recipe.lora_r == 12

    child = tmp_path / "child.yaml"  # extends: a pinned URL
    child.write_text(f"extends: {url}\nnum_epochs: 5\n")
    recipe, _ = load(child)
    assert recipe.num_epochs == 5 and recipe.lora_r == 12


def test_a_remote_recipe_without_or_with_a_wrong_hash_is_refused_with_the_actual_hash(server, tmp_path, monkeypatch):
    site, base, _ = server
    monkeypatch.setenv("FTCORE_CACHE", str(tmp_path / "cache"))
    (site / "r.yaml").write_text(REMOTE)
    actual = hashlib.sha256(REMOTE.encode()).hexdigest()

    code, out, err = cli("validate", f"{base}/r.yaml")
    assert code == 2 and "must be pinned by its SHA-256" in err and actual in err and f"{base}/r.yaml" in err
    code, _, err = cli("run", f"{base}/r.yaml#sha256={'0' * 64}")
    assert code == 2 and f"the SHA-256 of the downloaded file is {actual}, not the pinned {'0' * 64}" in err
    assert f"#sha256={actual}" in err and "Traceback" not in err
    assert not (tmp_path / "cache" / "recipes" / ("0" * 64) / "r.yaml").exists()

    code, _, err = cli("validate", f"{base}/missing.yaml#sha256={actual}")
    assert code == 2 and "HTTP 404" in err and "missing.yaml" in err

    code, _, err = cli("validate", f"http://127.0.0.1:{_free_port()}/r.yaml#sha256={actual}")
    assert code == 2 and "cannot download the recipe" in err


def test_a_remote_recipe_may_not_use_local_paths(server, tmp_path, monkeypatch):
    site, base, _ = server
    monkeypatch.setenv("FTCORE_CACHE", str(tmp_path / "cache"))
    for name, text in {"rel.yaml": "extends: ./parent.yaml\nlora_r: 2\n",
                       "dir.yaml": "base_model: m\ndatasets:\n  - path: ${recipe_dir:}/data.jsonl\n"}.items():
        (site / name).write_text(text)
    digest = hashlib.sha256(b"extends: ./parent.yaml\nlora_r: 2\n").hexdigest()
    with pytest.raises(RecipeError) as caught:
        load(f"{base}/rel.yaml#sha256={digest}")
    assert "a remote recipe may extend only a recipe name, plugin:NAME or another pinned URL" in str(caught.value)
    assert f"{base}/rel.yaml" in str(caught.value)
    digest = hashlib.sha256((site / "dir.yaml").read_bytes()).hexdigest()
    with pytest.raises(RecipeError) as caught:
        load(f"{base}/dir.yaml#sha256={digest}")
    assert "datasets[0].path" in str(caught.value) and "${recipe_dir:} is refused in a remote recipe" in str(caught.value)

    monkeypatch.chdir(tmp_path)  # a file in the current folder named like the registered parent is not used
    Path("llama31-lora").write_text("base_model: local-impostor\n")
    (site / "named.yaml").write_text(REMOTE)
    recipe, _ = load(f"{base}/named.yaml#sha256={hashlib.sha256(REMOTE.encode()).hexdigest()}")
    assert recipe.base_model == "meta-llama/Llama-3.1-8B-Instruct"


# ── ftcore diff ───────────────────────────────────────────────────────────────


def test_diff_prints_key_paths_and_exits_1_when_recipes_differ(tmp_path):
    a = write_recipe(tmp_path / "a.yaml", base_model="m", learning_rate=0.1, adapter="lora", output_dir="out",
                     datasets=[{"path": "x.jsonl", "type": "alpaca"}])
    b = write_recipe(tmp_path / "b.yaml", base_model="m", learning_rate=0.2, adapter="lora", lora_dropout=0.1,
                     output_dir="out", datasets=[{"path": "y.jsonl", "type": "alpaca"}])
    code, out, _ = cli("diff", a, b)
    assert code == 1
    assert "~ learning_rate: 0.1 -> 0.2" in out and '~ datasets[0].path: "x.jsonl" -> "y.jsonl"' in out
    assert "~ lora_dropout: 0.0 -> 0.1" in out  # resolved: the default against the value set
    code, out, _ = cli("diff", a, b, "--json")
    found = json.loads(out)
    assert code == 1 and found["same"] is False
    assert found["changed"]["learning_rate"] == [0.1, 0.2] and found["changed"]["datasets[0].path"] == ["x.jsonl", "y.jsonl"]
    c = tmp_path / "c.yaml"
    c.write_text("extends: a.yaml\n")
    code, out, _ = cli("diff", a, c)  # c: a's keys through extends; the same output_dir (a's, set)
    assert code == 0 and "the same resolved recipe" in out
    code, _, err = cli("diff", a, tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml" in err


def test_diff_of_a_run_folder_adds_version_and_data_hashes(tmp_path):
    runs = []
    for name, sha in (("one", "a" * 64), ("two", "b" * 64)):
        folder = tmp_path / name
        folder.mkdir()
        write_recipe(folder / "recipe.yaml", base_model="m", output_dir=str(folder))
        (folder / "run.json").write_text(json.dumps({"versions": {"ftcore": "1.0"},
                                                     "data": {"files": [{"path": "d.jsonl", "sha256": sha}]}}))
        runs.append(folder)
    code, out, _ = cli("diff", *runs, "--json")
    found = json.loads(out)
    assert code == 1 and found["changed"]["output_dir"] == [str(runs[0]), str(runs[1])]
    assert found["runs"]["changed"] == {"data d.jsonl": ["a" * 64, "b" * 64]}
    code, _, err = cli("diff", tmp_path, runs[0])
    assert code == 2 and "without recipe.yaml" in err


# ── rerunning a finished run ──────────────────────────────────────────────────


def test_rerun_a_run_folder_into_a_fresh_sibling_with_the_same_loss(tiny_llama, tmp_path, monkeypatch):
    from ftcore.recipe.rerun import changed_data

    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(16))
    write_recipe(tmp_path / "r.yaml", base_model=str(tiny_llama), datasets=[{"path": str(data), "type": "alpaca"}],
                 adapter="lora", sequence_len=512, micro_batch_size=4, max_steps=3, learning_rate=5e-3,
                 logging_steps=1, optimizer="adamw_torch", seed=7, output_dir=str(tmp_path / "run"))
    code, _, err = cli("run", tmp_path / "r.yaml")
    assert code == 0, err
    run = tmp_path / "run"
    first = json.loads((run / "run.json").read_text())
    untouched = sorted(p.name for p in run.iterdir())

    code, out, err = cli("run", run / "recipe.yaml")
    assert code == 0, err
    assert f"rerunning the run in {run} into {tmp_path / 'run-rerun'}" in out
    again = json.loads((tmp_path / "run-rerun" / "run.json").read_text())
    assert again["status"] == first["status"] == "completed"
    assert isinstance(first["metrics"]["train_loss_last"], float)
    assert again["metrics"]["train_loss_last"] == pytest.approx(first["metrics"]["train_loss_last"], rel=1e-6)
    assert sorted(p.name for p in run.iterdir()) == untouched
    assert json.loads((run / "run.json").read_text()) == first

    from ftcore.recipe.load import load_raw
    from ftcore.recipe.rerun import rerun_folder

    raw = load_raw(str(run / "recipe.yaml"))
    assert rerun_folder(raw, raw.data["output_dir"]) == tmp_path / "run-rerun-2"  # the next one
    recipe, _ = load(run / "recipe.yaml")
    assert changed_data(recipe, run) == []
    write_jsonl(data, alpaca_rows(17))
    changes = changed_data(recipe, run)
    assert len(changes) == 1 and str(data) in changes[0] and "sha256" in changes[0]
