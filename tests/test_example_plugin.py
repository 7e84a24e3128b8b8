"""The example third-party plugin, examples/ftcore-neftune, installed and used as a user would.

A copy of the example folder is pip-installed (offline: no index, no dependencies, no build
isolation) into a temporary folder; every ``ftcore`` command then runs in a subprocess with that
folder on ``PYTHONPATH``, so ftcore finds the plugin through its entry point, exactly as after
``pip install ftcore-neftune``. "Without the plugin" is ``FTCORE_DISABLE_PLUGINS=neftune``, which
holds even where the example is also installed in the environment.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import alpaca_rows, write_jsonl, write_recipe

from ftcore import CONTRACT_VERSION

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ftcore-neftune"
PROJECT = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder the example package is pip-installed into."""
    root = tmp_path_factory.mktemp("neftune")
    source = shutil.copytree(EXAMPLE, root / "source",  # pip builds in the source folder: never in the repository
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def ftcore(*args, site, cwd, plugin=True, timeout=300):
    """``ftcore ARGS`` in a subprocess with the installed example, or with it disabled (``plugin=False``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if not plugin:
        env["FTCORE_DISABLE_PLUGINS"] = ",".join(filter(None, [os.environ.get("FTCORE_DISABLE_PLUGINS"), "neftune"]))
    return subprocess.run([sys.executable, "-m", "ftcore", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_it_is_listed_with_its_package_and_version(site, tmp_path):
    listed = ftcore("plugins", "--json", site=site, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    plugin = next(p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "neftune")
    assert (plugin["module"], plugin["source"], plugin["package"], plugin["version"], plugin["contract"]) == (
        "ftcore_neftune", "entry point", "ftcore-neftune", PROJECT["version"], CONTRACT_VERSION.split(".")[0])
    assert {"recipe_keys", "recipe_sections", "validate_recipe", "trainer_callbacks", "register_evaluators",
            "run_finished"} <= set(plugin["hooks"])


def test_validate_knows_its_key_and_suggests_it_for_a_typo(site, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))
    recipe = write_recipe(tmp_path / "r.yaml", base_model="some/model",
                          datasets=[{"path": str(data), "type": "alpaca"}], neftune_noise_alpha=5)
    ok = ftcore("validate", recipe, site=site, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    shipped = ftcore("validate", EXAMPLE / "recipe.yaml", site=site, cwd=tmp_path)
    assert shipped.returncode == 0, shipped.stderr
    keys = yaml.safe_load(recipe.read_text())
    keys["neftune_noise_alpah"] = keys.pop("neftune_noise_alpha")
    typo = ftcore("validate", write_recipe(tmp_path / "typo.yaml", **keys), site=site, cwd=tmp_path)
    assert typo.returncode == 2, typo.stdout + typo.stderr
    assert "neftune_noise_alpah: unknown key (did you mean 'neftune_noise_alpha'?)" in typo.stderr
    assert "Traceback" not in typo.stderr


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_example_recipe_runs_and_its_run_recipe_validates_again(site, tmp_path, tiny_llama):
    out, data = tmp_path / "out", write_jsonl(tmp_path / "data.jsonl", alpaca_rows(48))
    done = ftcore("run", EXAMPLE / "recipe.yaml", f"base_model={tiny_llama}", f"datasets[0].path={data}",
                  "sequence_len=512", "max_steps=3", f"output_dir={out}",
                  site=site, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    noise = [r for r in metrics(out) if "eval_neftune_noise_norm" in r]
    assert noise and noise[-1]["eval_neftune_noise_norm"] > 0
    assert noise[-1]["eval_neftune_noise_norm_expected"] > 0 and "eval_loss" in noise[-1]
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    assert written["neftune_noise_alpha"] == 5.0 and written["neftune"] == {"seed": 7}
    again = ftcore("validate", out / "recipe.yaml", site=site, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    without = ftcore("validate", out / "recipe.yaml", site=site, cwd=tmp_path, plugin=False)
    assert without.returncode == 2 and "neftune_noise_alpha:" in without.stderr  # it needs the plugin, and says so


@pytest.mark.slow
def test_a_run_that_does_not_use_it_writes_none_of_its_keys(site, tmp_path, tiny_llama):
    out, data = tmp_path / "out", write_jsonl(tmp_path / "data.jsonl", alpaca_rows(48))
    done = ftcore("run", "quickstart", f"base_model={tiny_llama}", f"datasets[0].path={data}", "sequence_len=512",
                  "max_steps=2", f"output_dir={out}",
                  site=site, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (out / "recipe.yaml").read_text()
    assert "neftune" not in text
    assert not [k for r in metrics(out) for k in r if "neftune" in k]
    without = ftcore("validate", out / "recipe.yaml", site=site, cwd=tmp_path, plugin=False)
    assert without.returncode == 0, without.stderr
