"""Rerunning a finished run: ``ftcore run RUN_DIR/recipe.yaml`` trains into a fresh sibling folder.

A run folder's ``recipe.yaml`` names that folder as its ``output_dir``; rerunning it must not refuse (or,
with ``--overwrite``, replace) the run it came from. ``changed_data`` says which data files differ from
the SHA-256 the run recorded in ``run.json``.
"""

from __future__ import annotations

from pathlib import Path

from ftcore.errors import RecipeError
from ftcore.recipe.load import RawRecipe
from ftcore.recipe.remote import remote_url


def rerun_folder(raw: RawRecipe, output_dir) -> Path | None:
    """The fresh folder to rerun into when ``raw`` is a run folder's ``recipe.yaml`` whose ``output_dir`` is that
    run folder itself (and the command line set no ``output_dir=``): ``RUN_DIR-rerun``, ``-rerun-2``, ...;
    ``None`` otherwise (train into ``output_dir`` as always)."""
    if raw.path is None or raw.path.name != "recipe.yaml" or "output_dir" in raw.overrides or remote_url(raw.path):
        return None
    run_dir = raw.path.resolve().parent
    if Path(output_dir).expanduser().resolve() != run_dir or not (run_dir / "run.json").is_file():
        return None
    for n in range(1, 1000):
        candidate = run_dir.with_name(f"{run_dir.name}-rerun" + (f"-{n}" if n > 1 else ""))
        if not candidate.exists():
            return candidate
    raise RecipeError([("output_dir", f"{run_dir}-rerun ... -rerun-999 all exist: set output_dir=<new folder>")],
                      source=str(raw.path))


def changed_data(recipe, run_dir) -> list[str]:
    """What differs between the data files ``recipe`` reads now and the sha256 the run in ``run_dir`` recorded."""
    import json

    from ftcore.data.read import file_sha256, local_files
    from ftcore.errors import FtcoreError

    try:
        files = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))["data"]["files"]
        recorded = {str(f["path"]): f.get("sha256") for f in files if isinstance(f, dict) and f.get("sha256")}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    recorded.update({str(Path(k).resolve()): v for k, v in list(recorded.items())})
    found = []
    for spec in [*recipe.datasets, *(getattr(recipe, "test_datasets", None) or [])]:
        try:
            paths = local_files(spec) or []
        except (FtcoreError, OSError):
            continue
        for path in paths:
            before = recorded.get(str(path)) or recorded.get(str(Path(path).resolve()))
            if before is None:
                continue
            try:
                now = file_sha256(Path(path))
            except OSError:
                found.append(f"{path}: cannot be read now (the run read sha256 {before[:12]}...)")
                continue
            if now != before:
                found.append(f"{path}: sha256 {now[:12]}... now, {before[:12]}... in the run")
    return found
