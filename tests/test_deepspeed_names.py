"""Axolotl's recipes name the DeepSpeed configs of Axolotl's repository (``deepspeed: deepspeed_configs/zero2.json``).

Where that file is absent, ftcore's preset with the same ZeRO stage and offloading stands in, and validation
says which; any other missing file stays an error. Checked on the config handed to the trainer (no run).
"""

import json
import logging

import pytest

from ftcore import hooks
from ftcore.errors import RecipeError
from ftcore.plugins.distributed import deepspeed_config, presets_folder
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
from ftcore.stash import Stash

PLUGINS = load_plugins()


def recipe(**keys):
    return validate(RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                               **keys}, None), PLUGINS)


def preset(name):
    return json.loads((presets_folder() / f"{name}.json").read_text())


def zero(config):
    return config["zero_optimization"]


@pytest.mark.parametrize("name, stage, offload_params, offload_optimizer", [
    ("zero1", 1, False, False),
    ("zero2", 2, False, False),
    ("zero3", 3, False, False),
    ("zero3_bf16", 3, False, False),
    ("zero3_bf16_cpuoffload_all", 3, True, True),
    ("zero3_bf16_cpuoffload_params", 3, True, False),
])
def test_an_absent_axolotl_config_runs_with_the_matching_preset(name, stage, offload_params, offload_optimizer,
                                                                 tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # no deepspeed_configs/ folder here
    value = f"deepspeed_configs/{name}.json"
    with caplog.at_level(logging.INFO, logger="ftcore"):
        r = recipe(deepspeed=value)
    note = [m for m in caplog.messages if m.startswith("note: deepspeed:")]
    assert len(note) == 1 and value in note[0] and "Axolotl's shipped config" in note[0], caplog.messages
    given = hooks.trainer_arguments(PLUGINS, r, Stash())["deepspeed"]
    assert zero(given)["stage"] == stage
    assert ("offload_param" in zero(given)) is offload_params
    assert ("offload_optimizer" in zero(given)) is offload_optimizer
    expected = "zero3_offload" if offload_params else name.removesuffix("_bf16")
    assert f"preset {expected}" in note[0]
    if name != "zero3_bf16_cpuoffload_params":  # the preset itself, unchanged
        assert given == preset(expected)
    else:  # the offload preset less its optimizer offload, nothing else
        assert {**given, "zero_optimization": {**zero(given), "offload_optimizer": "x"}} == \
            {**preset("zero3_offload"), "zero_optimization": {**zero(preset("zero3_offload")), "offload_optimizer": "x"}}


def test_an_absolute_path_into_an_axolotl_checkout_maps_too(tmp_path):
    value = str(tmp_path / "axolotl" / "deepspeed_configs" / "zero2.json")
    assert deepspeed_config(value) == preset("zero2")


def test_the_file_wins_when_it_exists(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "deepspeed_configs"
    folder.mkdir()
    mine = {"zero_optimization": {"stage": 2, "overlap_comm": False}, "train_micro_batch_size_per_gpu": "auto"}
    (folder / "zero2.json").write_text(json.dumps(mine))
    with caplog.at_level(logging.INFO, logger="ftcore"):
        r = recipe(deepspeed="deepspeed_configs/zero2.json")
    assert not [m for m in caplog.messages if m.startswith("note: deepspeed:")]
    assert hooks.trainer_arguments(PLUGINS, r, Stash())["deepspeed"] == mine


@pytest.mark.parametrize("value", ["deepspeed_configs/zero4.json", "my_configs/zero2.json", "zero2.json"])
def test_any_other_missing_file_stays_an_error(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as err:
        recipe(deepspeed=value)
    message = dict(err.value.problems)["deepspeed"]
    assert f"no file '{value}'" in message and "zero1, zero2, zero3, zero3_offload" in message
    # an Axolotl-looking folder gets the list of the names ftcore stands in for
    assert ("zero3_bf16_cpuoffload_params.json" in message) is value.startswith("deepspeed_configs/")
