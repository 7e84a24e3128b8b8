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
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from ftcore.errors import FtcoreError

MARKER = ".ftcore-run.json"  # written when a run claims its folder; lists what the run wrote
LOCK = ".ftcore-run.lock"  # flock-ed by the run using the folder (see lock_output_dir)
OWN = (MARKER, LOCK)
# what a run writes at the top of its folder (listed in the marker when the run claims the folder, so a
# run killed before it ends still lists them); the folder's real contents replace this list at the end
WRITES = ("run.json", "run.json.tmp", "recipe.yaml", "metrics.jsonl", "metrics.jsonl.tmp", "samples.jsonl",
          "samples.jsonl.tmp", "loss.png", "report.html", "README.md", "training_args.bin",
          "adapter_config.json", "adapter_model.safetensors", "config.json", "generation_config.json",
          "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "runs")
TEMPORARY = (".partial-", "checkpoint-")  # ftcore's checkpoint folders and the partial ones a crash left


def read_marker(path: Path) -> dict | None:
    """The marker of run folder ``path`` (``{"files": [...], "kept": [...]}``), None when there is none."""
    file = Path(path) / MARKER
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def _write_marker(path: Path, data: dict) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path / MARKER)


WRITE_TEST = ".ftcore-write-test-"  # check_writable's probe file: another process of the run may have one there


def _user_entries(path: Path) -> list[Path]:
    return [p for p in path.iterdir()
            if p.name not in OWN and p.name != MARKER + ".tmp" and not p.name.startswith(WRITE_TEST)]


def _runs_inside(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir() and (p / MARKER).is_file())
    except OSError:
        return []


def _resuming(resume) -> bool:
    return bool(resume)


LOCK_HELD = "FTCORE_OUTPUT_DIR_LOCKED"  # set for the processes a launcher starts: the parent holds this folder's lock
_HELD: dict[str, int] = {}  # folder -> the lock file's descriptor, in this process


def _key(path) -> str:
    return str(Path(path).expanduser().resolve())


def _lock_is_ours(path) -> bool:
    """This process, or the launcher that started it, holds the folder's lock; or it is a rank other than 0."""
    import os

    key = _key(path)
    if key in _HELD or os.environ.get(LOCK_HELD) == key:
        return True
    rank = os.environ.get("RANK")
    return rank is not None and rank != "0"  # under a launcher, rank 0 holds it


def lock_holder(path) -> str | None:
    """"pid N on host H" when another process holds ``path``'s run lock, else None (nothing is created)."""
    import fcntl
    import os

    file = Path(path) / LOCK
    if _lock_is_ours(path) or not file.is_file():
        return None
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(file)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_text(file: Path) -> str:
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
        return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    except (OSError, ValueError, AttributeError):
        return "pid ? on host ?"


def _busy(path, holder: str) -> FtcoreError:
    return FtcoreError(f"another ftcore run ({holder}) is using {path}; wait for it to end, or set "
                       f"output_dir=<new folder> (nothing was changed)")


@contextmanager
def lock_output_dir(path):
    """One run per folder: ``output_dir/.ftcore-run.lock``, flock-ed (with this pid and host in it) until the
    block ends; the kernel releases it when a process dies, so a lock file a killed run left does not block.

    Re-entrant in one process; a process a launcher started skips it (the launcher, or rank 0, holds it).
    A folder this created and left empty is removed again, so a run refused early leaves no folder.
    """
    import fcntl
    import os
    import socket

    path = Path(path)
    if _lock_is_ours(path):
        yield
        return
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FtcoreError(f"output_dir '{path}' cannot be created: {exc.strerror or exc}") from None
    file = path / LOCK
    while True:
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            _remove_if_empty(path, created)
            raise FtcoreError(f"output_dir '{path}' is not writable: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(path, _holder_text(file)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(file).st_ino  # not a file another run just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    key = _key(path)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        try:
            file.unlink()  # while still held: a run waiting on this file retries on a fresh one
        except OSError:
            pass
        os.close(fd)
        _remove_if_empty(path, created)


def _remove_if_empty(path: Path, created: bool) -> None:
    if created:
        try:
            path.rmdir()
        except OSError:
            pass


@contextmanager
def lock_for_processes(path):
    """Around starting a launcher's processes: they inherit that this process holds ``path``'s lock."""
    import os

    before = os.environ.get(LOCK_HELD)
    os.environ[LOCK_HELD] = _key(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOCK_HELD, None)
        else:
            os.environ[LOCK_HELD] = before


def data_changes(path: Path, sources) -> list[str]:
    """The data files whose sha256 differs from the one the earlier run in ``path`` recorded in run.json."""
    try:
        earlier = json.loads((Path(path) / "run.json").read_text(encoding="utf-8"))
        files = {f["path"]: f.get("sha256") for f in earlier["data"]["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [s.path for s in sources if s.sha256 and files.get(s.path) and files[s.path] != s.sha256]


def check_output_dir(path: Path, overwrite: bool, resume) -> None:
    """Refuse a non-empty folder unless it is ftcore's and ``--overwrite`` (or resuming into it).

    ``resume`` is ``resume_from_checkpoint``: ``True`` needs a ``checkpoint-*``
    folder in ``path``; ``"auto"`` takes the newest there (or none); a path needs to exist.
    A folder ftcore did not mark as its own (``.ftcore-run.json``) is never deleted.
    """
    path = Path(path)
    holder = lock_holder(path)
    if holder:  # before anything else: never suggest deleting a folder a running run uses
        raise _busy(path, holder)
    if resume is True and not any(path.glob("checkpoint-*")):
        raise FtcoreError(f"resume_from_checkpoint: true, but {path} holds no checkpoint-* folder to resume from")
    if (isinstance(resume, str) and resume and resume.lower() not in ("auto", "true")
            and not Path(resume).is_dir()):
        raise FtcoreError(f"resume_from_checkpoint: no such checkpoint folder: {resume}")
    if not path.exists():
        return
    if not path.is_dir():
        raise FtcoreError(f"output_dir '{path}' exists and is not a folder")
    if not _user_entries(path) or _resuming(resume):
        return
    problem = _foreign_folder(path)
    if problem:
        raise FtcoreError(problem)
    if not overwrite:
        raise FtcoreError(f"output_dir '{path}' holds an earlier run; pass --resume to continue it, --overwrite "
                          f"to replace it (deletes only the files that run wrote), or set output_dir=<new folder>")


def _foreign_folder(path: Path) -> str | None:
    """Why the non-empty folder ``path`` is not a run folder ftcore may replace; None when it is one."""
    if (path / MARKER).is_file():
        return None
    runs = _runs_inside(path)
    if runs:
        shown = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")
        return (f"output_dir '{path}' holds other runs: {shown}; choose output_dir={path.as_posix().rstrip('/')}"
                f"/<name> (a folder of its own for this run)")
    if (path / "run.json").is_file():
        return (f"output_dir '{path}' holds a run from an earlier ftcore version (run.json but no {MARKER}); "
                f"ftcore deletes only folders it marked as its own, so delete it by hand, or set "
                f"output_dir=<new folder>")
    return (f"output_dir '{path}' is not empty and ftcore did not write it (no {MARKER}); ftcore never deletes "
            f"it, even with --overwrite: set output_dir=<new folder>, or empty it yourself")


def _nearest_existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_writable(path) -> None:
    """The output folder, or the nearest folder above it that exists, takes a file (tried, then removed)."""
    import tempfile

    where = _nearest_existing(Path(path))
    try:
        fd, name = tempfile.mkstemp(prefix=WRITE_TEST, dir=where)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise FtcoreError(f"output_dir '{path}' is not writable ({where}: {exc.strerror or exc}); nothing was "
                          f"written: set output_dir=<a writable folder>") from None


_DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int8": 1}
ADAPTER_FRACTION = 0.1  # an adapter checkpoint (weights + optimizer states) as a share of the base model's files


def _model_folder(base: str) -> Path | None:
    """The folder holding the base model's files: a local folder, or a Hub id's snapshot in the Hugging Face
    cache (a Hub id not cached yet: None, its size is not known before it downloads)."""
    folder = Path(base).expanduser()
    if folder.is_dir():
        return folder
    from ftcore.hub import cached

    if not base or "/" not in base or not cached(base, "model"):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception:  # noqa: BLE001 - a partial or odd cache entry: no estimate, never a failure
        return None


def _files_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin"))


def _saves_kept(recipe) -> int:
    """How many checkpoints the run keeps at once: save_total_limit, else the number of saves in the run."""
    import math

    if recipe.save_strategy == "no" or not (recipe.save_steps or recipe.saves_per_epoch
                                            or recipe.save_strategy == "epoch"):
        return 0
    if recipe.save_total_limit:
        return int(recipe.save_total_limit)
    max_steps = recipe.get("max_steps") or 0
    epochs = math.ceil(recipe.get("num_epochs") or 1)
    if recipe.save_steps and recipe.save_steps < 1:
        return math.ceil(1 / recipe.save_steps)
    if recipe.save_steps and max_steps > 0:
        return max(1, int(max_steps // recipe.save_steps))
    if recipe.saves_per_epoch:
        return int(recipe.saves_per_epoch) * epochs
    return epochs if recipe.save_strategy == "epoch" else 1


def estimate_run_bytes(recipe) -> tuple[int, int, int] | None:
    """(one checkpoint, checkpoints kept, the final model) in bytes; None when the base model's files are not
    here (neither a local folder nor a Hub id in the Hugging Face cache).

    Full fine-tuning: a checkpoint is the weights (the model files' size) plus two fp32 optimizer states per
    parameter (parameters = file size / bytes per parameter of config.json's dtype), without them under
    save_only_model; the final model is the weights. An adapter run: a tenth of the model files per
    checkpoint and for the final adapter (an adapter of rank 64 on every linear layer with its optimizer
    states stays below that).
    """
    folder = _model_folder(str(recipe.base_model or ""))
    if folder is None:
        return None
    weights = _files_size(folder)
    if not weights:
        return None
    if recipe.adapter:
        one = final = int(weights * ADAPTER_FRACTION)
    else:
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            width = _DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)
        except (OSError, ValueError, AttributeError):
            width = 2  # unknown: the most parameters for the size
        optimizer = 0 if recipe.save_only_model else weights // width * 8
        one, final = weights + optimizer, weights
    return one, _saves_kept(recipe), final


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_space(path, recipe, overwrite: bool = False) -> None:
    """Room for the checkpoints the run keeps and its final model (estimate_run_bytes) on ``path``'s disk."""
    estimate = estimate_run_bytes(recipe)
    if estimate is None:
        return
    one, kept, final = estimate
    need = one * kept + final
    where = _nearest_existing(Path(path))
    free = shutil.disk_usage(where).free
    if overwrite and Path(path).is_dir():  # what --overwrite deletes is freed first
        free += sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    if need > free:
        raise FtcoreError(f"output_dir '{path}': not enough free space: the run needs about {_size(need)} "
                          f"({kept} checkpoint(s) of {_size(one)} and the final model of {_size(final)}), "
                          f"{_size(free)} free on {where}; free some space, set save_total_limit, or set "
                          f"output_dir=<a folder on a larger disk>")


def preflight(path, recipe, overwrite: bool = False) -> None:
    """Before anything loads: the folder is writable and has room for what the run writes."""
    check_writable(path)
    check_space(path, recipe, overwrite)


def output_dir_note(path, resume) -> str | None:
    """``ftcore validate``'s note about a non-empty ``output_dir`` (None when ``ftcore run`` will take it as is)."""
    path = Path(path)
    if not path.is_dir() or not _user_entries(path):
        return None
    if _resuming(resume):
        return None
    problem = _foreign_folder(path)
    if problem:
        return problem.replace(f"output_dir '{path}' ", "output_dir ", 1)
    return "output_dir holds an earlier run; `ftcore run` will need --resume (continue it) or --overwrite (replace it)"


def clear_output_dir(path: Path, overwrite: bool, resume: bool) -> list[str]:
    """Called just before training, so a failure earlier leaves the old run intact. Claims the folder (the marker).

    With ``--overwrite`` deletes only what the marker lists, ``checkpoint-*`` and ftcore's partial folders;
    returns the names of the other entries it kept (and says so).
    """
    path = Path(path)
    kept = []
    if path.exists() and overwrite and not resume:
        problem = _foreign_folder(path) if _user_entries(path) else None
        if problem:  # checked before anything loaded; the folder changed since
            raise FtcoreError(problem)
        marker = read_marker(path) or {}
        listed = set(marker.get("files") or ()) | set(WRITES)
        for entry in _user_entries(path):
            if entry.name in listed or entry.name.startswith(TEMPORARY):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            else:
                kept.append(entry.name)
        if kept:
            from ftcore.log import get_logger

            get_logger(__name__).info(f"--overwrite kept what the earlier run did not write: {', '.join(sorted(kept))}")
    path.mkdir(parents=True, exist_ok=True)
    marker = read_marker(path) or {}
    if overwrite and not resume:
        marker = {}
    foreign = set(marker.get("kept") or ()) | set(kept)
    if resume and not marker:  # resuming a folder claimed by no marker (an older run): what is there is the run's
        foreign = set()
    _write_marker(path, {"ftcore": 1, "files": sorted(set(marker.get("files") or ()) | set(WRITES)),
                         "kept": sorted(foreign)})
    return sorted(kept)


def record_files(path: Path) -> None:
    """At the end of a run: the marker lists what is in the folder now, except what the run kept of others'."""
    path = Path(path)
    marker = read_marker(path)
    if marker is None:
        return
    kept = set(marker.get("kept") or ())
    try:
        names = {p.name for p in _user_entries(path)} - kept
    except OSError:
        return
    marker["files"] = sorted(names | set(marker.get("files") or ()))
    _write_marker(path, marker)


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

