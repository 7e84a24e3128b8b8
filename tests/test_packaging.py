"""A plain (non-editable) install carries the built-in plugins and shipped recipes."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_recipes_and_runs_them_by_name(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("ftcore-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for recipe in (REPO / "recipes").glob("*.yaml"):
        assert f"ftcore/recipes/{recipe.name}" in names
    assert "ftcore/recipes/quickstart/tiny-llama/model.safetensors" in names
    assert "ftcore/plugins/lora.py" in names
    for preset in ("zero1", "zero2", "zero3", "zero3_offload"):  # deepspeed: zero3 etc. (plugins/distributed.py)
        assert f"ftcore/recipes/deepspeed/{preset}.json" in names

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # run from the installed copy, not the checkout: it must find the quickstart by name
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import ftcore; print(ftcore.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env)
    assert probe.stdout.strip().startswith(str(site))
    done = subprocess.run([sys.executable, "-m", "ftcore", "validate", "quickstart"], capture_output=True,
                          text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert str(site / "ftcore" / "recipes" / "quickstart" / "tiny-llama") in done.stdout
    listed = subprocess.run([sys.executable, "-m", "ftcore", "plugins", "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert {"lora", "full", "alpaca", "chat_template", "completion"} <= {
        p["name"] for p in json.loads(listed.stdout)["plugins"]}
