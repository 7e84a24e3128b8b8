"""Axolotl's small training switches, honoured: the loss watchdog, early stopping, data order.

- ``loss_watchdog_threshold`` / ``loss_watchdog_patience`` (default 3): stop training when the logged
  training loss is above the threshold for that many logs in a row. The stop is an ordinary early
  stop (as a plugin's callback stops): the step finishes, the final model is saved, the run completes,
  a console warning says why and ``stopped_early.json`` in the run folder records it (listed in
  ``run.json``'s files). A NaN or infinite loss is the core's guard's, which stops without saving.
- ``early_stopping_patience``: transformers' ``EarlyStoppingCallback`` on the ``eval_loss`` of the
  ``loss`` evaluator (lower is better): training stops after that many evaluations without improvement.
  Needs a validation split and periodic evaluation (``eval_steps`` or ``evals_per_epoch``); the best
  model is not loaded at the end (ftcore keeps the last one), as ``stopped_early.json`` says.
- ``shuffle_merged_datasets: false``: train in dataset order (a sequential sampler) instead of a new
  random order every epoch. ``shuffle_before_merging_datasets`` changes nothing while the trainer
  shuffles anyway; with ``shuffle_merged_datasets: false`` it is refused (not implemented).
- ``skip_prepare_dataset``: accepted; ftcore always prepares the data before training (cached under
  ``dataset_prepared_path`` when set) and says so when the key is on.
- ``dataset_exact_deduplication``: owned here, applied where the examples are split (the core's data
  preparation): exact duplicate examples are dropped and counted.
"""

from __future__ import annotations

import json
import math

from pydantic import Field

from ftcore.api import RecipeKeys, StashKey, get_logger, hookimpl

FTCORE_CONTRACT = "1"

log = get_logger(__name__)

#: Why training stopped before its planned end (a dict), when one of this plugin's callbacks stopped it.
STOPPED_EARLY: StashKey[dict] = StashKey("compat_keys.stopped_early", "why a callback stopped training early")
STOPPED_FILE = "stopped_early.json"


class CompatKeys(RecipeKeys):
    loss_watchdog_threshold: float | None = Field(
        None, gt=0, description="stop training when the logged training loss stays above this")
    loss_watchdog_patience: int | None = Field(
        None, ge=1, description="consecutive logs above loss_watchdog_threshold before stopping (default 3; "
                                   "alone, without a threshold, it watches nothing)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations without a lower eval_loss")
    shuffle_merged_datasets: bool = Field(True, description="false: train in dataset order, never shuffled")
    shuffle_before_merging_datasets: bool | None = Field(
        None, description="shuffle each dataset before merging (no effect while the trainer shuffles)")
    skip_prepare_dataset: bool | None = Field(
        None, description="accepted; ftcore always prepares (and can cache) the data before training")
    dataset_exact_deduplication: bool | None = Field(
        None, description="drop exact duplicate examples (after formatting, before packing)")

    def cross_checks(self):
        problems = []
        if self.shuffle_before_merging_datasets and not self.shuffle_merged_datasets:
            problems.append(("shuffle_before_merging_datasets",
                             "shuffling each dataset while keeping the merged order (shuffle_merged_datasets: "
                             "false) is not supported; remove one of the two (with shuffle_merged_datasets: true "
                             "every example is shuffled anyway)"))
        return problems


@hookimpl(trylast=True)
def recipe_keys(register):
    register(CompatKeys)


def _has_eval(recipe) -> bool:
    return bool(recipe.val_set_size) or bool(recipe.test_datasets)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if recipe.group_by_length and not recipe.shuffle_merged_datasets:
        error("shuffle_merged_datasets", "false keeps dataset order, group_by_length reorders by length: "
                                         "choose one")
    if recipe.early_stopping_patience is None:
        return
    if not _has_eval(recipe):
        error("early_stopping_patience", "needs an evaluation to watch: add val_set_size (e.g. 0.05) or "
                                         "test_datasets, and eval_steps or evals_per_epoch")
    elif recipe.eval_strategy == "no" or (recipe.eval_strategy != "epoch" and not recipe.eval_steps
                                          and not recipe.evals_per_epoch):
        error("early_stopping_patience", "needs evaluations during training: set eval_steps or evals_per_epoch "
                                         "(or eval_strategy: epoch)")
    if "loss" not in recipe.evaluators:
        error("early_stopping_patience", "watches eval_loss, which the 'loss' evaluator gives: add loss to "
                                         "evaluators")


@hookimpl(trylast=True)
def run_started(recipe):
    if recipe.skip_prepare_dataset:
        log.info("skip_prepare_dataset: ftcore always prepares the data before training (formatted and "
                 "tokenized once; cached with dataset_prepared_path), so this key changes nothing")


@hookimpl(trylast=True)
def trainer_arguments(recipe):
    args = {}
    if not recipe.shuffle_merged_datasets:
        args["train_sampling_strategy"] = "sequential"
    if recipe.early_stopping_patience is not None:
        args.update(metric_for_best_model="eval_loss", greater_is_better=False)
    return args or None


def loss_watchdog(threshold: float, patience: int = 3, stash=None):
    """A ``TrainerCallback``: stop training once the logged loss exceeded ``threshold`` ``patience`` logs in a row."""
    from transformers import TrainerCallback

    class LossWatchdog(TrainerCallback):
        def __init__(self):
            self.over = 0
            self.stopped_at = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss):
                return  # an eval log, or NaN/inf: the core's guard stops the run for those
            self.over = self.over + 1 if loss > threshold else 0
            if self.over >= patience and self.stopped_at is None:
                self.stopped_at = state.global_step
                control.should_training_stop = True
                message = (f"loss watchdog: the training loss was above loss_watchdog_threshold {threshold:g} for "
                           f"{patience} logs in a row (last {loss:.4g} at step {state.global_step}), so training "
                           f"stops here; the model as it is now is saved")
                log.warning(message)
                if stash is not None:
                    stash[STOPPED_EARLY] = {"by": "loss_watchdog", "step": state.global_step, "loss": loss,
                                            "threshold": threshold, "patience": patience, "message": message}

    return LossWatchdog()


def early_stopping(patience: int, stash=None):
    """transformers' ``EarlyStoppingCallback``, recording in ``stash`` when it stopped training."""
    from transformers import EarlyStoppingCallback

    class EarlyStopping(EarlyStoppingCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            pass  # validate_recipe checked what the parent asserts; the best model is not loaded at the end

        def on_evaluate(self, args, state, control, metrics, **kwargs):
            stopping = control.should_training_stop
            super().on_evaluate(args, state, control, metrics, **kwargs)
            if control.should_training_stop and not stopping:
                message = (f"early stopping: eval_loss did not improve on its best ({state.best_metric:.4g}) for "
                           f"{patience} evaluations (early_stopping_patience), so training stops at step "
                           f"{state.global_step}; the last model is saved, not the best one")
                log.warning(message)
                if stash is not None:
                    stash[STOPPED_EARLY] = {"by": "early_stopping", "step": state.global_step,
                                            "best_eval_loss": state.best_metric, "patience": patience,
                                            "message": message}

    return EarlyStopping(early_stopping_patience=patience)


@hookimpl(trylast=True)
def trainer_callbacks(recipe, register, stash):
    if recipe.loss_watchdog_threshold is not None:
        register(loss_watchdog(recipe.loss_watchdog_threshold, recipe.loss_watchdog_patience or 3, stash))
    if recipe.early_stopping_patience is not None:
        register(early_stopping(recipe.early_stopping_patience, stash))


@hookimpl(trylast=True)
def save_artifacts(output_dir, stash):
    record = stash.get(STOPPED_EARLY)
    if record is None:
        return None
    (output_dir / STOPPED_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return [STOPPED_FILE]
