"""The run's console: a start-up summary, one live progress line, evaluation lines, a final summary.

:class:`RunConsole` is a ``TrainerCallback`` (``core/run.py`` puts it first among the
trainer's callbacks and takes transformers' own printer and progress bar away).
What it shows goes through ``ftcore.log.output()``: on a terminal a live rich
progress line, elsewhere plain lines (one per ``logging_steps``), and with
``--log-format json`` one JSON object per event::

    {"event": "start", "model": ..., "max_steps": 270, "trainable_parameters": 131072, ...}
    {"event": "train", "step": 10, "max_steps": 270, "loss": 4.768, "learning_rate": 0.0019, ...}
    {"event": "eval", "step": 67, "phase": "training", "metrics": {"loss": 2.355, ...}}
    {"event": "done", "metrics": {...}, "output_dir": ..., "files": [...]}

Numbers are always numbers there, and formatted (:func:`number`) everywhere else.
The time left is measured: the start-up summary says so, and once the first steps
are done one line gives the estimate for the whole run (the live line keeps it current).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

from ftcore.log import output

ESTIMATE_AFTER = 5  # steps measured (after the first, which warms up) before the run's time is estimated
RUN_FILES = [  # the run folder's main files, in the order the final summary lists them
    ("adapter_model.safetensors", "adapter"), ("model.safetensors", "model"),
    ("model.safetensors.index.json", "model"), ("recipe.yaml", "the resolved recipe"),
    ("run.json", "manifest: versions, data hashes, metrics"), ("metrics.jsonl", "every log and evaluation"),
    ("samples.jsonl", "generated samples"), ("loss.png", "loss curves"), ("report.html", "the run's report"),
    ("README.md", "model card"), ("eval.json", "ftcore eval results"),
]


# metrics that are shares of 1 (exact match, accuracy, pass@k, ...): always shown with decimals
SHARES = ("exact_match", "contains", "accuracy", "rouge_l", "pass@")


def number(value, key: str = "") -> str:
    """A number for people: integers with thousands separators, 4 decimals for losses, e-notation for tiny rates."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    share = any(name in key for name in SHARES)
    if float(value).is_integer() and abs(value) >= 1 and "learning_rate" not in key and not share:
        return f"{int(value):,}"
    if share:  # 0 to 1: "1.0000" reads as a perfect score, "1" as a count
        return f"{value:.4f}"
    if value == 0:
        return "0"
    if "learning_rate" in key or abs(value) < 1e-3:
        return f"{value:.2e}"
    if abs(value) < 10:
        return f"{value:.4f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:,.1f}" if abs(value) < 10_000 else f"{value:,.0f}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def _lines(rows) -> str:
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{(k + ':'):<{width}}{v}" for k, v in rows)


def track(items, total: int, description: str):
    """``items`` with a live progress line while they are consumed (a terminal only; otherwise ``items`` as is)."""
    out = output()
    if not out.live or total < 2:
        return items
    return _tracked(items, total, description, out)


def _tracked(items, total, description, out):
    from ftcore.log import _console_for

    with _progress(_console_for(out), transient=True) as progress:
        task = progress.add_task(description, total=total, info="rows")
        for item in items:
            yield item
            progress.advance(task)


def _progress(rich_console, transient=False):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("left"),
                    TimeRemainingColumn(), console=rich_console, transient=transient, refresh_per_second=4)


def parameter_counts(model) -> tuple[int, int]:
    """``(all, trainable)`` parameters; partitioned (ZeRO-3) weights count their full size."""
    def count(p):
        return getattr(p, "ds_numel", 0) or p.numel()

    parameters = list(model.parameters())
    return sum(count(p) for p in parameters), sum(count(p) for p in parameters if p.requires_grad)


def plan(recipe, model, data_summary: dict, dtype: str, world_size: int, hardware: dict, evaluators,
         global_batch: int, accumulation: int) -> dict:
    """What the start-up summary says, from what ``core/run.py`` has before training."""
    total, trainable = parameter_counts(model)
    return {"output_dir": str(recipe.output_dir), "model": recipe.base_model,
            "method": recipe.adapter or "full fine-tuning", "precision": dtype,
            "device": _device(hardware), "world_size": world_size,
            "trainable_parameters": trainable, "parameters": total,
            "global_batch": global_batch, "micro_batch_size": recipe.micro_batch_size,
            "gradient_accumulation_steps": accumulation, "evaluators": list(evaluators or []),
            "logging_steps": recipe.logging_steps, **data_summary}


def _device(hardware: dict) -> str:
    gpus = hardware.get("gpus") or []
    if hardware.get("cuda") and gpus:
        names = {g.get("name", "GPU") if isinstance(g, dict) else str(g) for g in gpus}
        return f"{len(gpus)} x {', '.join(sorted(names))}"
    return "cpu"


def data_summary(data) -> dict:
    """Rows and tokens of the train and eval splits (before packing)."""
    s = data.stats["train"]
    return {"rows_read": s["rows_read"], "rows_kept": s["rows_kept"], "rows_dropped": dict(s["rows_dropped"]),
            "train_examples": len(data.train), "eval_examples": len(data.eval or []),
            "train_tokens": sum(len(e["input_ids"]) for e in data.train),
            "eval_tokens": sum(len(e["input_ids"]) for e in data.eval or []),
            "trained_tokens": s["trained_tokens"]}


def _console():
    from transformers import TrainerCallback

    class RunConsole(TrainerCallback):
        """Shows a run as it goes; see the module docstring."""

        def __init__(self, plan: dict):
            self.plan = dict(plan)
            self.out = output()
            self.progress = self.train_task = self.eval_task = None
            self.started = self.first_step_done = None
            self.estimated = False
            self.last = {}

        # ── start ──
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.started = time.monotonic()
            if kwargs.get("model") is not None:  # as the trainer has it: a plugin may unfreeze more when it is built
                self.plan["parameters"], self.plan["trainable_parameters"] = parameter_counts(kwargs["model"])
            p, steps = self.plan, state.max_steps
            epochs = args.num_train_epochs if args.max_steps <= 0 else None
            per_step = p["train_tokens"] / max(1, math.ceil(p["train_examples"] / p["global_batch"]))
            self.tokens_per_step = per_step if p["train_examples"] else 0.0
            share = p["trainable_parameters"] / p["parameters"] if p["parameters"] else 0.0
            dropped = ", ".join(f"{n} {why}" for why, n in p["rows_dropped"].items())
            processes = f"{p['world_size']} process{'es' if p['world_size'] != 1 else ''}"
            rows = [
                ("run", p["output_dir"]),
                ("model", p["model"]),
                ("method", f"{p['method']}: {number(p['trainable_parameters'])} of {number(p['parameters'])} "
                           f"parameters trained ({share:.2%})"),
                ("precision", f"{p['precision']} on {p['device']}, {processes}"),
                ("data", f"{number(p['rows_read'])} rows read, {number(p['rows_kept'])} kept"
                         + (f" (dropped: {dropped})" if dropped else "")
                         + f"; train {number(p['train_examples'])} examples, {number(p['train_tokens'])} tokens"
                         + f"; eval {number(p['eval_examples'])} examples, {number(p['eval_tokens'])} tokens"),
                ("steps", f"{number(steps)}" + (f" ({epochs:g} epochs)" if epochs else "")
                          + f", global batch {p['global_batch']} = {p['micro_batch_size']} x "
                            f"{p['gradient_accumulation_steps']} x {p['world_size']} (per device x accumulation "
                            f"x processes)"),
                ("evaluators", ", ".join(p["evaluators"]) or "none (no eval split)"),
                ("time", f"measured over the first {ESTIMATE_AFTER} steps, then shown as 'left'"),
            ]
            self.out.event("start", _lines(rows), **{k: v for k, v in p.items()}, max_steps=steps,
                           trainable_share=share)
            if self.out.live:
                from ftcore.log import _console_for

                self.progress = _progress(_console_for(self.out))
                self.progress.start()
                self.train_task = self.progress.add_task("train", total=steps, info="")

        # ── training ──
        def on_step_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            now = time.monotonic()
            if state.global_step == 1 or self.first_step_done is None:
                self.first_step_done = (state.global_step, now)
            first_step, first_time = self.first_step_done
            measured = state.global_step - first_step
            if not self.estimated and measured >= ESTIMATE_AFTER:
                self.estimated = True
                per_step = (now - first_time) / measured
                left = per_step * (state.max_steps - state.global_step)
                self.out.event("message", f"time: about {duration(now - self.started + left)} for "
                                          f"{number(state.max_steps)} steps ({per_step:.2f} s a step over steps "
                                          f"{first_step + 1}-{state.global_step}; evaluations add to it)",
                               estimated_seconds=round(now - self.started + left, 1),
                               seconds_per_step=round(per_step, 4))
            if self.progress is not None:
                self.progress.update(self.train_task, completed=state.global_step)

        def _speed(self, state):
            elapsed = time.monotonic() - (self.started or time.monotonic())
            tokens = self.tokens_per_step * state.global_step / elapsed if elapsed > 0 else 0.0
            rate = state.global_step / elapsed if elapsed > 0 else 0.0
            left = (state.max_steps - state.global_step) / rate if rate else None
            return elapsed, tokens, left

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            logs = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            if any(k.startswith("eval_") for k in logs):
                return self._eval_line(state, logs)
            if "loss" not in logs:
                return  # the trainer's summary (train_runtime, ...): in the final summary
            elapsed, tokens, left = self._speed(state)
            fields = {"step": state.global_step, "max_steps": state.max_steps,
                      "epoch": round(state.epoch or 0.0, 4), **logs, "tokens_per_second": round(tokens, 1),
                      "elapsed_seconds": round(elapsed, 1)}
            if left is not None:
                fields["remaining_seconds"] = round(left, 1)
            parts = [f"loss {number(logs['loss'])}"]
            if "learning_rate" in logs:
                parts.append(f"lr {number(logs['learning_rate'], 'learning_rate')}")
            if "grad_norm" in logs:
                parts.append(f"grad norm {number(logs['grad_norm'])}")
            parts.append(f"{number(round(tokens))} tok/s")
            info = " | ".join(parts)
            if self.progress is not None:
                self.progress.update(self.train_task, info=info)
                self.out.event("train", None, **fields)
            else:
                text = f"step {state.global_step}/{state.max_steps} | {info} | {duration(elapsed)} elapsed"
                self.out.event("train", text + (f", {duration(left)} left" if left is not None else ""), **fields)

        # ── evaluation ──
        @contextlib.contextmanager
        def evaluating(self, name: str, total: int):
            """The live line shows evaluator ``name`` over ``total`` examples; yields ``advance(n)``."""
            if self.progress is None:
                yield lambda n: None
                return
            self.progress.update(self.train_task, visible=False)
            task = self.progress.add_task(f"eval {name}", total=total or None, info="examples")
            try:
                yield lambda n: self.progress.advance(task, n)
            finally:
                self.progress.remove_task(task)
                self.progress.update(self.train_task, visible=True)

        def _eval_line(self, state, logs):
            from ftcore.evaluation import phase_of

            metrics = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
            phase = phase_of(state.global_step, state.max_steps)
            text = (f"eval step {state.global_step}/{state.max_steps} ({phase}) | "
                    + " | ".join(f"{k.replace('_', ' ')} {number(v, k)}" for k, v in metrics.items()))
            self.out.event("eval", text, step=state.global_step, max_steps=state.max_steps, phase=phase,
                           metrics=metrics)

        def on_train_end(self, args, state, control, **kwargs):
            self.stop()

        def stop(self):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RunConsole


_CLASS = None


def run_console(plan: dict):
    """A :class:`RunConsole` for a run (the class subclasses ``TrainerCallback``, so it is built on first use)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _console()
    return _CLASS(plan)


def quiet_trainer(trainer) -> None:
    """Take transformers' own console away from a trainer: its tqdm bar and its printed log dicts."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    classes = [PrinterCallback, ProgressCallback]
    try:
        from transformers.utils.notebook import NotebookProgressCallback

        classes.append(NotebookProgressCallback)
    except ImportError:
        pass
    for callback in list(trainer.callback_handler.callbacks):
        if isinstance(callback, tuple(classes)):
            trainer.remove_callback(callback)


def watch_evaluators(evaluators: dict, console) -> dict:
    """The evaluators, each showing itself on the live line while it runs (examples counted through ``ctx.batches``)."""
    if console is None or not console.out.live:
        return evaluators

    def watched(name, function):
        @functools.wraps(function)
        def evaluate(ctx):
            with console.evaluating(name, len(ctx.dataset)) as advance:
                batches = ctx.batches

                def counted():
                    for batch in batches():
                        yield batch
                        advance(len(next(iter(batch.values()))) if batch else 0)

                ctx.batches = counted
                try:
                    return function(ctx)
                finally:
                    del ctx.batches  # the method again
        return evaluate

    return {name: watched(name, function) for name, function in evaluators.items()}


# ── the end ──

def final_summary(output_dir, metrics: dict) -> None:
    """The metrics table (before | after) and the run folder's main files."""
    out = output()
    output_dir = Path(output_dir)
    names = []
    for key in metrics:
        for suffix in ("_initial", "_final"):
            if key.startswith("eval_") and key.endswith(suffix) and key[5:-len(suffix)] not in names:
                names.append(key[5:-len(suffix)])
    rows = [(m, metrics.get(f"eval_{m}_initial"), metrics.get(f"eval_{m}_final")) for m in names]
    if "train_loss_first" in metrics:
        rows.append(("train loss", metrics["train_loss_first"], metrics.get("train_loss_last")))
    files = [(name, what) for name, what in RUN_FILES if (output_dir / name).exists()]
    files += [(p.name + "/", "checkpoint") for p in sorted(output_dir.glob("checkpoint-*"))]
    runtime = metrics.get("train_runtime")
    fields = {"output_dir": str(output_dir), "metrics": metrics, "files": [f for f, _ in files]}
    if out.mode == "json":
        return out.event("done", **fields)
    if "eval_loss_final" in metrics:
        initial = metrics.get("eval_loss_initial")
        out.event("message", "eval loss: " + (f"{number(initial)} -> " if initial is not None else "")
                  + number(metrics["eval_loss_final"]))
    if rows:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, title=f"metrics (training took {duration(runtime)})" if runtime else "metrics",
                      title_justify="left")
        table.add_column("metric")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        for name, before, after in rows:
            table.add_row(name.replace("_", " "), "" if before is None else number(before, name),
                          "" if after is None else number(after, name))
        out.event("done", table, **fields)
    out.event("message", f"saved to {output_dir}\n" + "\n".join(f"  {name:<28}{what}" for name, what in files))
