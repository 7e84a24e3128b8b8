"""Chunked cross-entropy: the training loss without the full logits tensor.

A causal LM's last step projects every position onto the vocabulary. With
Llama 3's 128,256 tokens that tensor is the largest thing a LoRA or QLoRA
step allocates: at 4,096 tokens the bf16 logits, their fp32 copy for the
loss, the log-softmax and the gradients of each come to 3 to 4 GB, more
than the 4-bit weights of a 3B model.

``chunked_cross_entropy: true`` makes the model return its final hidden
states instead (the output head is bypassed for the training forward only),
then projects and scores the trained positions a chunk at a time. Each chunk
is checkpointed, so its logits are freed after the forward and recomputed
in the backward: at most one chunk's logits exist at once. Positions whose
label is -100 (prompts, padding, the first token of each packed example) are
never projected at all.

The loss is the same sum over trained tokens divided by the number of trained
tokens in the accumulated batch, so it equals the unchunked loss (tested to
float precision, gradients included). Evaluation and generation use the
model unchanged.

It needs an architecture whose logits are exactly ``head(final hidden
state)`` (no soft-capping or scaling after the head): ``SUPPORTED``.

A plugin on the ``training_loss`` seam: it owns the two recipe keys, refuses
the sharded engines at validation, and answers ``training_loss`` with a
``ChunkedLoss`` when ``chunked_cross_entropy: true``.
"""

from __future__ import annotations

import contextlib

from pydantic import Field

from ftcore.api import IGNORE_INDEX, FtcoreError, RecipeKeys, hookimpl

FTCORE_CONTRACT = "1"

# model_type values whose forward ends in plain `logits = lm_head(hidden)`
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


class ChunkedLossKeys(RecipeKeys):
    chunked_cross_entropy: bool = Field(False, description="score the loss a chunk of positions at a time, never "
                                                           "holding the whole vocabulary x sequence logits")
    chunked_cross_entropy_num_chunks: int = Field(8, ge=1, description="chunks for chunked_cross_entropy")


SHARDED = "does not work with DeepSpeed ZeRO-3 or FSDP yet; remove it, or use ZeRO-1/2 or DDP"


def check_supported(model) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED:
        raise FtcoreError(f"chunked_cross_entropy supports model types {', '.join(SUPPORTED)}, not {model_type!r}; "
                          "remove chunked_cross_entropy for this model")


class ChunkedLoss:
    """The chunked loss, and the head bypass it needs.

    ``training_loss(model, inputs, num_items_in_batch) -> (loss, outputs)`` is the answer to the
    hook: the forward runs inside ``hidden_states()`` (the head returns its input), then
    ``self(outputs, labels, num_items_in_batch)`` projects and scores the trained positions.
    """

    def __init__(self, model, num_chunks: int = 8):
        check_supported(model)
        self.head = model.get_output_embeddings()
        self.num_chunks = num_chunks

    @contextlib.contextmanager
    def hidden_states(self):
        """Within this block the output head returns its input: ``outputs.logits`` are the hidden states."""
        self.head.forward = _identity
        try:
            yield
        finally:
            del self.head.forward

    def _project_loss(self, hidden, targets):
        import torch.nn.functional as F

        logits = type(self.head).forward(self.head, hidden)  # the class's forward: never the bypass
        return F.cross_entropy(logits.float(), targets, reduction="sum")

    def training_loss(self, model, inputs, num_items_in_batch=None):
        """What ``training_loss`` returns: the forward with the head bypassed, then the chunked loss."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        with self.hidden_states():  # the head is bypassed for this forward only
            outputs = model(**inputs)
        return self(outputs, labels, num_items_in_batch), outputs

    def __call__(self, outputs, labels, num_items_in_batch=None):
        """The loss of a forward run inside ``hidden_states()``."""
        import torch
        import torch.nn.functional as F
        from torch.utils.checkpoint import checkpoint

        hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        width = getattr(self.head, "in_features", None)
        if width is not None and hidden.size(-1) != width:
            raise RuntimeError("chunked_cross_entropy: the model returned logits, not hidden states; "
                               "the forward must run inside ChunkedLoss.hidden_states()")
        targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(hidden.device)  # position t predicts t+1
        keep = targets != IGNORE_INDEX
        hidden, targets = hidden[keep], targets[keep]  # only trained positions are projected
        total = hidden.new_zeros((), dtype=torch.float32)
        if targets.numel():
            size = -(-targets.numel() // self.num_chunks)
            for h, t in zip(hidden.split(size), targets.split(size)):
                total = total + checkpoint(self._project_loss, h, t, use_reentrant=False)
        else:
            total = total + hidden.sum() * 0.0  # keep the graph connected: every rank must backward
        count = num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1)
        if torch.is_tensor(count):
            count = count.to(total.device)
        return total / count


def _identity(hidden):
    return hidden


@hookimpl(trylast=True)
def recipe_keys(register):
    register(ChunkedLossKeys)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if not recipe.chunked_cross_entropy:
        return
    if recipe.get("fsdp") or recipe.get("fsdp_config") or recipe.get("deepspeed") in ("zero3", "zero3_offload"):
        error("chunked_cross_entropy", SHARDED)


@hookimpl(trylast=True)
def training_loss(recipe, model):
    if not recipe.chunked_cross_entropy:
        return None
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled() or recipe.get("fsdp") or recipe.get("fsdp_config"):
        # the chunks call the head's weights directly, which ZeRO-3 and FSDP keep sharded outside its forward
        raise FtcoreError(f"chunked_cross_entropy {SHARDED}")
    return ChunkedLoss(model, recipe.chunked_cross_entropy_num_chunks).training_loss
