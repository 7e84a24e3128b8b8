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
