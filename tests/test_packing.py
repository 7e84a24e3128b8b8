"""Sample packing: packed examples never see each other, on every attention path.

The claims are tested as numbers, in fp32, on tiny Llama and Qwen2 models with
sdpa and eager attention: per-example losses and the gradients of the summed
loss are the same packed and unpacked (to 1e-5), evaluation loss is the same
packed or not at any batch size, and the ways of getting packing wrong
(position ids that do not restart, an all-ones attention mask, a KV cache)
are shown to give different numbers, so the tests can fail.
"""

import json
import random
from itertools import pairwise
from types import SimpleNamespace

import pytest
import torch

from conftest import alpaca_rows, write_jsonl, write_recipe

FAMILIES = ["tiny_llama", "tiny_qwen"]
ATTENTION = ["sdpa", "eager"]
SEQUENCE_LEN = 64
TOL = 1e-5


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.getfixturevalue(request.param)


def load(path, attention):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention)
    assert model.config.use_cache  # as shipped: the packed batch itself must switch the cache off
    return model


def examples(path, n=11, seed=0):
    """Examples of varied lengths (5 to 40 tokens) with partly masked labels, as prepare.py makes them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    r = random.Random(seed)
    out = []
    for row in alpaca_rows(n, seed):
        text = row["instruction"] + " " + " ".join([row["input"]] * r.randint(1, 6)) + " " + row["output"]
        ids = tokenizer(text)["input_ids"][: r.randint(5, 40)]
        cut = r.randint(1, len(ids) - 2)
        out.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return out


def collate(rows, **kwargs):
    from ftcore.data.collate import PackedCollator

    return PackedCollator(0, SEQUENCE_LEN, **kwargs)(rows)


def model_inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def token_losses(logits, labels):
    """Per-position next-token cross-entropy (0 where untrained), aligned with ``labels[..., 1:]``."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                             reduction="none")


def segments(row):
    """``(start, end)`` of each example in a packed row, from its position ids."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return list(pairwise(starts))


def packed_example_losses(model, rows, batch=None):
    """Each example's summed loss, in row order, from one packed forward."""
    batch = batch or collate(rows)
    losses = token_losses(model(**model_inputs(batch)).logits, batch["labels"])
    return [losses[r, a:b - 1].sum() for r, row in enumerate(rows) for a, b in segments(row)]


def alone_example_losses(model, rows):
    """The same examples' summed losses, each run alone (as the unpacked run sees them)."""
    out = []
    for row in rows:
        for a, b in segments(row):
            ids = torch.tensor([row["input_ids"][a:b]])
            labels = torch.tensor([[-100] + row["labels"][a + 1:b]])  # the first label is never used
            out.append(token_losses(model(input_ids=ids, use_cache=False).logits, labels).sum())
    return out


# ── (1) losses and (2) gradients: packed == unpacked ─────────────────────────


@pytest.mark.parametrize("attention", ATTENTION)
def test_per_example_losses_are_the_same_packed_and_alone(family, attention):
    from ftcore.data.pack import pack_examples

    model = load(family, attention).eval()
    data = examples(family)
    rows, stats = pack_examples(data, SEQUENCE_LEN)
    assert stats.rows < stats.examples and any(len(segments(r)) >= 3 for r in rows)  # really packed
    # the rows hold exactly the examples (tokens, and every label that is ever predicted)
    pieces = [(r["input_ids"][a:b], r["labels"][a + 1:b]) for r in rows for a, b in segments(r)]
    assert sorted(pieces) == sorted((e["input_ids"], e["labels"][1:]) for e in data)
    with torch.no_grad():
        packed, alone = packed_example_losses(model, rows), alone_example_losses(model, rows)
    assert len(packed) == stats.examples
    torch.testing.assert_close(torch.stack(packed), torch.stack(alone), rtol=0, atol=TOL)

    # the training path: the model's own loss on the packed batch is the token-weighted mean of the examples'
    batch = collate(rows)
    with torch.no_grad():
        loss = model(**batch).loss
    trained = sum(sum(1 for label in e["labels"][1:] if label != -100) for e in data)
    assert int((batch["labels"][:, 1:] != -100).sum()) == trained
    assert loss.item() == pytest.approx(float(sum(alone)) / trained, abs=TOL)


@pytest.mark.parametrize("attention", ATTENTION)
def test_gradients_of_the_summed_loss_are_the_same_packed_and_unpacked(family, attention):
    from ftcore.data.pack import pack_examples

    model = load(family, attention).train()  # no dropout in these configs; train mode as in training
    rows, _ = pack_examples(examples(family), SEQUENCE_LEN)

    def gradients(losses):
        model.zero_grad()
        torch.stack(losses).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    packed = gradients(packed_example_losses(model, rows))
    alone = gradients(alone_example_losses(model, rows))
    assert set(packed) == set(alone)
    for name in packed:
        torch.testing.assert_close(packed[name], alone[name], rtol=0, atol=TOL, msg=lambda m, name=name: f"{name}: {m}")
    assert max(g.abs().max() for g in alone.values()) > 1e-3  # the gradients are not trivially zero


# ── (3) negative controls: each way of getting it wrong is caught ─────────────


def no_restart(batch):
    """Position ids 0..L-1 along the whole row, as if the row were one text."""
    return {**batch, "position_ids": torch.arange(batch["input_ids"].shape[1]).repeat(len(batch["input_ids"]), 1)}


def ones_mask(batch):
    """An attention mask of ones: transformers then builds a plain causal mask over the whole row."""
    return {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}


def with_cache(batch):
    """No ``use_cache=False``: the model's default (a KV cache) switches packed-sequence detection off."""
    return {k: v for k, v in batch.items() if k != "use_cache"}


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("mistake", [no_restart, ones_mask, with_cache])
def test_packing_done_wrong_lets_examples_see_each_other(family, attention, mistake):
    from ftcore.data.pack import pack_examples

    model = load(family, attention).eval()
    rows, _ = pack_examples(examples(family), SEQUENCE_LEN)
    with torch.no_grad():
        alone = torch.stack(alone_example_losses(model, rows))
        right = torch.stack(packed_example_losses(model, rows))
        wrong = torch.stack(packed_example_losses(model, rows, mistake(collate(rows))))
    torch.testing.assert_close(right, alone, rtol=0, atol=TOL)
    first_in_row = [i for i, (a, _b) in enumerate(s for row in rows for s in segments(row)) if a == 0]
    later = [i for i in range(len(alone)) if i not in first_in_row]
    # the first example of each row has nothing before it; every later one is changed by the mistake
    assert (wrong[later] - alone[later]).abs().min() > 1e-3


# ── flash-attention: the boundaries reach the attention kernel ────────────────


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     **kwargs):
    """flash-attention's varlen semantics in plain PyTorch: causal attention inside each ``cu_seq_lens`` span
    of the flattened rows, and nothing else (no mask, no position ids)."""
    assert attention_mask is None
    bounds = kwargs["cu_seq_lens_q"].tolist()
    assert kwargs["max_length_q"] == max(b - a for a, b in pairwise(bounds))
    batch, heads, length, dim = query.shape
    groups = heads // key.shape[1]
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.repeat_interleave(groups, 1).transpose(1, 2).reshape(batch * length, heads, dim)
    v = value.repeat_interleave(groups, 1).transpose(1, 2).reshape(batch * length, heads, dim)
    out = torch.empty_like(q)
    for a, b in pairwise(bounds):
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True,
            scale=scaling).transpose(0, 1)
    return out.reshape(batch, length, heads, dim), None


def test_flash_attention_gets_the_example_boundaries_of_every_row(family):
    """On GPUs transformers infers flash-attention boundaries from position ids only for a single row;
    the collator passes them for ``[rows, sequence_len]`` batches. A CPU stand-in for the varlen kernel,
    which sees nothing but those boundaries, gives the unpacked losses."""
    from transformers import AttentionInterface

    from ftcore.data.pack import pack_examples

    AttentionInterface.register("ftcore_varlen_test", varlen_attention)
    model = load(family, "ftcore_varlen_test").eval()
    reference = load(family, "sdpa").eval()
    rows, _ = pack_examples(examples(family), SEQUENCE_LEN)
    batch = collate(rows, flash_attention=True)
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and int(batch["cu_seq_lens_q"][-1]) == len(rows) * SEQUENCE_LEN
    with torch.no_grad():
        packed = torch.stack(packed_example_losses(model, rows, batch))
        alone = torch.stack(alone_example_losses(reference, rows))
    torch.testing.assert_close(packed, alone, rtol=0, atol=TOL)


# ── (4) bin packing ──────────────────────────────────────────────────────────


def mixed_lengths(n=2000, capacity=2048, seed=0):
    r = random.Random(seed)
    return [max(2, min(capacity, int(r.lognormvariate(4.6, 0.9)))) for _ in range(n)]


def test_first_fit_decreasing_bins_hold_every_example_once_and_fill_the_rows():
    from ftcore.data.pack import first_fit_decreasing

    capacity = 2048
    lengths = mixed_lengths(capacity=capacity)
    assert sum(lengths) / len(lengths) < capacity / 4  # mean under a quarter of sequence_len
    assert max(lengths) > capacity / 2  # and some long ones
    bins = first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # each exactly once
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert all(b == sorted(b) for b in bins)
    assert bins == first_fit_decreasing(list(lengths), capacity)  # deterministic
    efficiency = sum(lengths) / (len(bins) * capacity)
    assert efficiency >= 0.98, efficiency
    # first fit: the example placed last (the shortest) fitted in no bin before its own
    last = max(range(len(lengths)), key=lambda i: (-lengths[i], i))
    own = next(n for n, b in enumerate(bins) if last in b)
    assert all(capacity - sum(lengths[i] for i in b) < lengths[last] for b in bins[:own])


@pytest.mark.parametrize("capacity", [8, 64, 512])
def test_bins_on_many_random_sets_respect_the_capacity(capacity):
    from ftcore.data.pack import first_fit_decreasing

    r = random.Random(capacity)
    for _ in range(50):
        lengths = [r.randint(1, capacity) for _ in range(r.randint(0, 60))]
        bins = first_fit_decreasing(lengths, capacity)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(0 < sum(lengths[i] for i in b) <= capacity for b in bins)
        assert len(bins) >= -(-sum(lengths) // capacity)
        # first fit never leaves two bins that could be merged
        loads = sorted(sum(lengths[i] for i in b) for b in bins)
        assert len(loads) < 2 or loads[0] + loads[1] > capacity


def test_an_example_longer_than_a_row_is_refused():
    from ftcore.data.pack import first_fit_decreasing

    with pytest.raises(ValueError, match="example 1 has 9 tokens"):
        first_fit_decreasing([3, 9], 8)


def test_examples_with_extras_are_never_packed():
    """An extra belongs to its one example: packed with others, its meaning would be lost without a word."""
    from ftcore.data.pack import pack_examples
    from ftcore.errors import FtcoreError

    plain = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    assert len(pack_examples(plain, 8)[0]) == 1
    weighted = [plain[0], {**plain[1], "weights": [0.5, 0.5]}]
    with pytest.raises(FtcoreError, match=r"sample_packing: the examples carry extras \(weights\) that cannot be "
                                          r"packed into shared rows; set sample_packing: false"):
        pack_examples(weighted, 8)


def test_packed_rows_and_their_batch_layout():
    from ftcore.data.pack import pack_examples

    data = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5, 6, 7], "labels": [4, 5, -100, 7]},
            {"input_ids": [8, 9], "labels": [8, 9]}]
    rows, stats = pack_examples(data, 8)
    assert rows == [{"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, 2, 3, -100, 5, -100, 7],
                     "position_ids": [0, 1, 2, 0, 1, 2, 3]},
                    {"input_ids": [8, 9], "labels": [-100, 9], "position_ids": [0, 1]}]
    assert (stats.examples, stats.rows, stats.tokens, stats.efficiency) == (3, 2, 9, 9 / 16)
    assert stats.as_dict() == {"efficiency": 0.5625, "examples": 3, "rows": 2, "tokens": 9, "sequence_len": 8}

    from ftcore.data.collate import PackedCollator

    batch = PackedCollator(0, 8, flash_attention=True)(rows)
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 0], [8, 9, 0, 0, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5, -100, 7, -100], [-100, 9] + [-100] * 6]
    # the padded tail is a sequence of its own, starting at 0
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 7, 8, 10, 16]
    assert batch["max_length_q"] == 6
    # multiples of 8 on GPUs
    assert PackedCollator(0, 6, pad_to_multiple_of=8)(rows)["input_ids"].shape == (2, 8)


def test_the_packed_collator_pads_unpacked_examples_and_refuses_a_mix():
    from ftcore.data.collate import PackedCollator, PaddingCollator

    plain = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    collator = PackedCollator(0, 8)
    for key, value in PaddingCollator(0)(plain).items():
        assert torch.equal(collator(plain)[key], value)
    with pytest.raises(ValueError, match="mixes"):
        collator([plain[0], {**plain[1], "position_ids": [0]}])


def recipe(**keys):
    base = dict(sample_packing=False, eval_sample_packing=None, sequence_len=SEQUENCE_LEN, pad_to_sequence_len=None,
                attention=None)
    return SimpleNamespace(**{**base, **keys})


def test_which_splits_are_packed_and_the_collator_the_recipe_gets(tiny_llama):
    from transformers import AutoTokenizer

    from ftcore.data.collate import PackedCollator, PaddingCollator
    from ftcore.data.pack import pack_datasets
    from ftcore.data.prepare import PreparedData
    from ftcore.plugins.huggingface import build_collator

    data = PreparedData(train=examples(tiny_llama), eval=examples(tiny_llama, 5, seed=1), stats={"train_examples": 11})
    assert pack_datasets(recipe(), data) is data
    both = pack_datasets(recipe(sample_packing=True), data)  # eval follows sample_packing, as in Axolotl
    assert all("position_ids" in r for r in both.train + both.eval)
    assert both.stats["train_examples"] == 11 and both.stats["packing"]["examples"] == 11
    assert both.stats["packing"]["eval"]["examples"] == 5
    train_only = pack_datasets(recipe(sample_packing=True, eval_sample_packing=False), data)
    assert train_only.eval is data.eval and "eval" not in train_only.stats["packing"]
    eval_only = pack_datasets(recipe(eval_sample_packing=True), data)
    assert eval_only.train is data.train and set(eval_only.stats["packing"]) == {"eval"}

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert isinstance(build_collator(recipe(), tokenizer), PaddingCollator)
    packed = build_collator(recipe(sample_packing=True), tokenizer)
    assert isinstance(packed, PackedCollator) and not packed.flash_attention
    assert build_collator(recipe(sample_packing=True, attention="flash_attention_2"), tokenizer).flash_attention


def test_packing_is_refused_on_an_attention_that_would_mix_examples():
    from ftcore.data.pack import check_attention
    from ftcore.errors import FtcoreError

    for ok in ("sdpa", "eager", "flex_attention", "flash_attention_2", "kernels-community/flash-attn3"):
        check_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation=ok)))
    with pytest.raises(FtcoreError, match="sample_packing: the model uses attention 'my_kernel'"):
        check_attention(SimpleNamespace(config=SimpleNamespace(_attn_implementation="my_kernel")))


# ── (5) evaluation loss: packed or not, any batch size ───────────────────────


@pytest.mark.parametrize("attention", ATTENTION)
def test_eval_loss_is_the_same_packed_and_unpacked_at_batch_sizes_1_and_4(family, attention):
    from transformers import AutoTokenizer

    from ftcore.data.collate import PackedCollator, PaddingCollator
    from ftcore.data.pack import pack_examples
    from ftcore.evaluation import EvalContext
    from ftcore.plugins.loss import evaluate_loss

    model = load(family, attention)
    tokenizer = AutoTokenizer.from_pretrained(family)
    data = examples(family, 23, seed=2)
    rows, stats = pack_examples(data, SEQUENCE_LEN)
    assert stats.rows >= 4
    results = {}
    for packed in (False, True):
        for batch_size in (1, 4):
            collator = PackedCollator(tokenizer.pad_token_id or 0, SEQUENCE_LEN) if packed else PaddingCollator(0)
            ctx = EvalContext(model, tokenizer, None, rows if packed else data, collator, batch_size)
            results[packed, batch_size] = evaluate_loss(ctx)
    trained = sum(sum(1 for label in e["labels"][1:] if label != -100) for e in data)
    assert {r["tokens"] for r in results.values()} == {trained}
    reference = results[False, 1]["loss"]
    for key, result in results.items():
        assert result["loss"] == pytest.approx(reference, abs=TOL), key


# ── (6) an end-to-end packed run ─────────────────────────────────────────────


def run_recipe(path):
    from ftcore.hooks import registered_recipes
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import load_raw, validate
    from ftcore.run import run

    plugins = load_plugins()
    return run(validate(load_raw(str(path), [], registered_recipes(plugins)), plugins), plugins)


def test_a_packed_run_trains_and_records_its_packing_efficiency(tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(64))
    keys = dict(base_model=str(tiny_llama), datasets=[{"path": str(data), "type": "alpaca"}], val_set_size=0.25,
                sequence_len=1024, sample_packing=True, adapter="lora", lora_target_linear=True, micro_batch_size=2,
                max_steps=8, learning_rate=5e-3, lr_scheduler="constant", eval_on_start=True, logging_steps=1)
    packed = run_recipe(write_recipe(tmp_path / "a.yaml", **keys, output_dir=str(tmp_path / "a")))
    out = capsys.readouterr().out
    assert "packing: 48 train examples -> " in out and "eval 16 -> " in out
    assert "sample_packing" not in out  # no "not implemented" notice any more

    manifest = json.loads((packed.output_dir / "run.json").read_text())
    packing = manifest["data"]["packing"]
    assert packing["examples"] == 48 and packing["rows"] < 48 and packing["sequence_len"] == 1024
    assert packing["efficiency"] == pytest.approx(packing["tokens"] / (packing["rows"] * 1024), abs=1e-4)
    assert packing["efficiency"] > 0.8 and packing["eval"]["examples"] == 16
    assert manifest["data"]["train_examples"] == 48  # examples, not rows
    m = packed.metrics
    assert m["train_loss_last"] < m["train_loss_first"] and m["eval_loss_final"] < m["eval_loss_initial"]

    # the same run evaluating unpacked: the same evaluation loss before training, and the same training
    plain_eval = run_recipe(write_recipe(tmp_path / "b.yaml", **keys, eval_sample_packing=False,
                                         output_dir=str(tmp_path / "b")))
    assert "eval" not in json.loads((plain_eval.output_dir / "run.json").read_text())["data"]["packing"]
    assert plain_eval.metrics["eval_loss_initial"] == pytest.approx(m["eval_loss_initial"], abs=TOL)
    assert plain_eval.metrics["train_loss_first"] == pytest.approx(m["train_loss_first"], abs=TOL)


def test_each_of_several_processes_gets_a_near_equal_share_of_tokens():
    """Under DDP the trainer gives every rank an equal number of rows (DistributedSampler);
    since the bins are nearly full, the real tokens per rank are near equal too."""
    from torch.utils.data import DistributedSampler

    from ftcore.data.pack import first_fit_decreasing

    capacity = 2048
    lengths = mixed_lengths(capacity=capacity)
    bins = first_fit_decreasing(lengths, capacity)
    tokens = [sum(lengths[i] for i in b) for b in bins]
    for world in (2, 4, 8):
        shares = [sum(tokens[i] for i in DistributedSampler(tokens, num_replicas=world, rank=rank, seed=3))
                  for rank in range(world)]
        assert max(shares) / min(shares) < 1.02, (world, shares)
    # the same examples unpacked, one per sampler item, are far from balanced: the check can fail
    unpacked = [sum(lengths[i] for i in DistributedSampler(lengths, num_replicas=4, rank=rank, seed=3))
                for rank in range(4)]
    assert max(unpacked) / min(unpacked) > 1.05
