"""Weights & Biases tracking: Axolotl's ``wandb_*`` keys.

``wandb_project`` turns it on: the run reports to wandb through transformers'
own integration, named ``wandb_name`` (the ``trackers`` plugin, which alone sets
``report_to`` and ``run_name``, reads both); the other keys become the
environment variables that integration reads, set for the run and put back at
its end. wandb itself is an optional install (``pip install 'ftcore[wandb]'``);
a recipe that asks for it without it installed stops at validation (``trackers``).
"""

from __future__ import annotations

from pydantic import Field

from ftcore.api import RecipeKeys, StashKey, hookimpl

FTCORE_CONTRACT = "1"

ENVIRONMENT = (("wandb_project", "WANDB_PROJECT"), ("wandb_entity", "WANDB_ENTITY"),
               ("wandb_watch", "WANDB_WATCH"), ("wandb_log_model", "WANDB_LOG_MODEL"),
               ("wandb_run_id", "WANDB_RUN_ID"), ("wandb_mode", "WANDB_MODE"))

# the environment as it was before run_started, put back by run_finished
SAVED: StashKey[dict] = StashKey("wandb.saved_environment", "WANDB_* variables before the run")


class WandbKeys(RecipeKeys):
    """Axolotl's tracking keys (top level)."""

    wandb_project: str | None = Field(None, description="report the run to this Weights & Biases project")
    wandb_entity: str | None = Field(None, description="the wandb team or user")
    wandb_name: str | None = Field(None, description="the run's name in wandb")
    wandb_run_id: str | None = Field(None, description="resume or name this wandb run id")
    wandb_watch: str | None = Field(None, description="wandb.watch mode: gradients, parameters, all, false")
    wandb_log_model: str | None = Field(None, description="upload checkpoints: end, checkpoint, false")
    wandb_mode: str | None = Field(None, description="online, offline or disabled")


def environment(recipe) -> dict:
    """Environment variables the wandb integration reads."""
    return {var: str(getattr(recipe, key)) for key, var in ENVIRONMENT if getattr(recipe, key)}


@hookimpl(trylast=True)
def recipe_keys(register):
    register(WandbKeys)


@hookimpl(trylast=True)
def run_started(recipe, stash):
    if not recipe.wandb_project:
        return
    import os

    wanted = environment(recipe)
    stash[SAVED] = {var: os.environ.get(var) for var in wanted}
    os.environ.update(wanted)


@hookimpl(trylast=True)
def run_finished(stash):
    import os

    for var, value in stash.get(SAVED, {}).items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
