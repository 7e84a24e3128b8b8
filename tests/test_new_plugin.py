"""``ftcore new-plugin``: the package it writes installs, loads, and its own tests pass.

Nothing is pip-installed (slow, and it would leak into the venv): the
generated tests run in a subprocess with the package folder on PYTHONPATH,
the recipe ``plugins:`` list loads the module, and the ``egg-info`` setuptools
writes from the package's ``pyproject.toml`` makes its entry point visible as
an installed one would be.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import write_recipe

from ftcore import CONTRACT_VERSION, hooks
from ftcore.cli import main
from ftcore.testing import fresh_plugins


def generate(tmp_path, name="ftcore-shout"):
    target = tmp_path / "pkg"
    assert main(["new-plugin", name, "--dir", str(target)]) == 0
    return target


def with_package(target):
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_it_writes_a_package_with_an_entry_point_a_format_and_a_section(tmp_path, capsys):
    target = generate(tmp_path)
    assert "ftcore_shout" in capsys.readouterr().out
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["README.md", "ftcore_shout.py", "pyproject.toml", "tests/test_ftcore_shout.py"]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    assert project["project"]["name"] == "ftcore-shout"
    assert any(re.match(r"ftcore\b", d) for d in project["project"]["dependencies"])
    assert project["project"]["entry-points"]["ftcore"] == {"ftcore-shout": "ftcore_shout"}
    assert project["tool"]["setuptools"]["py-modules"] == ["ftcore_shout"]

    spec = importlib.util.spec_from_file_location("ftcore_shout", target / "ftcore_shout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.FTCORE_CONTRACT == CONTRACT_VERSION.split(".")[0]
    plugins = fresh_plugins(("ftcore-shout", module))  # checked like an installed plugin: contract, hook names
    assert "ftcore_shout_upper" in hooks.dataset_formats(plugins)
    assert "ftcore_shout" in hooks.recipe_sections(plugins)

    readme = (target / "README.md").read_text()
    for command in ("pip install -e .", "python -m pytest", "type: ftcore_shout_upper", "ftcore_shout:",
                    "ftcore run"):
        assert command in readme
    test_source = (target / "tests" / "test_ftcore_shout.py").read_text()
    for used in ("run_format", "load_recipe", "ftcore_tiny_llama", "ftcore_register"):
        assert used in test_source


def test_the_folder_defaults_to_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "my.Plugin"]) == 0
    assert (tmp_path / "my.Plugin" / "my_plugin.py").is_file()
    assert (tmp_path / "my.Plugin" / "tests" / "test_my_plugin.py").is_file()


@pytest.mark.parametrize("name,says", [
    ("bad name", "not a valid package name"),
    ("shout!", "not a valid package name"),
    ("shout-", "not a valid package name"),
    ("9lives", "not a valid Python identifier"),
    ("class", "not a valid Python identifier"),
    ("json", "shadows an existing module"),
    ("ftcore", "shadows an existing module"),
    ("learning-rate", "core recipe key"),
])
def test_a_bad_name_is_refused_and_nothing_is_written(tmp_path, capsys, name, says):
    assert main(["new-plugin", name, "--dir", str(tmp_path / "pkg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and "Traceback" not in err
    assert not (tmp_path / "pkg").exists()


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path, capsys):
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    assert main(["new-plugin", "ftcore-shout", "--dir", str(target)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    assert main(["new-plugin", "ftcore-shout", "--dir", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["new-plugin", "ftcore-shout", "--dir", str(tmp_path / "empty")]) == 0  # absent: created


def test_the_command_is_listed_and_imports_no_torch(tmp_path):
    code = ("import sys; from ftcore.cli import main; "
            f"rc = main(['new-plugin', 'light-plugin', '--dir', {str(tmp_path / 'p')!r}]); "
            "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "0 []", done.stderr
    helped = subprocess.run([sys.executable, "-m", "ftcore", "--help"], capture_output=True, text=True)
    assert "new-plugin" in helped.stdout


@pytest.mark.slow
def test_the_generated_tests_pass(tmp_path):
    target = generate(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=target,
                          env=with_package(target), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 5 and "failed" not in done.stdout


def test_the_generated_plugin_loads_from_a_recipe_and_as_an_entry_point(tmp_path):
    target = generate(tmp_path)
    env = with_package(target)
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "Say it.", "response": "red"}\n')
    keys = {"base_model": "some/model", "plugins": ["ftcore_shout"],
            "datasets": [{"path": str(data), "type": "ftcore_shout_upper"}], "ftcore_shout": {"suffix": "!"}}
    recipe = write_recipe(tmp_path / "r.yaml", **keys)
    ok = subprocess.run([sys.executable, "-m", "ftcore", "validate", str(recipe)], cwd=tmp_path, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "ftcore_shout_upper" in ok.stdout, ok.stderr
    typo = subprocess.run([sys.executable, "-m", "ftcore", "validate", str(recipe), "ftcore_shout.sufix=x"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert typo.returncode == 2 and "ftcore_shout.sufix: unknown key (did you mean 'suffix'?)" in typo.stderr
    without = subprocess.run([sys.executable, "-m", "ftcore", "validate", str(recipe)], cwd=tmp_path,
                             capture_output=True, text=True)  # not on PYTHONPATH: the recipe's plugin is missing
    assert without.returncode != 0 and "ftcore_shout" in without.stderr

    # the pyproject's entry point, as installing would register it (setuptools' egg-info on PYTHONPATH)
    built = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "egg_info"],
                           cwd=target, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    listed = subprocess.run([sys.executable, "-m", "ftcore", "plugins", "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    plugin = next(p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "ftcore-shout")
    assert (plugin["module"], plugin["source"], plugin["package"], plugin["contract"]) == (
        "ftcore_shout", "entry point", "ftcore-shout", CONTRACT_VERSION.split(".")[0])
    assert {"recipe_sections", "register_dataset_formats"} <= set(plugin["hooks"])
