"""What a third-party plugin can do on the contract alone, and the defects a plugin author used to hit.

A throwaway plugin written only against ``ftcore.api`` owns a flat key and a section, builds the
trainer, replaces the loss, counts callbacks and evaluations; the run calls every one of them, and
the numbers come out as the built-ins' do. Then each defect the issue lists, with a test that
failed before it was fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ftcore.api import FtcoreTrainer, PluginError, RecipeKeys, StashKey, hookimpl, trainer_kwargs
from ftcore.errors import RecipeError
from ftcore.testing import fresh_plugins, load_recipe, run_recipe

CALLS: StashKey[list] = StashKey("test.calls", "what the throwaway plugin saw")


class Seams:
    """A plugin on every new seam; records what it was called with in the run's stash and here."""

    FTCORE_CONTRACT = "1"

    def __init__(self):
        from pydantic import Field

        class Keys(RecipeKeys):
            loraplus_lr_ratio: float | None = Field(None, gt=0)  # a scalar Axolotl key, claimed by a plugin

        class Section(RecipeKeys):
            label: str = "seams"

        self.Keys, self.Section = Keys, Section
        self.seen = {"evaluations": [], "loss_calls": 0, "trainer": None, "started": 0, "finished": [],
                     "arguments": 0, "steps": 0}

    @hookimpl
    def recipe_keys(self, register):
        register(self.Keys)

    @hookimpl
    def recipe_sections(self, register):
        register("seams", self.Section)

    @hookimpl
    def run_started(self, stash):
        self.seen["started"] += 1
        stash[CALLS] = []

    @hookimpl
    def trainer_arguments(self, recipe):
        self.seen["arguments"] += 1
        return None

    @hookimpl
    def register_evaluators(self, register):
        def record(ctx):
            self.seen["evaluations"].append((ctx.step, ctx.max_steps, ctx.phase, CALLS in ctx.stash))
            ctx.record(prompt=f"p{ctx.step}", reference="r", prediction=f"<{ctx.phase}>", score=0.5)
            return {"seams_step": ctx.step}

        register("seams_record", record)

    @hookimpl
    def trainer_callbacks(self, register):
        from transformers import TrainerCallback

        seen = self.seen

        class Count(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                seen["steps"] += 1

        register(Count())

    @hookimpl
    def training_loss(self, recipe, model):
        def loss(model, inputs, num_items_in_batch):
            self.seen["loss_calls"] += 1
            extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
            outputs = model(**inputs, **extra)  # the model's own loss, through the seam
            return outputs.loss, outputs

        return loss

    @hookimpl(tryfirst=True)
    def build_trainer(self, recipe, model, tokenizer, arguments, train_dataset, eval_dataset, collator, callbacks,
                      evaluators, loss, stash):
        class Mine(FtcoreTrainer):
            pass

        trainer = Mine(**trainer_kwargs(recipe, model, tokenizer, arguments, train_dataset, eval_dataset, collator,
                                        callbacks, evaluators, loss, stash))
        self.seen["trainer"] = type(trainer).__name__
        return trainer

    @hookimpl
    def run_finished(self, status):
        self.seen["finished"].append(status)


def _keys(tmp_path, tiny_llama, alpaca_file, **extra):
    return {**dict(base_model=str(tiny_llama), datasets=[{"path": str(alpaca_file), "type": "alpaca"}],
                   adapter="lora", lora_target_linear=True, val_set_size=0.25, sequence_len=256, micro_batch_size=2,
                   gradient_accumulation_steps=2, max_steps=3, eval_steps=2, eval_on_start=True, learning_rate=1e-2,
                   lr_scheduler="constant", output_dir=str(tmp_path / "out")), **extra}


@pytest.mark.slow
def test_a_plugin_on_the_seams_alone_trains_and_its_loss_matches_the_models_own(tiny_llama, alpaca_file, tmp_path):
    plain = run_recipe(_keys(tmp_path / "plain", tiny_llama, alpaca_file), plugins=fresh_plugins())
    seams = Seams()
    plugins = fresh_plugins(("seams", seams))
    result = run_recipe(_keys(tmp_path / "seams", tiny_llama, alpaca_file, loraplus_lr_ratio=5,
                              seams={"label": "x"}, evaluators=["loss", "seams_record"]), plugins=plugins)

    seen = seams.seen
    assert seen["trainer"] == "Mine" and seen["started"] == 1 and seen["finished"] == ["completed"]
    assert seen["arguments"] == 1  # trainer_arguments: once per run
    assert seen["steps"] == 3 and seen["loss_calls"] == 3 * 2  # every micro-batch went through the seam
    assert [e[:3] for e in seen["evaluations"]] == [(0, 3, "initial"), (2, 3, "training"), (3, 3, "final")]
    assert all(e[3] for e in seen["evaluations"])  # the evaluator saw the run's stash
    losses = [r["loss"] for r in result.records if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in plain.records if "loss" in r], rel=1e-6)
    assert [r["eval_seams_step"] for r in result.records if "eval_seams_step" in r] == [0, 2, 3]
    samples = [json.loads(line) for line in (result.output_dir / "samples.jsonl").read_text().splitlines()]
    assert samples == [{"evaluator": "seams_record", "step": step, "phase": phase, "prompt": f"p{step}",
                        "reference": "r", "prediction": f"<{phase}>", "score": 0.5}
                       for step, phase in ((0, "initial"), (2, "training"), (3, "final"))]
    assert not (result.output_dir.parent / "plain" / "out" / "samples.jsonl").exists()  # nothing recorded

    saved = (result.output_dir / "recipe.yaml").read_text()
    assert "loraplus_lr_ratio: 5" in saved and "seams:" in saved  # set by the recipe: kept
    assert "code_exec:" not in saved and "vision:" not in saved  # plugins the run did not use: left out


# ── defect 1: a section with a required key ───────────────────────────────────


def _required_section_plugin():
    from pydantic import BaseModel

    class Needs(BaseModel):
        greeting: str  # required

    class Plugin:
        FTCORE_CONTRACT = "1"

        @hookimpl
        def recipe_sections(self, register):
            register("needs", Needs)

    return Plugin()


def test_a_section_with_a_required_key_does_not_break_recipes_without_it(tmp_path):
    from ftcore.artifacts import write_recipe as write_resolved

    plugins = fresh_plugins(("needs", _required_section_plugin()))
    recipe = load_recipe("quickstart", plugins=plugins)
    assert recipe.section("needs") is None
    write_resolved(recipe, tmp_path, used_plugins=set())  # crashed on the None section before
    assert "needs" not in (tmp_path / "recipe.yaml").read_text()
    with pytest.raises(RecipeError) as info:
        load_recipe("quickstart", ["needs={}"], plugins=plugins)
    assert info.value.problems == [("needs.greeting", "required, but missing or empty")]


# ── defect 2: exceptions in registered callables name the plugin ─────────────


def test_an_evaluator_and_a_callback_that_raise_name_their_plugin():
    from transformers import TrainerCallback

    from ftcore import hooks

    class Broken(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise KeyError("step_stats")

    class Plugin:
        FTCORE_CONTRACT = "1"

        @hookimpl
        def register_evaluators(self, register):
            register("fragile", lambda ctx: {}["missing"])

        @hookimpl
        def trainer_callbacks(self, register):
            register(Broken())

    plugins = fresh_plugins(("fragile", Plugin()))
    recipe = load_recipe({"base_model": "org/model", "evaluators": ["loss", "fragile"]}, plugins=plugins)
    evaluator = hooks.chosen_evaluators(plugins, recipe)["fragile"]
    with pytest.raises(PluginError) as info:
        evaluator(None)
    assert "'fragile' (" in str(info.value) and "fragile-pkg 0.0.0" in str(info.value)
    assert "its evaluator 'fragile'" in str(info.value) and "KeyError" in str(info.value)
    [callback] = hooks.trainer_callbacks(plugins, recipe)
    assert isinstance(callback, Broken)
    with pytest.raises(PluginError, match=r"'fragile'.*Broken\.on_step_end.*KeyError: 'step_stats'"):
        callback.on_step_end(None, None, None)


# ── defect 3: recipe.yaml holds only what the recipe set or the run used ──────


def test_recipe_yaml_leaves_out_plugins_the_run_did_not_use():
    recipe = load_recipe("quickstart")
    everything = recipe.to_yaml_dict()  # every plugin counted as used
    used = recipe.to_yaml_dict({"lora", "huggingface", "full"})
    assert "code_exec" in everything and "vision" in everything
    assert "code_exec" not in used and "vision" not in used and "load_in_4bit" not in used
    assert used["lora_r"] == recipe.lora_r  # the adapter plugin the run used: its defaults are resolved
    blocked = fresh_plugins(block=("vision", "code", "qlora", "distributed", "wandb", "chunked_loss"))
    load_recipe(used, plugins=blocked)  # valid where those plugins are not installed


# ── defect 4: a blank or null section is absent ──────────────────────────────


@pytest.mark.parametrize("value", [None, ""])
def test_a_blank_or_null_plugin_section_is_treated_as_absent(value):
    recipe = load_recipe({"base_model": "org/model", "vision": value})
    assert recipe.section("vision") == load_recipe({"base_model": "org/model"}).section("vision")
    assert not recipe.is_set("vision")


# ── defect 5: run.json when save_artifacts raises ────────────────────────────


@pytest.mark.slow
def test_run_json_says_failed_when_saving_fails(tiny_llama, alpaca_file, tmp_path):
    class Plugin:
        FTCORE_CONTRACT = "1"

        @hookimpl
        def save_artifacts(self, output_dir):
            raise OSError("disk full")

    with pytest.raises(PluginError, match="disk full"):
        run_recipe(_keys(tmp_path, tiny_llama, alpaca_file, max_steps=1, eval_on_start=False),
                   plugins=fresh_plugins(("saver", Plugin())))
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["finished"]


# ── defect 6: hints, and a plugin may claim an Axolotl scalar key ─────────────


def test_unknown_names_hint_at_disabled_plugins():
    plugins = fresh_plugins(block=("code",))
    with pytest.raises(RecipeError) as info:
        load_recipe({"base_model": "org/model", "evaluators": ["code_exec"], "code_exec": {"n": 2},
                     "datasets": [{"path": "src", "type": "fim"}]}, plugins=plugins)
    problems = dict(info.value.problems)
    for key in ("evaluators", "code_exec", "datasets[0].type"):
        assert "plugins disabled by FTCORE_DISABLE_PLUGINS may provide it: code" in problems[key], key


def test_a_plugin_claims_an_axolotl_scalar_key():
    without = fresh_plugins()
    with pytest.raises(RecipeError, match=r"LoRA\+ \(a higher learning rate for LoRA's B matrices\) is not supported"):
        load_recipe({"base_model": "org/model", "loraplus_lr_ratio": 5}, plugins=without)
    recipe = load_recipe({"base_model": "org/model", "loraplus_lr_ratio": 5}, plugins=fresh_plugins(Seams()))
    assert recipe.loraplus_lr_ratio == 5.0 and recipe.is_set("loraplus_lr_ratio")


def test_two_plugins_claiming_one_flat_key_are_named():
    with pytest.raises(PluginError, match=r"recipe key 'loraplus_lr_ratio' is claimed by two plugins") as info:
        load_recipe({"base_model": "org/model"}, plugins=fresh_plugins(("one", Seams()), ("two", Seams())))
    assert "'one' (" in str(info.value) and "'two' (" in str(info.value)


def test_a_plugin_may_not_claim_a_core_key():
    from pydantic import BaseModel

    class Greedy(BaseModel):
        learning_rate: float = 1.0

    class Plugin:
        FTCORE_CONTRACT = "1"

        @hookimpl
        def recipe_keys(self, register):
            register(Greedy)

    with pytest.raises(PluginError, match=r"'greedy'.*claims the core recipe key 'learning_rate'"):
        load_recipe({"base_model": "org/model"}, plugins=fresh_plugins(("greedy", Plugin())))


# ── defect 7: a refused plugin, and which side to upgrade ────────────────────


def _installed(tmp_path, contract="2"):
    """An entry-point plugin written for another contract, installed by hand (a dist-info folder)."""
    site = tmp_path / "site"
    (site / "future_ftcore_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "future_ftcore_plugin.py").write_text(f'FTCORE_CONTRACT = "{contract}"\n')
    (site / "future_ftcore_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: future-ftcore-plugin\nVersion: 1.0\n")
    (site / "future_ftcore_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[ftcore]\nfuture = future_ftcore_plugin\n")
    return {**os.environ, "PYTHONPATH": str(site)}


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "ftcore", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_refused_plugin_leaves_version_help_and_plugins_working(tmp_path):
    env = _installed(tmp_path)
    assert _cli("--version", env=env).returncode == 0
    assert _cli("--help", env=env).returncode == 0
    listing = _cli("plugins", "--json", env=env)
    assert listing.returncode == 3  # the listing works, and says the installation is broken
    data = json.loads(listing.stdout)
    assert [r["name"] for r in data["refused"]] == ["future"] and "lora" in {r["name"] for r in data["plugins"]}
    assert "upgrade ftcore" in data["refused"][0]["error"]  # the plugin is the newer side
    validate = _cli("validate", "quickstart", env=env)
    assert validate.returncode == 3 and "'future'" in validate.stderr and "Traceback" not in validate.stderr


def test_an_older_plugin_is_told_to_upgrade():
    from ftcore.plugins_manager import PluginInfo, Plugins

    class Old:
        FTCORE_CONTRACT = "0"

    with pytest.raises(PluginError, match="upgrade the plugin"):
        Plugins().add(Old(), PluginInfo("old", "old", "entry point", "old-pkg", "0.1"))


# ── FTCORE_TRACE_PLUGINS ─────────────────────────────────────────────────────


def test_trace_prints_each_hook_call_its_implementations_and_answers():
    done = _cli("validate", "quickstart", env={**os.environ, "FTCORE_TRACE_PLUGINS": "1"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("[ftcore trace] recipe_keys: ") and "lora" in line for line in lines)
    assert any(line.startswith("[ftcore trace]   lora.validate_recipe -> None") for line in lines)
    quiet = _cli("validate", "quickstart", env={k: v for k, v in os.environ.items() if k != "FTCORE_TRACE_PLUGINS"})
    assert "[ftcore trace]" not in quiet.stderr


def test_the_boundary_docs_name_what_a_plugin_author_uses():
    """docs/plugins.md walks through the kit, the stash, the seams and the error rules."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    for words in ("ftcore new-plugin", "ftcore.testing", "ftcore.api", "Stash", "recipe_keys", "build_trainer",
                  "training_loss", "FTCORE_TRACE_PLUGINS", "exit 3"):
        assert words in page, words
