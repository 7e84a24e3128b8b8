"""The run folder: what a run leaves in ``output_dir``.

    adapter_config.json + adapter_model.safetensors   (adapter runs)
    config.json + model.safetensors                   (full fine-tuning)
    tokenizer files + chat_template.jinja             (the template used in training)
    recipe.yaml      the fully resolved recipe, runnable as is
    run.json         versions, plugins, data hashes, hardware, times, metrics
    metrics.jsonl    one JSON object per logging step and per evaluation
    samples.jsonl    what evaluators generated, beside the references (when one generated)
    loss.png         train and eval loss curves

Everything loads with plain transformers/peft; nothing needs ftcore.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ftcore.errors import FtcoreError

RUN_MARKERS = ("run.json", "recipe.yaml")


def check_output_dir(path: Path, overwrite: bool, resume) -> None:
    """Refuse a non-empty folder unless ``--overwrite`` (or resuming into it).

    ``resume`` is ``resume_from_checkpoint``: ``True`` needs a ``checkpoint-*``
    folder in ``path``; a path needs to exist.
    """
    if resume is True and not any(path.glob("checkpoint-*")):
        raise FtcoreError(f"resume_from_checkpoint: true, but {path} holds no checkpoint-* folder to resume from")
    if isinstance(resume, str) and resume and not Path(resume).is_dir():
        raise FtcoreError(f"resume_from_checkpoint: no such checkpoint folder: {resume}")
    if not path.exists():
        return
    if not path.is_dir():
        raise FtcoreError(f"output_dir '{path}' exists and is not a folder")
    contents = list(path.iterdir())
    if not contents or resume:
        return
    if not overwrite:
        raise FtcoreError(f"output_dir '{path}' is not empty; pass --overwrite to replace the run in it, "
                          f"or set output_dir=<new folder>")
    if not any((path / m).exists() for m in RUN_MARKERS) and not any(p.name.startswith("checkpoint-") for p in contents):
        raise FtcoreError(f"output_dir '{path}' is not empty and does not look like an ftcore run folder "
                          f"(no run.json or recipe.yaml); refusing to delete it even with --overwrite")


def clear_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Called just before training, so a failure earlier leaves the old run intact."""
    if path.exists() and overwrite and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def write_recipe(recipe, path: Path, used_plugins=None) -> None:
    """``recipe.yaml``: the resolved recipe; plugins' keys only where the recipe set them or the run used the plugin."""
    import yaml

    (path / "recipe.yaml").write_text(
        "# Resolved by ftcore: every value this run used. Run it again with `ftcore run recipe.yaml`.\n"
        + yaml.safe_dump(recipe.to_yaml_dict(used_plugins), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )


def run_packages(plugins=None) -> list[str]:
    """ftcore, every package ftcore requires (extras included), and the packages plugins came from."""
    import re
    from importlib.metadata import PackageNotFoundError, requires

    names = ["ftcore"]
    try:
        for requirement in requires("ftcore") or []:
            name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
            if name not in names and name not in ("pytest",):
                names.append(name)
    except PackageNotFoundError:  # running from a source tree that was never installed
        pass
    for info in (plugins.info.values() if plugins is not None else ()):
        if info.package and info.package not in names:
            names.append(info.package)
    return names


def installed_versions(names=None, plugins=None) -> dict:
    """``{package: version}`` for those of ``names`` (default: :func:`run_packages`) that are installed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names if names is not None else run_packages(plugins):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class Manifest:
    """``run.json``: written when training starts (status "running") and at the end."""

    def __init__(self, path: Path, recipe, plugins, data, hardware: dict, extra: dict | None = None):
        self.file = path / "run.json"
        self.data = {
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "finished": None,
            "base_model": recipe.base_model,
            "adapter": recipe.adapter,
            "versions": installed_versions(plugins=plugins),
            "plugins": [
                {"name": i.name, "module": i.module, "package": i.package, "version": i.version, "source": i.source}
                for i in plugins.info.values()
            ],
            "data": {
                "files": [{"path": s.path, "sha256": s.sha256, "revision": s.revision, "rows": s.rows}
                          for s in data.sources],
                **data.stats,
            },
            "hardware": hardware,
            **(extra or {}),
            "metrics": {},
        }
        self.write()

    def write(self) -> None:
        tmp = self.file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.file)

    def finish(self, status: str, metrics: dict, files: list[str] | None = None) -> None:
        self.data.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), metrics=metrics)
        if files:
            self.data["files"] = sorted(files)
        self.write()


def metrics_callback(path: Path):
    """A ``TrainerCallback`` appending each log (train and eval) to ``metrics.jsonl``."""
    from transformers import TrainerCallback

    class MetricsWriter(TrainerCallback):
        def __init__(self):
            self.file = path / "metrics.jsonl"
            self.history = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
            self.history.append(record)
            with self.file.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    return MetricsWriter()


def write_samples(path: Path, samples) -> str | None:
    """``samples.jsonl``: one generated sample per line (``EvalContext.record``), in the order recorded."""
    if not samples:
        return None
    tmp = path / "samples.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for sample in samples:
            fh.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path / "samples.jsonl")
    return "samples.jsonl"


def read_metrics(path: Path) -> list[dict]:
    file = path / "metrics.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize(records: list[dict]) -> dict:
    """Final metrics for ``run.json``: last train loss, first and last eval numbers."""
    out = {}
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if any(k.startswith("eval_") for k in r)]
    if train:
        out["train_loss_first"] = train[0]["loss"]
        out["train_loss_last"] = train[-1]["loss"]
    if evals:
        for key in evals[-1]:
            if key.startswith("eval_"):
                out[f"{key}_final"] = evals[-1][key]
        if len(evals) > 1:
            for key in evals[0]:
                if key.startswith("eval_"):
                    out[f"{key}_initial"] = evals[0][key]
    summary = [r for r in records if "train_runtime" in r]
    if summary:
        out.update({k: v for k, v in summary[-1].items() if k.startswith("train_") and k != "train_loss"})
    return out


def plot_loss(path: Path, records: list[dict]) -> str | None:
    """``loss.png`` with train and eval loss against the step."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path / "loss.png")
    plt.close(fig)
    return "loss.png"
