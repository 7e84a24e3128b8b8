"""Built-in loading through transformers: tokenizer, causal LM, padding collator.

Every hook is ``trylast``: a plugin that loads a model family differently
(vision, a custom architecture) answers first and this one is skipped.

Tokens the recipe adds (``special_tokens``, ``tokens``) that the vocabulary
lacked are recorded as ``tokenizer.ftcore_new_tokens``; ``prepare_model``
resizes the embeddings when needed and records their ids as
``model.ftcore_new_token_ids``, which an adapter reads to train the embedding
and output layers (``lora.py``).
"""

from ftcore import FtcoreError, hookimpl

FTCORE_CONTRACT = "1"


def _transformers_class(name, default, key):
    import transformers

    if not name or name == default.__name__:
        return default
    cls = getattr(transformers, name, None)
    if cls is None:
        raise FtcoreError(f"{key}: '{name}' is not a transformers class (for example {default.__name__})")
    return cls


@hookimpl(trylast=True)
def load_tokenizer(recipe):
    from transformers import AutoTokenizer

    cls = _transformers_class(recipe.tokenizer_type, AutoTokenizer, "tokenizer_type")
    source = recipe.tokenizer_config or recipe.base_model
    try:
        tokenizer = cls.from_pretrained(source, trust_remote_code=recipe.trust_remote_code,
                                        revision=recipe.revision_of_model)
    except OSError as exc:
        key = "tokenizer_config" if recipe.tokenizer_config else "base_model"
        raise FtcoreError(f"{key}: cannot load a tokenizer from '{source}': {exc}") from exc
    return finish_tokenizer(recipe, tokenizer)


def finish_tokenizer(recipe, tokenizer):
    """The recipe's added tokens and the pad-token fallback (also for a processor's tokenizer: vision.py)."""
    known = set(tokenizer.get_vocab())
    if recipe.special_tokens:
        tokenizer.add_special_tokens(dict(recipe.special_tokens))
    if recipe.tokens:
        tokenizer.add_tokens(list(recipe.tokens))
    # the tokens new to the vocabulary: their embeddings must be learned (prepare_model, adapters)
    tokenizer.ftcore_new_tokens = sorted(set(tokenizer.get_vocab()) - known, key=tokenizer.convert_tokens_to_ids)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        print(f"notice: the tokenizer has no pad token; using its eos token {tokenizer.eos_token!r} "
              f"for padding (padded positions are never trained). Set special_tokens.pad_token to choose.")
    return tokenizer


@hookimpl(trylast=True)
def load_model(recipe, quantization_config):
    from transformers import AutoModelForCausalLM

    return from_pretrained(recipe, quantization_config,
                           _transformers_class(recipe.model_type, AutoModelForCausalLM, "model_type"))


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


@hookimpl(trylast=True)
def prepare_model(recipe, model, tokenizer):
    embeddings = model.get_input_embeddings()
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        print(f"notice: resizing token embeddings {embeddings.num_embeddings} -> {len(tokenizer)} "
              f"for the added tokens")
        model.resize_token_embeddings(len(tokenizer))
    new_tokens = getattr(tokenizer, "ftcore_new_tokens", None)
    if new_tokens:  # for adapters: these rows are untrained (lora.py trains the embeddings then)
        model.ftcore_new_token_ids = tokenizer.convert_tokens_to_ids(new_tokens)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False  # no KV cache while training


@hookimpl(trylast=True)
def build_collator(recipe, tokenizer):
    import torch

    from ftcore.data.collate import PackedCollator, PaddingCollator
    from ftcore.data.pack import packs

    multiple = 8 if torch.cuda.is_available() else None
    padding = PaddingCollator(
        tokenizer.pad_token_id,
        pad_to_multiple_of=multiple,
        pad_to_length=recipe.sequence_len if recipe.pad_to_sequence_len else None,
    )
    if not packs(recipe):
        return padding
    # packed rows -> [rows, sequence_len]; an unpacked split (say eval_sample_packing: false) is padded
    return PackedCollator(tokenizer.pad_token_id, recipe.sequence_len, pad_to_multiple_of=multiple,
                          flash_attention="flash" in (recipe.attention or ""), unpacked=padding)
