"""LoRA through peft: ``adapter: lora``, and ``adapter: qlora`` (LoRA on the qlora plugin's 4-bit base).

Target selection: ``lora_target_modules`` (names or one regex), or
``lora_target_linear: true`` for every linear layer except the output head
(with ``lora_target_modules`` too: both, as in Axolotl), or, when neither is set, ``stash[ADAPTER_TARGETS]`` (set by a model family's
``prepare_model``) or peft's default for the architecture.
``stash[ADAPTER_SCOPE]`` (a module-path regex, e.g. the language model of a
vision model) keeps listed names inside it.

Parameters (``lora_target_parameters``): LoRA on ``nn.Parameter`` tensors that no
linear layer holds, above all the fused expert weights of mixture-of-experts models
(``mlp.experts.gate_up_proj``, 3-D, one slice per expert in transformers 5): each
name is a parameter's full name or its ending, as peft's ``target_parameters``
matches it, and every name must match a parameter of the model. peft adapts each
expert with its own low-rank pair, without dropout and without DoRA (both refused
at validation, as in Axolotl). Saved in the adapter's config, so plain peft reloads it.

New tokens: when the recipe's ``special_tokens`` or ``tokens`` added tokens the
vocabulary lacked (``stash[NEW_TOKEN_IDS]``, set by the embeddings plugin's
``prepare_model``), their embedding rows are untrained, and low-rank updates of the
attention and MLP layers cannot teach the model to read or write them. The
input embeddings and the output layer are then added to ``modules_to_save``
(trained in full and saved with the adapter), with a notice saying so.

``ftcore merge`` (at the end of this module, registered below) folds a run's adapter into its
original 16-bit base.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ftcore.api import (ADAPTER_SCOPE, ADAPTER_TARGETS, NEW_TOKEN_IDS, PATH, FtcoreError, check_source,
                        check_weights, MissingPluginError,
                        RecipeKeys, get_logger, hookimpl, require_base, run_state, transformers_class)

FTCORE_CONTRACT = "1"

log = get_logger(__name__)


class LoraKeys(RecipeKeys):
    """Axolotl's LoRA keys (top level)."""

    lora_r: int = Field(8, ge=1, description="rank of the LoRA update matrices")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling: the update is scaled by lora_alpha / lora_r")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target_modules: list[str] | str | None = Field(
        None, description="module names (or one regex) to adapt; unset: the model family's default")
    lora_target_linear: bool | None = Field(None, description="adapt every linear layer except the output head")
    lora_modules_to_save: list[str] | None = Field(None, description="modules trained in full and saved with the adapter")
    lora_model_dir: str | None = Field(None, description="start from this existing adapter", json_schema_extra=PATH)
    lora_fan_in_fan_out: bool | None = Field(None, description="the base stores weights as (fan_in, fan_out) (GPT-2 style)")
    peft_use_dora: bool | None = Field(None, description="DoRA: weight-decomposed LoRA")
    peft_use_rslora: bool | None = Field(None, description="rank-stabilised scaling lora_alpha / sqrt(lora_r)")
    peft_layers_to_transform: list[int] | None = Field(None, description="only these layer indices get adapters")
    lora_target_parameters: list[str] | None = Field(
        None, description="parameters (not modules) to adapt, by full name or ending, e.g. the fused expert "
                          "weights of a mixture-of-experts model: mlp.experts.gate_up_proj, mlp.experts.down_proj")

    @field_validator("lora_target_parameters", mode="before")
    @classmethod
    def _one_name_or_a_list(cls, value):
        if isinstance(value, str):
            value = [value]  # one parameter name
        if isinstance(value, list):
            for name in value:
                if isinstance(name, str) and (not name.strip() or name != name.strip() or name.startswith(".")
                                              or name.endswith(".")):
                    raise ValueError(f"'{name}' is not a parameter name; give names such as "
                                     f"mlp.experts.gate_up_proj (a parameter's full name or its ending)")
        return value


@hookimpl(trylast=True)
def recipe_keys(register):
    register(LoraKeys)


@hookimpl(trylast=True)
def register_adapters(register):
    register("lora", "LoRA through peft on a 16-bit (or 8-bit) base")


@hookimpl(trylast=True)
def register_commands(register):
    register("merge", MERGE_HELP, configure_merge, merge_command)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if recipe.adapter is None:
        for key in ("lora_target_modules", "lora_target_linear", "lora_model_dir", "lora_modules_to_save",
                    "lora_target_parameters"):
            if getattr(recipe, key):
                error(key, "is set but adapter is absent (full fine-tuning); set adapter: lora, or remove it")
    elif recipe.lora_target_parameters and recipe.adapter in LORA_ADAPTERS:
        # peft's wrapper of a parameter (lora.ParamWrapper) has no dropout and no DoRA; Axolotl asks the same
        if recipe.lora_dropout:
            error("lora_dropout", f"must be 0 with lora_target_parameters (LoRA on parameters such as fused "
                                  f"expert weights has no dropout), not {recipe.lora_dropout:g}")
        if recipe.peft_use_dora:
            error("peft_use_dora", "DoRA does not work with lora_target_parameters (LoRA on parameters such as "
                                   "fused expert weights); remove one of them")
    # unfrozen_parameters with an adapter: trained beside it, as in Axolotl (the full plugin's keys)


def linear_layer_names(model) -> list[str]:
    """Leaf names of every linear layer, except the output head."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for full_name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__ and hasattr(module, "weight"):
            names.add(full_name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return sorted(names)


def embedding_layer_names(model) -> list[str]:
    """Leaf names of the input embeddings and the output layer (``embed_tokens``, ``lm_head``)."""
    layers = [layer for layer in (model.get_input_embeddings(), model.get_output_embeddings()) if layer is not None]
    names = []
    for full_name, module in model.named_modules():
        if any(module is layer for layer in layers):
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def modules_to_save(recipe, model, stash) -> list[str] | None:
    """``lora_modules_to_save``, plus the embedding and output layers when the recipe added tokens."""
    chosen = list(recipe.lora_modules_to_save or [])
    new_ids = stash.get(NEW_TOKEN_IDS)
    if not new_ids:
        return chosen or None
    added = [name for name in embedding_layer_names(model) if name not in chosen]
    if added:
        log.warning(f"notice: the recipe added {len(new_ids)} token(s) the vocabulary lacked (special_tokens / tokens); "
              f"under LoRA their embeddings would stay untrained, so {' and '.join(added)} train in full and are "
              f"saved with the adapter (as if listed in lora_modules_to_save); the adapter grows accordingly")
    return chosen + added


def target_union(linear: list[str], named) -> list[str] | str:
    """``lora_target_linear`` with ``lora_target_modules``: every linear layer and the named modules too, as
    in Axolotl. A regex (one string) is kept as a regex, widened to the linear layers' names."""
    if not named:
        return linear
    if isinstance(named, str):
        import re

        return rf"(?:{named})|(?:.*\.)?(?:{'|'.join(re.escape(name) for name in linear)})"
    return sorted(set(linear) | set(named))


def lora_config(recipe, model, stash):
    """The ``LoraConfig`` the recipe asks for; ``stash`` gives the model family's targets and the new tokens."""
    from peft import LoraConfig, TaskType

    if recipe.lora_target_linear:
        targets = target_union(linear_layer_names(model), recipe.lora_target_modules)
    else:  # a list, one regex string, or None: the model family's default (below), else peft's
        targets = recipe.lora_target_modules or stash.get(ADAPTER_TARGETS)
    scope = stash.get(ADAPTER_SCOPE)  # a module path adapters stay under (a vision model's language model)
    if scope and isinstance(targets, list):
        import re

        targets = rf"{scope}\.(.*\.)?({'|'.join(re.escape(name) for name in targets)})"
    parameters = recipe.lora_target_parameters or None
    if parameters:
        check_target_parameters(model, parameters)
    saved = modules_to_save(recipe, model, stash)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        modules_to_save=saved,
        ensure_weight_tying=tied and bool(saved),  # tied input and output embeddings stay one matrix
        fan_in_fan_out=bool(recipe.lora_fan_in_fan_out),
        use_dora=bool(recipe.peft_use_dora),
        use_rslora=bool(recipe.peft_use_rslora),
        layers_to_transform=recipe.peft_layers_to_transform,
        target_parameters=parameters,
    )


def check_target_parameters(model, names: list[str]) -> None:
    """Every ``lora_target_parameters`` name matches a parameter of ``model`` as peft matches them (the full
    name, or its ending after a dot); peft itself only warns about a name that matches nothing."""
    own = [name for name, _ in model.named_parameters()]
    missing = [target for target in names if not any(name == target or name.endswith("." + target) for name in own)]
    if not missing:
        return
    linear = {f"{full}.weight" for full, module in model.named_modules() if "Linear" in type(module).__name__}
    # candidates: parameters of at least two dimensions that no linear layer or embedding holds, by their ending
    candidates = sorted({name.split(".layers.")[-1].split(".", 1)[-1] for name, p in model.named_parameters()
                         if p.dim() >= 2 and name not in linear and "embed" not in name})
    hint = f"; parameters outside linear layers in this model: {', '.join(candidates[:12])}" if candidates else \
        "; this model has no parameters outside its linear layers (adapt those with lora_target_modules)"
    raise FtcoreError(f"lora_target_parameters: {', '.join(missing)} match(es) no parameter of "
                      f"{type(model).__name__} (a name is a parameter's full name or its ending, such as "
                      f"mlp.experts.gate_up_proj){hint}")


# adapter: qlora is LoRA on the quantized base a quantization plugin loads (the qlora plugin registers
# the name, checks load_in_4bit and loads 4-bit; a third party's quantization_config may choose another
# scheme); the adapter itself is this plugin's, configured exactly as adapter: lora.
LORA_ADAPTERS = ("lora", "qlora")


@hookimpl(trylast=True)
def inject_adapter(recipe, model, stash):
    if recipe.adapter not in LORA_ADAPTERS:
        return None
    if recipe.adapter == "qlora" and getattr(model, "hf_quantizer", None) is None:
        raise MissingPluginError("adapter: qlora trains LoRA on a quantized base, but the model loaded unquantized "
                                 "because no plugin provides quantization for this recipe (adapter: 'qlora'); set "
                                 "load_in_4bit: true with the qlora plugin enabled, or use adapter: lora for a "
                                 "16-bit base")
    return wrap(recipe, model, stash)


def wrap(recipe, model, stash):
    """The model under LoRA as the recipe configures it."""
    from peft import PeftModel, get_peft_model

    if recipe.lora_model_dir:
        if Path(recipe.lora_model_dir).is_dir():
            check_weights("lora_model_dir", recipe.lora_model_dir, bool(getattr(recipe, "allow_pickle", False)),
                          adapter=True)
        try:
            peft_model = PeftModel.from_pretrained(model, recipe.lora_model_dir, is_trainable=True)
        except (OSError, ValueError) as exc:
            raise FtcoreError(f"lora_model_dir: cannot load an adapter from '{recipe.lora_model_dir}': {exc}") from exc
    else:
        try:
            peft_model = get_peft_model(model, lora_config(recipe, model, stash))
        except ValueError as exc:
            raise FtcoreError(f"lora_target_modules: {exc}") from exc
    trainable, total = peft_model.get_nb_trainable_parameters()
    config = peft_model.peft_config["default"]
    targets = config.target_modules or []
    where = targets if isinstance(targets, str) else ", ".join(sorted(targets))
    if getattr(config, "target_parameters", None):
        where = ", ".join(filter(None, [where, f"parameters {', '.join(config.target_parameters)}"]))
    # the run's start-up summary shows the trainable share; this line says where the adapter went
    log.info(f"{recipe.adapter}: r={recipe.lora_r} alpha={recipe.lora_alpha} on {where}")
    log.debug(f"{recipe.adapter}: trainable {trainable:,} of {total:,} parameters")
    return peft_model


@hookimpl(trylast=True)
def load_trained_weights(recipe, model, run_dir):
    """A finished run's adapter over its base (``ftcore eval``, ``generate``, ``chat``)."""
    if recipe.adapter not in LORA_ADAPTERS:
        return None
    from peft import PeftModel

    run_dir = Path(run_dir)
    if not (run_dir / ADAPTER_CONFIG).is_file() or not any(run_dir.glob("adapter_model.*")):
        raise FtcoreError(f"{run_dir} has no trained adapter ({ADAPTER_CONFIG} and adapter_model.safetensors): "
                          f"the run (adapter: {recipe.adapter}) saved none there, or the files were removed")
    check_weights(str(run_dir), run_dir, bool(getattr(recipe, "allow_pickle", False)), adapter=True)
    try:
        return PeftModel.from_pretrained(model, str(run_dir))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise FtcoreError(f"the adapter in {run_dir} does not fit the base model '{recipe.base_model}': "
                          f"{exc}") from exc


# ── ftcore merge RUN_DIR [--out DIR] ─────────────────────────────────────────
# ``ftcore merge RUN_DIR [--out DIR]``: fold a run's LoRA adapter into its base model.
#
#     ftcore merge outputs/my-run                       # -> outputs/my-run/merged
#     ftcore merge outputs/my-run --out my-model
#     ftcore merge --base meta-llama/Llama-3.1-8B-Instruct --adapter some/adapter --out my-model
#
# The base is always the original model in 16-bit (bf16 where the GPU supports
# it, else fp16) or fp32 on CPU, never a quantized one: a QLoRA run trained on a
# 4-bit copy of ``base_model``, and its adapter is folded into the unquantized
# weights. The result is a plain transformers model (``config.json`` +
# ``*.safetensors``) with the run's tokenizer and chat template. It is written
# to a temporary folder next to ``--out`` and renamed at the end, so a failure
# leaves nothing half-written. A run whose run.json does not say "completed"
# (interrupted, failed, still training or killed) is refused unless --force
# (ftcore.api.run_state: the check eval, generate and chat share).
#
# The lora plugin registers this command (``register_commands``); importing this
# module imports neither torch nor transformers, so ``ftcore --help`` stays fast.

MERGE_HELP = "merge a run's LoRA adapter into its base model and save a plain transformers model"

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = ("auto", "bf16", "fp16", "fp32")


def configure_merge(parser):
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="a run folder written by `ftcore run` (adapter files and recipe.yaml)")
    parser.add_argument("--out", metavar="DIR", help="where to write the merged model (default: RUN_DIR/merged)")
    parser.add_argument("--base", metavar="MODEL",
                        help="base model (folder or Hub id); with --adapter, instead of RUN_DIR "
                             "(default: the adapter's base_model_name_or_path)")
    parser.add_argument("--adapter", metavar="DIR", help="a peft LoRA adapter folder, instead of RUN_DIR")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="precision to merge and save in (auto: bf16 on a GPU that supports it, "
                             "else fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--force", action="store_true",
                        help="merge a run whose run.json does not say it completed (interrupted, failed, "
                             "still running), with a warning")


# ---------------------------------------------------------------- what to merge (no torch needed)

def _merge_read_recipe(run_dir: Path) -> dict:
    import yaml

    file = run_dir / "recipe.yaml"
    if not file.is_file():
        raise FtcoreError(f"{run_dir} has no recipe.yaml, so it is not an ftcore run folder; for an adapter "
                          f"from elsewhere use: ftcore merge --base MODEL --adapter {run_dir} --out DIR")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise FtcoreError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not data.get("base_model"):
        raise FtcoreError(f"{file} names no base_model; cannot tell which model to merge into")
    return data


def _merge_check_adapter(adapter_dir: Path, run_folder: bool) -> dict:
    import json

    if not adapter_dir.is_dir():
        raise FtcoreError(f"no such folder: {adapter_dir}")
    file = adapter_dir / ADAPTER_CONFIG
    if not file.is_file():
        if (adapter_dir / "config.json").is_file() and any(adapter_dir.glob("*.safetensors")):
            what = "a full fine-tuning run" if run_folder else "a complete model, not an adapter"
            raise FtcoreError(f"nothing to merge: {adapter_dir} holds {what} (config.json and model weights, "
                              f"no {ADAPTER_CONFIG}); it already loads with "
                              f"AutoModelForCausalLM.from_pretrained('{adapter_dir}')")
        raise FtcoreError(f"nothing to merge: {adapter_dir} has no {ADAPTER_CONFIG} (no adapter was saved there)")
    config = json.loads(file.read_text(encoding="utf-8"))
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in ("LORA", ""):
        raise FtcoreError(f"{file}: peft_type {peft_type} cannot be merged into the weights; "
                          f"only LoRA adapters can (load it with PeftModel.from_pretrained instead)")
    if not any(adapter_dir.glob("adapter_model.*")):
        raise FtcoreError(f"nothing to merge: {adapter_dir} has {ADAPTER_CONFIG} but no adapter_model.safetensors")
    return config


def _merge_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _merge_check_out(out: Path, sources: list[Path], overwrite: bool, run_folder: bool) -> None:
    for i, source in enumerate(sources):
        if _merge_inside(source, out) and i > 0:
            raise FtcoreError(f"--out {out} is or contains the base model's folder {source}; "
                              f"choose another folder")
        if _merge_inside(source, out):
            what = "run folder" if run_folder else "adapter folder"
            raise FtcoreError(
                f"--out {out} is the {what} {source}{' or contains it' if out != source else ''}: ftcore never "
                f"merges in place. The merged weights would replace the adapter the run saved, and a QLoRA "
                f"run's base is 4-bit, so merging into that quantized base would lose precision; the merge "
                f"loads the original 16-bit base instead. Choose another folder, e.g. --out {source / 'merged'}")
    if out.exists() and not out.is_dir():
        raise FtcoreError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FtcoreError(f"--out {out} is not empty; pass --overwrite to replace it, or choose another folder")


# ---------------------------------------------------------------- the merge

def _merge_dtype(choice: str):
    import torch

    cuda = torch.cuda.is_available()
    if choice == "auto":
        choice = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    return choice, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice], cuda


def _merge_load_base(base: str, model_class: str | None, dtype, device: str, trust_remote_code: bool, revision,
                     overrides=None):
    """The 16-bit base, with the run's ``overrides_of_model_config`` set on its config as training set them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cls = transformers_class(model_class, AutoModelForCausalLM, "model_type")
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise FtcoreError(f"cannot load the base model '{base}': {exc}") from exc
    if getattr(config, "quantization_config", None):
        qc = config.quantization_config
        method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", "quantized")
        raise FtcoreError(f"the base model '{base}' is a quantized checkpoint ({method}); merging into a "
                          f"quantized base would round the merged weights to its precision. Give the original "
                          f"16-bit model with --base")
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    try:
        return cls.from_pretrained(base, config=config, dtype=dtype, device_map={"": device}, low_cpu_mem_usage=True,
                                   trust_remote_code=trust_remote_code, revision=revision)
    except OSError as exc:
        raise FtcoreError(f"cannot load the base model '{base}': {exc}") from exc


def _merge_load_tokenizer(sources, trust_remote_code: bool):
    from transformers import AutoTokenizer

    for source in sources:
        if Path(source).is_dir() and not (Path(source) / "tokenizer_config.json").is_file():
            continue
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code), source
        except (OSError, ValueError):
            continue
    return None, None


# the base parameters a run trained beside its adapter (unfrozen_parameters; written by the full plugin)
UNFROZEN_FILE = "unfrozen_parameters.safetensors"


def _merge_unfrozen(model, path: Path) -> None:
    """Put the base parameters trained beside the adapter on the base before the adapter merges into it."""
    import torch
    from safetensors.torch import load_file

    saved, parameters = load_file(str(path)), dict(model.named_parameters())
    wrong = sorted(n for n, t in saved.items() if n not in parameters or parameters[n].shape != t.shape)
    if wrong:
        raise FtcoreError(f"{path} does not fit the base model: {', '.join(wrong[:3])} missing or of another "
                          f"shape; it was trained on another base")
    print(f"merge: {len(saved)} base parameters trained beside the adapter, from {path.name}", flush=True)
    with torch.no_grad():
        for name, tensor in saved.items():
            parameters[name].copy_(tensor.to(parameters[name].dtype))


def merge_command(args) -> int:
    import os
    import shutil
    import time

    run_folder = args.run_dir is not None
    if run_folder and (args.base or args.adapter):
        raise FtcoreError("give either RUN_DIR, or --base/--adapter for an adapter from elsewhere, not both")
    if not run_folder and not args.adapter:
        raise FtcoreError("nothing to merge: give a run folder (ftcore merge RUN_DIR) "
                          "or an adapter (ftcore merge --base MODEL --adapter DIR --out DIR)")

    if run_folder:
        adapter_dir = Path(args.run_dir)
        if not adapter_dir.is_dir():
            raise FtcoreError(f"no such run folder: {adapter_dir}")
        recipe = _merge_read_recipe(adapter_dir)
        state = run_state(adapter_dir)  # what run.json says: completed, interrupted, failed, still running
        state.need_model()
        _merge_check_adapter(adapter_dir, run_folder=True)
        state.check(doing="merging", verb="merge", force_flag="--force", forced=args.force)
        base = str(recipe["base_model"])
        model_class = recipe.get("model_type")
        trust = bool(recipe.get("trust_remote_code"))
        allow_pickle = bool(recipe.get("allow_pickle"))
        revision = recipe.get("revision_of_model")
        out = Path(args.out) if args.out else adapter_dir / "merged"
        sources = [adapter_dir.resolve()]
        tokenizer_sources = [str(adapter_dir), recipe.get("tokenizer_config") or base]
        quantized = [bits for key, bits in (("load_in_4bit", "4-bit"), ("load_in_8bit", "8-bit")) if recipe.get(key)]
    else:
        if not args.out:
            raise FtcoreError("--out DIR is required with --adapter")
        adapter_dir = Path(args.adapter)
        config = _merge_check_adapter(adapter_dir, run_folder=False)
        base = args.base or config.get("base_model_name_or_path")
        if not base:
            raise FtcoreError(f"{adapter_dir / ADAPTER_CONFIG} names no base_model_name_or_path; give --base MODEL")
        model_class, trust, revision, allow_pickle = None, False, None, False
        out = Path(args.out)
        sources = [adapter_dir.resolve()]
        tokenizer_sources = [str(adapter_dir), base]
        quantized = []
    if Path(base).expanduser().exists():
        sources.append(Path(base).expanduser().resolve())
    _merge_check_out(out.resolve(), sources, args.overwrite, run_folder)
    # offline: a Hub id that is not cached fails here, in one line, before torch loads
    require_base("--base" if args.base else "base_model" if run_folder else
                 f"{adapter_dir / ADAPTER_CONFIG} base_model_name_or_path", base)

    start = time.time()
    import torch  # noqa: F401  (torch, transformers and peft load from here on)
    from peft import PeftModel

    name, dtype, cuda = _merge_dtype(args.dtype)
    device = "cuda" if cuda else "cpu"
    note = f" (the run trained on a {'/'.join(quantized)} copy of it; merging into the original weights)" \
        if quantized else ""
    print(f"merge: base {base} in {name} on {device}{note}", flush=True)
    check_weights(str(adapter_dir), adapter_dir, allow_pickle, adapter=True)
    check_source("base_model", base, trust_remote_code=trust, allow_pickle=allow_pickle, revision=revision)
    overrides = dict(recipe.get("overrides_of_model_config") or {}) if run_folder else {}
    model = _merge_load_base(base, model_class, dtype, device, trust, revision, overrides)

    tokenizer, tokenizer_source = _merge_load_tokenizer(tokenizer_sources, trust)
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer is not None and len(tokenizer) > rows:  # the run added tokens and resized the embeddings
        print(f"merge: resizing the embeddings {rows} -> {len(tokenizer)} for the tokens the run added", flush=True)
        model.resize_token_embeddings(len(tokenizer))

    if run_folder and (adapter_dir / UNFROZEN_FILE).is_file():
        _merge_unfrozen(model, adapter_dir / UNFROZEN_FILE)
    print(f"merge: adapter {adapter_dir}", flush=True)
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir), torch_device=device)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise FtcoreError(f"the adapter in {adapter_dir} does not fit the base model '{base}': {exc}") from exc
    model = model.merge_and_unload()

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        print(f"merge: saving to {out}", flush=True)
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    tok = f"tokenizer from {tokenizer_source}" if tokenizer is not None else "no tokenizer found (add one yourself)"
    print(f"merged: {out} ({size / 2**20:,.1f} MiB of weights, {name}; {tok}) in {time.time() - start:.1f}s")
    return 0
