"""Built-in loading through transformers: tokenizer, causal LM, padding collator, trainer.

Every answer is ``trylast``: a plugin that loads a model family differently
(vision, a custom architecture) or trains differently (preference tuning)
answers first and this one is skipped.

Tokens the recipe adds (``special_tokens``, ``tokens``) that the vocabulary
lacked are recorded as ``stash[NEW_TOKENS]`` (``finish_tokenizer``); the
``embeddings`` plugin resizes the embeddings for them.
"""

from ftcore.api import (FtcoreError, PackedCollator, PaddingCollator, check_source, finish_tokenizer,
                        from_pretrained, hookimpl, packs, trainer_kwargs, transformers_class)

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def load_tokenizer(recipe, stash):
    from transformers import AutoTokenizer

    cls = transformers_class(recipe.tokenizer_type, AutoTokenizer, "tokenizer_type")
    source = recipe.tokenizer_config or recipe.base_model
    key = "tokenizer_config" if recipe.tokenizer_config else "base_model"
    # the first thing a run loads: offline Hub ids, custom code and broken configs are refused here
    check_source(key, source, weights=False, trust_remote_code=bool(recipe.trust_remote_code))
    try:
        tokenizer = cls.from_pretrained(source, trust_remote_code=bool(recipe.trust_remote_code),
                                        revision=recipe.revision_of_model)
    except (OSError, ValueError, TypeError) as exc:
        raise FtcoreError(f"{key}: cannot load a tokenizer from '{source}': {exc}") from exc
    return finish_tokenizer(recipe, tokenizer, stash)


@hookimpl(trylast=True)
def load_model(recipe, quantization_config):
    from transformers import AutoModelForCausalLM

    return from_pretrained(recipe, quantization_config,
                           transformers_class(recipe.model_type, AutoModelForCausalLM, "model_type"))


@hookimpl(trylast=True)
def prepare_model(model):
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False  # no KV cache while training


@hookimpl(trylast=True)
def build_collator(recipe, tokenizer):
    import torch

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


@hookimpl(trylast=True)
def build_trainer(recipe, model, tokenizer, arguments, train_dataset, eval_dataset, collator, callbacks,
                  evaluators, loss, stash):
    from ftcore.api import FtcoreTrainer

    return FtcoreTrainer(**trainer_kwargs(recipe, model, tokenizer, arguments, train_dataset, eval_dataset,
                                          collator, callbacks, evaluators, loss, stash))
