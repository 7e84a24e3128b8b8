"""Checkpoints you can trust, and resuming from them.

A checkpoint is written to ``output_dir/.partial-checkpoint-N`` and renamed to ``checkpoint-N`` only once
every file is in it (after every process wrote its part), so a ``checkpoint-N`` folder is always
complete; a partial one left by a crash is removed at the next start. Each checkpoint also holds the
run's resolved recipe (``recipe.yaml``): a resume from a checkpoint that another recipe wrote is refused,
naming the keys that differ.

``resume_from_checkpoint``: a folder (that checkpoint), ``true`` (the newest complete one; there must be
one) or ``auto`` (``ftcore run --resume``: the newest complete one, else start from step 0).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ftcore.errors import FtcoreError
from ftcore.log import get_logger

log = get_logger(__name__)

PARTIAL_PREFIX = ".partial-checkpoint"
RECIPE = "recipe.yaml"
# keys that may change between a run and its resume: where output goes, how often it is logged,
# saved and evaluated, and resuming itself. Anything else changes what is trained: refused.
MAY_CHANGE = {"output_dir", "resume_from_checkpoint", "logging_steps", "save_steps", "saves_per_epoch",
              "save_total_limit", "save_strategy", "eval_steps", "evals_per_epoch", "eval_strategy",
              "eval_on_start", "evaluators", "dataset_processes", "dataset_prepared_path", "report_to",
              "generation", "lm_eval"}
# trackers' keys (use_tensorboard, use_mlflow, mlflow_run_name, a tracker plugin's project/name/mode...)
TRACKER_KEY = re.compile(r"^(use_[a-z]+|[a-z]+_(project|entity|name|run_name|run_id|mode|experiment_name|tracking_uri|"
                         r"log_model|watch|tags|notes|group)|hf_mlflow_log_artifacts)$")
_STEP = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(FtcoreError):
    """The checkpoint cannot be resumed from (none there, another recipe's, pickle weights)."""


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders with a trainer state, oldest first."""
    found = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = _STEP.match(folder.name)
        if match and folder.is_dir() and (folder / "trainer_state.json").is_file():
            found.append((int(match.group(1)), folder))
    return [folder for _, folder in sorted(found)]


def remove_partial(output_dir: Path) -> None:
    """What a crash during a save left: partial folders, and checkpoint folders without a trainer state."""
    for folder in Path(output_dir).glob(f"{PARTIAL_PREFIX}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    for folder in Path(output_dir).glob("checkpoint-*"):
        if folder.is_dir() and not (folder / "trainer_state.json").is_file():
            log.warning(f"notice: removing the incomplete checkpoint {folder} (a save was interrupted)")
            shutil.rmtree(folder, ignore_errors=True)


def step_of(checkpoint) -> int:
    """The step a checkpoint was saved at (its trainer state says)."""
    try:
        return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError):
        match = _STEP.match(Path(checkpoint).name)
        return int(match.group(1)) if match else 0


def resolve(recipe, output_dir: Path) -> str | None:
    """The checkpoint folder to resume from, or None to start from step 0."""
    wanted = recipe.resume_from_checkpoint
    if wanted in (None, False, ""):
        return None
    if isinstance(wanted, str) and wanted.lower() not in ("auto", "true"):
        folder = Path(wanted).expanduser()
        if not (folder / "trainer_state.json").is_file():
            raise ResumeError(f"resume_from_checkpoint: {wanted} is not a complete checkpoint (no trainer_state.json)")
        return str(folder)
    found = complete_checkpoints(output_dir)
    if found:
        return str(found[-1])
    if wanted is True or str(wanted).lower() == "true":
        raise ResumeError(f"resume_from_checkpoint: true, but {output_dir} holds no complete checkpoint-* folder "
                          f"to resume from")
    log.info(f"resume: no complete checkpoint in {output_dir} yet; starting from step 0")
    return None


FINAL_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json",
                 "adapter_model.bin", "pytorch_model.bin")


def check_resumable(output_dir: Path, recipe, overwrite: bool = False) -> None:
    """``--resume`` (``resume_from_checkpoint`` auto or true) into ``output_dir``: refuse a run that already
    completed (nothing to resume; training it again silently would replace its model) and a folder that
    is not ftcore's (neither its marker nor a run.json). A missing or empty folder starts from step 0.
    With ``--overwrite`` too, a completed run is trained again (check_output_dir decides the rest)."""
    from ftcore.artifacts import MARKER, OWN

    wanted = recipe.resume_from_checkpoint
    if not (wanted is True or (isinstance(wanted, str) and wanted.lower() in ("auto", "true"))):
        return
    path = Path(output_dir)
    try:
        entries = [p.name for p in path.iterdir() if p.name not in OWN and not p.name.startswith(MARKER)]
    except (FileNotFoundError, NotADirectoryError):
        return  # check_output_dir says what is wrong with a file
    if not entries:
        return
    try:
        status = json.loads((path / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed" and not overwrite and any((path / name).is_file() for name in FINAL_WEIGHTS):
        raise ResumeError(f"output_dir '{path}' holds a run that already completed (run.json); nothing to resume. "
                          f"Use --overwrite to train it again (replaces it), or set output_dir=<new folder>")
    if not (path / MARKER).is_file() and not (path / "run.json").is_file():
        raise ResumeError(f"output_dir '{path}' is not a run folder: ftcore did not write it (no {MARKER}, no "
                          f"run.json), so there is nothing to resume and ftcore writes nothing there; set "
                          f"output_dir=<the run's folder> or <new folder>")


def check_same_recipe(recipe, checkpoint: str, used_plugins=None) -> None:
    """Refuse a checkpoint another recipe wrote, naming the keys that differ."""
    import yaml

    file = Path(checkpoint) / RECIPE
    if not file.is_file():
        log.warning(f"notice: {checkpoint} holds no {RECIPE}; ftcore cannot check it was written by this recipe")
        return
    try:
        before = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        before = {}
    now = json.loads(json.dumps(recipe.to_yaml_dict(used_plugins), default=str))
    before = json.loads(json.dumps(before, default=str))
    differ = sorted(k for k in set(before) | set(now)
                    if k not in MAY_CHANGE and not TRACKER_KEY.match(k) and before.get(k) != now.get(k))
    if differ:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in differ[:8])
        raise ResumeError(f"{checkpoint} was written by a different recipe: {shown}"
                          + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
                          + "; resume with the recipe that wrote it, or start again with --overwrite "
                            f"(keys that may change on resume: {', '.join(sorted(MAY_CHANGE))})")


def check_no_pickle(checkpoint: str, allow_pickle: bool) -> None:
    """A checkpoint's weights must be safetensors unless the recipe allows pickle files."""
    folder = Path(checkpoint)
    if allow_pickle or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")
                     and p.name not in ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
                     and not p.name.startswith("rng_state"))
    if pickles:
        raise ResumeError(f"{checkpoint} holds its weights as pickle files ({', '.join(pickles)}), which can run code "
                          f"when loaded; convert them to safetensors, or set allow_pickle: true if you trust them")


def trim_metrics(output_dir: Path, step: int) -> None:
    """``metrics.jsonl`` without the records after ``step``: the resumed run logs those steps again."""
    file = Path(output_dir) / "metrics.jsonl"
    if not file.is_file():
        return
    kept = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    tmp = file.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
    tmp.replace(file)


def write_recipe_into(folder: str, recipe, used_plugins=None) -> None:
    import yaml

    Path(folder, RECIPE).write_text(yaml.safe_dump(recipe.to_yaml_dict(used_plugins), sort_keys=False,
                                                   allow_unicode=True), encoding="utf-8")


def data_changes(output_dir: Path, sources) -> list[str]:
    """Data files whose sha256 differs from what the previous run in ``output_dir`` recorded in run.json."""
    try:
        before = json.loads((Path(output_dir) / "run.json").read_text(encoding="utf-8"))["data"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    old = {f.get("path"): f.get("sha256") for f in before if isinstance(f, dict)}
    return [s.path for s in sources if s.sha256 and old.get(s.path) and old[s.path] != s.sha256]
