"""The ``loss`` evaluator: loss and perplexity on the validation split.

The loss is the token-weighted mean over the whole split (sum of every
trained token's cross-entropy / number of trained tokens), so it does not
depend on the evaluation batch size, on padding, or on packing (packing
labels -100 only the first token of each example, which is never predicted).
"""

import math

from ftcore.api import IGNORE_INDEX, hookimpl

FTCORE_CONTRACT = "1"


def token_losses(model, batch):
    """Sum of next-token cross-entropy over trained positions, and their count."""
    import torch

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["use_cache"] = False  # no KV cache: packed batches (position_ids, no attention mask) need that too
    logits = model(**inputs).logits
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return total, int((shift_labels != IGNORE_INDEX).sum())


def evaluate_loss(ctx):
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in ctx.batches():
            batch_total, batch_count = token_losses(ctx.model, batch)
            total += float(batch_total)
            count += batch_count
    total, count = ctx.reduce_sum(total, count)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": count}


@hookimpl(trylast=True)
def register_evaluators(register):
    register("loss", evaluate_loss)
