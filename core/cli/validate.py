"""``ftcore validate RECIPE [key=value ...]``: check a recipe without loading a model.

Checks the schema and every plugin's rules, that the plugins import, and that
local files the recipe names exist. Exit 0 when the recipe would run, 2 with
every problem listed otherwise.
"""

import os
import sys
from pathlib import Path

from ftcore.errors import RecipeError

NAME = "validate"
HELP = "check a recipe, its plugins and local paths, without loading a model"
TAKES_RECIPE = True


def configure(parser):
    pass


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or Path(value).suffix in (".json", ".jsonl", ".csv", ".parquet", ".arrow")


def _why_missing(value: str) -> str:
    """A path that does not exist: a symbolic link that loops or points nowhere is said as such."""
    import os

    from ftcore.data.read import check_regular_file
    from ftcore.errors import DataError

    if os.path.lexists(Path(value).expanduser()):
        try:
            check_regular_file(Path(value).expanduser())
        except DataError as exc:
            return str(exc)
    return f"no such file or folder: {value}"


def path_problems(recipe):
    """What stops a valid recipe from running here: no datasets, local paths that do not exist."""
    problems = []
    if not recipe.datasets:
        problems.append(("datasets", "required to run: at least one entry with path and type"))
    checks = [("base_model", recipe.base_model), ("base_model_config", recipe.base_model_config),
              ("tokenizer_config", recipe.tokenizer_config)]
    checks += [(key, recipe.get(key)) for key in recipe.path_keys()]  # plugins' keys marked as paths
    for list_key in ("datasets", "test_datasets"):
        for i, spec in enumerate(getattr(recipe, list_key) or []):
            checks.append((f"{list_key}[{i}].path", spec.path))
    for key, value in checks:
        if value and _looks_local(value) and not Path(value).expanduser().exists():
            problems.append((key, _why_missing(value)))
    if recipe.base_model and not Path(recipe.base_model).expanduser().exists() and not _looks_local(recipe.base_model):
        if "/" not in recipe.base_model:
            problems.append(("base_model", f"'{recipe.base_model}' is neither a local folder nor a Hub id (owner/name)"))
    return problems


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# the package each flash attention kernel comes in: (module, pip name)
FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"),
                  "flash_attention_3": ("flash_attn_interface", "flash-attn-3 (built from flash-attention's hopper/)"),
                  "flash_attention_4": ("flash_attn.cute", "flash-attn-4")}


def attention_problems(recipe) -> list[tuple[str, str]]:
    """Flash attention asked for on a CUDA machine that lacks its package: ``run`` refuses before any data is
    prepared; ``validate`` prints a note (the recipe is valid; it may be checked here for another machine).

    On a machine without CUDA flash attention cannot run at all, and the model loads with sdpa instead (the same
    attention, computed by PyTorch): ``attention_fallback`` says so."""
    attention = recipe.attention or ""
    if attention not in FLASH_PACKAGES or attention_fallback(recipe):
        return []
    key = "attn_implementation" if recipe.attn_implementation else "flash_attention"
    module, package = FLASH_PACKAGES[attention]
    if not _installed(module):
        return [(key, f"{attention} needs the {package} package, which is not installed here ({module} cannot be "
                      f"imported); pip install {package.split(' ')[0]}, or use attn_implementation: sdpa "
                      f"(PyTorch's own fused attention)")]
    return []


def _cuda_available() -> bool:
    """Whether this machine has a CUDA GPU; without importing torch unless something already did (validate
    stays light): NVIDIA's driver shows its devices under /dev and /proc."""
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def attention_fallback(recipe) -> str | None:
    """The note for flash attention asked for on a machine without CUDA, where the model loads with sdpa."""
    attention = recipe.attention or ""
    if not attention.startswith("flash_attention"):
        return None
    if _cuda_available():
        return None
    return (f"{attention} needs a CUDA GPU and this machine has none: the model loads with attn_implementation: "
            f"sdpa here (the same attention computed by PyTorch: same results, more memory and time); on a GPU "
            f"machine {attention} is used")


def hub_notes(recipe) -> list[str]:
    """A line for each model or dataset the recipe would fetch from the Hub while the Hub cannot be reached and
    the local cache lacks it: ``validate`` says so (the recipe itself is fine); ``run`` stops there at once."""
    from ftcore import hub

    wanted = [("base_model", recipe.base_model, "model"), ("base_model_config", recipe.base_model_config, "model"),
              ("tokenizer_config", recipe.tokenizer_config, "model")]
    for list_key in ("datasets", "test_datasets"):
        wanted += [(f"{list_key}[{i}].path", spec.path, "dataset") for i, spec in enumerate(getattr(recipe, list_key) or [])]
    notes = []
    for key, value, kind in wanted:
        if not value or _looks_local(value) or Path(value).expanduser().exists() or hub.cached(value, kind):
            continue
        reason = hub.offline_reason()
        if reason is None:
            return []  # the Hub answers: everything can be fetched
        notes.append(f"{key}: '{value}' is not a local file or folder, so it would come from the Hugging Face Hub, "
                     f"which cannot be reached ({reason}), and it is not in the local cache: a run stops there")
    return notes


def print_notes(recipe, skipped):
    from ftcore.recipe.axolotl import HINT_NOTES, HINTS

    ignored = sorted(k for k, v in recipe.compat.items() if k in HINTS and v not in (None, False, "", [], {}))
    if ignored:
        print(f"note: ignored Axolotl keys (no effect in ftcore): {', '.join(ignored)}")
    for key in ignored:
        if key in HINT_NOTES:
            print(f"note: {HINT_NOTES[key]}")
    if skipped:
        print(f"note: skipped Axolotl plugins: {', '.join(skipped)}")
    if isinstance(recipe.gradient_checkpointing, str):
        print(f"note: gradient_checkpointing: {recipe.gradient_checkpointing} trains with plain gradient "
              f"checkpointing (activations stay on the GPU; ftcore does not offload them to "
              f"{'disk' if recipe.gradient_checkpointing == 'offload_disk' else 'CPU memory'})")


def code_lines(recipe) -> list[str]:
    """Every piece of code the recipe brings in: plugin modules (with their files), dotted formats, remote code."""
    import sys

    lines = []
    for module in recipe.plugins or []:
        if module.startswith("axolotl."):
            continue
        loaded = sys.modules.get(module)
        where = getattr(loaded, "__file__", None) or "not imported"
        lines.append(f"plugins: {module} ({where})")
    for list_key in ("datasets", "test_datasets"):
        for i, spec in enumerate(getattr(recipe, list_key) or []):
            if spec.type and "." in spec.type:
                module = sys.modules.get(spec.type.rsplit(".", 1)[0])
                where = getattr(module, "__file__", None)
                lines.append(f"{list_key}[{i}].type: {spec.type}" + (f" ({where})" if where else ""))
            if spec.trust_remote_code:
                lines.append(f"{list_key}[{i}].trust_remote_code: true (the dataset code of {spec.path})")
    if recipe.trust_remote_code:
        lines.append(f"trust_remote_code: true (the Python code of the model repository {recipe.base_model}"
                     + (f" and {recipe.tokenizer_config}" if recipe.tokenizer_config else "") + ")")
    return lines


def print_code(recipe) -> None:
    lines = code_lines(recipe)
    if not lines:
        print("  code this recipe runs: none")
        return
    print("  code this recipe runs:")
    for line in lines:
        print(f"    {line}")


def handle(args) -> int:
    from ftcore.cli import load_recipe

    recipe, raw, skipped = load_recipe(args)
    problems = path_problems(recipe)
    if problems:
        raise RecipeError(problems, source=raw.source)
    print_notes(recipe, skipped)
    datasets = ", ".join(f"{d.path} ({d.type})" for d in recipe.datasets or []) or "none"
    print(f"ok: {raw.source}")
    print(f"  base_model: {recipe.base_model}")
    print(f"  adapter:    {recipe.adapter or 'none (full fine-tuning)'}")
    print(f"  datasets:   {datasets}")
    print(f"  output_dir: {recipe.output_dir}")
    print_code(recipe)
    for key, message in attention_problems(recipe):
        print(f"  note: {key}: {message}; `ftcore run` on this machine cannot train it as written")
    fallback = attention_fallback(recipe)
    if fallback:
        print(f"  note: {fallback}")
    for line in hub_notes(recipe):
        print(f"  note: {line}")
    from ftcore.artifacts import output_dir_note

    note = output_dir_note(Path(recipe.output_dir), recipe.resume_from_checkpoint)
    if note:
        print(f"  note: {note}")
    return 0
