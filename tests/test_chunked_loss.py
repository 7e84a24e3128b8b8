"""chunked_cross_entropy: the same loss and gradients as the model's own loss, without the full logits."""

import json

import pytest
import torch

from conftest import write_recipe
from test_run import base_recipe, run_recipe

from ftcore.plugins.chunked_loss import ChunkedLoss
from ftcore.errors import FtcoreError


def lora_model(path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)  # random B: every LoRA weight gets a gradient
    return get_peft_model(model, config)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def batches(vocab):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, 24), generator=g)
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt
    labels[1, 18:] = -100  # padding
    plain = dict(input_ids=ids, labels=labels)
    packed_ids = ids[:1]  # one row holding three examples of 8 tokens, positions restarting
    packed_labels = packed_ids.clone()
    packed_labels[0, [0, 8, 16]] = -100  # each example's first token is never predicted from the previous one
    packed = dict(input_ids=packed_ids, labels=packed_labels, position_ids=torch.arange(8).repeat(3)[None],
                  use_cache=False)
    return {"padded": plain, "packed": packed}


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("num_items", [None, 50])
def test_loss_and_gradients_equal_the_models_own(family, kind, num_items, request):
    model = lora_model(request.getfixturevalue(family))
    batch = batches(model.config.vocab_size)[kind]
    extra = {} if num_items is None else {"num_items_in_batch": num_items}

    reference = model(**batch, **extra).loss
    reference.backward()
    expected = grads(model)
    model.zero_grad()

    chunked = ChunkedLoss(model, num_chunks=3)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with chunked.hidden_states():
        outputs = model(**inputs)
    assert outputs.logits.shape[-1] == model.config.hidden_size  # the head was bypassed
    loss = chunked(outputs, batch["labels"], num_items)
    loss.backward()

    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    got = grads(model)
    assert expected.keys() == got.keys() and len(got) >= 6
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    assert model(**inputs).logits.shape[-1] == model.config.vocab_size  # the head is back outside the block


def test_only_trained_positions_are_projected_a_chunk_at_a_time(tiny_llama, monkeypatch):
    model = lora_model(tiny_llama)
    batch = batches(model.config.vocab_size)["padded"]
    trained = int((batch["labels"][:, 1:] != -100).sum())
    rows = []
    original = ChunkedLoss._project_loss

    def spy(self, hidden, targets):
        rows.append(hidden.shape[0])
        return original(self, hidden, targets)

    monkeypatch.setattr(ChunkedLoss, "_project_loss", spy)
    chunked = ChunkedLoss(model, num_chunks=4)
    with chunked.hidden_states():
        outputs = model(input_ids=batch["input_ids"])
    chunked(outputs, batch["labels"]).backward()
    forward = rows[:4]
    assert sum(forward) == trained and max(forward) == -(-trained // 4)  # never the whole sequence at once
    assert len(rows) == 8  # each chunk recomputed once in the backward, not kept


def test_unsupported_architecture_is_refused_by_name():
    class Gemma2Like:
        config = type("C", (), {"model_type": "gemma2"})()

    with pytest.raises(FtcoreError, match="chunked_cross_entropy supports model types llama, .* not 'gemma2'"):
        ChunkedLoss(Gemma2Like())


def test_a_run_with_chunked_loss_logs_the_same_losses(tiny_llama, alpaca_file, tmp_path):
    runs = {}
    for chunked in (False, True):
        keys = base_recipe(tmp_path / str(chunked), tiny_llama, alpaca_file, adapter="lora", lora_r=8,
                           lora_alpha=16, lora_target_linear=True, micro_batch_size=2, gradient_accumulation_steps=2,
                           max_steps=4, sample_packing=True, sequence_len=256,
                           chunked_cross_entropy=chunked, chunked_cross_entropy_num_chunks=3)
        result = run_recipe(write_recipe(tmp_path / f"{chunked}.yaml", **keys))
        records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        runs[chunked] = ([r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records
                                                                       if "eval_loss" in r])
    (plain_train, plain_eval), (chunked_train, chunked_eval) = runs[False], runs[True]
    assert len(plain_train) == 4 and len(plain_eval) == 2
    assert chunked_train == pytest.approx(plain_train, rel=1e-5)  # accumulation over 2 micro-batches included
    assert chunked_eval == pytest.approx(plain_eval, rel=1e-5)  # evaluation saw real logits, before and after


def test_the_run_trains_with_the_plugins_loss_through_the_training_loss_seam(tiny_llama, alpaca_file, tmp_path,
                                                                             monkeypatch):
    calls = []
    original = ChunkedLoss.training_loss

    def spy(self, model, inputs, num_items_in_batch=None):
        calls.append(model.training)
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(ChunkedLoss, "training_loss", spy)
    keys = base_recipe(tmp_path, tiny_llama, alpaca_file, adapter="lora", lora_target_linear=True, max_steps=3,
                       gradient_accumulation_steps=2, chunked_cross_entropy=True)
    result = run_recipe(write_recipe(tmp_path / "r.yaml", **keys))
    assert "eval_loss_initial" in result.metrics and "eval_loss_final" in result.metrics
    assert calls == [True] * 6  # every training micro-batch (3 steps x 2), and no evaluation


def test_without_the_plugin_chunked_cross_entropy_is_refused_naming_the_disabled_plugin(monkeypatch):
    from ftcore.errors import RecipeError
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import validate
    from ftcore.recipe.load import RawRecipe

    monkeypatch.setenv("FTCORE_DISABLE_PLUGINS", "chunked_loss")
    raw = RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                     "chunked_cross_entropy": True}, None)
    with pytest.raises(RecipeError) as info:
        validate(raw, load_plugins())
    [(key, message)] = info.value.problems
    assert key == "chunked_cross_entropy"
    assert "no plugin provides" in message and "FTCORE_DISABLE_PLUGINS may provide it: chunked_loss" in message


@pytest.mark.parametrize("engine", [{"deepspeed": "zero3"}, {"fsdp": ["full_shard", "auto_wrap"]}])
def test_sharded_engines_are_refused_before_anything_loads(engine):
    from ftcore.errors import RecipeError
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import validate
    from ftcore.recipe.load import RawRecipe

    raw = RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                     "chunked_cross_entropy": True, **engine}, None)
    with pytest.raises(RecipeError) as info:
        validate(raw, load_plugins())
    assert ("chunked_cross_entropy", "does not work with DeepSpeed ZeRO-3 or FSDP yet; remove it, or use ZeRO-1/2 "
                                     "or DDP") in info.value.problems
