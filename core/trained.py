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

Before anything loads, ``run_state`` reads ``run.json``: a run that did not complete
(interrupted, failed, still training, killed, no run.json) gets one warning line saying what its
weights are (``ftcore merge`` refuses it unless ``--force``: the same check), a folder with no model
at all is an error, and a base model that is a Hub id not in the local cache fails at once offline
(``require_base``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftcore import hooks
from ftcore.errors import FtcoreError
from ftcore.log import get_logger
from ftcore.stash import PROCESSOR, Stash

LABELS = {False: "fine-tuned", True: "base"}

log = get_logger(__name__)


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


# ── is this a finished run? one check, shared by eval, generate, chat and merge ──

COMPLETED = "completed"
CHECKPOINT = "checkpoint"  # the status of a checkpoint-N folder given instead of a run folder
_WEIGHTS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "config.json",
            "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class RunState:
    """What a run folder's ``run.json`` says, in words.

    ``status``: run.json's status ("completed", "running", "interrupted", "failed"), ``None`` without a
    run.json, ``"checkpoint"`` for a ``checkpoint-N`` folder. ``problem``: one sentence saying why its
    weights are not a finished run's final ones (``None`` when they are). ``advice``: what to do about it.
    ``has_model``: the folder holds model or adapter files at all.
    """

    run_dir: Path
    status: str | None
    info: dict
    problem: str | None = None
    advice: str = ""
    has_model: bool = True

    @property
    def completed(self) -> bool:
        return self.problem is None

    def need_model(self) -> None:
        """A clear error when the folder holds no model at all (naming the run's status)."""
        if self.has_model:
            return
        why = f": {self.problem}" if self.problem else f" although {self.run_dir / 'run.json'} says it completed"
        raise FtcoreError(f"{self.run_dir} holds no trained model (no adapter_config.json and adapter weights, "
                          f"no config.json and model weights){why}{f'; {self.advice}' if self.advice else ''}")

    def check(self, *, doing: str = "using", verb: str = "go on", force_flag: str | None = None,
              forced: bool = False) -> None:
        """A warning line when the run did not complete; with ``force_flag`` an error instead, unless ``forced``.

        ``doing``: the command's verb in the warning ("merging it anyway"), ``verb`` in the error ("or merge
        anyway with --force"). A checkpoint folder is named on purpose: always a warning.
        """
        if self.problem is None:
            return
        refuse = force_flag is not None and self.status != CHECKPOINT
        if refuse and not forced:
            raise FtcoreError(f"{self.problem}; {self.advice + ', or ' if self.advice else ''}"
                              f"{verb} anyway with {force_flag}")
        log.warning(f"warning: {self.problem}; {doing} it anyway{f' ({force_flag})' if refuse else ''}")


def run_state(run_dir) -> RunState:
    """The state of run folder ``run_dir`` (or of one of its ``checkpoint-N`` folders); a clear error for a
    folder that is not one (no such folder, no recipe.yaml, a run.json that is not JSON)."""
    from ftcore.artifacts import LOCK, lock_holder
    from ftcore.checkpoints import complete_checkpoints

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FtcoreError(f"{run_dir}: no such folder; give the output_dir of a run made by `ftcore run`")
    if not (run_dir / "recipe.yaml").is_file():
        raise FtcoreError(f"{run_dir} is not an ftcore run folder (it has no recipe.yaml); give the output_dir "
                          f"of a run made by `ftcore run`")
    has_model = any((run_dir / name).is_file() for name in _WEIGHTS) or any(run_dir.glob("model-*.safetensors"))
    state = RunState(run_dir, None, {}, has_model=has_model)
    resume = f"resume it with `ftcore run {run_dir / 'recipe.yaml'} --resume`"
    if (run_dir / "trainer_state.json").is_file() and run_dir.name.startswith("checkpoint-"):
        step, total = _steps(run_dir)
        state.status = CHECKPOINT
        state.problem = (f"{run_dir} is a checkpoint saved at step {step}{f' of {total}' if total else ''}, "
                         f"not the final model of a finished run")
        return state
    manifest = run_dir / "run.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        state.problem = (f"{run_dir} has no run.json, so the run never started training (it stopped before "
                         f"its first step, or run.json was removed): nothing says its weights are a finished run's")
        state.advice = f"train it with `ftcore run {run_dir / 'recipe.yaml'}`"
        return state
    except (OSError, ValueError) as exc:
        raise FtcoreError(f"{manifest}: not valid JSON ({exc})") from None
    state.info = info if isinstance(info, dict) else {}
    state.status = status = state.info.get("status")
    if status == COMPLETED:
        return state
    found = complete_checkpoints(run_dir)
    newest = found[-1] if found else None
    step, total = _steps(newest) if newest else (None, None)
    at_step = f"step {step}{f' of {total}' if total else ''}" if newest else None
    older = has_model and _weights_older_than_run(run_dir, state.info)
    if newest:
        kept = f"its newest complete checkpoint is {newest} ({at_step})"
    else:
        kept = "it saved no checkpoint"
    if status == "running":
        holder = lock_holder(run_dir)
        if holder:
            state.problem = (f"{manifest} says the run is still training ({holder} holds {run_dir / LOCK}): "
                             f"its weights are not final until it ends")
            state.advice = "wait for it to finish"
            return state
        state.problem = (f"{manifest} says \"running\", but no process is training in {run_dir}: the run was "
                         f"killed (SIGKILL, a crash, a lost machine) before it finished, so it wrote no final "
                         f"model{'; the weights at the top of the folder are from an earlier attempt' if older else ''}"
                         f"{'; the weights at the top of the folder are not known to be complete' if has_model and not older else ''}"
                         f"; {kept}")
        state.advice = resume
    elif status == "interrupted":
        if has_model and not older and newest:
            state.problem = (f"{manifest} says the run was interrupted at {at_step} (Ctrl-C or SIGTERM): its "
                             f"weights are the ones saved when it stopped (the same as {newest.name}), partly "
                             f"trained, not the end of the run")
        else:
            state.problem = (f"{manifest} says the run was interrupted (a second Ctrl-C stops at once, saving "
                             f"nothing){': the weights at the top of the folder are from an earlier attempt' if older else ''}"
                             f"; {kept}")
        state.advice = resume
    elif status == "failed":
        state.problem = (f"{manifest} says the run failed, and a failed run saves no final model"
                         f"{': the weights at the top of the folder are from an earlier attempt' if older else ''}"
                         f"{': the weights at the top of the folder are not known to be complete' if has_model and not older else ''}"
                         f"; {kept}")
        state.advice = f"fix what failed, then {resume}"
    else:
        state.problem = (f"{manifest} says the run's status is {status!r}, not \"completed\": nothing says its "
                         f"weights are a finished run's")
        state.advice = resume
    return state


def _steps(checkpoint) -> tuple[int | None, int | None]:
    """(global step, max steps) from a checkpoint's trainer_state.json."""
    try:
        data = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        return int(data["global_step"]), (int(data["max_steps"]) if data.get("max_steps") else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _weights_older_than_run(run_dir: Path, info: dict) -> bool:
    """True when the folder's weight files predate the run's start (run.json's ``started``): an earlier attempt's."""
    from datetime import datetime

    try:
        started = datetime.strptime(str(info.get("started")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return False
    times = [(run_dir / name).stat().st_mtime for name in _WEIGHTS if (run_dir / name).is_file()]
    return bool(times) and max(times) < started - 1


def check_run_dir(run_dir, *, base: bool = False) -> RunState:
    """The state of a run folder to load from: a clear error when it is not one, or (unless ``base``: the
    base model alone is wanted) when it holds no model; a warning line when the run did not complete."""
    state = run_state(run_dir)
    if not base:
        state.need_model()
        state.check()
    return state


def require_base(key: str, value) -> None:
    """One clear line before anything loads when base model ``value`` (from ``key``) is a Hub id that is not in
    the local Hugging Face cache and the Hub cannot be reached (offline, no network): not transformers' retries."""
    from ftcore import hub

    if value is None or Path(str(value)).expanduser().exists():
        return
    hub.require_hub(key, str(value), "a Hugging Face Hub model id not in the local Hugging Face cache")


def read_recipe(run_dir, plugins, overrides=()):
    """The run's ``recipe.yaml``, validated with ``overrides`` (``key=value``), as ``ftcore run`` would."""
    from ftcore.recipe import load_raw, validate

    raw = load_raw(str(Path(run_dir) / "recipe.yaml"), list(overrides), hooks.registered_recipes(plugins))
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
    check_run_dir(run_dir, base=base)
    recipe = read_recipe(run_dir, plugins, overrides)
    for key in ("base_model", "base_model_config"):  # offline: a Hub id that is not cached fails here, at once
        require_base(key, getattr(recipe, key, None))
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
