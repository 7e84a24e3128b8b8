"""Full fine-tuning: no ``adapter`` key. Every weight trains, or only those
matching ``unfrozen_parameters`` (regexes over parameter names), except the
modules a model family keeps frozen (``stash[FROZEN_MODULES]``: a vision
model's vision tower, say)."""

import re

from pydantic import Field

from ftcore.api import FROZEN_MODULES, RecipeKeys, get_logger, hookimpl

FTCORE_CONTRACT = "1"

log = get_logger(__name__)


class FullKeys(RecipeKeys):
    unfrozen_parameters: list[str] | None = Field(None, description="full fine-tuning: regexes of parameters to train")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(FullKeys)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for i, pattern in enumerate(recipe.unfrozen_parameters or []):
        try:
            re.compile(pattern)
        except re.error as exc:
            error(f"unfrozen_parameters[{i}]", f"not a regular expression: {exc}")


@hookimpl(trylast=True)
def inject_adapter(recipe, model, stash):
    if recipe.adapter is not None:
        return None
    patterns = [re.compile(p) for p in recipe.unfrozen_parameters or []]
    frozen = [re.compile(p) for p in stash.get(FROZEN_MODULES, [])]  # a model family's modules that stay frozen
    for name, parameter in model.named_parameters():
        trains = not patterns or any(p.match(name) for p in patterns)
        parameter.requires_grad_(trains and not any(f.search(name) for f in frozen))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(f"full fine-tuning: training {trainable:,} of {total:,} parameters")
    return model
