"""Full fine-tuning: no ``adapter`` key. Every weight trains, or only those
matching ``unfrozen_parameters`` (regexes over parameter names), except the
modules a model family keeps frozen (``stash[FROZEN_MODULES]``: a vision
model's vision tower, say).

With an adapter (``adapter: lora`` / ``qlora``), ``unfrozen_parameters`` trains the matching
parameters of the base model beside the adapter, as Axolotl does: a trainer callback unfreezes
them when the trainer is built (before the optimizer exists). peft saves only the adapter, so
``save_artifacts`` writes them to ``unfrozen_parameters.safetensors`` in the run folder (and each
checkpoint), under the base model's own parameter names; loading the run (``ftcore eval``,
``generate``, ``chat``) puts them back on the base before the adapter goes on, and a resumed run
takes them from its checkpoint. 4-bit or 8-bit quantized weights cannot train and are refused.
"""

import re
from pathlib import Path

from pydantic import Field

from ftcore.api import FROZEN_MODULES, FtcoreError, RecipeKeys, StashKey, get_logger, hookimpl

FTCORE_CONTRACT = "1"

log = get_logger(__name__)


class FullKeys(RecipeKeys):
    unfrozen_parameters: list[str] | None = Field(
        None, description="regexes of parameter names to train: the only ones under full fine-tuning, "
                          "beside the adapter under lora/qlora")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(FullKeys)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for i, pattern in enumerate(recipe.unfrozen_parameters or []):
        try:
            re.compile(pattern)
        except re.error as exc:
            error(f"unfrozen_parameters[{i}]", f"not a regular expression: {exc}")


@hookimpl(trylast=True)
def inject_adapter(recipe, model, stash):
    if recipe.adapter is not None:
        return None
    patterns = [re.compile(p) for p in recipe.unfrozen_parameters or []]
    frozen = [re.compile(p) for p in stash.get(FROZEN_MODULES, [])]  # a model family's modules that stay frozen
    for name, parameter in model.named_parameters():
        trains = not patterns or any(p.match(name) for p in patterns)
        parameter.requires_grad_(trains and not any(f.search(name) for f in frozen))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.debug(f"full fine-tuning: training {trainable:,} of {total:,} parameters")  # the summary shows it
    return model


# ── unfrozen_parameters beside an adapter ────────────────────────────────────

UNFROZEN_FILE = "unfrozen_parameters.safetensors"
#: The base-model parameter names ``unfrozen_parameters`` made trainable beside the adapter.
UNFROZEN: StashKey[list] = StashKey("full.unfrozen_beside_adapter", "base parameters trained beside the adapter")
_WRAPPERS = (".original_module.", ".modules_to_save.")  # peft's own full copies (lora_modules_to_save)


def base_parameters(model) -> dict:
    """``{base model parameter name: parameter}`` of a model under peft (or not), adapter weights excluded."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = {}
    for name, parameter in base.named_parameters():
        if "lora_" in name or any(w in name for w in _WRAPPERS):
            continue
        found[name.replace(".base_layer.", ".")] = parameter  # a LoRA-wrapped layer's own weight
    return found


def unfreeze_beside_adapter(recipe, model, stash) -> list[str]:
    """Make the base parameters matching ``unfrozen_parameters`` trainable; return their names."""
    patterns = [re.compile(p) for p in recipe.unfrozen_parameters or []]
    frozen = [re.compile(p) for p in stash.get(FROZEN_MODULES, [])]
    names = []
    for name, parameter in base_parameters(model).items():
        if not any(p.match(name) for p in patterns) or any(f.search(name) for f in frozen):
            continue
        if not parameter.is_floating_point():
            raise FtcoreError(f"unfrozen_parameters: {name} is quantized ({parameter.dtype}, adapter: "
                              f"{recipe.adapter}) and cannot train; match only unquantized parameters (norms, "
                              f"embeddings, lm_head), or use adapter: lora on a 16-bit base")
        if str(parameter.dtype) == "torch.float16":  # fp16 mixed precision cannot unscale fp16 gradients
            parameter.data = parameter.data.float()
        parameter.requires_grad_(True)
        names.append(name)
    if names:
        count = sum(base_parameters(model)[n].numel() for n in names)
        log.info(f"unfrozen_parameters: training {len(names)} base parameter(s) ({count:,} values) beside the "
                 f"{recipe.adapter} adapter; saved to {UNFROZEN_FILE}")
    else:
        log.warning(f"notice: unfrozen_parameters matches no parameter of the base model (names look like "
                    f"{next(iter(base_parameters(model)), '?')}); only the adapter trains")
    stash[UNFROZEN] = names
    return names


def save_unfrozen(model, names, folder) -> str:
    from safetensors.torch import save_file

    parameters = base_parameters(model)
    save_file({n: parameters[n].detach().cpu().contiguous() for n in names}, str(Path(folder) / UNFROZEN_FILE))
    return UNFROZEN_FILE


def load_unfrozen(model, folder) -> list[str]:
    """Copy ``unfrozen_parameters.safetensors`` from ``folder`` onto ``model``'s base parameters."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / UNFROZEN_FILE))
    parameters = base_parameters(model)
    missing = sorted(set(saved) - set(parameters))
    if missing:
        raise FtcoreError(f"{Path(folder) / UNFROZEN_FILE} has parameters the base model lacks: "
                          f"{', '.join(missing[:3])}; it was trained on another base model")
    with torch.no_grad():
        for name, tensor in saved.items():
            if parameters[name].shape != tensor.shape:
                raise FtcoreError(f"{Path(folder) / UNFROZEN_FILE}: {name} has shape {tuple(tensor.shape)}, the "
                                  f"base model's {tuple(parameters[name].shape)}")
            if parameters[name].dtype != tensor.dtype and tensor.dtype == torch.float32:
                parameters[name].data = parameters[name].data.float()  # trained in fp32 (an fp16 run)
            parameters[name].copy_(tensor)
    return sorted(saved)


def unfrozen_callback(recipe, stash):
    """Unfreeze when the trainer is built (before its optimizer); save beside each checkpoint; reload on resume."""
    from transformers import TrainerCallback

    class UnfrozenBesideAdapter(TrainerCallback):
        model = None

        def on_init_end(self, args, state, control, model=None, **kwargs):
            self.model = model
            unfreeze_beside_adapter(recipe, model, stash)

        def on_train_begin(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.global_step > 0 and (checkpoint / UNFROZEN_FILE).is_file():  # resumed from it
                load_unfrozen(self.model, checkpoint)

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and stash.get(UNFROZEN) and checkpoint.is_dir():
                save_unfrozen(self.model, stash[UNFROZEN], checkpoint)

    return UnfrozenBesideAdapter()


@hookimpl(trylast=True)
def trainer_callbacks(recipe, register, stash):
    if recipe.adapter is not None and recipe.unfrozen_parameters:
        register(unfrozen_callback(recipe, stash))


@hookimpl(trylast=True)
def save_artifacts(recipe, model, output_dir, stash):
    if recipe.adapter is None or not stash.get(UNFROZEN):
        return None
    return [save_unfrozen(model, stash[UNFROZEN], output_dir)]


@hookimpl(trylast=True)
def load_trained_weights(recipe, model, run_dir):
    """A finished full fine-tuning run: the model saved in the run folder, with the base's class and dtype.

    The base that was loaded only tells the class, precision and attention kernel (a vision model's
    class, say); the weights come from ``run_dir``. Memory peaks at two copies while both exist.

    Under an adapter this plugin does not answer (``None``), but first puts the base parameters a run
    trained beside its adapter (``unfrozen_parameters.safetensors``) on the base, which the adapter's
    plugin then wraps: ``full`` is listed after ``lora`` in ``BUILTINS``, so it is asked first.
    """
    if recipe.adapter is not None:
        if (Path(run_dir) / UNFROZEN_FILE).is_file():
            load_unfrozen(model, run_dir)
        return None
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not any(run_dir.glob("*.safetensors")):
        raise FtcoreError(f"{run_dir} has no fine-tuned model (config.json and *.safetensors): the full "
                          f"fine-tuning run saved none there, or the files were removed")
    attention = getattr(model.config, "_attn_implementation", None)
    kwargs = {"attn_implementation": attention} if attention else {}
    return type(model).from_pretrained(str(run_dir), dtype=model.dtype, trust_remote_code=recipe.trust_remote_code,
                                       **kwargs)
