"""One fine-tuning run, top to bottom. Each step is one hook call (see hookspecs.py).

Data is prepared right after the tokenizer, before the model loads: a bad row
then fails in seconds instead of after minutes of downloading weights. Nothing
is written to ``output_dir`` until training is about to start. ``run_started``
and ``run_finished`` bracket everything, so what a plugin set up for the run
is torn down however it ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore import checkpoints, guards, hooks
from ftcore.artifacts import (Manifest, check_output_dir, clear_output_dir, lock_output_dir, metrics_callback,
                              plot_loss, preflight, read_metrics, record_files, summarize, write_recipe,
                              write_samples)
from ftcore.data import pack as packing
from ftcore.data.cache import load_or_prepare
from ftcore.console import data_summary, final_summary, plan, quiet_trainer, run_console, watch_evaluators
from ftcore.data.prepare import set_chat_template
from ftcore.device import describe, precision
from ftcore.errors import FtcoreError
from ftcore.log import console, get_logger, hush_loading
from ftcore.report import write_pages
from ftcore.stash import EVAL_SAMPLES, Stash
from ftcore.train import accumulation_steps, check_optimizer, make_arguments, training_arguments


log = get_logger(__name__)


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict
    model: Any  # the trained model, in memory (a PeftModel under an adapter)
    tokenizer: Any
    stash: Any = None  # the run's Stash


def run(recipe, plugins, overwrite: bool = False) -> RunResult:
    """Train as the recipe says. Writes ``recipe.output_dir``."""
    with console():  # messages on stdout, unless the caller (the CLI, an application) shows them its way
        return _run(recipe, plugins, overwrite)


def _run(recipe, plugins, overwrite) -> RunResult:
    output_dir = Path(recipe.output_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # one process decides: the others would see its first files
        check_output_dir(output_dir, overwrite, resume=recipe.resume_from_checkpoint)
        checkpoints.check_resumable(output_dir, recipe, overwrite)  # --resume: not a completed run, not a stranger's
        preflight(output_dir, recipe, overwrite)  # writable, room for the checkpoints (the CLI checked it already)
    held = lock_output_dir(output_dir)  # one run per folder, for API callers too (re-entrant under the CLI)
    held.__enter__()
    stash = Stash()
    plugins.answered.clear()  # which plugins this run used (recipe.yaml keeps their keys)
    status, error = "failed", None
    try:
        hooks.run_started(plugins, recipe, stash)  # each process: a process group, a tracker's environment
        result = _train(recipe, plugins, stash, output_dir, overwrite)
        status = "completed"
        return result
    except (KeyboardInterrupt, Interrupted, guards.Stopped) as exc:
        status, error = "interrupted", exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        try:
            hooks.run_finished(plugins, recipe, stash, status, error)
        finally:
            held.__exit__(None, None, None)


def _train(recipe, plugins, stash, output_dir, overwrite) -> RunResult:
    plugin_arguments = hooks.trainer_arguments(plugins, recipe, stash)  # before any loading: fail fast
    dtype = precision(recipe)
    hardware = describe()
    check_optimizer(recipe, hardware["cuda"])  # a paged optimizer on CPU fails here, not after the model loads

    tokenizer = hooks.load_tokenizer(plugins, recipe, stash)
    template = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
    data = load_or_prepare(recipe, tokenizer, hooks.dataset_formats(plugins), template,  # dataset_prepared_path
                           parts=hooks.content_parts(plugins), stash=stash, plugins=plugins)
    summary = _report_data(data)
    data = packing.pack_datasets(recipe, data)  # sample_packing, eval_sample_packing
    if "packing" in data.stats:
        log.info(packing.describe(data.stats["packing"]))

    quantization = hooks.quantization_config(plugins, recipe, stash)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by every launcher (ftcore run --nproc, torchrun, ...)
    main_process = int(os.environ.get("RANK", "0")) == 0
    # before the model: starts the process group, and under ZeRO-3 the weights load partitioned
    arguments = make_arguments(training_arguments(recipe, output_dir, len(data.train), bool(data.eval), dtype,
                                                  plugin_arguments, world_size, cuda=hardware["cuda"]))
    _seed(recipe.seed)
    model = hooks.load_model(plugins, recipe, quantization, stash)
    if "packing" in data.stats:
        packing.check_attention(model)
    hooks.prepare_model(plugins, recipe, model, tokenizer, stash)
    model = hooks.inject_adapter(plugins, recipe, model, stash)
    collator = hooks.build_collator(plugins, recipe, tokenizer, stash)

    evaluators = hooks.chosen_evaluators(plugins, recipe) if data.eval else {}
    shown = _report_plan(recipe, dtype, world_size, model, summary, hardware, evaluators)  # the run's console

    callbacks = [metrics_callback(output_dir), shown, final_evaluation(bool(data.eval)),
                 *hooks.trainer_callbacks(plugins, recipe, stash)]
    loss = hooks.training_loss(plugins, recipe, model, stash)
    trainer = hooks.build_trainer(plugins, recipe, model, tokenizer, arguments, data.train, data.eval or None,
                                  collator, callbacks, watch_evaluators(evaluators, shown), loss, stash)
    quiet_trainer(trainer)  # transformers' tqdm bar and printed dicts: the console shows the run instead

    trainer.used_plugins = plugins.answered  # each checkpoint keeps the recipe (checked on resume)
    resume = checkpoints.resolve(recipe, output_dir)  # --resume (auto), true, a folder; None: from step 0
    if resume:
        checkpoints.check_same_recipe(recipe, resume, plugins.answered)
        checkpoints.check_no_pickle(resume, recipe.allow_pickle)
    manifest = None
    if main_process:  # one writer; the other ranks write only their shards of a checkpoint
        for changed in checkpoints.data_changes(output_dir, data.sources):  # a rerun or a resume on edited data
            log.warning(f"notice: {changed} changed since the last run in {output_dir} (its sha256 differs)")
        clear_output_dir(output_dir, overwrite, resume=bool(resume))
        checkpoints.remove_partial(output_dir)
        if resume:
            checkpoints.trim_metrics(output_dir, checkpoints.step_of(resume))
        elif recipe.resume_from_checkpoint:  # --resume before any checkpoint: step 0 again, the old records go
            checkpoints.trim_metrics(output_dir, 0)
        write_recipe(recipe, output_dir, used_plugins=plugins.answered)
        manifest = Manifest(output_dir, recipe, plugins, data, hardware,
                            {"precision": dtype, "world_size": world_size,
                             **({"resumed_from": Path(resume).name} if resume else {})})
    if resume:
        step = checkpoints.step_of(resume)
        log.info(f"resuming from {Path(resume).name} (step {step} of {arguments.max_steps if arguments.max_steps > 0 else 'the run'})")

    status, metrics, ending = "failed", {}, None  # ending: the error that ends the run, if one does
    with guards.signals() as stop:  # Ctrl-C, SIGTERM: finish the step, save a checkpoint, stop
        trainer.add_callback(guards.callback(stop))
        try:
            trainer.train(resume_from_checkpoint=resume)  # evaluates at its last step
            if stop.signal is not None:
                status = "interrupted"
                raise guards.stopped(stop, output_dir, trainer.state.global_step)
            if data.eval and not _evaluated_last_step(trainer):  # training stopped early (a plugin's callback)
                trainer.evaluate()
            status = "completed"
        except Exception as exc:  # a full disk or a read-only folder during a checkpoint save: one clear line
            if guards.is_disk_fault(exc):
                ending = guards.save_failed(exc, output_dir)
                raise ending from exc
            ending = exc
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once; the last complete checkpoint stays
            status = "stopped"
            ending = Interrupted(f"stopped at once; the last complete checkpoint in {output_dir} is kept. "
                                 f"Resume with: {guards.resume_command()}")
            raise ending from None
        finally:
            _finish(trainer, plugins, recipe, tokenizer, output_dir, stash, manifest, status, ending)
    metrics = manifest.metrics if manifest is not None else {}
    _report_result(output_dir, metrics)
    return RunResult(output_dir, metrics, trainer.model, tokenizer, stash)


def _finish(trainer, plugins, recipe, tokenizer, output_dir, stash, manifest, status, ending=None):
    """Save the model (not after a failure or a second Ctrl-C), then run.json, loss.png, samples, the report.

    Called from the training's ``finally``; ``ending`` is the error ending the run, if one is. A full disk or
    a read-only folder while saving is one clear error (``guards.save_failed``); when run.json itself cannot
    be rewritten, the error says so (it still says "running").
    """
    main_process = trainer.is_world_process_zero()
    files = []
    save = status in ("completed", "interrupted")  # "stopped": a second Ctrl-C, nothing more is written
    status = "interrupted" if status == "stopped" else status
    try:
        if save:
            _save_final(trainer, output_dir, main_process)  # every rank: ZeRO-3/FSDP gather here
            if main_process:
                files = hooks.save_artifacts(plugins, recipe, trainer.model, tokenizer, output_dir, stash)
    except BaseException as exc:
        status = "failed"  # run.json must not say "running" (or "completed") when saving failed
        if isinstance(exc, Exception) and not isinstance(exc, guards.SaveFailed) and guards.is_disk_fault(exc):
            ending = guards.save_failed(exc, output_dir)
            raise ending from exc
        ending = exc
        raise
    finally:
        if main_process and manifest is not None:
            _record(output_dir, stash, manifest, status, files, ending)


def _record(output_dir, stash, manifest, status, files, ending) -> None:
    """run.json's final status, loss.png, samples.jsonl, the report, the marker's file list: each tried on its own.

    A disk fault here never hides the error ending the run: it is added to that error's message (or, after a
    run that succeeded, raised as one clear error naming run.json)."""
    problem = None

    def attempt(write, *args):
        nonlocal problem
        try:
            return write(*args)
        except Exception as exc:
            if not guards.is_disk_fault(exc):
                raise
            problem = problem or exc
            return None

    records = read_metrics(output_dir)
    files.append(attempt(plot_loss, output_dir, records) or "")
    files.append(attempt(write_samples, output_dir, stash.get(EVAL_SAMPLES)) or "")
    manifest.metrics = summarize(records)
    recorded = True
    try:
        manifest.finish(status, manifest.metrics, [f for f in files if f])
    except Exception as exc:
        if not guards.is_disk_fault(exc):
            raise
        problem, recorded = exc, False
    attempt(write_pages, output_dir)  # report.html and the model card README.md (replacing peft's)
    attempt(record_files, output_dir)  # the folder's contents are ftcore's: what --overwrite may delete
    if problem is None:
        return
    note = (f'run.json still says "running" (it could not be rewritten: '
            f'{getattr(problem, "strerror", None) or problem}); this run {status}' if not recorded else None)
    if ending is None and recorded:  # loss.png, the report: the model and run.json are written
        reason = getattr(problem, "strerror", None) or problem
        log.warning(f"notice: could not write everything in {output_dir}: {reason}")
        return
    if ending is None:  # the run itself succeeded: run.json could not say so
        failure = guards.save_failed(problem, output_dir)
        if note:
            failure.args = (f"{failure.args[0]}; {note}",)
        raise failure from problem
    if note and isinstance(ending, FtcoreError) and len(ending.args) == 1 and isinstance(ending.args[0], str):
        ending.args = (f"{ending.args[0]}; {note}",)
    elif note:
        log.warning(f"notice: {note}")


def _save_final(trainer, output_dir: Path, main_process: bool) -> None:
    """The final model, written beside and moved in: never a half-written weights file under its final name."""
    import os
    import shutil

    partial = output_dir / ".partial-final"
    if main_process and partial.exists():
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    trainer.accelerator.wait_for_everyone()
    if main_process:
        for item in sorted(partial.iterdir()):
            target = output_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        partial.rmdir()
    trainer.accelerator.wait_for_everyone()


class Interrupted(FtcoreError):
    exit_code = 130

    def __init__(self, message):
        super().__init__(message)
        self.quiet = int(os.environ.get("RANK", "0")) != 0  # with several processes, rank 0 says it once


def _evaluated_last_step(trainer) -> bool:
    """True when an evaluation was logged at the final step (the trainer's summary comes after it)."""
    step = trainer.state.global_step
    return any(r.get("step") == step and any(k.startswith("eval_") for k in r) for r in trainer.state.log_history)


def final_evaluation(has_eval: bool):
    """A callback: the trainer evaluates once at the final step, never twice at one step, and skips a
    scheduled evaluation less than half an interval before the final one (it would show the same numbers)."""
    from transformers import TrainerCallback

    class FinalEvaluation(TrainerCallback):
        evaluated = -1

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluated = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if has_eval and state.global_step >= state.max_steps:
                control.should_evaluate = True
            elif control.should_evaluate and getattr(args.eval_strategy, "value", args.eval_strategy) == "steps" and args.eval_steps:
                interval = args.eval_steps if args.eval_steps >= 1 else args.eval_steps * state.max_steps
                if state.max_steps - state.global_step < interval / 2:
                    control.should_evaluate = False
            self.on_epoch_end(args, state, control)

        def on_epoch_end(self, args, state, control, **kwargs):
            if self.evaluated == state.global_step:
                control.should_evaluate = False

    return FinalEvaluation()


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _report_data(data) -> dict:
    hush_loading()  # transformers' "Loading weights" bar: noise (shown with --verbose)
    return data_summary(data)


def _report_plan(recipe, dtype, world_size, model, summary, hardware, evaluators):
    """The run's console (a trainer callback): the start-up summary when training begins, then the live line."""
    accumulation = accumulation_steps(recipe, world_size)
    global_batch = recipe.micro_batch_size * accumulation * world_size
    return run_console(plan(recipe, model, summary, dtype, world_size, hardware, evaluators, global_batch,
                            accumulation))


def _report_result(output_dir, metrics) -> None:
    final_summary(output_dir, metrics)
