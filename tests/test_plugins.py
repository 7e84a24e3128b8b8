"""The plugin system: hook semantics, the typed layer, errors, discovery, and the
hook contract's documentation.

Fast: no network, no model loading. Two tests install a throwaway third-party
package (tests/fixtures/*_ftcore_plugin) with pip into a temporary folder and
drive the real ``ftcore`` CLI in a subprocess, as a plugin author's user would.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest

import ftcore
from ftcore import CONTRACT_VERSION, hookimpl, hooks, hookspecs, plugins_manager
from ftcore.errors import FtcoreError, PluginError, RecipeError
from ftcore.hooks import MissingPluginError
from ftcore.plugins import BUILTINS
from ftcore.plugins_manager import PluginInfo, Plugins, load_plugins
from ftcore.recipe import load_raw, validate
from ftcore.recipe.schema import Recipe

CORE = Path(ftcore.__file__).parent
FIXTURES = Path(__file__).parent / "fixtures"
SPECS = {name: fn for name, fn in vars(hookspecs).items() if hasattr(fn, "ftcore_spec")}
FIRSTRESULT = {name for name, fn in SPECS.items() if fn.ftcore_spec["firstresult"]}
_REAL_ENTRY_POINTS = plugins_manager._entry_points  # before the autouse fixture replaces it


# ── helpers ──────────────────────────────────────────────────────────────────


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No plugins disabled, and no entry points but those a test declares."""
    monkeypatch.delenv("FTCORE_DISABLE_PLUGINS", raising=False)
    monkeypatch.setattr(plugins_manager, "_entry_points", lambda: [])


def plugin(name, contract=None, **impls):
    """A plugin module called ``name`` whose attributes are ``impls``."""
    module = types.ModuleType(name)
    for attr, fn in impls.items():
        setattr(module, attr, fn)
    if contract is not None:
        module.FTCORE_CONTRACT = contract
    return module


def add(plugins, name, source="entry point", contract=None, **impls):
    """Register a plugin as an installed package ``<name>-pkg 1.2.3`` (or a built-in)."""
    package, version = ("ftcore", ftcore.__version__) if source == "builtin" else (f"{name}-pkg", "1.2.3")
    module = plugin(name, contract, **impls)
    plugins.add(module, PluginInfo(name, f"{name}_module", source, package, version))
    return module


def recipe(**keys) -> Recipe:
    """A recipe validated with the built-ins, whose plugins own keys such as ``adapter: lora``'s."""
    from ftcore.recipe.load import RawRecipe

    return validate(RawRecipe({"base_model": "org/model", **keys}, None), _BUILTIN_PLUGINS())


def _BUILTIN_PLUGINS():
    return load_plugins()


class FakeDist:
    """What ``EntryPoint.dist`` offers: ``metadata["Name"]`` and ``version``."""

    def __init__(self, name, version):
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """Like ``importlib.metadata.EntryPoint`` in the group ``ftcore``, with a distribution."""

    def __init__(self, name, value, dist=None):
        self.name, self.value, self.group, self.dist = name, value, "ftcore", dist

    def load(self):
        return importlib.metadata.EntryPoint(name=self.name, value=self.value, group=self.group).load()


@pytest.fixture
def entry_points(monkeypatch):
    """``entry_points(ep, ...)`` makes ``load_plugins`` discover exactly these."""

    def declare(*eps):
        monkeypatch.setattr(plugins_manager, "_entry_points", lambda: list(eps))

    return declare


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """``write_module("pkg.mod", source)`` makes an importable module; removed after the test."""
    root = tmp_path / "importable"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    tops = set()

    def write(dotted, source):
        *packages, leaf = dotted.split(".")
        folder = root
        for part in packages:
            folder = folder / part
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (folder / f"{leaf}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        importlib.invalidate_caches()
        tops.add(dotted.split(".")[0])
        return dotted

    yield write
    for name in [m for m in sys.modules if m.split(".")[0] in tops]:
        del sys.modules[name]


def write_yaml(path, text):
    path = Path(path)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("FTCORE_DISABLE_PLUGINS", "PYTHONPATH")}
    env.update(extra)
    return env


def ftcore_cli(*args, cwd=None, **env):
    return subprocess.run([sys.executable, "-m", "ftcore", *args], capture_output=True, text=True,
                          cwd=cwd, env=cli_env(**env), timeout=120)


# ── 1. hook semantics on a fresh manager ─────────────────────────────────────


def test_firstresult_installed_plugin_beats_builtin_trylast_in_either_order():
    for order in ("builtin first", "builtin last"):
        plugins = Plugins()
        builtin = dict(name="hf", source="builtin",
                       load_model=hookimpl(trylast=True)(lambda recipe, quantization_config: "builtin model"))
        third = dict(name="third", load_model=hookimpl(lambda recipe, quantization_config: "third model"))
        for spec in ((builtin, third) if order == "builtin first" else (third, builtin)):
            add(plugins, **spec)
        assert plugins.call_first("load_model", recipe=None, quantization_config=None) == ("third model", "third"), order


def test_firstresult_none_falls_through_to_the_next_plugin():
    plugins = Plugins()
    asked = []
    add(plugins, "hf", source="builtin",
        load_model=hookimpl(trylast=True)(lambda recipe, quantization_config: asked.append("hf") or "builtin model"))
    add(plugins, "third", load_model=hookimpl(lambda recipe, quantization_config: asked.append("third")))
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == ("builtin model", "hf")
    assert asked == ["third", "hf"]


def test_firstresult_all_none_is_none_and_nobody_after_the_answer_is_asked():
    plugins = Plugins()
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == (None, None)
    asked = []
    add(plugins, "hf", source="builtin",
        load_model=hookimpl(trylast=True)(lambda recipe, quantization_config: asked.append("hf")))
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == (None, None)
    add(plugins, "first", load_model=hookimpl(lambda recipe, quantization_config: asked.append("first") or "m1"))
    add(plugins, "second", load_model=hookimpl(lambda recipe, quantization_config: asked.append("second") or "m2"))
    asked.clear()
    # the last registered is asked first (a recipe's plugin over an installed one)
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == ("m2", "second")
    assert asked == ["second"]


def test_tryfirst_wins_over_a_later_registered_plugin():
    plugins = Plugins()
    add(plugins, "early", load_tokenizer=hookimpl(tryfirst=True)(lambda recipe: "early"))
    add(plugins, "late", load_tokenizer=hookimpl(lambda recipe: "late"))
    assert plugins.call_first("load_tokenizer", recipe=None) == ("early", "early")


def test_call_all_calls_everyone_and_returns_every_answer():
    plugins = Plugins()
    seen = []

    def impl(tag, answer):
        return hookimpl(lambda recipe, model, tokenizer: seen.append((tag, recipe, model, tokenizer)) or answer)

    add(plugins, "a", source="builtin", prepare_model=hookimpl(trylast=True)(
        lambda recipe, model, tokenizer: seen.append(("a", recipe, model, tokenizer))))
    add(plugins, "b", prepare_model=impl("b", "from b"))
    add(plugins, "c", prepare_model=impl("c", None))
    results = plugins.call_all("prepare_model", recipe="R", model="M", tokenizer="T")
    assert results == [(None, "c"), ("from b", "b"), (None, "a")]
    assert sorted(seen) == [("a", "R", "M", "T"), ("b", "R", "M", "T"), ("c", "R", "M", "T")]


def test_an_implementation_receives_only_the_arguments_it_declares():
    plugins = Plugins()
    got = []
    add(plugins, "lean", load_model=hookimpl(lambda recipe: got.append(recipe) or "model"))
    assert plugins.call_first("load_model", recipe="R", quantization_config="Q") == ("model", "lean")
    assert got == ["R"]


def test_collect_returns_name_to_value_and_plugin():
    plugins = Plugins()
    add(plugins, "alpaca", source="builtin",
        register_dataset_formats=hookimpl(trylast=True)(lambda register: register("alpaca", "fa", None)))
    add(plugins, "extra", register_dataset_formats=hookimpl(
        lambda register: (register("shout", "fs", "opts"), register("whisper", "fw"))))
    found = plugins.collect("register_dataset_formats", "dataset format",
                            make=lambda function, options=None: (function, options))
    assert found == {"alpaca": (("fa", None), "alpaca"), "shout": (("fs", "opts"), "extra"),
                     "whisper": (("fw", None), "extra")}
    assert hooks.dataset_formats(plugins) == found


def test_collect_a_name_registered_twice_names_both_plugins():
    plugins = Plugins()
    add(plugins, "alpaca", source="builtin",
        register_dataset_formats=hookimpl(trylast=True)(lambda register: register("alpaca", "builtin")))
    add(plugins, "copycat", register_dataset_formats=hookimpl(lambda register: register("alpaca", "copy")))
    with pytest.raises(PluginError) as err:
        hooks.dataset_formats(plugins)
    message = str(err.value)
    assert "dataset format 'alpaca'" in message
    assert "'alpaca' (alpaca_module, ftcore " in message
    assert "'copycat' (copycat_module, copycat-pkg 1.2.3)" in message
    assert "FTCORE_DISABLE_PLUGINS=" in message


@pytest.mark.parametrize("hook, typed, kind", [
    ("register_evaluators", hooks.evaluators, "evaluator"),
    ("register_chat_templates", hooks.chat_templates, "chat template"),
    ("register_recipes", hooks.registered_recipes, "recipe"),
])
def test_every_registry_reports_duplicates_with_both_plugins(hook, typed, kind):
    plugins = Plugins()
    add(plugins, "one", **{hook: hookimpl(lambda register: register("same", "x"))})
    add(plugins, "two", **{hook: hookimpl(lambda register: register("same", "y"))})
    with pytest.raises(PluginError, match=rf"{kind} 'same' is registered by two plugins") as err:
        typed(plugins)
    assert "'one' (one_module, one-pkg 1.2.3)" in str(err.value)
    assert "'two' (two_module, two-pkg 1.2.3)" in str(err.value)


def test_collect_sees_a_plugin_added_after_an_earlier_collect():
    plugins = Plugins()
    add(plugins, "a", register_evaluators=hookimpl(lambda register: register("acc", "fa")))
    assert set(hooks.evaluators(plugins)) == {"acc"}
    add(plugins, "b", register_evaluators=hookimpl(lambda register: register("bleu", "fb")))
    assert set(hooks.evaluators(plugins)) == {"acc", "bleu"}


def test_register_with_wrong_arguments_names_the_plugin_and_hook():
    plugins = Plugins()
    add(plugins, "sloppy", register_commands=hookimpl(lambda register: register("hi", "help only")))
    with pytest.raises(PluginError) as err:
        hooks.commands(plugins)
    assert "'sloppy'" in str(err.value) and "register_commands" in str(err.value)
    assert "FTCORE_DISABLE_PLUGINS=sloppy" in str(err.value)


def test_two_different_plugins_with_one_name_are_refused():
    plugins = Plugins()
    add(plugins, "twin", load_tokenizer=hookimpl(lambda recipe: None))
    with pytest.raises(PluginError, match="two plugins are named 'twin'"):
        add(plugins, "twin", load_tokenizer=hookimpl(lambda recipe: None))


def test_the_same_module_listed_again_is_not_an_error():
    """An installed plugin also listed in a recipe's ``plugins:`` is loaded once."""
    plugins = load_plugins()
    lora = importlib.import_module("ftcore.plugins.lora")
    plugins.add_recipe_plugins(["ftcore.plugins.lora"])
    plugins.add(lora, PluginInfo("lora-again", "ftcore.plugins.lora", "entry point", "x", "1"))
    assert [name for name, obj in plugins.pm.list_name_plugin() if obj is lora] == ["lora"]
    assert "lora-again" not in plugins.info


def test_hook_wrappers_are_refused_clearly():
    """ftcore calls implementations itself; a wrapper's generator must never become an answer."""
    for opts in ({"hookwrapper": True}, {"wrapper": True}):
        plugins = Plugins()

        def load_model(recipe, quantization_config):
            yield

        with pytest.raises(PluginError) as err:
            add(plugins, "wrapping", load_model=hookimpl(**opts)(load_model))
        assert "'wrapping'" in str(err.value) and "load_model" in str(err.value)
        assert "wrapper" in str(err.value)
        assert plugins.call_first("load_model", recipe=None, quantization_config=None) == (None, None)


def test_specname_lets_a_function_implement_a_differently_named_hook():
    plugins = Plugins()
    add(plugins, "aliased", my_loader=hookimpl(specname="load_model")(lambda recipe, quantization_config: "m"))
    assert plugins.info["aliased"].hooks == ["load_model"]
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == ("m", "aliased")


# ── 2. the typed layer (core/hooks.py) ───────────────────────────────────────


def test_inject_adapter_with_nobody_answering_names_the_recipe_key():
    plugins = Plugins()
    add(plugins, "other", inject_adapter=hookimpl(lambda recipe, model: None))
    with pytest.raises(MissingPluginError) as err:
        hooks.inject_adapter(plugins, recipe(adapter="lora"), model=object())
    assert "adapter: 'lora'" in str(err.value)
    assert "no plugin provides" in str(err.value)
    with pytest.raises(MissingPluginError, match=r"full fine-tuning.*\(adapter: None\)"):
        hooks.inject_adapter(plugins, recipe(), model=object())


def test_inject_adapter_qlora_without_the_qlora_plugin_names_adapter(monkeypatch):
    """lora answers for 'lora', full for no adapter, qlora for 'qlora': block qlora and nobody answers."""
    qlora = recipe(adapter="qlora", load_in_4bit=True)  # valid where the qlora plugin is installed
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "qlora")
    with pytest.raises(MissingPluginError, match=r"\(adapter: 'qlora'\)"):
        hooks.inject_adapter(load_plugins(), qlora, model=object())


def test_inject_adapter_returns_the_answer_of_the_plugin_that_handles_the_adapter():
    plugins = load_plugins()
    wrapped = object()
    add(plugins, "myadapter", inject_adapter=hookimpl(
        lambda recipe, model: wrapped if recipe.adapter == "lora" else None))
    assert hooks.inject_adapter(plugins, recipe(adapter="lora"), model=object()) is wrapped


@pytest.mark.parametrize("key", ["load_in_4bit", "load_in_8bit"])
def test_quantization_requested_but_nobody_answers_is_a_clear_error(key, monkeypatch):
    """The quantization keys belong to the qlora plugin: without it, asking for them stops at validation."""
    from ftcore.recipe.load import RawRecipe

    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "qlora")
    with pytest.raises(RecipeError) as err:
        validate(RawRecipe({"base_model": "org/model", key: True}, None), load_plugins())
    assert f"{key}: true" in str(err.value) and "quantization" in str(err.value)
    assert "FTCORE_DISABLE_PLUGINS may provide it: qlora" in str(err.value)


def test_quantization_not_requested_is_none_and_an_answer_is_passed_on():
    plugins = Plugins()
    assert hooks.quantization_config(plugins, recipe()) is None
    config = {"bits": 4}
    add(plugins, "bnb", quantization_config=hookimpl(lambda recipe: config if recipe.load_in_4bit else None))
    assert hooks.quantization_config(plugins, recipe(load_in_4bit=True, adapter="qlora")) is config


@pytest.mark.parametrize("hook, typed, key, keys", [
    ("load_model", lambda p, r: hooks.load_model(p, r, None), "base_model", {}),
    ("load_tokenizer", hooks.load_tokenizer, "base_model", {}),
    ("load_tokenizer", hooks.load_tokenizer, "tokenizer_config", {"tokenizer_config": "org/tok"}),
    ("build_collator", lambda p, r: hooks.build_collator(p, r, None), "base_model", {}),
])
def test_other_firstresult_hooks_with_nobody_answering_name_the_key(hook, typed, key, keys):
    with pytest.raises(MissingPluginError) as err:
        typed(Plugins(), recipe(**keys))
    assert f"({key}: " in str(err.value)


def test_typed_calls_return_an_installed_plugins_answer_over_the_builtins():
    plugins = load_plugins()
    add(plugins, "mine",
        load_tokenizer=hookimpl(lambda recipe: "my tokenizer"),
        load_model=hookimpl(lambda recipe, quantization_config: ("my model", quantization_config)),
        build_collator=hookimpl(lambda recipe, tokenizer: f"collate with {tokenizer}"))
    r = recipe()
    assert hooks.load_tokenizer(plugins, r) == "my tokenizer"
    assert hooks.load_model(plugins, r, "Q") == ("my model", "Q")
    assert hooks.build_collator(plugins, r, "tok") == "collate with tok"


def test_trainer_arguments_merge_and_a_conflict_names_both_plugins():
    plugins = Plugins()
    add(plugins, "alpha", trainer_arguments=hookimpl(lambda recipe: {"report_to": "none", "seed": 1}))
    add(plugins, "beta", trainer_arguments=hookimpl(lambda recipe: {"report_to": "none", "run_name": "b"}))
    add(plugins, "quiet", trainer_arguments=hookimpl(lambda recipe: None))
    assert hooks.trainer_arguments(plugins, recipe()) == {"report_to": "none", "seed": 1, "run_name": "b"}
    add(plugins, "gamma", trainer_arguments=hookimpl(lambda recipe: {"seed": 2}))
    with pytest.raises(PluginError) as err:
        hooks.trainer_arguments(plugins, recipe())
    message = str(err.value)
    assert "'seed'" in message and "'alpha'" in message and "'gamma'" in message
    assert "alpha-pkg 1.2.3" in message and "gamma-pkg 1.2.3" in message


@pytest.mark.parametrize("key, value", [("deepspeed", "zero2.json"), ("fsdp", ["full_shard"])])
def test_a_scale_out_key_nobody_claims_is_a_clear_error(key, value, monkeypatch):
    """The keys belong to the distributed plugin: without it, a recipe setting them stops at validation."""
    from ftcore.recipe.load import RawRecipe

    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "distributed")  # the built-in that claims them
    with pytest.raises(RecipeError) as err:
        validate(RawRecipe({"base_model": "org/model", key: value}, None), load_plugins())
    assert "no plugin provides multi-GPU engines" in str(err.value) and f"remove '{key}'" in str(err.value)


def test_a_plugin_that_claims_deepspeed_satisfies_it(monkeypatch):
    """A third party owns the flat key ``deepspeed`` in place of the disabled built-in."""
    from pydantic import BaseModel

    from ftcore.recipe.load import RawRecipe

    class Keys(BaseModel):
        deepspeed: str | None = None

    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "distributed")
    plugins = load_plugins()
    add(plugins, "ds", recipe_keys=hookimpl(lambda register: register(Keys)), trainer_arguments=hookimpl(
        lambda recipe: {"deepspeed": recipe.deepspeed} if recipe.deepspeed else None))
    r = validate(RawRecipe({"base_model": "org/model", "deepspeed": "zero2.json"}, None), plugins)
    assert hooks.trainer_arguments(plugins, r) == {"deepspeed": "zero2.json"}


def test_trainer_callbacks_and_save_artifacts_gather_from_every_plugin(tmp_path):
    plugins = Plugins()
    add(plugins, "a", trainer_callbacks=hookimpl(lambda recipe, register: register("cb-a")),
        save_artifacts=hookimpl(lambda recipe, model, tokenizer, output_dir: ["a.txt"]))
    add(plugins, "b", trainer_callbacks=hookimpl(lambda recipe, register: (register("cb-b1"), register("cb-b2"))),
        save_artifacts=hookimpl(lambda output_dir: [str(output_dir.name)]))
    add(plugins, "c", save_artifacts=hookimpl(lambda recipe, model, tokenizer, output_dir: None))
    assert sorted(hooks.trainer_callbacks(plugins, recipe())) == ["cb-a", "cb-b1", "cb-b2"]
    assert sorted(hooks.save_artifacts(plugins, recipe(), None, None, tmp_path / "run")) == ["a.txt", "run"]


def test_recipe_sections_must_be_pydantic_models_and_must_not_claim_core_keys():
    from pydantic import BaseModel

    class Section(BaseModel):
        x: int = 0

    plugins = Plugins()
    add(plugins, "ok", recipe_sections=hookimpl(lambda register: register("ok_section", Section)))
    assert hooks.recipe_sections(plugins) == {"ok_section": (Section, "ok")}

    plugins = Plugins()
    add(plugins, "greedy", recipe_sections=hookimpl(lambda register: register("learning_rate", Section)))
    with pytest.raises(PluginError, match=r"'greedy'.*core recipe key 'learning_rate'"):
        hooks.recipe_sections(plugins)

    plugins = Plugins()
    add(plugins, "loose", recipe_sections=hookimpl(lambda register: register("loose", {"x": int})))
    with pytest.raises(PluginError, match=r"'loose'.*BaseModel"):
        hooks.recipe_sections(plugins)


# ── 3. errors ────────────────────────────────────────────────────────────────


def test_an_entry_point_that_fails_to_import_names_plugin_package_version_and_how_to_disable(
        write_module, entry_points):
    write_module("failing_plugin_mod", "raise ImportError('No module named cuda_magic')\n")
    entry_points(FakeEntryPoint("failing", "failing_plugin_mod", FakeDist("failing-ftcore", "2.5.1")))
    with pytest.raises(PluginError) as err:
        load_plugins()
    message = str(err.value)
    assert "'failing'" in message and "failing-ftcore 2.5.1" in message
    assert "failed to import" in message and "cuda_magic" in message
    assert "FTCORE_DISABLE_PLUGINS=failing" in message


def test_an_entry_point_without_a_distribution_still_gets_a_clear_error(entry_points):
    entry_points(importlib.metadata.EntryPoint(name="ghost", value="no_such_module_for_ftcore_tests",
                                               group="ftcore"))
    with pytest.raises(PluginError, match=r"'ghost'.*failed to import.*FTCORE_DISABLE_PLUGINS=ghost"):
        load_plugins()


def test_a_recipe_plugin_that_fails_to_import_says_how_to_remove_it(write_module):
    write_module("acme_broken.plug", "import definitely_not_installed_ftcore_dep\n")
    with pytest.raises(PluginError) as err:
        load_plugins(["acme_broken.plug"])
    assert "'acme_broken.plug'" in str(err.value)
    assert "definitely_not_installed_ftcore_dep" in str(err.value)
    assert "remove 'acme_broken.plug' from the recipe's plugins: list" in str(err.value)


def test_a_builtin_module_that_fails_to_import_names_ftcore(monkeypatch):
    monkeypatch.setitem(BUILTINS, "vanished", "ftcore.plugins.vanished_for_test")
    with pytest.raises(PluginError) as err:
        load_plugins()
    assert "'vanished'" in str(err.value) and f"ftcore {ftcore.__version__}" in str(err.value)
    assert "FTCORE_DISABLE_PLUGINS=vanished" in str(err.value)


def test_a_hookimpl_with_a_bad_argument_name_is_a_plugin_error():
    plugins = Plugins()
    with pytest.raises(PluginError) as err:
        add(plugins, "typo_args", load_model=hookimpl(lambda recipe, quant_config: None))
    message = str(err.value)
    assert "'typo_args'" in message and "typo_args-pkg 1.2.3" in message
    assert "load_model" in message and "quant_config" in message
    assert "FTCORE_DISABLE_PLUGINS=typo_args" in message
    assert plugins.pm.get_plugin("typo_args") is None and "typo_args" not in plugins.info
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == (None, None)


def test_a_hookimpl_for_a_hook_that_does_not_exist_suggests_the_right_name():
    plugins = Plugins()
    with pytest.raises(PluginError) as err:
        add(plugins, "typo_hook", load_modle=hookimpl(lambda recipe: None))
    message = str(err.value)
    assert "'load_modle'" in message and "did you mean 'load_model'" in message
    assert "'typo_hook'" in message and "FTCORE_DISABLE_PLUGINS=typo_hook" in message
    assert "typo_hook" not in plugins.info  # refused before anything was registered
    assert plugins.pm.get_plugin("typo_hook") is None


def test_unmarked_functions_and_helpers_in_a_plugin_module_are_ignored():
    plugins = Plugins()
    add(plugins, "tidy", load_modle=lambda recipe: None, helper=lambda: 1,
        load_model=hookimpl(lambda recipe, quantization_config: "m"))
    assert plugins.info["tidy"].hooks == ["load_model"]


@pytest.mark.parametrize("call", ["call_first", "call_all", "collect"])
def test_a_plugin_raising_inside_a_hook_is_named_with_the_hook(call):
    plugins = Plugins()

    def boom(*args, **kwargs):
        raise ValueError("kaboom 42")

    if call == "call_first":
        add(plugins, "raiser", load_model=hookimpl(lambda recipe, quantization_config: boom()))
        hook, run = "load_model", lambda: hooks.load_model(plugins, recipe(), None)
    elif call == "call_all":
        add(plugins, "raiser", prepare_model=hookimpl(lambda recipe, model, tokenizer: boom()))
        hook, run = "prepare_model", lambda: hooks.prepare_model(plugins, recipe(), None, None)
    else:
        add(plugins, "raiser", register_evaluators=hookimpl(lambda register: boom()))
        hook, run = "register_evaluators", lambda: hooks.evaluators(plugins)
    with pytest.raises(PluginError) as err:
        run()
    message = str(err.value)
    assert f"raised in hook '{hook}'" in message and "ValueError: kaboom 42" in message
    assert "'raiser' (raiser_module, raiser-pkg 1.2.3)" in message
    assert "FTCORE_DISABLE_PLUGINS=raiser" in message
    assert isinstance(err.value.__cause__, ValueError)  # --debug shows the plugin's traceback


def test_a_plugin_raising_an_ftcore_error_reaches_the_user_unchanged():
    plugins = Plugins()

    def refuse(recipe, model):
        raise FtcoreError("lora_model_dir: not an adapter")

    add(plugins, "strict", inject_adapter=hookimpl(refuse))
    with pytest.raises(FtcoreError) as err:
        hooks.inject_adapter(plugins, recipe(adapter="lora"), object())
    assert str(err.value) == "lora_model_dir: not an adapter"


@pytest.mark.parametrize("declared", ["2", "2.0", 0, "0.9"])
def test_a_plugin_for_another_contract_major_is_refused_before_registration(declared):
    plugins = Plugins()
    with pytest.raises(PluginError) as err:
        add(plugins, "future", contract=declared, load_model=hookimpl(lambda recipe: "m"))
    message = str(err.value)
    assert f"hook contract {declared}" in message and CONTRACT_VERSION in message
    assert "'future'" in message and "future-pkg 1.2.3" in message
    assert "FTCORE_DISABLE_PLUGINS=future" in message
    assert plugins.call_first("load_model", recipe=None, quantization_config=None) == (None, None)


@pytest.mark.parametrize("declared, recorded", [("1", "1"), ("1.7", "1.7"), (1, "1"), (None, None)])
def test_a_plugin_for_this_contract_major_is_accepted(declared, recorded):
    plugins = Plugins()
    add(plugins, "current", contract=declared, load_model=hookimpl(lambda recipe: "m"))
    assert plugins.info["current"].contract == recorded


def test_every_builtin_declares_this_contract_and_is_trylast():
    """Built-ins are ordinary plugins whose defaults an installed plugin overrides."""
    major = CONTRACT_VERSION.split(".")[0]
    pm = Plugins().pm
    for short, module_name in BUILTINS.items():
        module = importlib.import_module(module_name)
        assert str(getattr(module, "FTCORE_CONTRACT", "")).split(".")[0] == major, short
        impls = {name: pm.parse_hookimpl_opts(module, name) for name in dir(module)}
        impls = {name: opts for name, opts in impls.items() if opts is not None}
        assert impls, f"{short} implements no hook"
        for name, opts in impls.items():
            assert opts["trylast"], f"built-in {short}.{name} must be trylast"


def test_disabling_alpaca_removes_the_format_and_validation_lists_the_rest(monkeypatch, tmp_path):
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "alpaca")
    plugins = load_plugins()
    assert "alpaca" not in plugins.info and plugins.blocked == ["alpaca"]
    formats = hooks.dataset_formats(plugins)
    assert "alpaca" not in formats and {"completion", "chat_template"} <= set(formats)
    path = write_yaml(tmp_path / "r.yaml", """\
        base_model: org/model
        datasets:
          - path: data.jsonl
            type: alpaca
        """)
    with pytest.raises(RecipeError) as err:
        validate(load_raw(str(path)), plugins)
    (key, message), = err.value.problems
    assert key == "datasets[0].type"
    assert "unknown format 'alpaca'" in message
    assert f"registered formats: {', '.join(sorted(formats))}" in message

    monkeypatch.delenv("FTCORE_DISABLE_PLUGINS")
    assert validate(load_raw(str(path)), load_plugins()).datasets[0].type == "alpaca"


def test_disabling_several_plugins_and_an_entry_point_that_would_fail(monkeypatch, entry_points):
    entry_points(FakeEntryPoint("failing", "no_such_module_for_ftcore_tests", FakeDist("f", "1")))
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", " completion, failing ,loss")
    plugins = load_plugins()  # the failing plugin is never imported
    assert set(plugins.blocked) == {"completion", "failing", "loss"}
    assert not {"completion", "loss", "failing"} & set(plugins.info)
    assert "loss" not in hooks.evaluators(plugins)


def test_disabling_a_recipe_plugin_by_its_module_path(monkeypatch, write_module):
    write_module("acme_disabled.plug", "raise RuntimeError('must not be imported')\n")
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "acme_disabled.plug")
    plugins = load_plugins(["acme_disabled.plug"])
    assert plugins.blocked == ["acme_disabled.plug"]


# ── 4. discovery: a fake entry point, then a real installed package ──────────

FAKE_PLUGIN = """\
    from pydantic import BaseModel, ConfigDict
    from ftcore import hookimpl

    FTCORE_CONTRACT = "1"


    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        field_text: str = "text"


    def shout(row, dataset, ctx):
        return [(row[dataset.options.field_text].upper(), True)]


    @hookimpl
    def register_dataset_formats(register):
        register("shout", shout, Options)


    @hookimpl
    def load_model(recipe, quantization_config):
        return "model from {name}"
    """


def test_discovery_through_a_fake_entry_point(write_module, entry_points, tmp_path):
    write_module("fake_ep_plugin", FAKE_PLUGIN.format(name="fake_ep_plugin"))
    entry_points(FakeEntryPoint("fakeplug", "fake_ep_plugin", FakeDist("fake-ftcore-plugin", "3.1.4")))
    plugins = load_plugins()
    info = plugins.info["fakeplug"]
    assert (info.source, info.module, info.package, info.version, info.contract) == \
        ("entry point", "fake_ep_plugin", "fake-ftcore-plugin", "3.1.4", "1")
    assert info.hooks == ["load_model", "register_dataset_formats"]
    assert list(plugins.info)[: len(BUILTINS)] == list(BUILTINS)  # built-ins first
    # it is called: its answer beats the built-in loader, its format validates
    assert hooks.load_model(plugins, recipe(), None) == "model from fake_ep_plugin"
    (function, options), owner = hooks.dataset_formats(plugins)["shout"]
    assert owner == "fakeplug"
    path = write_yaml(tmp_path / "r.yaml", """\
        base_model: org/model
        datasets:
          - path: data.jsonl
            type: shout
            field_text: body
        """)
    spec = validate(load_raw(str(path)), plugins).datasets[0]
    assert spec.options.field_text == "body"
    assert function({"body": "hi"}, spec, None) == [("HI", True)]


def test_an_entry_point_can_name_an_object_inside_a_module(write_module, entry_points):
    write_module("fake_ep_object", """\
        from ftcore import hookimpl

        class Plugin:
            FTCORE_CONTRACT = "1"

            @hookimpl
            def load_tokenizer(self, recipe):
                return "tokenizer from an object"

        plugin = Plugin()
        """)
    entry_points(FakeEntryPoint("objplug", "fake_ep_object:plugin", FakeDist("obj-plugin", "0.1")))
    plugins = load_plugins()
    assert plugins.info["objplug"].hooks == ["load_tokenizer"]
    assert hooks.load_tokenizer(plugins, recipe()) == "tokenizer from an object"


def test_discovery_order_builtins_then_entry_points_then_the_recipe(write_module, entry_points):
    write_module("order_ep", FAKE_PLUGIN.format(name="the entry point").replace('register("shout"', 'register("s1"'))
    write_module("order_recipe.plug", FAKE_PLUGIN.format(name="the recipe").replace('register("shout"', 'register("s2"'))
    entry_points(FakeEntryPoint("ep", "order_ep", FakeDist("ep-pkg", "1")))
    plugins = load_plugins(["order_recipe.plug"])
    assert list(plugins.info) == [*BUILTINS, "ep", "order_recipe.plug"]
    assert plugins.info["order_recipe.plug"].source == "recipe"
    assert hooks.load_model(plugins, recipe(), None) == "model from the recipe"


def _build_wheel_by_hand(src: Path, dist: Path) -> Path:
    """A wheel for a one-module fixture package, for environments without setuptools."""
    import tomllib

    project = tomllib.loads((src / "pyproject.toml").read_text())["project"]
    name, version = project["name"].replace("-", "_"), project["version"]
    module = project["entry-points"]["ftcore"]
    info = f"{name}-{version}.dist-info"
    wheel = dist / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for py in src.glob("*.py"):
            zf.write(py, py.name)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/entry_points.txt",
                    "[ftcore]\n" + "".join(f"{k} = {v}\n" for k, v in module.items()))
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def install_fixture_package(name: str, workdir: Path) -> Path:
    """pip-install tests/fixtures/<name> into ``workdir/site`` (offline, no deps); return the site folder."""
    src, site = workdir / "src" / name, workdir / "site"
    shutil.copytree(FIXTURES / name, src)  # the build writes into the source folder
    target = str(src)
    if importlib.util.find_spec("setuptools") is None:
        if sys.version_info < (3, 11):
            pytest.skip("needs setuptools (or Python 3.11's tomllib) to build the fixture package offline")
        target = str(_build_wheel_by_hand(src, workdir))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--disable-pip-version-check", "--target", str(site), target],
                          capture_output=True, text=True, timeout=300, env=cli_env())
    assert done.returncode == 0, f"pip install of {name} failed:\n{done.stdout}\n{done.stderr}"
    return site


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """The third-party package ``my-ftcore-plugin 0.4.2`` (entry point ``myplugin``), pip-installed."""
    return install_fixture_package("my_ftcore_plugin", tmp_path_factory.mktemp("third_party"))


@pytest.fixture
def project(tmp_path):
    """A folder with a data file, where recipes are validated."""
    (tmp_path / "data.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n', encoding="utf-8")
    return tmp_path


def test_an_installed_package_is_listed_by_ftcore_plugins(installed_plugin):
    done = ftcore_cli("plugins", "--json", PYTHONPATH=str(installed_plugin))
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["plugins"]}
    mine = rows["myplugin"]
    assert mine["source"] == "entry point" and mine["module"] == "my_ftcore_plugin"
    assert re.sub(r"[-_.]+", "-", mine["package"]).lower() == "my-ftcore-plugin"
    assert mine["version"] == "0.4.2" and mine["contract"] == "1"
    assert mine["hooks"] == ["recipe_sections", "register_commands", "register_dataset_formats",
                             "register_evaluators", "trainer_arguments", "validate_recipe"]
    assert list(rows)[: len(BUILTINS)] == list(BUILTINS)

    text = ftcore_cli("plugins", PYTHONPATH=str(installed_plugin))
    assert text.returncode == 0
    assert re.search(r"myplugin\s+entry point\s+my[-_]ftcore[-_]plugin 0\.4\.2", text.stdout), text.stdout

    disabled = ftcore_cli("plugins", "--json", PYTHONPATH=str(installed_plugin), FTCORE_DISABLE_PLUGINS="myplugin")
    listing = json.loads(disabled.stdout)
    assert "myplugin" not in {row["name"] for row in listing["plugins"]} and listing["disabled"] == ["myplugin"]


def test_an_installed_package_owns_a_recipe_section_and_a_format(installed_plugin, project):
    site = str(installed_plugin)
    good = write_yaml(project / "good.yaml", """\
        base_model: org/model
        my_plugin:
          greeting: hi
        datasets:
          - path: data.jsonl
            type: shout
            field_text: text
        """)
    done = ftcore_cli("validate", str(good), cwd=project, PYTHONPATH=site)
    assert done.returncode == 0, done.stderr
    assert "data.jsonl (shout)" in done.stdout

    typo = write_yaml(project / "typo.yaml", """\
        base_model: org/model
        my_plugin:
          greting: hi
        datasets:
          - path: data.jsonl
            type: shout
            feild_text: text
        """)
    done = ftcore_cli("validate", str(typo), cwd=project, PYTHONPATH=site)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "my_plugin.greting: unknown key (did you mean 'greeting'?)" in done.stderr
    assert "datasets[0].feild_text: unknown key (did you mean 'field_text'?)" in done.stderr
    assert "Traceback" not in done.stderr

    # the same recipe without the plugin: its section and format are unknown
    done = ftcore_cli("validate", str(good), cwd=project)
    assert done.returncode == 2
    assert "my_plugin: unknown key" in done.stderr and "unknown format 'shout'" in done.stderr


def test_an_installed_packages_hooks_are_called(installed_plugin, project):
    site = str(installed_plugin)
    boom = write_yaml(project / "boom.yaml", """\
        base_model: org/model
        my_plugin: {greeting: boom}
        """)
    done = ftcore_cli("validate", str(boom), cwd=project, PYTHONPATH=site)
    assert done.returncode == 2
    assert "my_plugin.greeting: 'boom' is not a greeting; try 'hi'" in done.stderr  # validate_recipe

    done = ftcore_cli("hello", "--name", "Ada", PYTHONPATH=site)  # register_commands
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello, Ada, from my_ftcore_plugin"
    assert "hello" in ftcore_cli("--help", PYTHONPATH=site).stdout


def test_an_installed_plugin_does_not_break_recipes_that_do_not_use_its_section(installed_plugin, project):
    plain = write_yaml(project / "plain.yaml", """\
        base_model: org/model
        datasets:
          - path: data.jsonl
            type: completion
        """)
    done = ftcore_cli("validate", str(plain), cwd=project, PYTHONPATH=str(installed_plugin))
    assert done.returncode == 0, done.stderr


def test_an_installed_package_found_in_process_through_its_real_metadata(installed_plugin, monkeypatch, project):
    monkeypatch.setattr(plugins_manager, "_entry_points", _REAL_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(installed_plugin))
    try:
        plugins = load_plugins()
        info = plugins.info["myplugin"]
        assert (info.source, info.version) == ("entry point", "0.4.2")
        assert re.sub(r"[-_.]+", "-", info.package).lower() == "my-ftcore-plugin"
        path = write_yaml(project / "r.yaml", """\
            base_model: org/model
            my_plugin: {greeting: hello there}
            datasets:
              - {path: data.jsonl, type: shout}
            """)
        r = validate(load_raw(str(path)), plugins)
        assert r.section("my_plugin").greeting == "hello there"
        assert hooks.trainer_arguments(plugins, r) == {"run_name": "hello there"}
        (function, _options), owner = hooks.dataset_formats(plugins)["shout"]
        assert owner == "myplugin"
        assert function({"text": "quiet"}, r.datasets[0], None) == [("QUIET!", True)]
        assert hooks.evaluators(plugins)["shout_length"][1] == "myplugin"
    finally:
        sys.modules.pop("my_ftcore_plugin", None)



def test_an_installed_package_that_fails_to_import(tmp_path):
    site = install_fixture_package("broken_ftcore_plugin", tmp_path)
    done = ftcore_cli("plugins", PYTHONPATH=str(site))
    assert done.returncode == 3, (done.stdout, done.stderr)
    message = done.stderr
    assert "'broken'" in message and re.search(r"broken[-_]ftcore[-_]plugin 0\.3\.0", message)
    assert "ftcore_test_dependency_that_is_not_installed" in message
    assert "FTCORE_DISABLE_PLUGINS=broken" in message and "Traceback" not in message

    done = ftcore_cli("plugins", "--json", PYTHONPATH=str(site), FTCORE_DISABLE_PLUGINS="broken")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["disabled"] == ["broken"]


# ── 5. a recipe's plugins: list ──────────────────────────────────────────────

RECIPE_PLUGIN = """\
    from pydantic import BaseModel, ConfigDict
    from ftcore import hookimpl

    FTCORE_CONTRACT = "1"


    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        level: int = 1


    @hookimpl
    def recipe_sections(register):
        register("acme", Settings)


    @hookimpl
    def register_evaluators(register):
        register("acme_score", lambda ctx: {"acme_score": 1.0})
    """


def test_a_recipe_plugins_list_imports_modules_as_plugins(write_module):
    write_module("acme_recipe.ftplugin", RECIPE_PLUGIN)
    plugins = load_plugins()
    skipped = plugins.add_recipe_plugins(["acme_recipe.ftplugin"])
    assert skipped == []
    info = plugins.info["acme_recipe.ftplugin"]
    assert (info.source, info.module) == ("recipe", "acme_recipe.ftplugin")
    assert info.hooks == ["recipe_sections", "register_evaluators"]
    assert "acme_score" in hooks.evaluators(plugins) and "acme" in hooks.recipe_sections(plugins)
    assert plugins.add_recipe_plugins(["acme_recipe.ftplugin"]) == []  # twice: loaded once


def test_ftcore_validate_loads_the_recipes_plugins_and_skips_axolotls(write_module, tmp_path, monkeypatch, capsys):
    from ftcore.cli import main

    write_module("acme_cli.ftplugin", RECIPE_PLUGIN)
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "r.yaml", """\
        base_model: org/model
        datasets:
          - {path: org/data, type: alpaca}
        plugins:
          - axolotl.integrations.liger.LigerPlugin
          - acme_cli.ftplugin
        acme:
          level: 3
        evaluators: [loss, acme_score]
        """)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "skipped Axolotl plugins: axolotl.integrations.liger.LigerPlugin" in out

    write_yaml(tmp_path / "r.yaml", path.read_text().replace("level: 3", "levle: 3"))
    assert main(["validate", str(path)]) == 2
    assert "acme.levle: unknown key (did you mean 'level'?)" in capsys.readouterr().err


def test_axolotl_integrations_are_skipped_not_imported():
    plugins = load_plugins()
    skipped = plugins.add_recipe_plugins(["axolotl.integrations.liger.LigerPlugin",
                                          "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"])
    assert skipped == ["axolotl.integrations.liger.LigerPlugin",
                       "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]
    assert list(plugins.info) == list(BUILTINS)


def test_a_recipe_plugin_that_does_not_exist_is_a_mistake_in_the_recipe():
    # issue 13: a module name that cannot be found is the recipe's error (exit 2), not a plugin failing (exit 3)
    from ftcore.errors import RecipeError

    with pytest.raises(RecipeError, match=r"plugins\[0\]: no module named 'acme_missing\.plug'") as caught:
        load_plugins(["acme_missing.plug"])
    assert caught.value.exit_code == 2


# ── 6. the documentation contract of core/hookspecs.py ───────────────────────


def test_hookspecs_declares_the_phases_the_contract_promises():
    required = {"recipe_sections", "register_recipes", "validate_recipe", "register_commands", "load_tokenizer",
                "quantization_config", "load_model", "prepare_model", "inject_adapter",
                "register_dataset_formats", "register_chat_templates", "build_collator", "trainer_arguments",
                "trainer_callbacks", "register_evaluators", "save_artifacts"}
    assert required <= set(SPECS)
    assert set(Plugins().hook_names()) == set(SPECS)
    assert {"inject_adapter", "load_model", "load_tokenizer", "quantization_config", "build_collator"} <= FIRSTRESULT
    assert re.fullmatch(r"\d+\.\d+", CONTRACT_VERSION)
    assert ftcore.hookimpl.project_name == "ftcore"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_hook_spec_is_documented(name):
    fn = SPECS[name]
    doc = inspect.getdoc(fn)
    assert doc, f"hook spec {name} has no docstring"
    summary, *rest = doc.split("\n")
    assert summary.strip() and summary.rstrip().endswith("."), f"{name}: first line must be a one-line summary"
    assert not rest or rest[0] == "", f"{name}: blank line after the summary"
    assert "Called" in doc, f"{name}: say when it is called relative to the other hooks"
    params = list(inspect.signature(fn).parameters)
    for param in params:
        assert re.search(rf"^:param {param}:", doc, re.M), f"{name}: no ':param {param}:' line"
    documented = re.findall(r"^:param (\w+):", doc, re.M)
    assert sorted(documented) == sorted(params), f"{name}: documents {documented}, takes {params}"
    returns = re.search(r"^:return:(.*)", doc, re.M | re.S)
    assert returns, f"{name}: no ':return:' line"
    assert "None" in returns.group(1), f"{name}: ':return:' must say what None means (or that it returns None)"
    if "register" in params:
        assert "register(" in doc, f"{name}: show how register(...) is called"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_firstresult_hooks_say_so_and_the_others_do_not(name):
    doc = inspect.getdoc(SPECS[name])
    if name in FIRSTRESULT:
        assert "firstresult" in doc, f"{name} is firstresult; its docstring must say so"
    else:
        assert "firstresult" not in doc or "not firstresult" in doc, f"{name} is not firstresult"


def _core_hook_calls():
    """``{hook name: {(method, file)}}`` for every ``.call_first/.call_all/.collect("name", ...)`` in the core."""
    calls = {}
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("call_first", "call_all", "collect") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                calls.setdefault(node.args[0].value, set()).add((node.func.attr, path.relative_to(CORE).as_posix()))
    return calls


def test_every_hook_spec_is_called_by_the_core():
    calls = _core_hook_calls()
    never = sorted(set(SPECS) - set(calls))
    assert not never, f"hook specs declared but never called by the core: {never}"
    unknown = sorted(set(calls) - set(SPECS))
    assert not unknown, f"the core calls hooks that have no spec: {unknown}"


def test_firstresult_hooks_and_only_those_are_called_with_call_first():
    for name, sites in _core_hook_calls().items():
        methods = {method for method, _ in sites}
        if name in FIRSTRESULT:
            assert methods == {"call_first"}, f"{name} is firstresult but called with {methods}"
        else:
            assert "call_first" not in methods, f"{name} is not firstresult but called with call_first"


def test_every_typed_hook_call_is_used_by_the_core():
    """A wrapper in core/hooks.py that nothing calls is a hook declared but never called."""
    tree = ast.parse((CORE / "hooks.py").read_text(encoding="utf-8"))
    wrappers = set()
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Attribute) and node.attr in ("call_first", "call_all", "collect"):
                    wrappers.add(fn.name)
    assert wrappers
    used = set()
    for path in CORE.rglob("*.py"):
        if path.name == "hooks.py" and path.parent == CORE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "hooks":
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "ftcore.hooks":
                used.update(alias.name for alias in node.names)
    assert not wrappers - used, f"typed hook calls nothing uses: {sorted(wrappers - used)}"


# ── 7. ftcore plugins --json ─────────────────────────────────────────────────


def test_ftcore_plugins_json_lists_every_builtin():
    done = ftcore_cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["contract"] == CONTRACT_VERSION and listing["disabled"] == []
    rows = {row["name"]: row for row in listing["plugins"]}
    assert set(BUILTINS) <= set(rows)
    pm = Plugins().pm
    for short, module_name in BUILTINS.items():
        row = rows[short]
        assert (row["source"], row["module"], row["package"], row["version"]) == \
            ("builtin", module_name, "ftcore", ftcore.__version__), row
        module = importlib.import_module(module_name)
        implemented = sorted((pm.parse_hookimpl_opts(module, n) or {}).get("specname") or n
                             for n in dir(module) if pm.parse_hookimpl_opts(module, n) is not None)
        assert row["hooks"] == implemented and row["hooks"], short
        assert set(row["hooks"]) <= set(SPECS)
    assert "inject_adapter" in rows["lora"]["hooks"] and "register_dataset_formats" in rows["alpaca"]["hooks"]


def test_ftcore_plugins_text_and_disabled_builtins():
    done = ftcore_cli("plugins", FTCORE_DISABLE_PLUGINS="alpaca,loss")
    assert done.returncode == 0, done.stderr
    assert f"hook contract {CONTRACT_VERSION}" in done.stdout
    assert re.search(rf"lora\s+builtin\s+ftcore {re.escape(ftcore.__version__)}", done.stdout)
    assert "disabled by FTCORE_DISABLE_PLUGINS: alpaca, loss" in done.stdout
    assert not re.search(r"^\s+alpaca\s+builtin", done.stdout, re.M)


def test_ftcore_plugins_does_not_import_torch_or_transformers():
    code = ("import sys, json; from ftcore.cli import main; rc = main(['plugins', '--json']); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')); "
            "print(json.dumps(heavy), file=sys.stderr); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []


class _LaxSection:
    """A plugin whose section model forgets extra="forbid", and whose rule reads the section."""

    FTCORE_CONTRACT = "1"

    def __init__(self):
        from pydantic import BaseModel

        class Settings(BaseModel):  # pydantic's default: extra keys ignored
            level: int = 1

        self.Settings = Settings
        self.checked = []

    @hookimpl
    def recipe_sections(self, register):
        register("lax", self.Settings)

    @hookimpl
    def validate_recipe(self, recipe, error):
        self.checked.append(recipe.section("lax").level)


def _validate_with(plugin, text, tmp_path):
    from ftcore.recipe import load_raw, validate

    plugins = plugins_manager.load_plugins()
    plugins.add(plugin, plugins_manager.PluginInfo("lax", "lax", "recipe"))
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    return validate(load_raw(str(path)), plugins)


def test_unknown_keys_in_a_plugin_section_are_errors_even_if_its_model_ignores_extras(tmp_path):
    plugin = _LaxSection()
    with pytest.raises(RecipeError) as info:
        _validate_with(plugin, """\
            base_model: org/model
            datasets: [{path: org/data, type: alpaca}]
            lax: {levle: 3}
            """, tmp_path)
    assert info.value.problems == [("lax.levle", "unknown key (did you mean 'level'?); allowed: level")]
    assert plugin.checked == []  # its rules never see a section that failed


def test_plugin_rules_run_on_a_valid_section(tmp_path):
    plugin = _LaxSection()
    recipe = _validate_with(plugin, """\
        base_model: org/model
        datasets: [{path: org/data, type: alpaca}]
        lax: {level: 3}
        """, tmp_path)
    assert recipe.section("lax").level == 3 and plugin.checked == [3]


# ── register_models: facts about Hub models, read back through ftcore.api ─────


def _facts(**changes):
    facts = dict(family="Tiny", task="chat", size="1M", parameters=1_000_000, license="MIT",
                 license_url="https://example.org/license", gated=False,
                 config={"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    return {**facts, **changes}


def test_a_plugin_registers_models_and_the_api_reads_them_back():
    from ftcore import api, hookimpl
    from ftcore.testing import fresh_plugins

    class Tiny:
        @hookimpl
        def register_models(self, register):
            register("org/Tiny-1M", **_facts(notes="for tests"))

    plugins = fresh_plugins(("tiny-models", Tiny()))
    facts = api.registered_models(plugins)["org/Tiny-1M"]
    assert (facts.model_id, facts.task, facts.parameters, facts.gated, facts.plugin) == \
        ("org/Tiny-1M", "chat", 1_000_000, False, "tiny-models")
    assert api.model_facts(plugins, "ORG/tiny-1m/") == facts  # any case, a trailing slash
    assert api.model_facts(plugins, "org/Other") is None
    assert api.model_facts(plugins, None) is None


@pytest.mark.parametrize("bad", [dict(task="poetry"), dict(config="llama"), dict(parameters="1M"), dict(colour="red")])
def test_bad_model_facts_are_the_registering_plugins_error(bad):
    from ftcore import api, hookimpl
    from ftcore.errors import PluginError
    from ftcore.testing import fresh_plugins

    class Bad:
        @hookimpl
        def register_models(self, register):
            register("org/Bad", **_facts(**bad))

    plugins = fresh_plugins(("bad-models", Bad()))
    with pytest.raises(PluginError, match="'bad-models'.*register_models"):
        api.registered_models(plugins)


def test_the_same_model_registered_twice_names_both_plugins():
    from ftcore import api, hookimpl
    from ftcore.errors import PluginError
    from ftcore.testing import fresh_plugins

    class One:
        @hookimpl
        def register_models(self, register):
            register("org/Same", **_facts())

    plugins = fresh_plugins(("one", One()), ("two", One()))
    with pytest.raises(PluginError, match="'one'.*'two'|'two'.*'one'"):
        api.registered_models(plugins)


def test_load_recipe_in_the_api_reads_as_run_does(tmp_path):
    from ftcore import api
    from ftcore.errors import RecipeError

    recipe, raw = api.load_recipe("quickstart", ["learning_rate=0.5"])
    assert recipe.learning_rate == 0.5 and raw.path.name == "quickstart.yaml"
    with pytest.raises(RecipeError, match="learnin_rate"):
        api.load_recipe("quickstart", ["learnin_rate=0.5"])
    from ftcore.testing import fresh_plugins

    path, info = api.registered_recipes(fresh_plugins())["quickstart"]
    assert path.endswith("quickstart.yaml") and info.name == "recipes"


NEFTUNE_PLUGIN = """\
    from pydantic import Field
    from ftcore.api import RecipeKeys, hookimpl

    FTCORE_CONTRACT = "1"


    class Keys(RecipeKeys):
        neftune_noise_alpha: float | None = Field(None, gt=0)


    @hookimpl
    def recipe_keys(register):
        register(Keys)
    """


def test_an_installed_plugin_with_a_builtins_name_replaces_that_builtin(write_module, entry_points, monkeypatch,
                                                                        capsys):
    """The built-in neftune and an installed package's neftune would claim neftune_noise_alpha twice: the
    installed one replaces the built-in, says so in `ftcore plugins`, and both go with FTCORE_DISABLE_PLUGINS."""
    import ftcore.plugins.neftune as builtin
    from ftcore.cli.plugins_command import handle

    write_module("my_neftune", NEFTUNE_PLUGIN)
    entry_points(FakeEntryPoint("neftune", "my_neftune", FakeDist("my-neftune", "2.0")))
    plugins = load_plugins()
    assert plugins.info["neftune"].module == "my_neftune" and plugins.info["neftune"].source == "entry point"
    assert not plugins.pm.is_registered(builtin)
    assert plugins.replaced == {"neftune": "'neftune' (my_neftune, my-neftune 2.0)"}
    from ftcore.recipe import validate
    from ftcore.recipe.load import RawRecipe

    replaced = validate(RawRecipe({"base_model": "o/m", "neftune_noise_alpha": 5}, None), plugins)
    assert replaced.neftune_noise_alpha == 5.0  # the installed plugin's key
    assert "neftune_noise_alpha" not in hooks.trainer_arguments(plugins, replaced)  # the built-in's effect is gone
    handle(types.SimpleNamespace(plugins=plugins, json=False))
    assert "built-in 'neftune' replaced by the installed plugin 'neftune' (my_neftune, my-neftune 2.0)" in \
        capsys.readouterr().out
    # without the package the built-in answers the key: transformers' NEFTune
    entry_points()
    alone = load_plugins()
    assert alone.info["neftune"].source == "builtin" and alone.replaced == {}
    recipe = validate(RawRecipe({"base_model": "o/m", "neftune_noise_alpha": 5}, None), alone)
    assert hooks.trainer_arguments(alone, recipe)["neftune_noise_alpha"] == 5.0
    # disabled by name: neither
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "neftune")
    entry_points(FakeEntryPoint("neftune", "my_neftune", FakeDist("my-neftune", "2.0")))
    none = load_plugins()
    assert "neftune" not in none.info and none.replaced == {}
