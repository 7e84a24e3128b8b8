"""Experiment trackers: ``report_to`` and Axolotl's tracker keys, through transformers' own integrations.

Which trackers a run reports to (``trackers(recipe)``):

- ``report_to``: ``tensorboard``, ``mlflow``, ``wandb``, a list of them, or ``none``;
- ``use_tensorboard: true`` adds TensorBoard (event files under ``<output_dir>/runs/``);
- ``use_mlflow: true`` or ``mlflow_tracking_uri`` adds MLflow (without a URI, in the recipe or
  ``MLFLOW_TRACKING_URI``: the folder ``./mlruns``), with ``mlflow_experiment_name``,
  ``mlflow_run_name`` and ``hf_mlflow_log_artifacts`` (upload the run folder at the end);
- ``wandb_project`` adds Weights & Biases (its ``wandb_*`` keys belong to the ``wandb`` plugin,
  read here with ``recipe.get``).

This plugin alone sets ``report_to`` and ``run_name`` (``TrainingArguments``: the trainer's callbacks
for TensorBoard, MLflow and wandb do the reporting); the settings those callbacks read from the
environment (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, ``HF_MLFLOW_LOG_ARTIFACTS``, and
``MLFLOW_ALLOW_FILE_STORE`` for a local folder or ``file:`` URI) are set in ``run_started`` and put back in ``run_finished``. Each tracker's library is an optional install; a
recipe asking for one that is missing stops at validation with the command that installs it
(``wandb_project`` alone: when the run starts, so such a recipe still validates where wandb is absent).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ftcore.api import FtcoreError, RecipeKeys, StashKey, hookimpl

FTCORE_CONTRACT = "1"

TRACKERS = ("tensorboard", "mlflow", "wandb")
# tracker -> (modules any of which provides it, the install command)
LIBRARIES = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install 'ftcore[tensorboard]'"),
             "mlflow": (("mlflow",), "pip install 'ftcore[mlflow]'"),
             "wandb": (("wandb",), "pip install 'ftcore[wandb]'")}

SAVED: StashKey[dict] = StashKey("trackers.saved_environment", "MLFLOW_*/HF_MLFLOW_* variables before the run")
STARTED: StashKey[list] = StashKey("trackers.reporting", "the trackers this run reports to")


class TrackerKeys(RecipeKeys):
    """``report_to`` and Axolotl's TensorBoard and MLflow keys (top level)."""

    report_to: list[Literal["tensorboard", "mlflow", "wandb", "none"]] | None = Field(
        None, description="trackers to report to: tensorboard, mlflow, wandb (a list or one), or none")
    use_tensorboard: bool | None = Field(None, description="report to TensorBoard (event files in output_dir/runs)")
    use_mlflow: bool | None = Field(None, description="report to MLflow")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI (a folder, file:, sqlite:, http:)")
    mlflow_experiment_name: str | None = Field(None, description="MLflow experiment (created when missing)")
    mlflow_run_name: str | None = Field(None, description="the run's name in MLflow")
    hf_mlflow_log_artifacts: bool | None = Field(None, description="upload output_dir to MLflow at the end")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, str) else value


def trackers(recipe) -> list[str]:
    """The trackers the recipe asks for, in ``TRACKERS`` order (``[]`` for none)."""
    wanted = set(recipe.report_to or ()) - {"none"}
    if recipe.use_tensorboard:
        wanted.add("tensorboard")
    if recipe.use_mlflow or recipe.mlflow_tracking_uri:
        wanted.add("mlflow")
    if recipe.get("wandb_project"):
        wanted.add("wandb")
    return [name for name in TRACKERS if name in wanted]


def _asked_by(recipe, name: str) -> str:
    """The recipe key that turned tracker ``name`` on (for messages)."""
    if name in (recipe.report_to or ()):
        return "report_to"
    return {"tensorboard": "use_tensorboard", "wandb": "wandb_project"}.get(
        name, "use_mlflow" if recipe.use_mlflow else "mlflow_tracking_uri")


def installed(name: str) -> bool:
    import importlib.util

    return any(importlib.util.find_spec(module) is not None for module in LIBRARIES[name][0])


def missing(name: str) -> str:
    return f"reporting to {name} needs the {LIBRARIES[name][0][0]} library, which is not installed: {LIBRARIES[name][1]}"


def environment(recipe) -> dict:
    """The variables transformers' MLflow callback reads."""
    import os

    if "mlflow" not in trackers(recipe):
        return {}
    # no URI anywhere: MLflow 3 would pick sqlite:///mlflow.db, which needs a database library that
    # mlflow-skinny lacks (a traceback at the first step); a ./mlruns folder works with every install
    uri = recipe.mlflow_tracking_uri or (None if os.environ.get("MLFLOW_TRACKING_URI") else DEFAULT_MLFLOW_STORE)
    env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": recipe.mlflow_experiment_name,
           "HF_MLFLOW_LOG_ARTIFACTS": None if recipe.hf_mlflow_log_artifacts is None
           else str(recipe.hf_mlflow_log_artifacts).lower()}
    if _file_store(uri):  # MLflow 3 refuses its file store unless told it is wanted
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return {key: value for key, value in env.items() if value is not None}


DEFAULT_MLFLOW_STORE = "mlruns"  # in the current folder, as MLflow 2 did


def _file_store(uri: str | None) -> bool:
    """A local folder or ``file:`` URI (what mlflow-skinny can write without a database library)."""
    import re

    return bool(uri) and (uri.startswith("file:") or not re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri))


@hookimpl(trylast=True)
def recipe_keys(register):
    register(TrackerKeys)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if "none" in (recipe.report_to or ()):
        others = [n for n in recipe.report_to if n != "none"]
        if others:
            error("report_to", f"'none' cannot be combined with {', '.join(others)}: list the trackers, or only none")
        for key in ("use_tensorboard", "use_mlflow", "mlflow_tracking_uri"):
            if getattr(recipe, key):
                error(key, f"report_to: none turns trackers off, and {key} turns one on: remove one of them")
    for name in trackers(recipe):
        if not installed(name) and _asked_by(recipe, name) != "wandb_project":  # that one: when the run starts
            error(_asked_by(recipe, name), missing(name))
    names = {recipe.mlflow_run_name, recipe.get("wandb_name")} - {None}
    if len(names) > 1:
        error("mlflow_run_name", f"the run has one name for every tracker; mlflow_run_name "
                                 f"({recipe.mlflow_run_name!r}) and wandb_name ({recipe.get('wandb_name')!r}) differ")


@hookimpl(trylast=True)
def run_started(recipe, stash):
    import os

    if "wandb" in trackers(recipe) and not installed("wandb"):  # wandb_project: a recipe validates without wandb
        raise FtcoreError(f"wandb_project: {missing('wandb')}, or remove wandb_project")
    wanted = environment(recipe)
    stash[SAVED] = {var: os.environ.get(var) for var in wanted}
    stash[STARTED] = trackers(recipe)
    os.environ.update(wanted)


@hookimpl(trylast=True)
def trainer_arguments(recipe):
    chosen = trackers(recipe)
    if not chosen:
        return None
    arguments = {"report_to": chosen}
    name = recipe.mlflow_run_name or recipe.get("wandb_name")
    if name:
        arguments["run_name"] = name
    return arguments


@hookimpl(trylast=True)
def run_finished(stash, status):
    import os
    import sys

    if "mlflow" in stash.get(STARTED, ()) and "mlflow" in sys.modules:  # a run that stopped early is left open
        mlflow = sys.modules["mlflow"]
        if mlflow.active_run() is not None:
            mlflow.end_run(status="FINISHED" if status == "completed" else "FAILED")
    for var, value in stash.get(SAVED, {}).items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
