"""Full fine-tuning: no ``adapter`` key. Every weight trains, or only those
matching ``unfrozen_parameters`` (regexes over parameter names), except the
modules a model family keeps frozen (``stash[FROZEN_MODULES]``: a vision
model's vision tower, say)."""

import re
from pathlib import Path

from pydantic import Field

from ftcore.api import FROZEN_MODULES, FtcoreError, RecipeKeys, get_logger, hookimpl

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
    log.debug(f"full fine-tuning: training {trainable:,} of {total:,} parameters")  # the summary shows it
    return model


@hookimpl(trylast=True)
def load_trained_weights(recipe, model, run_dir):
    """A finished full fine-tuning run: the model saved in the run folder, with the base's class and dtype.

    The base that was loaded only tells the class, precision and attention kernel (a vision model's
    class, say); the weights come from ``run_dir``. Memory peaks at two copies while both exist.
    """
    if recipe.adapter is not None:
        return None
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not any(run_dir.glob("*.safetensors")):
        raise FtcoreError(f"{run_dir} has no fine-tuned model (config.json and *.safetensors): the full "
                          f"fine-tuning run saved none there, or the files were removed")
    attention = getattr(model.config, "_attn_implementation", None)
    kwargs = {"attn_implementation": attention} if attention else {}
    return type(model).from_pretrained(str(run_dir), dtype=model.dtype, trust_remote_code=recipe.trust_remote_code,
                                       **kwargs)
