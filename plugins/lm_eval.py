"""The ``lm_eval`` evaluator: EleutherAI's lm-evaluation-harness on the model in memory.

Selected with ``evaluators: [loss, lm_eval]`` and set up in the recipe's ``lm_eval:`` section
(``LmEvalSection``)::

    evaluators: [loss, lm_eval]
    lm_eval:
      tasks: [hellaswag, tasks/my_task.yaml, tasks/more/]   # names, task YAML files, folders of them
      num_fewshot: 0
      limit: 100

At the evaluations ``at`` names (``start`` before training, with ``eval_on_start``; ``steps``
during it; ``end`` after it; by default ``start`` and ``end``) the harness evaluates the model
being trained (``lm_eval.models.huggingface.HFLM`` over the model and tokenizer, nothing is
reloaded) on every task, and each number of its results table becomes a metric
``eval_lm_eval_<task>_<metric>`` (``acc``, ``acc_norm``, ``exact_match``, ...; a metric under a
filter other than ``none`` is ``<metric>_<filter>``; standard errors only with ``stderr: true``,
as ``<metric>_stderr``). Groups (``mmlu``) report their aggregate the same way, under the group's name.

The harness is an optional install: ``pip install 'ftcore[lm-eval]'``; a recipe naming the
evaluator without it stops at validation. Tasks are looked up in the local files first; the
harness's own task catalogue (thousands of YAML files, tens of seconds to index) is read only
when a name is not found among them. The harness downloads a named task's dataset unless
it is cached (``HF_DATASETS_OFFLINE=1`` forbids that); local tasks read local files.

Under several processes it runs on rank 0 only (the others report nothing for it);
with weights sharded across processes (ZeRO-3, FSDP) evaluate after training with ``ftcore eval``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from ftcore.api import FtcoreError, RecipeKeys, StashKey, hookimpl

FTCORE_CONTRACT = "1"

INSTALL = "pip install 'ftcore[lm-eval]'"
# The evaluation's phase (``EvalContext.phase``) -> the ``lm_eval.at`` name that selects it.
AT = {"initial": "start", "training": "steps", "final": "end"}
TASK_MANAGER: StashKey[object] = StashKey("lm_eval.task_manager", "the harness's TaskManager, built once per run")


class LmEvalSection(RecipeKeys):
    """The ``lm_eval:`` recipe section."""

    tasks: list[str] = Field(min_length=1, description="task names, task YAML files or folders of them")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: each task's own, else 0)")
    limit: float | None = Field(None, gt=0, description="examples per task (a number, or a fraction if < 1)")
    batch_size: int | None = Field(None, ge=1, description="requests per forward (default: the eval batch size)")
    apply_chat_template: bool = Field(False, description="wrap prompts in the tokenizer's chat template")
    fewshot_as_multiturn: bool = Field(False, description="with the chat template: few-shot examples as turns")
    stderr: bool = Field(False, description="also report each metric's standard error (<metric>_stderr)")
    samples: int = Field(3, ge=0, description="rows per task kept in samples.jsonl")
    at: list[Literal["start", "steps", "end"]] = Field(
        default_factory=lambda: ["start", "end"],
        description="which evaluations run it: before training (eval_on_start), during, after")


def installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def _is_path(task: str) -> bool:
    return task.endswith((".yaml", ".yml")) or "/" in task or "\\" in task or Path(task).exists()


@hookimpl(trylast=True)
def recipe_sections(register):
    register("lm_eval", LmEvalSection)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if "lm_eval" not in recipe.evaluators:
        return
    if not installed():
        error("evaluators", f"lm_eval needs EleutherAI's lm-evaluation-harness, which is not installed: {INSTALL}")
    settings = recipe.section("lm_eval")
    if settings is None:
        error("lm_eval", "the lm_eval evaluator needs a section lm_eval: with tasks: [...] "
                         "(task names, task YAML files or folders)")
        return
    for i, task in enumerate(settings.tasks):
        if _is_path(task) and not Path(task).expanduser().exists():
            error(f"lm_eval.tasks[{i}]", f"{task}: no such task file or folder")


# ── tasks ────────────────────────────────────────────────────────────────────


def task_specs(tasks) -> tuple[list[str], list[str]]:
    """``(what TaskManager.load gets, folders to index)``: a folder stands for every task in it."""
    specs, folders = [], []
    for task in tasks:
        path = Path(task).expanduser()
        if path.is_dir():
            folders.append(str(path))
        elif _is_path(task):
            specs.append(str(path))
        else:
            specs.append(task)
    return specs, folders


def task_manager(settings, stash):
    """The harness's TaskManager over the local folders; with its own catalogue only if a name needs it."""
    from lm_eval.tasks import TaskManager

    if stash is not None and stash.get(TASK_MANAGER) is not None:
        return stash[TASK_MANAGER]
    specs, folders = task_specs(settings.tasks)
    manager = TaskManager(include_path=folders or None, include_defaults=False)
    known = set(manager.all_tasks)
    if any(spec not in known and not Path(spec).is_file() for spec in specs):
        manager = TaskManager(include_path=folders or None)  # a task of the harness's own: index them all
    if stash is not None:
        stash[TASK_MANAGER] = manager
    return manager


def load_tasks(settings, manager):
    """``TaskManager.load`` of every task (a folder: each task defined in it), with the recipe's few-shot count."""
    from lm_eval.tasks import TaskManager

    specs, folders = task_specs(settings.tasks)
    for folder in folders:  # indexing a folder alone is quick
        local = TaskManager(include_path=folder, include_defaults=False)
        specs += [name for name in local.all_tasks if name not in specs]
    unknown = [spec for spec in specs if spec not in manager.all_tasks and not Path(spec).is_file()]
    if unknown:
        raise FtcoreError(f"lm_eval.tasks: no such task: {', '.join(unknown)} (not a task of lm-evaluation-harness "
                          "nor of the listed files and folders; `lm_eval ls tasks` lists the harness's)")
    loaded = manager.load(specs)
    for task in loaded["tasks"].values():  # as the harness's simple_evaluate: a task fixed at 0 shots stays so
        if settings.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=settings.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
    return loaded


# ── results ──────────────────────────────────────────────────────────────────


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", text).strip("_")


def flatten(results: dict, stderr: bool = False) -> dict:
    """The harness's ``results`` table -> ``{"lm_eval_<task>_<metric>": number}``.

    Keys there are ``"<metric>,<filter>"``; the filter is left out when it is ``none``.
    ``<metric>_stderr,<filter>`` entries are kept (as ``<metric>_stderr``) only with ``stderr``,
    and only when they are numbers (the harness writes ``"N/A"`` when it computed none).
    """
    out = {}
    for task, table in results.items():
        for key, value in table.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # alias, name, sample_len, "N/A"
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") and not stderr:
                continue
            name = metric if filter_name in ("none", "") else f"{metric}_{filter_name}"
            out[f"lm_eval_{_slug(task)}_{_slug(name)}"] = value
    return out


def _record(ctx, samples: dict, keep: int) -> None:
    """A few rows of each task into ``samples.jsonl``: the prompt, the right answer and the model's."""
    record = getattr(ctx, "record", None)
    if record is None or not keep:
        return
    for task, rows in samples.items():
        for row in rows[:keep]:
            arguments = row.get("arguments") or [("",)]
            prompt = str(arguments[0][0])
            responses = row.get("filtered_resps") or []
            scores = {m: row[m] for m in row.get("metrics", []) if isinstance(row.get(m), (int, float))}
            if responses and isinstance(responses[0], (tuple, list)):  # loglikelihoods, one per choice
                choices = [str(a[1]) for a in arguments]
                best = max(range(len(responses)), key=lambda i: responses[i][0])
                target = row.get("target")
                reference = choices[target] if isinstance(target, int) and 0 <= target < len(choices) else str(target)
                prediction = choices[best] if best < len(choices) else ""
            else:
                reference, prediction = str(row.get("target")), str(responses[0] if responses else "")
            record(prompt=prompt, reference=reference.strip(), prediction=prediction.strip(), task=task, **scores)


def _main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def evaluate_lm_eval(ctx) -> dict:
    """The ``lm_eval`` evaluator: the harness's metrics, or nothing at a phase ``lm_eval.at`` leaves out."""
    settings = ctx.recipe.section("lm_eval")
    if settings is None or AT[ctx.phase] not in settings.at or not _main_process():
        return {}
    if not installed():
        raise FtcoreError(f"the lm_eval evaluator needs EleutherAI's lm-evaluation-harness: {INSTALL}")
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    quiet = logging.getLogger("lm_eval")  # its notices about a model passed in memory are noise here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        manager = task_manager(settings, ctx.stash)
        lm = HFLM(pretrained=ctx.model, tokenizer=ctx.tokenizer, batch_size=settings.batch_size or ctx.batch_size)
        loaded = load_tasks(settings, manager)
        for task in loaded["tasks"].values():
            task.set_fewshot_seed(seed=ctx.recipe.seed)
        output = evaluate(lm=lm, task_dict=loaded, limit=settings.limit, bootstrap_iters=100 if settings.stderr else 0,
                          log_samples=settings.samples > 0, apply_chat_template=settings.apply_chat_template,
                          fewshot_as_multiturn=settings.fewshot_as_multiturn)
    finally:
        quiet.setLevel(level)
    if output is None:
        return {}
    _record(ctx, output.get("samples") or {}, settings.samples)
    return flatten(output["results"], settings.stderr)


@hookimpl(trylast=True)
def register_evaluators(register):
    register("lm_eval", evaluate_lm_eval)
