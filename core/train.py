"""Training: the recipe's keys -> ``TrainingArguments``, and the trainer.

ftcore uses ``transformers.Trainer`` with two changes (``FtcoreTrainer``):
evaluation runs the recipe's evaluators (token-weighted loss by default)
instead of the trainer's batch-averaged loss, and the training loss may come
from a plugin (the ``training_loss`` hook). The built-in ``build_trainer``
answer (plugins/huggingface.py) builds it; a plugin may build another.
"""

from __future__ import annotations

import math


def accumulation_steps(recipe, world_size: int = 1) -> int:
    """``gradient_accumulation_steps``, or what ``batch_size`` (the global batch) implies."""
    if recipe.batch_size is None:
        return recipe.gradient_accumulation_steps
    per_pass = recipe.micro_batch_size * world_size
    if recipe.batch_size % per_pass:
        from ftcore.errors import FtcoreError

        raise FtcoreError(f"batch_size {recipe.batch_size} is not a multiple of micro_batch_size x processes "
                          f"({recipe.micro_batch_size} x {world_size})")
    return recipe.batch_size // per_pass


def check_optimizer(recipe, cuda: bool) -> None:
    """Stop before anything loads when ``optimizer`` cannot run here: build it on a small tensor, take one step.

    transformers resolves the name (a missing package fails here), then the optimizer steps once on
    a 512 x 256 parameter on the device training will use: large enough (over 10^5 elements) to
    reach bitsandbytes' 8-bit and paged code paths. On CPU, bitsandbytes 0.50 falls back from paged
    to ordinary states for AdamW and Lion, but paged AdEMAMix has no CPU implementation.
    """
    import os

    import torch
    from transformers import Trainer, TrainingArguments

    from ftcore.errors import FtcoreError

    args = {"optim": recipe.optimizer, "learning_rate": recipe.learning_rate, "weight_decay": recipe.weight_decay}
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon"):
        if getattr(recipe, key) is not None:
            args[key] = getattr(recipe, key)
    device = "cuda" if cuda else "cpu"
    probe = torch.nn.Linear(512, 256, bias=False, device=device)
    try:
        # several launched CPU processes: read them as one gloo group, as training_arguments does
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
        arguments = TrainingArguments(output_dir="unused", report_to=[], use_cpu=several and not cuda, **args)
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(arguments, probe)
        if _takes_parameters(cls):  # LOMO-style optimizers take the model itself: resolving them is the check
            optimizer = cls(probe.parameters(), **kwargs)
            probe(torch.ones(2, 512, device=device)).sum().backward()
            optimizer.step()
    except Exception as exc:  # whatever stops it here would have stopped training the same way, later
        hardware = "a CUDA GPU" if cuda else "this machine (CPU only, no CUDA GPU)"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if recipe.optimizer.startswith("paged_"):
            fix = f"use optimizer: {recipe.optimizer.removeprefix('paged_')} (the same without paging) or adamw_torch"
        else:
            fix = "use optimizer: adamw_torch (or adamw_bnb_8bit for 8-bit optimizer states)"
        if isinstance(exc, ImportError) or "install" in first_line:
            fix += ", or install what is missing"
        raise FtcoreError(f"optimizer: {recipe.optimizer} cannot run on {hardware}: {first_line.rstrip('.')}; "
                          f"{fix}") from exc


def _takes_parameters(cls) -> bool:
    import inspect

    try:
        first = next(iter(inspect.signature(cls).parameters), None)
    except (TypeError, ValueError):
        return False
    return first == "params"


def steps_per_epoch(recipe, n_examples: int, world_size: int = 1) -> int:
    per_step = recipe.micro_batch_size * accumulation_steps(recipe, world_size) * world_size
    return max(1, math.ceil(n_examples / per_step))


def _every(steps, per_epoch_count, epoch_steps, total_steps):
    """Interval in steps from ``*_steps`` (fraction of the run if < 1) or ``*_per_epoch``."""
    if steps is not None:
        return max(1, round(steps * total_steps)) if steps < 1 else int(steps)
    if per_epoch_count:
        return max(1, epoch_steps // per_epoch_count)
    return None


def training_arguments(recipe, output_dir, n_train: int, has_eval: bool, precision: str,
                       plugin_arguments: dict, world_size: int = 1, cuda: bool = False) -> dict:
    """Keyword arguments for ``TrainingArguments``: the recipe's keys, then plugins' additions."""
    epoch_steps = steps_per_epoch(recipe, n_train, world_size)
    total_steps = recipe.max_steps or math.ceil(epoch_steps * recipe.num_epochs)
    args = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": recipe.micro_batch_size,
        "per_device_eval_batch_size": recipe.per_device_eval_batch_size,
        "gradient_accumulation_steps": accumulation_steps(recipe, world_size),
        "num_train_epochs": recipe.num_epochs,
        "max_steps": recipe.max_steps or -1,
        "learning_rate": recipe.learning_rate,
        "optim": recipe.optimizer,
        "lr_scheduler_type": recipe.lr_scheduler,
        "weight_decay": recipe.weight_decay,
        "max_grad_norm": recipe.max_grad_norm,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "logging_steps": recipe.logging_steps,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # a NaN loss is logged as NaN (not the running mean): the watchdog sees it
        "seed": recipe.seed,
        "train_sampling_strategy": "group_by_length" if recipe.group_by_length else "random",
        "remove_unused_columns": False,
        "report_to": [],  # a tracker plugin adds itself (trainer_arguments)
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,  # ftcore's console shows the run (core/console.py)
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": cuda,
    }
    if recipe.tf32 and cuda:
        args["tf32"] = True  # TF32 matmuls exist on NVIDIA Ampere and newer only; ignored elsewhere
    elif recipe.tf32 is False and cuda:
        args["tf32"] = False
    if recipe.gradient_checkpointing:
        args["gradient_checkpointing"] = True
        args["gradient_checkpointing_kwargs"] = recipe.gradient_checkpointing_kwargs or {"use_reentrant": False}
    if recipe.warmup_steps is not None:
        args["warmup_steps"] = recipe.warmup_steps
    elif recipe.warmup_ratio is not None:
        args["warmup_steps"] = recipe.warmup_ratio  # transformers reads a float < 1 as a ratio
    kwargs = dict(recipe.lr_scheduler_kwargs or {})
    if recipe.cosine_min_lr_ratio is not None and recipe.lr_scheduler == "cosine":
        args["lr_scheduler_type"] = "cosine_with_min_lr"
        kwargs["min_lr_rate"] = recipe.cosine_min_lr_ratio
    if kwargs:
        args["lr_scheduler_kwargs"] = kwargs
    for key in ("adam_beta1", "adam_beta2", "adam_epsilon", "save_only_model"):
        if getattr(recipe, key) is not None:
            args[key] = getattr(recipe, key)

    save_every = _every(recipe.save_steps, recipe.saves_per_epoch, epoch_steps, total_steps)
    if recipe.save_strategy == "epoch":
        args["save_strategy"] = "epoch"
    elif save_every and recipe.save_strategy != "no":
        args.update(save_strategy="steps", save_steps=save_every)
    if recipe.save_total_limit:
        args["save_total_limit"] = recipe.save_total_limit

    if has_eval:
        eval_every = _every(recipe.eval_steps, recipe.evals_per_epoch, epoch_steps, total_steps)
        if recipe.eval_strategy == "epoch":
            args["eval_strategy"] = "epoch"
        elif eval_every and recipe.eval_strategy != "no":
            args.update(eval_strategy="steps", eval_steps=eval_every)
        args["eval_on_start"] = recipe.eval_on_start
    args.update(plugin_arguments)
    return args


def make_arguments(arguments: dict):
    """``TrainingArguments`` from :func:`training_arguments`' dict.

    ``core/run.py`` makes them before the model loads: that starts the process group
    (``ddp_timeout`` applies), pins each process to its GPU, and under ZeRO-3 lets
    ``from_pretrained`` load the weights already partitioned.
    """
    import inspect

    from transformers import TrainingArguments

    arguments = dict(arguments)
    if "activation_checkpointing" in inspect.signature(TrainingArguments).parameters:
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if old in arguments:  # transformers 5 renamed these
                arguments[new] = arguments.pop(old)
    return TrainingArguments(**arguments)


def trainer_kwargs(recipe, model, tokenizer, arguments, train_dataset, eval_dataset, collator, callbacks,
                   evaluators, loss, stash) -> dict:
    """The keyword arguments of :class:`FtcoreTrainer` for a run (what the built-in ``build_trainer`` passes)."""
    return {"model": model, "args": arguments, "data_collator": collator, "train_dataset": train_dataset,
            "eval_dataset": eval_dataset or None, "processing_class": tokenizer, "callbacks": callbacks,
            "recipe": recipe, "evaluators": evaluators, "loss": loss, "stash": stash}


def _trainer_class():
    from transformers import Trainer

    class FtcoreTrainer(Trainer):
        """A ``transformers.Trainer`` whose evaluation runs the recipe's evaluators and whose loss may be a plugin's.

        ``recipe``, ``evaluators`` (``{name: function}``), ``loss`` (what the ``training_loss`` hook
        returned, or ``None`` for the model's own loss) and ``stash`` come on top of ``Trainer``'s own
        arguments. Plugins that build their own trainer (``build_trainer``) subclass this one to keep
        ftcore's evaluation, or call :func:`ftcore.api.run_evaluators` themselves.
        """

        def __init__(self, *args, recipe=None, evaluators=None, loss=None, stash=None, **kwargs):
            if loss is not None:
                # marks the loss as normalised by the accumulated batch's trained tokens, as the model's own is;
                # Trainer then counts them (num_items_in_batch) for it. compute_loss below calls `loss` itself.
                kwargs.setdefault("compute_loss_func", loss)
            super().__init__(*args, **kwargs)
            self.recipe = recipe
            self.evaluators = dict(evaluators or {})
            self.training_loss = loss
            self.stash = stash

        def _save_checkpoint(self, model, trial):
            # written under a partial name, renamed once complete (core/checkpoints.py)
            import os

            import transformers.trainer as trainer_module

            from ftcore.checkpoints import PARTIAL_PREFIX, write_recipe_into

            step = self.state.global_step
            run_dir = self._get_output_dir(trial=trial)
            partial = os.path.join(run_dir, f"{PARTIAL_PREFIX}-{step}")
            final = os.path.join(run_dir, f"checkpoint-{step}")
            saved_prefix = trainer_module.PREFIX_CHECKPOINT_DIR
            trainer_module.PREFIX_CHECKPOINT_DIR = PARTIAL_PREFIX  # where Trainer writes this one
            try:
                super()._save_checkpoint(model, trial)
            finally:
                trainer_module.PREFIX_CHECKPOINT_DIR = saved_prefix
            if self.args.should_save and self.recipe is not None:
                write_recipe_into(partial, self.recipe, getattr(self, "used_plugins", None))
            self.accelerator.wait_for_everyone()  # every process wrote its part
            if self.args.should_save:
                if os.path.isdir(final):  # the same step saved again (a resumed run): replace it
                    import shutil

                    shutil.rmtree(final)
                os.rename(partial, final)
                trainer_module.rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                                                  best_model_checkpoint=self.state.best_model_checkpoint,
                                                  use_mtime=True)
            self.accelerator.wait_for_everyone()

        def _run_epoch(self, *args, **kwargs):
            # resumed from a checkpoint of the last step: Trainer would take one step more (max_steps + 1)
            if 0 < self.state.max_steps <= self.state.global_step:
                self.control.should_training_stop = True
                return None
            return super()._run_epoch(*args, **kwargs)

        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            _redact_training_args(self.args, output_dir or self.args.output_dir)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.training_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = self.training_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # as Trainer does for a loss normalised over every process's tokens: DDP averages gradients
                loss = loss * (self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1
                               else self.args.n_gpu)
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            from ftcore.evaluation import EvalContext, phase_of, run_evaluators

            step, max_steps = self.state.global_step, self.state.max_steps
            ctx = EvalContext(model=self.model, tokenizer=self.processing_class, recipe=self.recipe,
                              dataset=eval_dataset if eval_dataset is not None else self.eval_dataset,
                              collator=self.data_collator, batch_size=self.args.per_device_eval_batch_size,
                              device=self.args.device, stash=self.stash, step=step, max_steps=max_steps,
                              phase=phase_of(step, max_steps))
            with self.accelerator.autocast():
                metrics = run_evaluators(self.evaluators, ctx, metric_key_prefix)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return FtcoreTrainer


def _redact_training_args(args, folder) -> None:
    """``training_args.bin`` (a pickle of the arguments) again, without secrets read from the environment
    (``run_name`` and ``output_dir`` may hold one): written only when there is one to hide."""
    import copy
    import dataclasses
    import os

    import torch

    from ftcore.secrets import contains_secret, redact

    fields = [f.name for f in dataclasses.fields(args) if isinstance(getattr(args, f.name, None), str)]
    if not any(contains_secret(getattr(args, name)) for name in fields):
        return
    hidden = copy.copy(args)
    for name in fields:
        object.__setattr__(hidden, name, redact(getattr(args, name)))
    torch.save(hidden, os.path.join(str(folder), "training_args.bin"))


_TRAINER = None


def __getattr__(name):
    # FtcoreTrainer subclasses transformers.Trainer: built on first use, so importing this module stays light
    global _TRAINER
    if name == "FtcoreTrainer":
        if _TRAINER is None:
            _TRAINER = _trainer_class()
        return _TRAINER
    raise AttributeError(name)
