"""Sample packing: tokenized examples -> rows of at most ``sequence_len`` tokens.

``sample_packing: true`` bin-packs the training examples (first-fit
decreasing, deterministic) so a batch carries little padding. A packed row is
the examples' tokens one after another, with

- ``labels``: each example's own labels, except that the first token of every
  example gets ``-100``: nothing is predicted across an example boundary, so
  the trained tokens are exactly those of the unpacked examples;
- ``position_ids``: ``0, 1, ...`` restarting at every example, as if each ran
  alone.

``collate.PackedCollator`` lays rows out as ``[rows, sequence_len]`` without an
attention mask. transformers (5.x, ``masking_utils.find_packed_sequence_indices``)
then reads each restart of the position ids as a new sequence and builds a
block-diagonal causal mask on sdpa, eager and flex attention; on
flash-attention the collator passes the sequence boundaries (``cu_seq_lens_*``)
explicitly. Either way no token attends to another example. That detection only
happens without a KV cache, so packed batches carry ``use_cache=False``.

``eval_sample_packing`` (default: follow ``sample_packing``) packs the
evaluation split the same way; the loss evaluator's token-weighted mean is the
same packed or not.

Examples with extras (``ftcore.data``: a vision example's images, say) are
never packed: what an extra means for a row of several examples is the
plugin's to say, so packing them is an error naming the extras.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ftcore.data import IGNORE_INDEX, extras_of
from ftcore.errors import FtcoreError

# Attention implementations that keep packed examples apart: the masking ones
# detect restarts of position_ids; flash-attention gets cu_seq_lens from the collator.
PACKING_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass
class PackingStats:
    examples: int
    rows: int
    tokens: int  # real tokens, every example's length summed
    sequence_len: int

    @property
    def efficiency(self) -> float:
        """Real tokens over slots (``rows x sequence_len``): 1.0 means no padding at all."""
        return self.tokens / max(1, self.rows * self.sequence_len)

    def as_dict(self) -> dict:
        return {"efficiency": round(self.efficiency, 4), **asdict(self)}


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices into ``lengths``, each summing to at most ``capacity``.

    Longest first (ties by index), each into the first bin it fits, found in
    O(log n) with a max-tree over the bins' free space (an unopened bin is all
    free space, so "first fit" opens a new bin exactly when no open one fits).
    Deterministic; the indices in a bin are in ascending order.
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity or n < 1]
    if too_long:
        i = too_long[0]
        raise ValueError(f"example {i} has {lengths[i]} tokens; a bin holds 1 to {capacity}")
    n = len(lengths)
    size = 1
    while size < max(n, 1):
        size *= 2
    free = [capacity] * (2 * size)  # free[size + b]: free space of bin b; inner nodes: max of children
    bins: list[list[int]] = []
    for i in sorted(range(n), key=lambda i: (-lengths[i], i)):
        need, node = lengths[i], 1
        while node < size:  # the leftmost bin with room
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[node] -= need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return [sorted(members) for members in bins]


def join(examples: list[dict]) -> dict:
    """Several examples -> one packed row (``input_ids``, ``labels``, ``position_ids``)."""
    ids, labels, positions = [], [], []
    for e in examples:
        ids.extend(e["input_ids"])
        labels.append(IGNORE_INDEX)  # its first token is predicted from nothing, as unpacked
        labels.extend(e["labels"][1:])
        positions.extend(range(len(e["input_ids"])))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def pack_examples(examples: list[dict], sequence_len: int) -> tuple[list[dict], PackingStats]:
    """Examples -> packed rows of at most ``sequence_len`` tokens, and the stats; examples with extras are refused."""
    extras = sorted({key for e in examples if len(e) > 2 for key in extras_of(e)})
    if extras:
        raise FtcoreError(f"sample_packing: the examples carry extras ({', '.join(extras)}) that cannot be packed "
                          f"into shared rows; set sample_packing: false (and eval_sample_packing: false)")
    lengths = [len(e["input_ids"]) for e in examples]
    rows = [join([examples[i] for i in members]) for members in first_fit_decreasing(lengths, sequence_len)]
    return rows, PackingStats(len(examples), len(rows), sum(lengths), sequence_len)


def eval_packing(recipe) -> bool:
    """``eval_sample_packing``, or ``sample_packing`` when unset (as in Axolotl)."""
    if recipe.eval_sample_packing is None:
        return bool(recipe.sample_packing)
    return bool(recipe.eval_sample_packing)


def packs(recipe) -> bool:
    """Whether any split of this recipe is packed."""
    return bool(recipe.sample_packing) or eval_packing(recipe)


def pack_datasets(recipe, data):
    """The prepared data with the splits the recipe packs replaced by packed rows.

    ``data.stats["packing"]`` (``run.json``'s ``data.packing``) gets the
    training split's ``efficiency``, ``rows``, ``examples``, ``tokens`` and
    ``sequence_len``, and the evaluation split's under ``eval``; nothing
    packed, nothing changes.
    """
    train, evaluation, stats = data.train, data.eval, {}
    if recipe.sample_packing:
        train, train_stats = pack_examples(data.train, recipe.sequence_len)
        stats.update(train_stats.as_dict())
    if eval_packing(recipe) and data.eval:
        evaluation, eval_stats = pack_examples(data.eval, recipe.sequence_len)
        stats["eval"] = eval_stats.as_dict()
    if not stats:
        return data
    return replace(data, train=train, eval=evaluation, stats={**data.stats, "packing": stats})


def describe(packing: dict) -> str:
    """The run-start line for ``data.stats["packing"]``."""
    parts = []
    if "rows" in packing:
        parts.append(f"{packing['examples']} train examples -> {packing['rows']} rows of {packing['sequence_len']} "
                     f"tokens, efficiency {packing['efficiency']:.1%}")
    else:
        parts.append("training unpacked")
    if "eval" in packing:
        e = packing["eval"]
        parts.append(f"eval {e['examples']} -> {e['rows']} rows, efficiency {e['efficiency']:.1%}")
    return "packing: " + "; ".join(parts)


def check_attention(model) -> None:
    """Refuse packing on an attention implementation that would let packed examples see each other."""
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    if attention is None or attention in PACKING_ATTENTION or "flash" in attention:
        return
    raise FtcoreError(f"sample_packing: the model uses attention '{attention}', which does not keep packed "
                      f"examples apart; use attn_implementation: sdpa, eager or flash_attention_2, "
                      f"or set sample_packing: false")
