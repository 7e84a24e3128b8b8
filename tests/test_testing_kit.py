"""The plugin-author kit, ``ftcore.testing``: each helper does what a run does, and its fixtures.

``run_format`` is checked against the examples the real data pipeline
(``prepare_datasets``, what ``ftcore run`` calls) makes of the same rows in a
file; ``run_recipe`` trains for real (marked slow).
"""

import importlib.metadata
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import alpaca_rows, chat_rows, write_jsonl, write_recipe

from ftcore import hookimpl, hooks
from ftcore.data import IGNORE_INDEX, RowError
from ftcore.errors import PluginError, RecipeError
from ftcore.testing import (OFFLINE_ENV, eval_context, format_context, fresh_plugins, load_recipe, recipe_problems,
                            run_format, run_recipe, trained_runs)

# ── recipes ─────────────────────────────────────────────────────────────────


def test_load_recipe_reports_every_problem_with_its_key_path():
    bad = {"base_model": "some/model", "lerning_rate": 1e-4, "micro_batch_size": 0,
           "datasets": [{"path": "x.jsonl", "type": "alpaka"}]}
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    keys = [key for key, _ in info.value.problems]
    assert sorted(keys) == ["datasets[0].type", "lerning_rate", "micro_batch_size"]
    assert all(isinstance(message, str) and message for _, message in info.value.problems)
    assert "did you mean 'learning_rate'" in dict(info.value.problems)["lerning_rate"]
    assert recipe_problems(bad) == info.value.problems
    assert recipe_problems({"base_model": "some/model"}) == []


def test_load_recipe_reads_files_and_mappings_with_command_line_overrides(tmp_path):
    keys = {"base_model": "some/model", "datasets": [{"path": "a.jsonl", "type": "alpaca"}]}
    path = write_recipe(tmp_path / "r.yaml", **keys)
    from_file = load_recipe(path, ["learning_rate=1e-4", "datasets[0].path=b.jsonl"])
    from_mapping = load_recipe(keys, ("learning_rate=1e-4", "datasets[0].path=b.jsonl"))
    for recipe in (from_file, from_mapping):
        assert recipe.learning_rate == 1e-4 and recipe.datasets[0].path == "b.jsonl"
    assert load_recipe({**keys, "base_model": tmp_path}).base_model == str(tmp_path)  # paths as strings
    assert load_recipe(from_file) is from_file
    assert load_recipe(from_file, "micro_batch_size=3").micro_batch_size == 3
    assert [k for k, _ in recipe_problems(path, ["datasets[1].path=x"])] == ["datasets[1].path"]
    assert [k for k, _ in recipe_problems(keys, ["micro_batch_size=0"])] == ["micro_batch_size"]


def test_load_recipe_imports_the_recipes_plugins(tmp_path, monkeypatch):
    (tmp_path / "kit_section_plugin.py").write_text(
        "from pydantic import BaseModel, ConfigDict\n"
        "from ftcore import hookimpl\n"
        "FTCORE_CONTRACT = '1'\n"
        "class Settings(BaseModel):\n"
        "    model_config = ConfigDict(extra='forbid', frozen=True)\n"
        "    level: int = 1\n"
        "@hookimpl\n"
        "def recipe_sections(register):\n"
        "    register('kit_section', Settings)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    keys = {"base_model": "some/model", "plugins": ["kit_section_plugin"]}
    assert load_recipe(keys).section("kit_section").level == 1
    assert load_recipe({**keys, "kit_section": {"level": 3}}).section("kit_section").level == 3
    assert [k for k, _ in recipe_problems({**keys, "kit_section": {"levle": 3}})] == ["kit_section.levle"]
    assert [k for k, _ in recipe_problems({"base_model": "some/model", "kit_section": {}})] == ["kit_section"]


# ── plugins ─────────────────────────────────────────────────────────────────


class Shout:
    """A throwaway plugin: an object, not a module."""

    FTCORE_CONTRACT = "1"

    @hookimpl
    def register_dataset_formats(self, register):
        register("shout", lambda row, dataset, ctx: [(row["text"].upper(), True)])


def test_fresh_plugins_registers_throwaway_plugins_as_installed_ones():
    plugins = fresh_plugins(Shout())
    formats = hooks.dataset_formats(plugins)
    assert "shout" in formats and "alpaca" in formats
    info = plugins.info[formats["shout"][1]]
    assert (info.name, info.source, info.package, info.version) == ("throwaway", "entry point", "throwaway-pkg",
                                                                    "0.0.0")
    assert "shout" not in hooks.dataset_formats(fresh_plugins())  # nothing leaks into the next manager
    module = types.ModuleType("kit_module_plugin")
    module.register_dataset_formats = hookimpl(lambda register: register("whisper", lambda r, d, c: []))
    named = fresh_plugins(module, ("loud", Shout()))
    assert {"kit_module_plugin", "loud"} <= set(named.info)
    with pytest.raises(PluginError, match="'shout' is registered by two plugins"):
        hooks.dataset_formats(fresh_plugins(Shout(), ("again", Shout())))


def test_fresh_plugins_blocks_as_the_environment_variable_does(monkeypatch):
    monkeypatch.delenv("FTCORE_DISABLE_PLUGINS", raising=False)
    plugins = fresh_plugins(("shout", Shout()), block=["alpaca", "shout"])
    assert {"alpaca", "shout"} <= set(plugins.blocked)
    assert not {"alpaca", "shout"} & set(hooks.dataset_formats(plugins))
    assert "FTCORE_DISABLE_PLUGINS" not in os.environ  # restored
    problems = recipe_problems({"base_model": "m/m", "datasets": [{"path": "x.jsonl", "type": "alpaca"}]},
                               plugins=plugins)
    assert [k for k, _ in problems] == ["datasets[0].type"]
    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "completion")  # what the user blocks stays blocked
    assert not {"alpaca", "completion"} & set(hooks.dataset_formats(fresh_plugins(block="alpaca")))
    assert os.environ["FTCORE_DISABLE_PLUGINS"] == "completion"


def test_the_register_fixture_gives_this_tests_manager_only(ftcore_plugins, ftcore_register):
    plugins = ftcore_register(Shout())
    assert plugins is ftcore_plugins and "shout" in hooks.dataset_formats(plugins)
    assert ftcore_register("ftcore.plugins.loss", name="second_loss") is plugins  # a module path works too
    assert "shout" not in hooks.dataset_formats(fresh_plugins())
    with pytest.raises(PluginError, match="implements hooks that do not exist: 'register_formats'"):
        ftcore_register(types.SimpleNamespace(register_formats=hookimpl(lambda register: None)))


# ── formats: the same examples as the real pipeline ────────────────────────


def pipeline_examples(tokenizer, rows, tmp_path, **keys):
    """The examples ``ftcore run`` makes of ``rows`` written to a file (prepare_datasets)."""
    from ftcore.data.prepare import prepare_datasets, set_chat_template

    plugins = fresh_plugins()
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    dataset = {"path": str(path), **keys.pop("dataset")}
    recipe = load_recipe({"base_model": "some/model", "datasets": [dataset], **keys}, plugins=plugins)
    template = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
    return prepare_datasets(recipe, tokenizer, hooks.dataset_formats(plugins), template).train


@pytest.mark.parametrize("recipe_keys", [{}, {"train_on_inputs": True}, {"chat_template": "llama3"}])
def test_run_format_alpaca_matches_the_pipeline(llama, tmp_path, recipe_keys):
    rows = alpaca_rows(4) + [{"instruction": "Name a colour.", "output": "red"}]
    expected = pipeline_examples(llama, rows, tmp_path, dataset={"type": "alpaca"}, **recipe_keys)
    got = [run_format("alpaca", row, llama, recipe=recipe_keys) for row in rows]
    assert got == expected
    trained = sum(label != IGNORE_INDEX for label in got[0]["labels"])
    assert 0 < trained < len(got[0]["labels"])
    if not recipe_keys:
        assert trained_runs(llama, got[0]) == [rows[0]["output"] + llama.eos_token]


@pytest.mark.parametrize("tokenizer,template", [("llama", "llama3"), ("qwen", "chatml"), ("qwen", "qwen_25")])
def test_run_format_chat_template_matches_the_pipeline(tokenizers, tmp_path, tokenizer, template):
    tokenizer = tokenizers[tokenizer]
    rows = chat_rows(4)
    options = {"roles_to_train": ["assistant"], "train_on_eos": "turn"}
    expected = pipeline_examples(tokenizer, rows, tmp_path, dataset={"type": "chat_template", **options},
                                 chat_template=template)
    got = [run_format("chat_template", row, tokenizer, recipe={"chat_template": template}, **options)
           for row in rows]
    assert got == expected
    replies = [m["content"] for m in rows[0]["messages"] if m["role"] == "assistant"]
    assert trained_runs(tokenizer, got[0]) == [r + tokenizer.eos_token for r in replies]


def test_run_format_takes_a_model_folder_options_and_a_dataset_entry(llama, tiny_llama):
    row = {"q": "Reverse the words.", "a": "red blue"}
    by_folder = run_format("alpaca", row, tiny_llama, field_instruction="q", field_output="a")
    by_entry = run_format("alpaca", row, llama, dataset={"field_instruction": "q", "field_output": "a"})
    assert by_folder == by_entry
    assert trained_runs(llama, by_entry) == ["red blue" + llama.eos_token]


def test_run_format_raises_the_formats_row_error_and_rejects_bad_options(llama):
    with pytest.raises(RowError, match="instruction"):
        run_format("alpaca", {"output": "no instruction"}, llama)
    with pytest.raises(RecipeError) as info:
        run_format("alpaca", {"instruction": "x", "output": "y"}, llama, field_instructon="q")
    assert [k for k, _ in info.value.problems] == ["datasets[0].field_instructon"]


def test_run_format_uses_a_throwaway_plugins_format(llama):
    example = run_format("shout", {"text": "red green"}, llama, plugins=fresh_plugins(Shout()))
    assert trained_runs(llama, example) == ["RED GREEN"]
    assert example["input_ids"][0] == llama.bos_token_id and example["labels"][0] == IGNORE_INDEX


# ── contexts ────────────────────────────────────────────────────────────────


def test_format_context_is_what_a_format_gets(qwen):
    from dataclasses import fields

    from ftcore.data import FormatContext

    ctx = format_context(qwen, {"chat_template": "chatml", "train_on_inputs": True})
    assert isinstance(ctx, FormatContext)
    assert ctx.recipe.train_on_inputs and ctx.chat_template == qwen.chat_template and "<|im_start|>" in ctx.chat_template
    assert ctx.eos_token == "<|im_end|>"
    assert format_context(qwen, extras={"seen": 1}).extras == {"seen": 1}  # any field passes through
    names = {f.name for f in fields(FormatContext)}
    if "stash" in names:
        assert format_context(qwen).stash is not None
    if "parts" in names:  # content-part handlers (images), as a run passes them
        assert ctx.parts == dict(hooks.content_parts(fresh_plugins()))
    with pytest.raises(TypeError):
        format_context(qwen, no_such_field=1)


def test_eval_context_runs_the_registered_loss_evaluator(tiny_llama, llama):
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.evaluation import EvalContext, run_evaluators

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    examples = [run_format("alpaca", row, llama) for row in alpaca_rows(5)]
    with pytest.raises(ValueError, match="no pad token"):  # Llama 3's has none; a run falls back to eos
        eval_context(model, llama, examples)
    ctx = eval_context(model, tiny_llama, examples, batch_size=2)  # the folder: loaded as a run loads it
    assert isinstance(ctx, EvalContext) and ctx.device == model.device and ctx.batch_size == 2
    assert ctx.tokenizer.pad_token_id == llama.eos_token_id
    batches = list(ctx.batches())
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    assert batches[0]["labels"].shape == batches[0]["input_ids"].shape
    loss = hooks.evaluators(fresh_plugins())["loss"][0]
    metrics = run_evaluators({"loss": loss}, ctx)
    assert metrics["eval_loss"] > 0 and metrics["eval_tokens"] == sum(
        sum(label != IGNORE_INDEX for label in e["labels"][1:]) for e in examples)
    with pytest.raises(TypeError):
        eval_context(model, tiny_llama, examples, no_such_field=1)
    from dataclasses import fields

    if {"step", "max_steps", "phase"} <= {f.name for f in fields(EvalContext)}:  # any field passes through
        later = eval_context(model, tiny_llama, examples, step=3, max_steps=3, phase="final")
        assert (later.step, later.max_steps, later.phase) == (3, 3, "final")


# ── runs ────────────────────────────────────────────────────────────────────


def test_run_recipe_picks_the_output_folder(monkeypatch, tmp_path):
    """``output_dir=`` wins, then the recipe's own, else a new temporary folder; always overwrite=True."""
    import ftcore.run
    from ftcore.run import RunResult

    calls = []

    def fake_run(recipe, plugins, overwrite=False):
        calls.append((recipe.output_dir, overwrite))
        Path(recipe.output_dir).mkdir(parents=True, exist_ok=True)
        return RunResult(Path(recipe.output_dir), {"train_loss_last": 1.0}, None, None)

    monkeypatch.setattr(ftcore.run, "run", fake_run)
    keys = {"base_model": "some/model", "datasets": [{"path": "x.jsonl", "type": "alpaca"}]}
    given = run_recipe(keys, output_dir=tmp_path / "given")
    assert given.output_dir == tmp_path / "given" and given.recipe.output_dir == str(tmp_path / "given")
    own = run_recipe({**keys, "output_dir": str(tmp_path / "own")})
    assert own.output_dir == tmp_path / "own" and own.metrics == {"train_loss_last": 1.0} and own.records == []
    temporary = run_recipe(keys)
    assert temporary.output_dir.name.startswith("ftcore-run-") and temporary.output_dir.is_dir()
    temporary.output_dir.rmdir()
    assert [overwrite for _, overwrite in calls] == [True, True, True]


@pytest.mark.slow
def test_run_recipe_trains_the_tiny_llama(tiny_llama, alpaca_file, tmp_path):
    recipe = {"base_model": str(tiny_llama), "datasets": [{"path": str(alpaca_file), "type": "alpaca"}],
              "adapter": "lora", "lora_target_linear": True, "val_set_size": 0.25, "sequence_len": 256,
              "micro_batch_size": 4, "max_steps": 2, "learning_rate": 5e-3, "logging_steps": 1,
              "eval_on_start": True}
    result = run_recipe(recipe, ["max_steps=3"], output_dir=tmp_path / "out")
    assert result.output_dir == tmp_path / "out" and result.recipe.max_steps == 3
    assert (result.output_dir / "run.json").is_file() and (result.output_dir / "adapter_config.json").is_file()
    assert [r["step"] for r in result.records if "loss" in r] == [1, 2, 3]
    assert {"train_loss_first", "train_loss_last", "eval_loss_initial", "eval_loss_final"} <= set(result.metrics)
    assert result.metrics["train_loss_last"] == [r for r in result.records if "loss" in r][-1]["loss"]
    assert result.model is not None and result.tokenizer is not None


# ── the pytest plugin and the tiny models ───────────────────────────────────


def test_the_pytest_plugin_is_registered_by_entry_point_and_imports_no_torch(pytestconfig):
    import ftcore.testing.pytest_plugin as plugin

    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert points.get("ftcore") == "ftcore.testing.pytest_plugin"
    assert pytestconfig.pluginmanager.get_plugin("ftcore") is plugin
    done = subprocess.run([sys.executable, "-c", "import sys, ftcore.testing.pytest_plugin; "
                           "print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_env_fixture_sets_the_offline_variables(ftcore_env):
    assert ftcore_env == OFFLINE_ENV
    assert all(os.environ[key] == value for key, value in OFFLINE_ENV.items())


def test_the_kit_fixtures_are_the_suites_tiny_models(tiny_llama, ftcore_tiny_llama, tiny_qwen, ftcore_tiny_qwen):
    from transformers import AutoTokenizer

    assert tiny_llama == ftcore_tiny_llama and tiny_qwen == ftcore_tiny_qwen
    llama = AutoTokenizer.from_pretrained(ftcore_tiny_llama)
    assert llama.eos_token == "<|eot_id|>" and "<|start_header_id|>" in llama.get_vocab() and llama.chat_template
    qwen = AutoTokenizer.from_pretrained(ftcore_tiny_qwen)
    assert qwen.eos_token == "<|im_end|>" and "<|fim_middle|>" in qwen.get_vocab()


def test_python_m_tiny_still_builds_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ftcore.testing.tiny", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "quickstart" in done.stdout and "python -m ftcore.testing.tiny" in done.stdout
    import importlib.util

    from ftcore.testing import tiny

    assert importlib.util.find_spec("ftcore.tiny") is None  # moved, no shim
    assert {"build", "build_model", "build_mllama", "train_tokenizer", "quickstart_rows",
            "build_quickstart", "main"} <= set(dir(tiny))
