"""Tests of ftcore-neftune with ftcore's plugin-author kit (``ftcore.testing``).

The fixtures (``ftcore_tiny_llama``, ``ftcore_register``, ...) come with ftcore:
its pytest plugin is registered whenever ftcore is installed. The tiny model is
built on the spot; nothing is downloaded. Run: ``python -m pytest`` in this
folder (``-m "not slow"`` skips the two short training runs).
"""

import math
from pathlib import Path

import pytest
import torch

import ftcore_neftune
from ftcore.api import Stash
from ftcore.testing import alpaca_rows, eval_context, load_recipe, recipe_problems, run_recipe, write_jsonl

RECIPE = Path(__file__).resolve().parents[1] / "recipe.yaml"
ALPHA = 5.0


def recipe_keys(**keys):
    return {"base_model": "unused/model", **keys}


@pytest.fixture
def plugins(ftcore_register):
    """This test's plugin manager with the plugin (already there as "neftune" when the package is installed)."""
    return ftcore_register(ftcore_neftune)


@pytest.fixture
def model(ftcore_tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ftcore_tiny_llama, dtype=torch.float32)


def hooked(model, recipe):
    """What a run does: the plugin's callback, registered by ``trainer_callbacks``, at the start of training."""
    stash, callbacks = Stash(), []
    ftcore_neftune.trainer_callbacks(recipe, callbacks.append, stash)
    (callback,) = callbacks
    callback.on_train_begin(None, None, None, model=model)
    return stash


def token_ids(rows=4, length=32, seed=0, vocab=256):
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def embedding_noise(model, ids, train=True):
    """What the input embeddings' output differs by from the embedding rows themselves."""
    embeddings = model.get_input_embeddings()
    model.train(train)
    with torch.no_grad():
        return embeddings(ids) - embeddings.weight[ids]


def noise_hooks(model):
    return [hook for module in model.modules() for hook in module._forward_hooks.values()
            if isinstance(hook, ftcore_neftune.NoisyEmbeddings)]


# ── the recipe ──────────────────────────────────────────────────────────────


def test_the_key_and_the_section_validate(plugins):
    recipe = load_recipe(recipe_keys(neftune_noise_alpha=5, neftune={"seed": 3}), plugins=plugins)
    assert recipe.neftune_noise_alpha == 5.0
    assert recipe.section("neftune").seed == 3
    assert load_recipe(recipe_keys(), plugins=plugins).neftune_noise_alpha is None  # absent: off
    assert load_recipe(recipe_keys(), ["neftune_noise_alpha=15"], plugins=plugins).neftune_noise_alpha == 15.0


def test_the_shipped_recipe_validates(plugins):
    recipe = load_recipe(RECIPE, plugins=plugins)
    assert recipe.neftune_noise_alpha == ALPHA and recipe.evaluators == ["loss", "neftune_noise"]
    assert recipe.adapter == "lora"  # from `extends: quickstart`


@pytest.mark.parametrize("value", [0, -1, "lots"])
def test_a_bad_alpha_is_refused_naming_the_key(plugins, value):
    problems = recipe_problems(recipe_keys(neftune_noise_alpha=value), plugins=plugins)
    assert [key for key, _ in problems] == ["neftune_noise_alpha"]


def test_typos_get_a_suggestion(plugins):
    assert recipe_problems(recipe_keys(neftune_noise_alpah=5), plugins=plugins) == [
        ("neftune_noise_alpah", "unknown key (did you mean 'neftune_noise_alpha'?)")]
    problems = recipe_problems(recipe_keys(neftune_noise_alpha=5, neftune={"sed": 1}), plugins=plugins)
    assert [key for key, _ in problems] == ["neftune.sed"] and "did you mean 'seed'" in problems[0][1]


def test_settings_that_would_do_nothing_are_refused(plugins):
    section = recipe_problems(recipe_keys(neftune={"seed": 1}), plugins=plugins)
    assert [key for key, _ in section] == ["neftune"] and "neftune_noise_alpha is not set" in section[0][1]
    evaluator = recipe_problems(recipe_keys(evaluators=["loss", "neftune_noise"]), plugins=plugins)
    assert [key for key, _ in evaluator] == ["evaluators"] and "neftune_noise_alpha is not set" in evaluator[0][1]
    assert recipe_problems(recipe_keys(neftune_noise_alpha=5, neftune={"seed": 1},
                                       evaluators=["loss", "neftune_noise"]), plugins=plugins) == []


def test_a_recipe_without_neftune_writes_none_of_its_keys(plugins):
    unused = load_recipe(recipe_keys(), plugins=plugins).to_yaml_dict(used_plugins=set())
    assert not [key for key in unused if key.startswith("neftune")]
    used = load_recipe(recipe_keys(neftune_noise_alpha=5), plugins=plugins).to_yaml_dict(used_plugins=set())
    assert used["neftune_noise_alpha"] == 5.0
    # the callback is registered only when NEFTune is on
    registered = []
    ftcore_neftune.trainer_callbacks(load_recipe(recipe_keys(), plugins=plugins), registered.append, Stash())
    assert registered == []


# ── the noise ───────────────────────────────────────────────────────────────


@pytest.mark.parametrize("length", [16, 64])
def test_the_noise_is_uniform_with_the_papers_scale(model, plugins, length):
    recipe = load_recipe(recipe_keys(neftune_noise_alpha=ALPHA), plugins=plugins)
    stash = hooked(model, recipe)
    noise = embedding_noise(model, token_ids(rows=8, length=length))
    hidden = noise.shape[-1]
    scale = ALPHA / math.sqrt(length * hidden)  # U(-s, s), s = alpha / sqrt(L * d)
    assert scale == pytest.approx(ftcore_neftune.noise_scale(ALPHA, length, hidden))
    assert noise.abs().max().item() <= scale * (1 + 1e-5)
    assert noise.abs().max().item() >= 0.95 * scale  # it fills the interval
    assert noise.std().item() == pytest.approx(scale / math.sqrt(3), rel=0.03)  # a uniform's std: s / sqrt(3)
    assert abs(noise.mean().item()) < 0.03 * scale
    token_norm = noise.norm(dim=-1).mean().item()
    assert token_norm == pytest.approx(ALPHA / math.sqrt(3 * length), rel=0.03)
    measured, measured_length = stash[ftcore_neftune.LAST_NOISE]
    assert measured_length == length
    assert measured.item() == pytest.approx(token_norm, rel=1e-5)


def test_no_noise_in_eval_mode_outputs_are_bit_identical(model, plugins):
    ids = token_ids()
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    stash = hooked(model, load_recipe(recipe_keys(neftune_noise_alpha=ALPHA), plugins=plugins))
    assert torch.count_nonzero(embedding_noise(model, ids, train=False)) == 0
    model.eval()
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    model.train()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    assert not torch.allclose(before, trained, atol=1e-4)  # the tiny llama has no dropout: this is the noise
    assert ftcore_neftune.LAST_NOISE in stash


def noise_of_a_run(model, plugins, ids, **keys):
    """The noise one run's hook adds to ``ids``; the hook removed afterwards."""
    stash = hooked(model, load_recipe(recipe_keys(neftune_noise_alpha=ALPHA, **keys), plugins=plugins))
    try:
        return embedding_noise(model, ids)
    finally:
        ftcore_neftune.run_finished(stash)


def test_the_noise_has_its_own_seeded_generator(model, plugins):
    ids = token_ids()
    state = torch.random.get_rng_state()
    first = noise_of_a_run(model, plugins, ids, neftune={"seed": 1})
    assert torch.equal(torch.random.get_rng_state(), state)  # data order and dropout are those of a run without it
    assert torch.equal(noise_of_a_run(model, plugins, ids, neftune={"seed": 1}), first)  # same seed, same noise
    assert not torch.equal(noise_of_a_run(model, plugins, ids, neftune={"seed": 2}), first)
    by_default = noise_of_a_run(model, plugins, ids, seed=1)  # no section: the recipe's seed
    assert torch.equal(by_default, first)


def test_run_finished_removes_the_hook(model, plugins):
    stash = hooked(model, load_recipe(recipe_keys(neftune_noise_alpha=ALPHA), plugins=plugins))
    handle = stash[ftcore_neftune.HOOK]
    ftcore_neftune.install(model, ALPHA, 0, stash)  # once per run, even if training begins again
    assert stash[ftcore_neftune.HOOK] is handle and len(noise_hooks(model)) == 1
    ftcore_neftune.run_finished(stash)
    assert noise_hooks(model) == [] and ftcore_neftune.HOOK not in stash
    assert torch.count_nonzero(embedding_noise(model, token_ids())) == 0  # training mode, no noise any more
    ftcore_neftune.run_finished(stash)  # nothing installed: nothing to do


def test_a_model_without_input_embeddings_is_a_clear_error(plugins):
    from ftcore.api import FtcoreError

    recipe = load_recipe(recipe_keys(neftune_noise_alpha=ALPHA), plugins=plugins)
    with pytest.raises(FtcoreError, match="neftune_noise_alpha: the model .Linear. has no input embeddings"):
        hooked(torch.nn.Linear(2, 2), recipe)


# ── the evaluator ───────────────────────────────────────────────────────────


def test_the_evaluator_reports_the_last_training_noise(model, plugins, ftcore_tiny_llama):
    recipe = load_recipe(recipe_keys(base_model=str(ftcore_tiny_llama), neftune_noise_alpha=ALPHA,
                                     evaluators=["loss", "neftune_noise"]), plugins=plugins)
    stash = hooked(model, recipe)
    examples = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    ctx = eval_context(model, ftcore_tiny_llama, examples, recipe, plugins=plugins, stash=stash)
    assert ftcore_neftune.neftune_noise(ctx) == {}  # no training step yet (eval_on_start)
    embedding_noise(model, token_ids(rows=8, length=48))
    metrics = ftcore_neftune.neftune_noise(ctx)
    assert metrics["neftune_noise_norm_expected"] == pytest.approx(ALPHA / math.sqrt(3 * 48))
    assert metrics["neftune_noise_norm"] == pytest.approx(metrics["neftune_noise_norm_expected"], rel=0.03)


# ── runs ────────────────────────────────────────────────────────────────────


def run(ftcore_tiny_llama, plugins, tmp_path, *overrides):
    """The shipped recipe, 3 steps, on the kit's tiny Llama and rows its tokenizer was trained on."""
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(48))
    overrides = [f"base_model={ftcore_tiny_llama}", f"datasets[0].path={data}", "sequence_len=512", "max_steps=3",
                 "logging_steps=1", *overrides]
    return run_recipe(RECIPE, overrides, plugins=plugins, output_dir=tmp_path / "out")


@pytest.mark.slow
def test_a_three_step_run_trains_reports_the_noise_and_leaves_no_hook(ftcore_tiny_llama, plugins, tmp_path):
    result = run(ftcore_tiny_llama, plugins, tmp_path)
    assert [r["loss"] for r in result.records if "loss" in r] and math.isfinite(result.metrics["train_loss_last"])
    noise = result.metrics["eval_neftune_noise_norm_final"]
    assert noise == pytest.approx(result.metrics["eval_neftune_noise_norm_expected_final"], rel=0.05)
    assert noise > 0 and "eval_loss_final" in result.metrics
    assert noise_hooks(result.model) == []
    written = (result.output_dir / "recipe.yaml").read_text()
    assert "neftune_noise_alpha: 5.0" in written and "seed: 7" in written
    (ours,) = [name for name, info in plugins.info.items() if info.module == "ftcore_neftune"]
    assert ours not in plugins.answered  # it decides no firstresult hook


@pytest.mark.slow
def test_embeddings_the_adapter_trains_in_full_get_the_noise(ftcore_tiny_llama, plugins, tmp_path):
    # an added token puts embed_tokens in LoRA's modules_to_save: the adapter trains a copy of them,
    # which is what the callback hooks (a hook set in prepare_model would be copied with them and stay behind)
    result = run(ftcore_tiny_llama, plugins, tmp_path, "tokens=[<|neftune_test|>]")
    saved = [name for name, _ in result.model.named_modules() if name.endswith("modules_to_save")]
    assert saved and result.metrics["eval_neftune_noise_norm_final"] > 0
    assert noise_hooks(result.model) == []
