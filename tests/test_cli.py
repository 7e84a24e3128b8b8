"""The ``ftcore`` command, run as a user runs it: in a subprocess.

Exit codes, messages without tracebacks, nothing written on a bad recipe, the
shipped and Axolotl-style recipes validating, and start-up: ``--help``,
``plugins`` and ``validate`` never import torch or transformers and answer in
under a second. No model is loaded by any test here.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alpaca_rows, write_jsonl, write_recipe

import ftcore

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.yaml"))
AXOLOTL = sorted((ROOT / "tests" / "axolotl_recipes").glob("*.yml"))
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def ftcore_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ftcore", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


BAD_KEYS = ["lerning_rate", "lora_dropout", "optimizer", "datasets[0].field_instructon", "warmup_ratio"]


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", alpaca_rows(8))


@pytest.fixture
def bad_recipe(tmp_path, data):
    """Five distinct mistakes, one per key in BAD_KEYS."""
    return write_recipe(
        tmp_path / "bad.yaml",
        base_model="org/model",
        adapter="lora",
        lerning_rate=1e-4,
        lora_dropout=1.5,
        optimizer="adamw_torh",
        datasets=[{"path": str(data), "type": "alpaca", "field_instructon": "q"}],
        warmup_steps=10,
        warmup_ratio=0.1,
        output_dir="out",
    )


@pytest.fixture
def good_recipe(tmp_path, data):
    return write_recipe(tmp_path / "good.yaml", base_model="org/model", adapter="lora",
                        datasets=[{"path": str(data), "type": "alpaca"}], output_dir="out")


# ── errors: exit 2, every key named, no traceback unless --debug ───────────


def test_validate_bad_recipe_exits_2_with_every_key_and_no_traceback(bad_recipe, tmp_path):
    result = ftcore_cli("validate", bad_recipe, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error:") and "5 problems" in result.stderr.splitlines()[0]
    lines = result.stderr.splitlines()
    for key in BAD_KEYS:
        assert any(line.strip().startswith(f"{key}:") for line in lines), (key, result.stderr)
    assert "did you mean 'learning_rate'" in result.stderr and "did you mean 'adamw_torch'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_shows_the_traceback(bad_recipe, tmp_path, where):
    args = ["validate", bad_recipe, "--debug"] if where == "after" else ["--debug", "validate", bad_recipe]
    result = ftcore_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "RecipeError" in result.stderr
    assert "lerning_rate" in result.stderr


@pytest.mark.parametrize("override", ["learning_rate", "learning_rate=[1,", "datasets[3].path=x.jsonl"])
def test_validate_bad_override_exits_2_without_traceback(good_recipe, tmp_path, override):
    result = ftcore_cli("validate", good_recipe, override, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_validate_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("base_model: org/model\nlora_r: 8\ndatasets:\n  - path: a\n   type: alpaca\n", encoding="utf-8")
    result = ftcore_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2 and "line 5" in result.stderr and "Traceback" not in result.stderr


def test_validate_missing_recipe_file(tmp_path):
    result = ftcore_cli("validate", tmp_path / "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_validate_checks_local_paths(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model=str(tmp_path / "no-such-model"),
                        datasets=[{"path": "./missing.jsonl", "type": "alpaca"}])
    result = ftcore_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "datasets[0].path" in result.stderr and "base_model" in result.stderr
    assert "no such file" in result.stderr


def test_validate_good_recipe_with_overrides(good_recipe, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", alpaca_rows(2))
    result = ftcore_cli("validate", good_recipe, "learning_rate=1e-4", f"datasets[0].path={other}",
                        "lora_model_dir=", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:") and str(other) in result.stdout
    assert result.stderr == ""


# ── run: nothing written on a bad recipe, a non-empty output_dir refused ───


def test_run_bad_recipe_exits_2_and_writes_nothing(bad_recipe, tmp_path):
    before = listing(tmp_path)
    result = ftcore_cli("run", bad_recipe, cwd=tmp_path)
    assert result.returncode == 2, result
    assert not (tmp_path / "out").exists()
    assert listing(tmp_path) == before
    assert all(key in result.stderr for key in BAD_KEYS)
    assert "Traceback" not in result.stderr + result.stdout


def test_run_refuses_a_non_empty_output_dir(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    # The base model is a folder that does not exist: if the refusal came after
    # loading, the error would be about the model instead.
    missing_model = tmp_path / "no-such-model"
    path = write_recipe(tmp_path / "r.yaml", base_model=str(missing_model), adapter="lora",
                        datasets=[{"path": str(data), "type": "alpaca"}], output_dir=str(out))
    before = listing(tmp_path)
    start = time.perf_counter()
    result = ftcore_cli("run", path, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2, result
    assert "--overwrite" in result.stderr
    assert "no-such-model" not in result.stderr and "tokenizer" not in result.stderr
    assert "Traceback" not in result.stderr
    assert listing(tmp_path) == before and (out / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert elapsed < 10, f"the refusal took {elapsed:.1f} s; it should come before anything loads"


# ── the small commands ──────────────────────────────────────────────────────


def test_version():
    result = ftcore_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ftcore {ftcore.__version__}"


def test_no_command_prints_help():
    result = ftcore_cli()
    assert result.returncode == 0 and "usage: ftcore" in result.stdout
    for command in ("run", "validate", "plugins"):
        assert command in result.stdout


def test_unknown_command_exits_2():
    result = ftcore_cli("trian")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_plugins_json_lists_the_builtins():
    result = ftcore_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = {p["name"] for p in report["plugins"]}
    assert {"lora", "full", "alpaca", "chat_template", "completion"} <= names
    assert report["contract"] == ftcore.CONTRACT_VERSION
    assert all({"name", "version", "package", "hooks"} <= set(p) for p in report["plugins"])


# ── shipped recipes ─────────────────────────────────────────────────────────


def test_there_is_at_least_one_shipped_recipe():
    assert SHIPPED, "recipes/*.yaml is empty"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_validates(path, tmp_path):
    result = ftcore_cli("validate", path, cwd=tmp_path)  # from another folder: no cwd-relative paths
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_starts_with_the_command_that_runs_it(path):
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert header and header[0].startswith("# ftcore run "), f"{path.name} must begin with '# ftcore run ...'"
    assert any("=" in line and "ftcore run" in line for line in header), f"{path.name}: show an example override"


def test_named_recipe_validates_from_anywhere(tmp_path):
    if not QUICKSTART.exists():
        pytest.skip("recipes/quickstart.yaml does not exist yet")
    result = ftcore_cli("validate", "quickstart", "learning_rate=1e-3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:") and "quickstart" in result.stdout


def test_unknown_named_recipe_gets_a_suggestion(tmp_path):
    if not QUICKSTART.exists():
        pytest.skip("recipes/quickstart.yaml does not exist yet")
    result = ftcore_cli("validate", "quickstrat", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'quickstart'" in result.stderr


# ── Axolotl users' recipes ──────────────────────────────────────────────────


def test_there_are_axolotl_style_recipes():
    assert len(AXOLOTL) >= 3


@pytest.mark.parametrize("path", AXOLOTL, ids=lambda p: p.name)
def test_axolotl_style_recipe_validates(path, tmp_path):
    result = ftcore_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok:" in result.stdout and result.stderr == ""
    if path.name == "llama3-lora.yml":  # Axolotl plugins and hints are noted, not dropped silently
        assert "axolotl.integrations.liger.LigerPlugin" in result.stdout
        assert "liger_rms_norm" in result.stdout and "lora_mlp_kernel" in result.stdout


@pytest.mark.parametrize("override, key", [("rl=dpo", "rl"), ("tensor_parallel_size=2", "tensor_parallel_size")])
def test_axolotl_feature_ftcore_lacks_is_an_error_naming_the_key(tmp_path, override, key):
    result = ftcore_cli("validate", AXOLOTL[0], override, cwd=tmp_path)
    assert result.returncode == 2, result
    assert any(line.strip().startswith(f"{key}:") for line in result.stderr.splitlines()), result.stderr
    assert "not supported" in result.stderr and "Traceback" not in result.stderr


# ── start-up: no torch, no transformers, under a second ─────────────────────

PROBE = """
import json, sys
from ftcore.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:  # --help exits from argparse
    rc = exc.code
print("PROBE " + json.dumps({"rc": rc, "torch": "torch" in sys.modules,
                             "transformers": "transformers" in sys.modules}))
"""


def _startup_cases():
    qlora = ROOT / "tests" / "axolotl_recipes" / "llama3-qlora.yml"  # adapter: qlora, load_in_4bit, plugins
    cases = [("help", ["--help"]), ("plugins", ["plugins"]), ("validate-axolotl-qlora", ["validate", str(qlora)])]
    if QUICKSTART.exists():
        cases.append(("validate-quickstart", ["validate", "quickstart"]))
    return cases


@pytest.mark.parametrize("args", [c[1] for c in _startup_cases()], ids=[c[0] for c in _startup_cases()])
def test_startup_imports_neither_torch_nor_transformers(args, tmp_path):
    # what keeps these commands fast; their time is measured by benchmarks/startup.py, not asserted here
    result = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    probe = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe, result.stdout + result.stderr
    report = json.loads(probe[-1].removeprefix("PROBE "))
    assert report["rc"] in (0, None), result.stderr
    assert not report["torch"], f"ftcore {' '.join(args)} imported torch"
    assert not report["transformers"], f"ftcore {' '.join(args)} imported transformers"
