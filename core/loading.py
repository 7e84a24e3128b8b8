"""Loading through transformers, shared by every plugin that loads a model family.

- ``transformers_class(name, default, key)``: a recipe's ``model_type`` /
  ``tokenizer_type`` / ``processor_type`` as a transformers class.
- ``finish_tokenizer(recipe, tokenizer, stash)``: the recipe's added tokens and
  the pad-token fallback; records the tokens new to the vocabulary as
  ``stash[NEW_TOKENS]``.
- ``from_pretrained(recipe, quantization_config, cls)``: ``cls.from_pretrained``
  with the recipe's dtype, attention kernel, revision and quantization.

Public through ``ftcore.api``; nothing here imports torch at module level.
"""

from __future__ import annotations

from ftcore.errors import FtcoreError
from ftcore.log import get_logger
from ftcore.stash import NEW_TOKENS


def transformers_class(name, default, key):
    """The transformers class called ``name`` (``default`` when unset or equal to its name)."""
    import transformers

    if not name or name == default.__name__:
        return default
    cls = getattr(transformers, name, None)
    if cls is None:
        raise FtcoreError(f"{key}: '{name}' is not a transformers class (for example {default.__name__})")
    return cls


def finish_tokenizer(recipe, tokenizer, stash=None):
    """The recipe's added tokens and the pad-token fallback (also for a processor's tokenizer)."""
    known = set(tokenizer.get_vocab())
    if recipe.special_tokens:
        tokenizer.add_special_tokens(dict(recipe.special_tokens))
    if recipe.tokens:
        tokenizer.add_tokens(list(recipe.tokens))
    # the tokens new to the vocabulary: their embeddings must be learned (prepare_model, adapters)
    if stash is not None:
        stash[NEW_TOKENS] = sorted(set(tokenizer.get_vocab()) - known, key=tokenizer.convert_tokens_to_ids)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        get_logger(__name__).warning(f"notice: the tokenizer has no pad token; using its eos token {tokenizer.eos_token!r} "
              f"for padding (padded positions are never trained). Set special_tokens.pad_token to choose.")
    return tokenizer


def from_pretrained(recipe, quantization_config, cls):
    """``cls.from_pretrained(base_model)`` with the recipe's dtype, attention and quantization."""
    import torch
    from transformers import AutoConfig

    from ftcore.device import precision, torch_dtype

    attention = recipe.attention or "sdpa"
    if attention.startswith("flash_attention") and not torch.cuda.is_available():
        raise FtcoreError(f"attn_implementation: {attention} needs a CUDA GPU; on CPU use sdpa or eager")
    dtype = precision(recipe)
    if dtype == "fp16" and recipe.adapter is None:
        dtype = "fp32"  # fp16 mixed precision keeps trainable weights in fp32
    kwargs = {"dtype": torch_dtype(dtype), "attn_implementation": attention,
              "trust_remote_code": recipe.trust_remote_code, "revision": recipe.revision_of_model}
    if recipe.base_model_config:
        kwargs["config"] = AutoConfig.from_pretrained(recipe.base_model_config,
                                                      trust_remote_code=recipe.trust_remote_code)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        return cls.from_pretrained(recipe.base_model, **kwargs)
    except OSError as exc:
        raise FtcoreError(f"base_model: cannot load '{recipe.base_model}': {exc}") from exc
