"""Examples -> padded batches for causal language models."""

from __future__ import annotations

from ftcore.data import IGNORE_INDEX


class PaddingCollator:
    """Pads ``input_ids`` with the pad token and ``labels`` with -100, on the right.

    ``pad_to_multiple_of`` rounds lengths up (tensor cores like multiples of
    8); ``pad_to_length`` pads every batch to one length (``pad_to_sequence_len``).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None,
                 pad_to_length: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_to_length = pad_to_length

    def __call__(self, examples):
        import torch

        longest = max(len(e["input_ids"]) for e in examples)
        length = max(longest, self.pad_to_length or 0)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PackedCollator:
    """Packed rows (``ftcore.data.pack``) -> ``[rows, sequence_len]`` batches, padding-free attention.

    Each row is padded at the tail to ``sequence_len`` (rounded up to
    ``pad_to_multiple_of``): pad tokens, labels -100, and position ids
    ``0, 1, ...`` of their own, so the padding is one more sequence that no real
    token attends to. There is no ``attention_mask``: transformers then finds
    the sequences from the restarts of ``position_ids`` and masks attention
    block-diagonally (sdpa, eager, flex). That detection is skipped when a KV
    cache exists, so the batch says ``use_cache=False`` itself instead of
    trusting the model's config. ``flash_attention=True`` adds the sequence
    boundaries flash-attention's varlen kernel takes (``cu_seq_lens_q/_k``
    over the flattened rows, ``max_length_q/_k``): transformers infers them from
    position ids only for a batch of one row.

    Examples without ``position_ids`` (an unpacked split, e.g. evaluation with
    ``eval_sample_packing: false``) go to ``unpacked``.
    """

    def __init__(self, pad_token_id: int, sequence_len: int, pad_to_multiple_of: int | None = None,
                 flash_attention: bool = False, unpacked=None):
        self.pad_token_id = pad_token_id
        self.length = sequence_len
        if pad_to_multiple_of:
            self.length = -(-sequence_len // pad_to_multiple_of) * pad_to_multiple_of
        self.flash_attention = flash_attention
        self.unpacked = unpacked or PaddingCollator(pad_token_id, pad_to_multiple_of)

    def __call__(self, examples):
        import torch

        packed = ["position_ids" in e for e in examples]
        if not any(packed):
            return self.unpacked(examples)
        if not all(packed):
            raise ValueError("a batch mixes packed rows and unpacked examples")
        rows, length = len(examples), self.length
        ids = torch.full((rows, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((rows, length), IGNORE_INDEX, dtype=torch.long)
        positions = torch.arange(length, dtype=torch.long).repeat(rows, 1)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            if n > length:
                raise ValueError(f"a packed row has {n} tokens, more than sequence_len {length}")
            ids[row, :n] = torch.tensor(example["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(example["labels"], dtype=torch.long)
            positions[row, :n] = torch.tensor(example["position_ids"], dtype=torch.long)
            positions[row, n:] = torch.arange(length - n, dtype=torch.long)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions, "use_cache": False}
        if self.flash_attention:
            batch.update(sequence_boundaries(positions))
        return batch


def sequence_boundaries(position_ids) -> dict:
    """flash-attention varlen arguments for ``[rows, length]`` position ids flattened into one row.

    A sequence starts wherever the position id is 0 (every example, every
    padded tail, and so every row).
    """
    import torch

    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().view(-1)
    cu = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
