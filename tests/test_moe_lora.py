"""LoRA on parameters (``lora_target_parameters``): the fused expert weights of a mixture-of-experts model.

A tiny Qwen3-MoE built from a config (transformers 5 stores each layer's experts as two 3-D parameters,
``mlp.experts.gate_up_proj`` [experts, 2 x intermediate, hidden] and ``mlp.experts.down_proj``) is wrapped by
the LoRA plugin as a recipe asks; the adapter must reach those parameters, change the model's output once
its weights are non-zero, and come back through plain peft with the same logits.
"""

import pytest
import torch

from ftcore.errors import FtcoreError, RecipeError
from ftcore.plugins.lora import wrap
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
from ftcore.stash import Stash

PLUGINS = load_plugins()
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def recipe(**keys):
    return validate(RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                               "adapter": "lora", "lora_r": 4, "lora_alpha": 8, **keys}, None), PLUGINS)


def problems(**keys):
    with pytest.raises(RecipeError) as info:
        recipe(**keys)
    return dict(info.value.problems)


def tiny_moe(seed=0):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    config = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    return Qwen3MoeForCausalLM(config).eval()


TOKENS = torch.tensor([[1, 5, 9, 33, 70, 101, 2, 64]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=TOKENS).logits


def fill_lora(peft_model, only=None, seed=1):
    """Non-zero LoRA weights (B starts at zero, so a fresh adapter changes nothing); ``only``: names containing it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name and (only is None or only in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def test_the_fused_experts_are_parameters_not_linear_layers():
    # why lora_target_modules cannot reach them: the premise of the key
    model = tiny_moe()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["model.layers.0.mlp.experts.gate_up_proj"] == (4, 64, 32)
    assert shapes["model.layers.0.mlp.experts.down_proj"] == (4, 32, 32)
    assert not any(name.startswith("model.layers.0.mlp.experts.") for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear))


def test_the_key_validates_with_lora_and_is_refused_without_an_adapter():
    r = recipe(lora_target_modules=["q_proj"], lora_target_parameters=EXPERTS)
    assert r.lora_target_parameters == EXPERTS
    assert recipe(lora_target_parameters="experts.down_proj").lora_target_parameters == ["experts.down_proj"]
    with pytest.raises(RecipeError) as info:
        validate(RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                            "lora_target_parameters": EXPERTS}, None), PLUGINS)
    assert "adapter is absent" in dict(info.value.problems)["lora_target_parameters"]


def test_dropout_dora_and_malformed_names_are_refused_at_validation():
    assert "must be 0 with lora_target_parameters" in problems(lora_target_parameters=EXPERTS,
                                                               lora_dropout=0.05)["lora_dropout"]
    assert "DoRA" in problems(lora_target_parameters=EXPERTS, peft_use_dora=True)["peft_use_dora"]
    assert "not a parameter name" in str(problems(lora_target_parameters=["mlp.experts."]))
    assert {"lora_dropout", "peft_use_dora"} <= set(problems(lora_target_parameters=EXPERTS, lora_dropout=0.05,
                                                             peft_use_dora=True))  # reported together
    recipe(lora_target_parameters=EXPERTS, lora_dropout=0.0)  # 0 is what Axolotl asks


def test_the_experts_get_their_own_trainable_lora_weights_and_change_the_output():
    model = tiny_moe()
    before = logits(model)
    peft_model = wrap(recipe(lora_target_modules=["q_proj"], lora_target_parameters=EXPERTS), model, Stash())
    trainable = {name: tuple(p.shape) for name, p in peft_model.named_parameters() if p.requires_grad}
    experts = [name for name in trainable if ".mlp.experts." in name]
    # per layer: gate_up_proj and down_proj, each an A and a B (one rank-4 pair per expert: 4 x 4 = 16 rows)
    assert len(experts) == 2 * 2 * 2, trainable
    assert all(".q_proj." in name or ".mlp.experts." in name for name in trainable)
    assert trainable["base_model.model.model.layers.0.mlp.experts.lora_A.default.weight"] == (16, 32)
    assert trainable["base_model.model.model.layers.0.mlp.experts.lora_B.default.weight"] == (32, 16)
    torch.testing.assert_close(logits(peft_model), before)  # B starts at zero: nothing changed yet
    fill_lora(peft_model, only=".mlp.experts.")  # the experts' LoRA weights alone
    after = logits(peft_model)
    assert (after - before).abs().max() > 1e-3
    # the base weights themselves are untouched and frozen
    base = dict(peft_model.get_base_model().named_parameters())
    assert not any(p.requires_grad for name, p in base.items() if "lora_" not in name)


def test_a_gradient_reaches_the_expert_adapters():
    peft_model = wrap(recipe(lora_target_parameters=EXPERTS), tiny_moe(), Stash())
    fill_lora(peft_model)
    out = peft_model(input_ids=TOKENS, labels=TOKENS)
    out.loss.backward()
    grads = {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all(".mlp.experts." in name for name in grads)  # no target_modules: only the experts
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_save_and_plain_peft_reload_give_the_same_logits(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tiny_moe().save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    peft_model = wrap(recipe(lora_target_modules=["q_proj"], lora_target_parameters=EXPERTS), base, Stash())
    fill_lora(peft_model)
    trained = logits(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    import json

    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(saved["target_parameters"]) == sorted(EXPERTS)

    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    untrained = logits(fresh)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded), trained, rtol=0, atol=1e-5)
    assert (trained - untrained).abs().max() > 1e-3  # the adapter is what reproduces them
    # merged into the base (what `ftcore merge` does): the same logits, from changed expert weights only
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(logits(merged), trained, rtol=0, atol=1e-4)
    original = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "base").named_parameters())
    changed = {name for name, p in merged.named_parameters() if not torch.equal(p, original[name])}
    assert changed == {f"model.layers.{i}.{part}" for i in range(2)
                       for part in ("self_attn.q_proj.weight", *EXPERTS)}


def test_a_name_that_matches_no_parameter_is_an_error_naming_the_candidates():
    with pytest.raises(FtcoreError) as info:
        wrap(recipe(lora_target_parameters=["mlp.experts.gate_proj", "experts.down_proj"]), tiny_moe(), Stash())
    message = str(info.value)
    assert message.startswith("lora_target_parameters: mlp.experts.gate_proj match(es) no parameter")
    assert "experts.down_proj," not in message.split("no parameter")[0]  # the one that matches is not named
    assert "mlp.experts.gate_up_proj" in message and "mlp.gate.weight" in message  # what the model has


def test_an_ending_without_the_module_path_matches_too():
    # Ling's and Nemotron-H's recipes write the bare names (gate_up_proj, down_proj)
    peft_model = wrap(recipe(lora_target_parameters=["gate_up_proj"]), tiny_moe(), Stash())
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 and all(".mlp.experts." in name for name in trainable)
