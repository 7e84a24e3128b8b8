"""One fine-tuning run, top to bottom. Each step is one hook call (see hookspecs.py).

Data is prepared right after the tokenizer, before the model loads: a bad row
then fails in seconds instead of after minutes of downloading weights. Nothing
is written to ``output_dir`` until training is about to start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore import hooks
from ftcore.artifacts import (Manifest, check_output_dir, clear_output_dir, metrics_callback, plot_loss,
                              read_metrics, summarize, write_recipe)
from ftcore.data import pack as packing
from ftcore.data.cache import load_or_prepare
from ftcore.data.prepare import set_chat_template
from ftcore.device import describe, precision
from ftcore.errors import FtcoreError
from ftcore.launch import start_process_group
from ftcore.train import (accumulation_steps, build_trainer, check_optimizer, make_arguments, training_arguments,
                          wandb_environment)


# bitsandbytes warns on CPU that an optional kernel package (which would download
# from the Hub) is missing; it falls back to its own kernels, so say nothing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass
class RunResult:
    output_dir: Path
    metrics: dict
    model: Any  # the trained model, in memory (a PeftModel under an adapter)
    tokenizer: Any


def run(recipe, plugins, overwrite: bool = False) -> RunResult:
    """Train as the recipe says. Writes ``recipe.output_dir``."""
    output_dir = Path(recipe.output_dir)
    check_output_dir(output_dir, overwrite, resume=recipe.resume_from_checkpoint)
    plugin_arguments = hooks.trainer_arguments(plugins, recipe)  # fails fast on deepspeed/fsdp without a plugin
    start_process_group(recipe)  # under a launcher: join the other processes (ddp_timeout)
    if recipe.wandb_project and importlib.util.find_spec("wandb") is None:
        raise FtcoreError("wandb_project is set, but wandb is not installed: pip install wandb, or remove wandb_project")
    dtype = precision(recipe)
    hardware = describe()
    check_optimizer(recipe, hardware["cuda"])  # a paged optimizer on CPU fails here, not after the model loads

    tokenizer = hooks.load_tokenizer(plugins, recipe)
    template = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
    data = load_or_prepare(recipe, tokenizer, hooks.dataset_formats(plugins), template)  # dataset_prepared_path
    _report_data(data)
    data = packing.pack_datasets(recipe, data)  # sample_packing, eval_sample_packing
    if "packing" in data.stats:
        print(packing.describe(data.stats["packing"]))

    quantization = hooks.quantization_config(plugins, recipe)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by every launcher (ftcore run --nproc, torchrun, ...)
    main_process = int(os.environ.get("RANK", "0")) == 0
    # before the model: starts the process group, and under ZeRO-3 the weights load partitioned
    arguments = make_arguments(training_arguments(recipe, output_dir, len(data.train), bool(data.eval), dtype,
                                                  plugin_arguments, world_size, cuda=hardware["cuda"]))
    _seed(recipe.seed)
    model = hooks.load_model(plugins, recipe, quantization)
    if "packing" in data.stats:
        packing.check_attention(model)
    hooks.prepare_model(plugins, recipe, model, tokenizer)
    model = hooks.inject_adapter(plugins, recipe, model)
    collator = hooks.build_collator(plugins, recipe, tokenizer)

    registered = hooks.evaluators(plugins)
    evaluators = {name: registered[name][0] for name in recipe.evaluators} if data.eval else {}
    os.environ.update(wandb_environment(recipe))
    _report_plan(recipe, dtype, world_size)

    callbacks = [metrics_callback(output_dir), *hooks.trainer_callbacks(plugins, recipe)]
    trainer = build_trainer(recipe, model, tokenizer, data, collator, arguments, callbacks, evaluators)

    manifest = None
    if main_process:  # one writer; the other ranks write only their shards of a checkpoint
        clear_output_dir(output_dir, overwrite, resume=bool(recipe.resume_from_checkpoint))
        write_recipe(recipe, output_dir)
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
        if status != "failed":
            trainer.save_model(str(output_dir))  # every rank: ZeRO-3/FSDP gather here; rank 0 writes
            if main_process:
                files = hooks.save_artifacts(plugins, recipe, trainer.model, tokenizer, output_dir)
        if main_process and manifest is not None:
            records = read_metrics(output_dir)
            files.append(plot_loss(output_dir, records) or "")
            metrics = summarize(records)
            manifest.finish(status, metrics, [f for f in files if f])
    _report_result(output_dir, metrics)
    return RunResult(output_dir, metrics, trainer.model, tokenizer)


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
    print(f"data: {s['rows_read']} rows read, {s['rows_kept']} kept (dropped: {dropped}); "
          f"{s['tokens']:,} tokens, {s['trained_tokens']:,} trained; "
          f"{data.stats['train_examples']} train / {data.stats['eval_examples']} eval examples")


def _report_plan(recipe, dtype, world_size) -> None:
    accumulation = accumulation_steps(recipe, world_size)
    global_batch = recipe.micro_batch_size * accumulation * world_size
    print(f"run: {recipe.base_model} | {recipe.adapter or 'full fine-tuning'} | {dtype} | "
          f"global batch {global_batch} = {recipe.micro_batch_size} x {accumulation} "
          f"x {world_size} | {'max_steps ' + str(recipe.max_steps) if recipe.max_steps else f'{recipe.num_epochs:g} epoch(s)'} | "
          f"output {recipe.output_dir}")


def _report_result(output_dir, metrics) -> None:
    if "eval_loss_initial" in metrics:
        print(f"eval loss: {metrics['eval_loss_initial']:.4f} -> {metrics['eval_loss_final']:.4f}  "
              f"(perplexity {metrics.get('eval_perplexity_initial', float('nan')):.2f} -> "
              f"{metrics.get('eval_perplexity_final', float('nan')):.2f})")
    elif "eval_loss_final" in metrics:
        print(f"eval loss: {metrics['eval_loss_final']:.4f}")
    print(f"saved to {output_dir}")
