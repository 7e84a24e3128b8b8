"""LoRA through peft: ``adapter: lora``.

Target selection: ``lora_target_modules`` (names or one regex), or
``lora_target_linear: true`` for every linear layer except the output head,
or, when neither is set, the model's ``ftcore_lora_targets`` (set by a plugin's
``prepare_model``) or peft's default for the architecture. A model's
``ftcore_lora_scope`` (a module-path regex, e.g. the language model of a
vision model, vision.py) keeps listed names inside it.

New tokens: when the recipe's ``special_tokens`` or ``tokens`` added tokens the
vocabulary lacked (``model.ftcore_new_token_ids``, set by the huggingface
plugin), their embedding rows are untrained, and low-rank updates of the
attention and MLP layers cannot teach the model to read or write them. The
input embeddings and the output layer are then added to ``modules_to_save``
(trained in full and saved with the adapter), with a notice saying so.
"""

from ftcore import FtcoreError, hookimpl

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if recipe.adapter is None:
        for key in ("lora_target_modules", "lora_target_linear", "lora_model_dir", "lora_modules_to_save"):
            if getattr(recipe, key):
                error(key, "is set but adapter is absent (full fine-tuning); set adapter: lora, or remove it")
    elif recipe.unfrozen_parameters:
        error("unfrozen_parameters", "applies to full fine-tuning only; with an adapter, train extra modules "
                                     "with lora_modules_to_save")


def linear_layer_names(model) -> list[str]:
    """Leaf names of every linear layer, except the output head."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for full_name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__ and hasattr(module, "weight"):
            names.add(full_name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return sorted(names)


def embedding_layer_names(model) -> list[str]:
    """Leaf names of the input embeddings and the output layer (``embed_tokens``, ``lm_head``)."""
    layers = [layer for layer in (model.get_input_embeddings(), model.get_output_embeddings()) if layer is not None]
    names = []
    for full_name, module in model.named_modules():
        if any(module is layer for layer in layers):
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def modules_to_save(recipe, model) -> list[str] | None:
    """``lora_modules_to_save``, plus the embedding and output layers when the recipe added tokens."""
    chosen = list(recipe.lora_modules_to_save or [])
    new_ids = getattr(model, "ftcore_new_token_ids", None)
    if not new_ids:
        return chosen or None
    added = [name for name in embedding_layer_names(model) if name not in chosen]
    if added:
        print(f"notice: the recipe added {len(new_ids)} token(s) the vocabulary lacked (special_tokens / tokens); "
              f"under LoRA their embeddings would stay untrained, so {' and '.join(added)} train in full and are "
              f"saved with the adapter (as if listed in lora_modules_to_save); the adapter grows accordingly")
    return chosen + added


def lora_config(recipe, model):
    from peft import LoraConfig, TaskType

    if recipe.lora_target_linear:
        targets = linear_layer_names(model)
    else:  # a list, one regex string, or None: the model's own default (below), else peft's
        targets = recipe.lora_target_modules or getattr(model, "ftcore_lora_targets", None)
    scope = getattr(model, "ftcore_lora_scope", None)  # a module path adapters stay under (vision.py)
    if scope and isinstance(targets, list):
        import re

        targets = rf"{scope}\.(.*\.)?({'|'.join(re.escape(name) for name in targets)})"
    saved = modules_to_save(recipe, model)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        modules_to_save=saved,
        ensure_weight_tying=tied and bool(saved),  # tied input and output embeddings stay one matrix
        fan_in_fan_out=bool(recipe.lora_fan_in_fan_out),
        use_dora=bool(recipe.peft_use_dora),
        use_rslora=bool(recipe.peft_use_rslora),
        layers_to_transform=recipe.peft_layers_to_transform,
    )


@hookimpl(trylast=True)
def inject_adapter(recipe, model):
    if recipe.adapter != "lora":
        return None
    return wrap(recipe, model)


def wrap(recipe, model):
    """The model under LoRA as the recipe configures it (also ``adapter: qlora``, on a 4-bit base: qlora.py)."""
    from peft import PeftModel, get_peft_model

    if recipe.lora_model_dir:
        try:
            peft_model = PeftModel.from_pretrained(model, recipe.lora_model_dir, is_trainable=True)
        except (OSError, ValueError) as exc:
            raise FtcoreError(f"lora_model_dir: cannot load an adapter from '{recipe.lora_model_dir}': {exc}") from exc
    else:
        try:
            peft_model = get_peft_model(model, lora_config(recipe, model))
        except ValueError as exc:
            raise FtcoreError(f"lora_target_modules: {exc}") from exc
    trainable, total = peft_model.get_nb_trainable_parameters()
    targets = peft_model.peft_config["default"].target_modules
    print(f"{recipe.adapter}: r={recipe.lora_r} alpha={recipe.lora_alpha} on "
          f"{targets if isinstance(targets, str) else sorted(targets)}; "
          f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return peft_model
