"""Packing benchmark: efficiency, and training tokens per second with and without packing.

    python benchmarks/packing.py [--examples 400 --sequence-len 1024 --repeats 3 --attention sdpa]

On a mixed-length set (lengths drawn log-normally, mean well under a quarter
of ``sequence_len``) and a small randomly initialised Llama on the CPU, one
run measures side by side, on the same examples and tokens:

- unpacked: batches of examples padded to their longest (ftcore's
  ``PaddingCollator``), in random order as the trainer draws them;
- unpacked, grouped by length: the same with examples sorted by length
  (``group_by_length``), the best padding can do without packing;
- packed: first-fit-decreasing bins laid out as ``[rows, sequence_len]``
  (``PackedCollator``, what ``sample_packing: true`` trains on);
- flattened: the same bins' real tokens as one padding-free row
  ``[1, tokens]`` per batch (transformers' ``DataCollatorWithFlattening`` layout).

Each layout does one forward and backward pass per batch over the whole set,
``--repeats`` times, with the layouts' batches interleaved (batch 1 of each
layout, then batch 2 of each, ...) so that other work on a shared machine hits
all of them alike; a layout's time is the sum over its batches of each batch's
fastest pass. The table gives real (non-padding) tokens per second and the
summed loss, which must agree across layouts: packing changes the speed, never
the numbers.
"""

from __future__ import annotations

import argparse
import os
import random
import time


def mixed_examples(n, sequence_len, vocab, seed=0):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        length = max(8, min(sequence_len, int(r.lognormvariate(4.6, 0.8))))
        ids = [r.randrange(3, vocab) for _ in range(length)]
        out.append({"input_ids": ids, "labels": ids})
    return out


def summed_loss(model, batch):
    import torch

    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")


def flatten(rows):
    """Packed rows -> one padding-free row (position ids still restart at each example)."""
    import torch

    ids = [t for r in rows for t in r["input_ids"]]
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([[t for r in rows for t in r["labels"]]]),
            "position_ids": torch.tensor([[p for r in rows for p in r["position_ids"]]]), "use_cache": False}


def step(model, batch):
    """One forward+backward: (seconds, summed loss)."""
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    loss = summed_loss(model, batch)
    loss.backward()
    return time.perf_counter() - start, loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--sequence-len", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=2, help="packed rows per batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"])
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftcore.data.collate import PackedCollator, PaddingCollator
    from ftcore.data.pack import pack_examples

    vocab, length = 2048, args.sequence_len
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length,
                         tie_word_embeddings=False)
    config._attn_implementation = args.attention
    model = LlamaForCausalLM(config).float().train()
    params = sum(p.numel() for p in model.parameters())

    examples = mixed_examples(args.examples, length, vocab)
    tokens = sum(len(e["input_ids"]) for e in examples)
    rows, stats = pack_examples(examples, length)
    # unpacked batches hold as many examples as the packed batches hold on average: the same tokens per step
    per_batch = max(1, round(len(examples) * args.rows / len(rows)))

    padding = PaddingCollator(0)
    shuffled = list(examples)
    random.Random(1).shuffle(shuffled)
    by_length = sorted(examples, key=lambda e: len(e["input_ids"]))
    packed_rows = list(rows)
    random.Random(1).shuffle(packed_rows)
    row_batches = [packed_rows[i:i + args.rows] for i in range(0, len(packed_rows), args.rows)]
    layouts = {
        "unpacked": [padding(shuffled[i:i + per_batch]) for i in range(0, len(shuffled), per_batch)],
        "unpacked, by length": [padding(by_length[i:i + per_batch]) for i in range(0, len(by_length), per_batch)],
        f"packed [rows, {length}]": [PackedCollator(0, length)(b) for b in row_batches],
        "flattened [1, tokens]": [flatten(b) for b in row_batches],
    }

    def slots(batches):
        return sum(b["input_ids"].numel() for b in batches)

    for batches in layouts.values():
        step(model, batches[0])  # warm-up
    fastest = {name: [float("inf")] * len(batches) for name, batches in layouts.items()}
    losses = {name: [0.0] * len(batches) for name, batches in layouts.items()}
    for _ in range(args.repeats):
        for i in range(max(len(batches) for batches in layouts.values())):
            for name, batches in layouts.items():
                if i < len(batches):
                    seconds, losses[name][i] = step(model, batches[i])
                    fastest[name][i] = min(fastest[name][i], seconds)
    times = {name: sum(values) for name, values in fastest.items()}
    losses = {name: sum(values) for name, values in losses.items()}

    print(f"model: Llama, {params / 1e6:.1f} M parameters, fp32, {args.attention}, "
          f"{torch.get_num_threads()} CPU threads; forward+backward over the whole set, "
          f"fastest of {args.repeats} per batch; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"data: {len(examples)} examples, {tokens:,} tokens, lengths {min(len(e['input_ids']) for e in examples)}"
          f"-{max(len(e['input_ids']) for e in examples)} (mean {tokens / len(examples):.0f}), sequence_len {length}")
    print(f"packing: {len(rows)} rows, efficiency {stats.efficiency:.4f} (real tokens / rows x sequence_len); "
          f"{args.rows} rows per packed batch, {per_batch} examples per unpacked batch")
    print()
    print(f"| {'layout':<22} | {'batches':>7} | {'slots':>8} | {'padding':>7} | {'seconds':>7} | {'tokens/s':>8} "
          f"| {'vs unpacked':>11} | {'summed loss':>12} |")
    print(f"|{'-' * 24}|{'-' * 8}:|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|{'-' * 12}:|{'-' * 13}:|")
    base = tokens / times["unpacked"]
    for name, batches in layouts.items():
        seconds = times[name]
        rate = tokens / seconds
        print(f"| {name:<22} | {len(batches):>7} | {slots(batches):>8,} | {1 - tokens / slots(batches):>7.1%} "
              f"| {seconds:>7.2f} | {rate:>8,.0f} | {rate / base:>10.2f}x | {losses[name]:>12.3f} |")
    packed, flat = times[f"packed [rows, {length}]"], times["flattened [1, tokens]"]
    print()
    print(f"flattened / packed time: {flat / packed:.2f} (same tokens, one row against [rows, {length}] bins)")


if __name__ == "__main__":
    main()
