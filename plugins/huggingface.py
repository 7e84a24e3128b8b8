"""Built-in loading through transformers: tokenizer, causal LM, padding collator, trainer.

Every answer is ``trylast``: a plugin that loads a model family differently
(vision, a custom architecture) or trains differently (preference tuning)
answers first and this one is skipped.

Tokens the recipe adds (``special_tokens``, ``tokens``) that the vocabulary
lacked are recorded as ``stash[NEW_TOKENS]`` (``finish_tokenizer``); the
``embeddings`` plugin resizes the embeddings for them.

``overrides_of_model_config`` (Axolotl's name; its older spelling ``model_config`` is a name
pydantic reserves, so the core would have to rename it): attributes set on the base model's
configuration before the model is built
(``rope_scaling``, ``attention_dropout``, ``output_router_logits``, ...), as Axolotl does. They
apply wherever this plugin loads the model: training, and ``ftcore eval``/``generate``/``chat``.
"""

from typing import Any

from pydantic import Field

from ftcore.api import (FtcoreError, PackedCollator, PaddingCollator, RecipeKeys, check_source, finish_tokenizer,
                        from_pretrained, get_logger, hookimpl, packs, trainer_kwargs, transformers_class)

FTCORE_CONTRACT = "1"

log = get_logger(__name__)


class ConfigOverrideKeys(RecipeKeys):
    overrides_of_model_config: dict[str, Any] | None = Field(
        None, description="attributes set on the base model's config before it loads (Axolotl's name)")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(ConfigOverrideKeys)


def config_overrides(recipe) -> dict:
    """What ``overrides_of_model_config`` sets (empty when unset)."""
    return dict(recipe.get("overrides_of_model_config") or {})


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

    cls = transformers_class(recipe.model_type, AutoModelForCausalLM, "model_type")
    overrides = config_overrides(recipe)
    if not overrides:
        return from_pretrained(recipe, quantization_config, cls)
    return load_with_config_overrides(recipe, quantization_config, cls, overrides)


def load_with_config_overrides(recipe, quantization_config, cls, overrides: dict):
    """The base model built from its config with ``overrides`` set: the changed config is written to a
    temporary folder and loaded as ``base_model_config`` would be (the weights still come from ``base_model``)."""
    import tempfile

    from transformers import AutoConfig

    source = recipe.base_model_config or recipe.base_model
    key = "base_model_config" if recipe.base_model_config else "base_model"
    check_source(key, source, weights=False, trust_remote_code=bool(recipe.trust_remote_code))
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=bool(recipe.trust_remote_code),
                                            revision=None if recipe.base_model_config else recipe.revision_of_model)
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"{key}: cannot load the model configuration from '{source}': {exc}") from exc
    unknown = sorted(name for name in overrides if not hasattr(config, name))
    if unknown:
        log.warning(f"notice: overrides_of_model_config sets {', '.join(unknown)}, which {type(config).__name__} does not "
                    f"define; set anyway (the model may ignore it)")
    for name, value in overrides.items():
        setattr(config, name, value)
    log.info(f"overrides_of_model_config: {', '.join(f'{k}={v!r}' for k, v in overrides.items())}")
    with tempfile.TemporaryDirectory(prefix="ftcore-config-") as folder:
        config.save_pretrained(folder)
        return from_pretrained(recipe.model_copy(update={"base_model_config": folder}), quantization_config, cls)


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
