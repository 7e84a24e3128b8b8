"""NEFTune (``neftune_noise_alpha``, Axolotl's key): noise on the input embeddings while training.

transformers implements it (``TrainingArguments.neftune_noise_alpha``): each training forward adds
uniform noise scaled by ``alpha / sqrt(sequence length x hidden size)`` to the input embeddings;
evaluation and generation see the model unchanged.

This built-in is named ``neftune``, as the example third-party plugin in ``examples/ftcore-neftune`` is:
an installed plugin with a built-in's name replaces that built-in (docs/plugins.md), so installing
``ftcore-neftune`` (its own noise generator, a ``neftune:`` section and a noise evaluator) swaps this
one out instead of claiming the key twice.
"""

from pydantic import Field

from ftcore.api import RecipeKeys, hookimpl

FTCORE_CONTRACT = "1"


class NEFTuneKeys(RecipeKeys):
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune noise on the input embeddings while training (transformers'); "
                                "the paper uses 5 to 15")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(NEFTuneKeys)


@hookimpl(trylast=True)
def trainer_arguments(recipe):
    if recipe.neftune_noise_alpha is not None:
        return {"neftune_noise_alpha": recipe.neftune_noise_alpha}
    return None
