"""The plugin boundary, checked on the code itself.

- A built-in plugin imports only ftcore's public surface (``ftcore``, ``ftcore.api``) and its own
  package: never another plugin, never a private core module.
- The core never imports a built-in plugin (only the list of them, in the plugin manager) and never
  names LoRA, bitsandbytes, DeepSpeed, FSDP, Mllama, FIM or wandb outside comments, docstrings and
  the Axolotl key list.
- Nothing sets ``ftcore_*`` attributes on other objects: state between hooks goes in the stash.
- A built-in deleted from a copy of the tree (its module and its BUILTINS line), or blocked with
  FTCORE_DISABLE_PLUGINS, leaves every recipe that does not use it valid and runnable.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import ftcore
import ftcore.plugins
from ftcore.plugins import BUILTINS

CORE = Path(ftcore.__file__).parent
PLUGINS = Path(ftcore.plugins.__file__).parent
RECIPES = sorted((CORE.parent / "recipes").glob("*.yaml")) if (CORE.parent / "recipes").is_dir() else []
PUBLIC = ("ftcore", "ftcore.api", "ftcore.recipes",  # ftcore.recipes: the shipped recipe files (package data)
          "ftcore.testing.tiny")  # the tiny models of each family: `ftcore run --dry-run` (planning) builds them
BANNED = re.compile(r"lora|bitsandbytes|deepspeed|fsdp|mllama|\bfim\b|wandb", re.I)


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in a file, at any depth (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module in ("ftcore", "ftcore.plugins")]  # `from ftcore import plugins`
    return found


def module_of(path: Path) -> str:
    parts = path.relative_to(PLUGINS).with_suffix("").parts
    return ".".join(("ftcore.plugins", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def plugin_of(path: Path) -> str | None:
    """The built-in module (or package) a file belongs to, or None."""
    module = module_of(path)
    owners = [m for m in BUILTINS.values() if module == m or module.startswith(m + ".")]
    return max(owners, key=len) if owners else None


def builtin_files():
    for path in sorted(PLUGINS.rglob("*.py")):
        owner = plugin_of(path)
        if owner is not None:
            yield path, owner


def test_every_builtin_file_is_accounted_for():
    """A module under plugins/ that is no built-in's would be shared code outside the public surface."""
    owned = {path for path, _ in builtin_files()}
    # package __init__ files holding no code (a docstring) are only folders
    empty = {p for p in PLUGINS.rglob("__init__.py") if not ast.parse(p.read_text()).body[1:]
             and p != PLUGINS / "__init__.py"}
    stray = [p.relative_to(PLUGINS).as_posix() for p in PLUGINS.rglob("*.py")
             if p not in owned | empty and p != PLUGINS / "__init__.py"]
    assert not stray, f"modules under plugins/ that belong to no built-in: {stray}"


@pytest.mark.parametrize("path, owner", list(builtin_files()), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_a_builtin_imports_only_the_public_surface_and_its_own_package(path, owner):
    bad = []
    for line, module in imports(path):
        if not (module == "ftcore" or module.startswith("ftcore.")):
            continue
        if module in PUBLIC or module.removeprefix("ftcore.") in ftcore.__all__ \
                or module == owner or module.startswith(owner + "."):
            continue
        if module.startswith("ftcore.api."):
            continue  # from ftcore.api import X
        bad.append(f"{path.relative_to(PLUGINS)}:{line} imports {module}")
    assert not bad, "built-in plugins may import only ftcore.api and their own package:\n" + "\n".join(bad)


def test_the_core_imports_no_builtin_plugin():
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        for line, module in imports(path):
            if (module == "ftcore.plugins" or module.startswith("ftcore.plugins.")) and not (
                    path.name == "plugins_manager.py" and module in ("ftcore.plugins", "ftcore.plugins.BUILTINS")):
                bad.append(f"{path.relative_to(CORE)}:{line} imports {module}")
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"ftcore\.plugins\.(\w+)", text):
            if match.group(1) in {m.split(".")[-1] for m in BUILTINS.values()}:
                bad.append(f"{path.relative_to(CORE)} names the built-in {match.group(0)}")
    assert not bad, "\n".join(bad)


def code_words(path: Path) -> list[tuple[int, str]]:
    """Names and string literals of a file, without comments and docstrings."""
    source = path.read_text(encoding="utf-8")
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                docstrings.add(body[0].value.lineno)
    words = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NAME, tokenize.STRING) and not (
                token.type == tokenize.STRING and token.start[0] in docstrings):
            words.append((token.start[0], token.string))
        elif token.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            words.append((token.start[0], token.string))
    return words


def test_the_core_names_no_builtin_technology():
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "axolotl.py":  # the Axolotl key list names everything Axolotl has
            continue
        for line, word in code_words(path):
            if BANNED.search(word):
                bad.append(f"{path.relative_to(CORE)}:{line}: {word[:80]}")
    assert not bad, "the core names what belongs to plugins:\n" + "\n".join(bad)


def test_the_banned_word_check_can_fail(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""LoRA in a docstring is fine."""\n# so is deepspeed in a comment\nx = "lora_r"\n')
    assert [w for _, w in code_words(sample) if BANNED.search(w)] == ['"lora_r"']


def test_nothing_sets_ftcore_attributes_on_other_objects():
    bad = []
    for root in (CORE, PLUGINS):
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                    if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr.startswith("ftcore_"):
                        bad.append(f"{path}:{node.lineno} sets .{target.attr}")
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) > 1 \
                        and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("ftcore_"):
                    bad.append(f"{path}:{node.lineno} setattr {node.args[1].value}")
    assert not bad, "state between hooks belongs in the stash:\n" + "\n".join(bad)


# ── deleting or blocking a built-in ─────────────────────────────────────────

# which shipped recipes need which built-in (a recipe that uses it is expected to stop validating)
USES = {
    "vision": ("llama32-vision-lora", "llama32-vision-qlora"),
    "code": ("qwen25-coder-lora", "qwen25-coder-qlora"),
    "qlora": ("llama31-qlora", "llama32-vision-qlora", "qwen25-coder-qlora"),
    "distributed": (),
}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "FTCORE_DISABLE_PLUGINS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def _ftcore(*args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "ftcore", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(**env), timeout=600)


def _variants(tmp_path, name):
    """(how, environment) pairs: the built-in deleted from a copy of the tree, and blocked by name."""
    from ftcore.testing import tree_without

    site = tree_without(name, tmp_path / "site")
    return [("deleted", {"PYTHONPATH": site}), ("blocked", {"FTCORE_DISABLE_PLUGINS": name})]


def test_the_copy_without_a_builtin_really_lacks_it(tmp_path):
    from ftcore.testing import tree_without

    site = tree_without("vision", tmp_path / "site")
    code = ("import importlib.util, ftcore; print(ftcore.__file__); "
            "print(importlib.util.find_spec('ftcore.plugins.vision') is None)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(PYTHONPATH=site))
    where, missing = done.stdout.split()
    assert where.startswith(site) and missing == "True", done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(USES))
def test_without_a_builtin_the_other_shipped_recipes_still_validate(name, tmp_path):
    assert name in BUILTINS
    for how, env in _variants(tmp_path, name):
        listing = _ftcore("plugins", "--json", cwd=tmp_path, **env)
        assert listing.returncode == 0, (how, listing.stderr)
        assert name not in {row["name"] for row in json.loads(listing.stdout)["plugins"]}, how
        for recipe in RECIPES:
            done = _ftcore("validate", str(recipe), cwd=tmp_path, **env)
            if recipe.stem in USES[name]:
                assert done.returncode == 2, (how, recipe.name, done.stdout)
                assert "Traceback" not in done.stderr, (how, recipe.name, done.stderr)
            else:
                assert done.returncode == 0, (how, recipe.name, done.stdout + done.stderr)


def test_a_blocked_plugins_key_says_a_disabled_plugin_may_provide_it(tmp_path):
    done = _ftcore("validate", "quickstart", "load_in_4bit=true", "adapter=qlora", cwd=tmp_path,
                   FTCORE_DISABLE_PLUGINS="qlora")
    assert done.returncode == 2
    assert "no plugin provides quantization for this recipe (load_in_4bit: true)" in done.stderr
    assert "FTCORE_DISABLE_PLUGINS may provide it: qlora" in done.stderr
    assert "adapter: 'qlora' is not allowed" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(USES))
def test_without_a_builtin_the_quickstart_still_trains(name, tmp_path):
    for how, env in _variants(tmp_path, name)[:1]:  # deleted; blocking is the same plugin list (validated above)
        out = tmp_path / f"out-{how}"
        done = _ftcore("run", "quickstart", "max_steps=2", "val_set_size=8", f"output_dir={out}", cwd=tmp_path, **env)
        assert done.returncode == 0, (how, done.stdout[-2000:] + done.stderr[-3000:])
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["status"] == "completed", how
        assert name not in {p["name"] for p in manifest["plugins"]}, how
        assert (out / "adapter_model.safetensors").is_file()
