"""``ftcore eval RUN_DIR_OR_RECIPE [--baseline] [key=value ...]``: did fine-tuning help?

Loads the run's fine-tuned model (``ftcore.api.load_trained``), prepares the
data exactly as the run did (its recipe.yaml, the run folder's tokenizer and
chat template, the data cache, packing), and runs the recipe's evaluators on
its validation split (``test_datasets`` when the recipe or an override gives
them). With ``--baseline`` the base model alone goes through the same
evaluators on the same examples. One table shows the metrics side by side
with the difference; ``eval.json`` in the run folder keeps them, with the
samples generating evaluators recorded. Overrides apply to the run's
recipe.yaml (``evaluators=[loss,generation]``, ``micro_batch_size=8``, ...).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ftcore.errors import FtcoreError
from ftcore.cli import overrides_after_flags

NAME = "eval"
HELP = "evaluate a trained run (and with --baseline its base model) on the run's validation data"
TAKES_RECIPE = False

EVAL_FILE = "eval.json"
MODELS = ("base", "fine_tuned")  # eval.json's names, in table order
HEADERS = {"base": "base", "fine_tuned": "fine-tuned"}


def configure(parser):
    parser.add_argument("target", metavar="RUN_DIR_OR_RECIPE",
                        help="a run folder written by `ftcore run`, or the recipe whose output_dir holds the run")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override keys of the run's recipe.yaml: evaluators=[loss,generation] "
                             "'test_datasets=[{path: test.jsonl, type: alpaca}]'")
    parser.add_argument("--baseline", action="store_true",
                        help="also evaluate the base model, on the same data with the same evaluators")
    overrides_after_flags(parser)


def handle(args) -> int:
    run_dir = run_folder(args.target, args.plugins, args.overrides)
    result = evaluate(run_dir, args.plugins, baseline=args.baseline, overrides=args.overrides)
    print_table(result)
    write_eval_json(run_dir, result)
    print(f"wrote {run_dir / EVAL_FILE}")
    report = _write_report(run_dir)
    if report:
        print(f"report: {run_dir / report}")
    return 0


def run_folder(target: str, plugins, overrides=()) -> Path:
    """The run folder ``target`` names: itself, or the output_dir of the recipe it is."""
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    from ftcore.hooks import registered_recipes
    from ftcore.recipe import load_raw, validate

    raw = load_raw(target, list(overrides), registered_recipes(plugins))  # no such file or recipe: a clear error
    plugins.add_recipe_plugins(raw.data.get("plugins"))
    output_dir = Path(validate(raw, plugins).output_dir).expanduser()
    if not (output_dir / "recipe.yaml").is_file():
        raise FtcoreError(f"the recipe {raw.source} has no run to evaluate: its output_dir {output_dir} "
                          f"{'holds no run' if output_dir.is_dir() else 'does not exist'}; train it first "
                          f"with `ftcore run {target}`, or give the run folder")
    return output_dir


# ── evaluating ────────────────────────────────────────────────────────────────


def evaluate(run_dir: Path, plugins, baseline: bool = False, overrides=()) -> dict:
    """The contents of ``eval.json`` (without writing it)."""
    from ftcore.trained import load_trained, run_state

    trained = load_trained(run_dir, plugins, overrides=overrides)
    recipe = trained.recipe
    examples, split = evaluation_data(trained, plugins)
    from ftcore import hooks

    evaluators = hooks.chosen_evaluators(plugins, recipe)
    collator = hooks.build_collator(plugins, recipe, trained.tokenizer, trained.stash)
    step = final_step(run_dir)
    models = {"fine_tuned": describe(trained)}
    metrics, samples = {}, []
    metrics["fine_tuned"] = _evaluate(trained, evaluators, examples, collator, step, samples, "fine_tuned")
    if baseline:
        _release(trained)
        trained = load_trained(run_dir, plugins, base=True, overrides=overrides)
        models["base"] = describe(trained)
        metrics["base"] = _evaluate(trained, evaluators, examples, collator, step, samples, "base")
    status = run_state(run_dir).status  # load_trained warned when it is not "completed"
    result = {"run_dir": str(run_dir), "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "run_status": status,
              "evaluators": list(evaluators), "split": split, "examples": len(examples),
              "models": {name: {"model": models[name], "metrics": metrics[name]}
                         for name in ("fine_tuned", "base") if name in models}}
    if baseline:
        result["difference"] = {key: value - metrics["base"][key] for key, value in metrics["fine_tuned"].items()
                                if key in metrics["base"]}
    result["samples"] = samples
    return result


def evaluation_data(trained, plugins) -> tuple[list, str]:
    """The run's evaluation examples, prepared as the run prepared them, and the split's name."""
    from ftcore import hooks
    from ftcore.data import pack as packing
    from ftcore.data.cache import load_or_prepare
    from ftcore.data.prepare import set_chat_template

    recipe = trained.recipe
    template = set_chat_template(recipe, trained.tokenizer, hooks.chat_templates(plugins))
    data = load_or_prepare(recipe, trained.tokenizer, hooks.dataset_formats(plugins), template,
                           parts=hooks.content_parts(plugins), stash=trained.stash, plugins=plugins)
    data = packing.pack_datasets(recipe, data)  # eval_sample_packing, as in the run
    split = "test" if recipe.test_datasets else "validation"
    if not data.eval:
        raise FtcoreError(f"the run in {trained.run_dir} has no {split} examples to evaluate on "
                          f"(val_set_size: {recipe.val_set_size}, no test_datasets); give some: "
                          f"`ftcore eval {trained.run_dir} 'test_datasets=[{{path: test.jsonl, type: alpaca}}]'`")
    return data.eval, split


def final_step(run_dir: Path) -> int:
    from ftcore.artifacts import read_metrics

    return max((int(r.get("step") or 0) for r in read_metrics(run_dir)), default=0)


def _evaluate(trained, evaluators, examples, collator, step, samples, name) -> dict:
    """One model through the evaluators; its samples are added to ``samples``, tagged with ``name``."""
    import torch

    from ftcore.device import precision
    from ftcore.evaluation import EvalContext, run_evaluators

    ctx = EvalContext(model=trained.model, tokenizer=trained.tokenizer, recipe=trained.recipe, dataset=examples,
                      collator=collator, batch_size=trained.recipe.per_device_eval_batch_size,
                      device=trained.device, stash=trained.stash, step=step, max_steps=step, phase="final")
    dtype = precision(trained.recipe)
    mixed = trained.device.type == "cuda" and dtype in ("bf16", "fp16")  # as the trainer evaluates
    with torch.autocast(trained.device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16,
                        enabled=mixed):
        metrics = run_evaluators(evaluators, ctx)
    samples.extend({"model": name, **{k: v for k, v in sample.items() if k not in ("step", "phase")}}
                   for sample in ctx.samples)
    return metrics


def describe(trained) -> str:
    recipe = trained.recipe
    if trained.label == "base":
        return str(recipe.base_model)
    if recipe.adapter:
        return f"{trained.run_dir} ({recipe.adapter} adapter on {recipe.base_model})"
    return f"{trained.run_dir} (full fine-tuning of {recipe.base_model})"


def _release(trained) -> None:
    """Free the fine-tuned model before the base loads (two 8B models need not fit at once)."""
    import gc

    import torch

    trained.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ── showing and writing ──────────────────────────────────────────────────────


def number(value, count: bool = False, sign: bool = False) -> str:
    """A count as an integer, a score or loss with 4 decimals; ``-`` for none."""
    if value is None:
        return "-"
    plus = "+" if sign else ""
    return f"{int(value):{plus},}" if count else f"{value:{plus},.4f}"


def is_count(values) -> bool:
    """Whole numbers from 2 on in every column (tokens, examples generated), not scores that happen to be 1."""
    values = [v for v in values if v is not None]
    return bool(values) and all(float(v).is_integer() and abs(v) >= 2 for v in values)


def print_table(result: dict) -> None:
    """One table: metric | base | fine-tuned | difference (base and difference only with --baseline)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, markup=False, highlight=False)  # no colour when not a terminal
    models = [name for name in MODELS if name in result["models"]]
    print(f"eval: {result['run_dir']}, {result['split']} split, {result['examples']:,} examples, "
          f"evaluators {', '.join(result['evaluators'])}", flush=True)
    table = Table(box=box.ROUNDED if console.is_terminal else None)  # plain columns for a pipe or a file
    table.add_column("metric")
    for name in models:
        table.add_column(HEADERS[name], justify="right")
    difference = result.get("difference")
    if difference is not None:
        table.add_column("difference", justify="right")
    keys = list(result["models"]["fine_tuned"]["metrics"])
    for key in [k for name in models for k in result["models"][name]["metrics"] if k not in keys]:
        keys.append(key)
    for key in keys:
        values = [result["models"][name]["metrics"].get(key) for name in models]
        count = is_count(values)
        row = [key.removeprefix("eval_"), *(number(v, count) for v in values)]
        if difference is not None:
            row.append(number(difference.get(key), count, sign=True))
        table.add_row(*row)
    console.print(table)


def write_eval_json(run_dir: Path, result: dict) -> Path:
    """``eval.json`` in the run folder, written whole or not at all (a temporary file renamed)."""
    path = Path(run_dir) / EVAL_FILE
    tmp = path.with_name(f".{EVAL_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_report(run_dir: Path):
    """``report.html`` with the new evaluation, when the report writer is installed."""
    try:
        from ftcore.report import write_report
    except ImportError:
        return None
    return write_report(run_dir)
