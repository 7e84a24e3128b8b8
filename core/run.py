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

from ftcore import hooks
from ftcore.artifacts import (Manifest, check_output_dir, clear_output_dir, metrics_callback, plot_loss,
                              read_metrics, summarize, write_recipe, write_samples)
from ftcore.data import pack as packing
from ftcore.data.cache import load_or_prepare
from ftcore.data.prepare import set_chat_template
from ftcore.device import describe, precision
from ftcore.errors import FtcoreError
from ftcore.log import console, get_logger
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
    check_output_dir(output_dir, overwrite, resume=recipe.resume_from_checkpoint)
    stash = Stash()
    plugins.answered.clear()  # which plugins this run used (recipe.yaml keeps their keys)
    status, error = "failed", None
    try:
        hooks.run_started(plugins, recipe, stash)  # each process: a process group, a tracker's environment
        result = _train(recipe, plugins, stash, output_dir, overwrite)
        status = "completed"
        return result
    except (KeyboardInterrupt, Interrupted) as exc:
        status, error = "interrupted", exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        hooks.run_finished(plugins, recipe, stash, status, error)


def _train(recipe, plugins, stash, output_dir, overwrite) -> RunResult:
    plugin_arguments = hooks.trainer_arguments(plugins, recipe, stash)  # before any loading: fail fast
    dtype = precision(recipe)
    hardware = describe()
    check_optimizer(recipe, hardware["cuda"])  # a paged optimizer on CPU fails here, not after the model loads

    tokenizer = hooks.load_tokenizer(plugins, recipe, stash)
    template = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
    data = load_or_prepare(recipe, tokenizer, hooks.dataset_formats(plugins), template,  # dataset_prepared_path
                           parts=hooks.content_parts(plugins), stash=stash, plugins=plugins)
    _report_data(data)
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
    _report_plan(recipe, dtype, world_size)

    callbacks = [metrics_callback(output_dir), *hooks.trainer_callbacks(plugins, recipe, stash)]
    loss = hooks.training_loss(plugins, recipe, model, stash)
    trainer = hooks.build_trainer(plugins, recipe, model, tokenizer, arguments, data.train, data.eval or None,
                                  collator, callbacks, evaluators, loss, stash)

    manifest = None
    if main_process:  # one writer; the other ranks write only their shards of a checkpoint
        clear_output_dir(output_dir, overwrite, resume=bool(recipe.resume_from_checkpoint))
        write_recipe(recipe, output_dir, used_plugins=plugins.answered)
        manifest = Manifest(output_dir, recipe, plugins, data, hardware,
                            {"precision": dtype, "world_size": world_size})

    status, metrics = "failed", {}
    try:
        trainer.train(resume_from_checkpoint=recipe.resume_from_checkpoint or None)
        if data.eval and not _evaluated_last_step(trainer):
            trainer.evaluate()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise Interrupted(f"interrupted; the model as trained so far is saved in {output_dir}") from None
    finally:
        main_process = trainer.is_world_process_zero()
        files = []
        try:
            if status != "failed":
                trainer.save_model(str(output_dir))  # every rank: ZeRO-3/FSDP gather here; rank 0 writes
                if main_process:
                    files = hooks.save_artifacts(plugins, recipe, trainer.model, tokenizer, output_dir, stash)
        except BaseException:
            status = "failed"  # run.json must not say "running" (or "completed") when saving failed
            raise
        finally:
            if main_process and manifest is not None:
                records = read_metrics(output_dir)
                files.append(plot_loss(output_dir, records) or "")
                files.append(write_samples(output_dir, stash.get(EVAL_SAMPLES)) or "")
                metrics = summarize(records)
                manifest.finish(status, metrics, [f for f in files if f])
                write_pages(output_dir)  # report.html and the model card README.md (replacing peft's); never fails the run
    _report_result(output_dir, metrics)
    return RunResult(output_dir, metrics, trainer.model, tokenizer, stash)


class Interrupted(FtcoreError):
    exit_code = 130


def _evaluated_last_step(trainer) -> bool:
    """True when an evaluation was logged at the final step (the trainer's summary comes after it)."""
    step = trainer.state.global_step
    return any(r.get("step") == step and any(k.startswith("eval_") for k in r) for r in trainer.state.log_history)


def _seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _report_data(data) -> None:
    s = data.stats["train"]
    dropped = ", ".join(f"{n} {why}" for why, n in s["rows_dropped"].items()) or "none"
    log.info(f"data: {s['rows_read']} rows read, {s['rows_kept']} kept (dropped: {dropped}); "
          f"{s['tokens']:,} tokens, {s['trained_tokens']:,} trained; "
          f"{data.stats['train_examples']} train / {data.stats['eval_examples']} eval examples")


def _report_plan(recipe, dtype, world_size) -> None:
    accumulation = accumulation_steps(recipe, world_size)
    global_batch = recipe.micro_batch_size * accumulation * world_size
    log.info(f"run: {recipe.base_model} | {recipe.adapter or 'full fine-tuning'} | {dtype} | "
          f"global batch {global_batch} = {recipe.micro_batch_size} x {accumulation} "
          f"x {world_size} | {'max_steps ' + str(recipe.max_steps) if recipe.max_steps else f'{recipe.num_epochs:g} epoch(s)'} | "
          f"output {recipe.output_dir}")


def _report_result(output_dir, metrics) -> None:
    if "eval_loss_initial" in metrics:
        log.info(f"eval loss: {metrics['eval_loss_initial']:.4f} -> {metrics['eval_loss_final']:.4f}  "
              f"(perplexity {metrics.get('eval_perplexity_initial', float('nan')):.2f} -> "
              f"{metrics.get('eval_perplexity_final', float('nan')):.2f})")
    elif "eval_loss_final" in metrics:
        log.info(f"eval loss: {metrics['eval_loss_final']:.4f}")
    log.info(f"saved to {output_dir}")
