"""LoRA through peft: ``adapter: lora``.

Target selection: ``lora_target_modules`` (names or one regex), or
``lora_target_linear: true`` for every linear layer except the output head,
or peft's default for the architecture when neither is set.
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


def lora_config(recipe, model):
    from peft import LoraConfig, TaskType

    if recipe.lora_target_linear:
        targets = linear_layer_names(model)
    else:
        targets = recipe.lora_target_modules  # a list, one regex string, or None: peft's default
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        modules_to_save=recipe.lora_modules_to_save,
        fan_in_fan_out=bool(recipe.lora_fan_in_fan_out),
        use_dora=bool(recipe.peft_use_dora),
        use_rslora=bool(recipe.peft_use_rslora),
        layers_to_transform=recipe.peft_layers_to_transform,
    )


@hookimpl(trylast=True)
def inject_adapter(recipe, model):
    if recipe.adapter != "lora":
        return None
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
    print(f"lora: r={recipe.lora_r} alpha={recipe.lora_alpha} on "
          f"{sorted(peft_model.peft_config['default'].target_modules)}; "
          f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return peft_model
