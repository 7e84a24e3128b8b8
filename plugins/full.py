"""Full fine-tuning: no ``adapter`` key. Every weight trains, or only those
matching ``unfrozen_parameters`` (regexes over parameter names)."""

import re

from ftcore import hookimpl

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for i, pattern in enumerate(recipe.unfrozen_parameters or []):
        try:
            re.compile(pattern)
        except re.error as exc:
            error(f"unfrozen_parameters[{i}]", f"not a regular expression: {exc}")


@hookimpl(trylast=True)
def inject_adapter(recipe, model):
    if recipe.adapter is not None:
        return None
    patterns = [re.compile(p) for p in recipe.unfrozen_parameters or []]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not patterns or any(p.match(name) for p in patterns))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"full fine-tuning: training {trainable:,} of {total:,} parameters")
    return model
