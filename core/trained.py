"""Loading what a run trained, for ``ftcore eval``, ``generate`` and ``chat``: ``load_trained``.

A run folder (``output_dir``) holds the resolved ``recipe.yaml``, ``run.json``
(its status), the tokenizer with the chat template the run used, and the
trained weights. ``load_trained`` reads the recipe back (with the command's
overrides), then loads as the run did, through the same hooks:

- ``load_tokenizer`` from the run folder (its added tokens and chat template;
  a vision run's processor lands in ``stash[PROCESSOR]``),
- ``quantization_config`` (a QLoRA run's base loads in 4 bits again, unless
  ``quantize=False``) and ``load_model`` (the base model),
- the embeddings resized to the run's tokenizer when the run added tokens
  (directly: ``prepare_model`` would prepare for training, k-bit preparation
  and a KV cache switched off included),
- ``load_trained_weights``: the plugin of ``recipe.adapter`` puts the trained
  weights on (an adapter over the base, or a full run's model); skipped with
  ``base=True``, which gives the base alone with the run's tokenizer, so both
  see prompts formatted identically.

The model comes back in eval mode, on CUDA when there is one, else the CPU,
with its KV cache on. Public through ``ftcore.api``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore import hooks
from ftcore.errors import FtcoreError
from ftcore.stash import PROCESSOR, Stash

LABELS = {False: "fine-tuned", True: "base"}


@dataclass
class Trained:
    """A run's model, loaded for inference. ``label`` names it in tables: "fine-tuned" or "base"."""

    model: Any
    tokenizer: Any
    recipe: Any
    run_dir: Path
    stash: Any
    processor: Any = None
    label: str = "fine-tuned"

    @property
    def device(self):
        import torch

        return next(self.model.parameters(), torch.empty(0)).device


def check_run_dir(run_dir) -> dict:
    """``run.json`` of a completed run folder; a clear error for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FtcoreError(f"{run_dir}: no such folder; give the output_dir of a run made by `ftcore run`")
    if not (run_dir / "recipe.yaml").is_file():
        raise FtcoreError(f"{run_dir} is not an ftcore run folder (it has no recipe.yaml); give the output_dir "
                          f"of a run made by `ftcore run`")
    manifest = run_dir / "run.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FtcoreError(f"{run_dir} has no run.json, so the run never started training; "
                          f"run it with `ftcore run {run_dir / 'recipe.yaml'}`") from None
    except ValueError as exc:
        raise FtcoreError(f"{manifest}: not valid JSON ({exc})") from None
    status = info.get("status") if isinstance(info, dict) else None
    if status != "completed":
        why = {"running": "it is still running, or its process died before finishing",
               "interrupted": "it was interrupted",
               "failed": "it failed"}.get(status, f"its status is {status!r}")
        raise FtcoreError(f"the run in {run_dir} did not complete ({manifest.name} status: {status}: {why}); "
                          f"only a completed run's weights are loaded. Train it to the end, e.g. "
                          f"`ftcore run {run_dir / 'recipe.yaml'} --overwrite`")
    return info


def read_recipe(run_dir, plugins, overrides=()):
    """The run's ``recipe.yaml``, validated with ``overrides`` (``key=value``), as ``ftcore run`` would."""
    from ftcore.recipe import load_raw, validate

    raw = load_raw(str(Path(run_dir) / "recipe.yaml"), list(overrides), hooks.named_recipes(plugins))
    plugins.add_recipe_plugins(raw.data.get("plugins"))
    return validate(raw, plugins)


def best_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_trained(run_dir, plugins, *, base: bool = False, quantize: bool | None = None, overrides=()) -> Trained:
    """The run's fine-tuned model (or, with ``base=True``, its base model) with the run's tokenizer.

    ``quantize``: ``None`` loads as the run trained (a QLoRA run's base in 4 bits), ``False``
    unquantized, ``True`` insists on quantization (an error when the recipe asks for none).
    ``overrides``: ``key=value`` strings applied to the run's recipe.yaml.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    recipe = read_recipe(run_dir, plugins, overrides)
    stash = Stash()
    # the run folder's tokenizer: its added tokens and chat template (and a vision run's processor)
    tokenizer = hooks.load_tokenizer(plugins, recipe.model_copy(update={"tokenizer_config": str(run_dir)}), stash)
    quantization = None if quantize is False else hooks.quantization_config(plugins, recipe, stash)
    if quantize is True and quantization is None:
        raise FtcoreError(f"quantized loading was asked for, but the run's recipe ({run_dir / 'recipe.yaml'}) "
                          f"quantizes nothing; add the quantization keys as overrides (say load_in_4bit=true)")
    _seed(recipe.seed)  # rows added to the embeddings start the same way every time
    model = hooks.load_model(plugins, recipe, quantization, stash)
    resize_embeddings(model, tokenizer)
    if not base:
        model = hooks.load_trained_weights(plugins, recipe, model, run_dir, stash)
    model = on_best_device(model)
    model.eval()
    cache_on(model)
    return Trained(model=model, tokenizer=tokenizer, recipe=recipe, run_dir=run_dir, stash=stash,
                   processor=stash.get(PROCESSOR), label=LABELS[bool(base)])


def resize_embeddings(model, tokenizer) -> None:
    """Embedding rows for the tokens the run added (the run folder's tokenizer is larger than the base's)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))


def on_best_device(model):
    """The model on CUDA when there is one; a quantized model is already placed where it loaded."""
    quantized = getattr(model, "hf_quantizer", None) is not None  # a PeftModel answers for its base
    return model if quantized else model.to(best_device())


def cache_on(model) -> None:
    """The KV cache on for generation (a full run's saved config has it off, as training left it)."""
    config = getattr(model, "config", None)
    for part in (config, getattr(config, "text_config", None)):
        if part is not None and hasattr(part, "use_cache"):
            part.use_cache = True


def _seed(seed) -> None:
    from transformers import set_seed

    set_seed(seed)
