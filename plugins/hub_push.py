"""``hub_model_id``: push a finished run's model (or adapter) to the Hugging Face Hub, as Axolotl does.

Before anything loads (``run_started``) the plugin checks that the Hub can be reached: not offline
(``HF_HUB_OFFLINE``) and logged in (``hf auth login`` or ``HF_TOKEN``), and says so in one
line if not, so a run never trains for hours and then cannot push. After a run that completed
(``run_finished``), the run folder is uploaded to the model repository ``hub_model_id`` (created if
missing; ``hub_private_repo: true`` makes a new one private; ``hub_revision`` names the branch,
created if missing): the model or adapter, tokenizer,
``recipe.yaml``, ``run.json``, the report and the model card, never the ``checkpoint-*`` folders or
ftcore's hidden files. Nothing local changes. A failed push is one error saying the run is saved
locally and the command that pushes it later.

``hub_strategy``: ``end`` (the default) is what ftcore does; pushing at every save
(``every_save``, ``checkpoint``, ``all_checkpoints``) is not supported and refused with
``hub_model_id``. ``push_dataset_to_hub`` is refused with the reason: ftcore's prepared data is
its own cache format, not a Hub dataset.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from ftcore.api import FtcoreError, RecipeKeys, get_logger, hookimpl

FTCORE_CONTRACT = "1"

log = get_logger(__name__)

IGNORED = ["checkpoint-*", "checkpoint-*/**", ".*", ".*/**", "*.tmp"]  # checkpoints, locks, partial files


class HubKeys(RecipeKeys):
    hub_model_id: str | None = Field(None, description="push the finished run to this Hub model repository")
    hub_strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] | None = Field(
        None, description="when to push: end (ftcore pushes once, after the run)")
    hub_private_repo: bool | None = Field(None, description="ftcore: create the Hub repository private")
    hub_revision: str | None = Field(None, description="the branch to push to (created if missing)")
    push_dataset_to_hub: str | None = Field(None, description="not supported: pushing the prepared dataset")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(HubKeys)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if recipe.push_dataset_to_hub:
        error("push_dataset_to_hub", "pushing the prepared dataset to the Hub is not supported: ftcore's prepared "
                                     "data is its own cache (dataset_prepared_path), not a Hub dataset; remove "
                                     "the key (the training is the same without it) and upload the source data "
                                     "with `hf upload --repo-type dataset`")
    if recipe.hub_model_id and recipe.hub_strategy not in (None, "end"):
        error("hub_strategy", f"ftcore pushes once, when the run completes (hub_strategy: end); pushing at every "
                              f"save ({recipe.hub_strategy}) is not supported: use hub_strategy: end or remove it")
    if recipe.hub_model_id is not None and recipe.hub_model_id.count("/") > 1:
        error("hub_model_id", f"'{recipe.hub_model_id}' is not a Hub repository id (name or owner/name)")


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _offline() -> bool:
    import huggingface_hub.constants as constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().lower() in ("1", "true", "yes", "on")


def check_hub(recipe):
    """One clear error when ``hub_model_id`` cannot be pushed from here: offline, or not logged in."""
    import huggingface_hub

    repo = recipe.hub_model_id
    if _offline():
        raise FtcoreError(f"hub_model_id: {repo} cannot be pushed: the Hub is switched off here (HF_HUB_OFFLINE); "
                          f"unset HF_HUB_OFFLINE, or remove hub_model_id and upload output_dir yourself later")
    if not huggingface_hub.get_token():
        raise FtcoreError(f"hub_model_id: pushing to {repo} needs a Hugging Face login: run `hf auth "
                          f"login` or set HF_TOKEN (a token with write access), or remove hub_model_id")
    try:
        huggingface_hub.HfApi().whoami()
    except Exception as exc:  # an expired token, no network: before training, not after it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FtcoreError(f"hub_model_id: cannot reach the Hugging Face Hub with this login to push {repo}: "
                          f"{reason}; check the network and the token (hf auth whoami), or remove "
                          f"hub_model_id") from None


def push(recipe, output_dir) -> str:
    """Upload ``output_dir`` (no checkpoints, no hidden files) to ``hub_model_id``; return the repository's URL."""
    import huggingface_hub

    repo = recipe.hub_model_id
    api = huggingface_hub.HfApi()
    try:
        url = api.create_repo(repo, repo_type="model", private=bool(recipe.hub_private_repo), exist_ok=True)
        if recipe.hub_revision:
            api.create_branch(repo, branch=recipe.hub_revision, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(output_dir), ignore_patterns=IGNORED,
                          revision=recipe.hub_revision,
                          commit_message=f"ftcore run {os.path.basename(os.path.abspath(str(output_dir)))}")
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        branch = f" --revision {recipe.hub_revision}" if recipe.hub_revision else ""
        raise FtcoreError(f"hub_model_id: the run completed and is saved in {output_dir}, but pushing it to {repo} "
                          f"failed: {reason}. Push it later with: hf upload {repo} {output_dir} "
                          f"--exclude 'checkpoint-*'{branch}") from None
    return str(getattr(url, "url", url) or f"https://huggingface.co/{repo}")


@hookimpl(trylast=True)
def run_started(recipe):
    if recipe.hub_model_id and _main_process():
        check_hub(recipe)


@hookimpl(trylast=True)
def run_finished(recipe, status):
    if status != "completed" or not recipe.hub_model_id or not _main_process():
        return
    log.info(f"pushing {recipe.output_dir} to the Hub: {recipe.hub_model_id}")
    url = push(recipe, recipe.output_dir)
    log.info(f"pushed to {url}")
