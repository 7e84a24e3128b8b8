"""Multi-GPU engines: ``deepspeed:`` (ZeRO) and ``fsdp:`` / ``fsdp_config:`` (FSDP2 through accelerate).

Both are handed to ``transformers.Trainer`` as it expects them; ftcore adds no
engine of its own. This plugin owns the multi-process keys (``launcher``,
``deepspeed``, ``fsdp*``, ``ddp_*``), turns them into ``TrainingArguments``,
checks combinations that cannot work before anything loads, starts the
processes of ``ftcore run --nproc N`` (``launch_processes``, ``launch.py``),
joins each into the process group (``run_started``) and closes it
(``run_finished``). Four DeepSpeed configurations ship with ftcore's recipes
(``recipes/deepspeed/*.json``).

- ``deepspeed: zero1 | zero2 | zero3 | zero3_offload`` picks a shipped config;
  any other string is a path to the user's JSON; a mapping is the config
  itself. Axolotl's recipes name the files of Axolotl's repository
  (``deepspeed_configs/zero2.json``, ``zero3_bf16_cpuoffload_params.json``,
  ...): where such a file is absent, the preset with the same ZeRO stage and
  offloading stands in for it (``AXOLOTL_CONFIGS``), with a note at validation. ``auto`` values are filled by transformers' DeepSpeed integration
  from the recipe (micro batch, accumulation, clipping, precision) and from
  the model (bucket sizes from ``hidden_size``). Without an ``optimizer``
  section the recipe's ``optimizer`` and ``lr_scheduler`` are used.
- ``fsdp:`` takes Axolotl's list (``[full_shard, auto_wrap]``, ``offload``) or
  ``true``; ``fsdp_config:`` Axolotl's keys, with or without the ``fsdp_``
  prefix (``offload_params``, ``cpu_ram_efficient_loading``,
  ``transformer_layer_cls_to_wrap``, ``state_dict_type``,
  ``reshard_after_forward``, ``activation_checkpointing``,
  ``sharding_strategy``); ``fsdp_version`` (top level or in fsdp_config)
  defaults to 2. An ``fsdp_config:`` mapping alone turns FSDP on, as Axolotl's
  FSDP2 form (``fsdp_version: 2`` + ``fsdp_config:``) writes it; QLoRA under
  FSDP stores its 4-bit weights in bfloat16 unless ``bnb_4bit_quant_storage``
  says otherwise. Wrapping is per decoder layer: without
  ``transformer_layer_cls_to_wrap`` accelerate wraps the model's own
  ``_no_split_modules`` (``LlamaDecoderLayer`` for Llama).

No torch or transformers at import time: ``ftcore validate`` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ftcore.api import FtcoreError, RecipeKeys, StashKey, get_logger, hookimpl
from ftcore.plugins.distributed import launch
from ftcore.plugins.distributed.launch import Launcher

FTCORE_CONTRACT = "1"

log = get_logger(__name__)


class DistributedKeys(RecipeKeys):
    """Axolotl's multi-process keys (top level)."""

    launcher: Launcher | None = Field(
        None, description="ftcore: what starts the processes of `ftcore run --nproc N` (default torchrun)")
    deepspeed: str | dict[str, Any] | None = Field(
        None, description="zero1, zero2, zero3, zero3_offload (shipped), a DeepSpeed JSON file, or the config itself")
    fsdp: list[str] | str | None = Field(None, description="FSDP options: [full_shard, auto_wrap], offload")
    fsdp_config: dict[str, Any] | None = Field(None, description="Axolotl's fsdp_config keys, fsdp_ prefix optional")
    fsdp_version: int | None = Field(None, description="FSDP version; only 2 is supported")
    fsdp_final_state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"] | None = Field(
        None, description="accepted for Axolotl recipes; ftcore always saves the final model in full (safetensors)")
    ddp_timeout: int | None = Field(None, ge=1, description="seconds a collective waits before the run fails")
    ddp_bucket_cap_mb: int | None = Field(None, description="DDP gradient bucket size")
    ddp_broadcast_buffers: bool | None = Field(None, description="DDP: broadcast buffers at each forward")
    ddp_find_unused_parameters: bool | None = Field(None, description="DDP: look for parameters without gradients")


@hookimpl(trylast=True)
def recipe_keys(register):
    register(DistributedKeys)


PRESETS = ("zero1", "zero2", "zero3", "zero3_offload")

# Axolotl's fsdp_config keys (prefix dropped) -> transformers' fsdp_config keys.
FSDP_KEYS = {
    "version": "version",
    "offload_params": "cpu_offload",
    "cpu_offload": "cpu_offload",
    "cpu_ram_efficient_loading": "cpu_ram_efficient_loading",
    "auto_wrap_policy": "auto_wrap_policy",
    "transformer_layer_cls_to_wrap": "transformer_layer_cls_to_wrap",
    "min_num_params": "min_num_params",
    "state_dict_type": "state_dict_type",
    "reshard_after_forward": "reshard_after_forward",
    "activation_checkpointing": "activation_checkpointing",
    "sharding_strategy": None,  # FULL_SHARD / SHARD_GRAD_OP -> reshard_after_forward
    "sync_module_states": "sync_module_states",
    "use_orig_params": "use_orig_params",
    "forward_prefetch": "forward_prefetch",
    "backward_prefetch": "backward_prefetch",
    "limit_all_gathers": "limit_all_gathers",
    "cpu_offload_pin_memory": None,  # accelerate pins offloaded weights itself
    "final_state_dict_type": None,  # ftcore saves the final model in full whatever this says
    "mixed_precision_policy": None,  # FSDP2 follows the run's precision (bf16 / fp16)
}
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "auto_wrap", "offload")
STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")


def presets_folder() -> Path:
    from importlib.resources import files

    return Path(str(files("ftcore.recipes") / "deepspeed"))


# Axolotl's recipes name the DeepSpeed configs in Axolotl's own repository (``deepspeed_configs/zero2.json``).
# When that file is not there, ftcore's preset with the same ZeRO stage and offloading stands in for it:
# Axolotl's name -> (ftcore's preset, what the run gets).
SAME_PRECISION = "precision from the recipe's bf16 / fp16 keys"
AXOLOTL_CONFIGS = {
    "zero1": ("zero1", "ZeRO stage 1"),
    "zero1_torch_compile": ("zero1", "ZeRO stage 1, without DeepSpeed's torch.compile section: the same training, "
                                     "uncompiled"),
    "zero2": ("zero2", "ZeRO stage 2"),
    "zero2_torch_compile": ("zero2", "ZeRO stage 2, without DeepSpeed's torch.compile section: the same training, "
                                     "uncompiled"),
    "zero3": ("zero3", "ZeRO stage 3"),
    "zero3_bf16": ("zero3", f"ZeRO stage 3, {SAME_PRECISION}"),
    "zero3_cpuoffload": ("zero3_offload", "ZeRO stage 3, parameters and optimizer states offloaded to CPU memory"),
    "zero3_bf16_cpuoffload_all": ("zero3_offload", f"ZeRO stage 3, parameters and optimizer states offloaded to "
                                                   f"CPU memory, {SAME_PRECISION}"),
    "zero3_bf16_cpuoffload_params": ("zero3_offload", f"ZeRO stage 3, parameters offloaded to CPU memory and the "
                                                      f"optimizer states kept on the GPU as in Axolotl's file, "
                                                      f"{SAME_PRECISION}"),
}
KEEP_OPTIMIZER_ON_GPU = ("zero3_bf16_cpuoffload_params",)


def axolotl_config(value) -> tuple[str, str] | None:
    """``(preset, note)`` when ``value`` names one of Axolotl's shipped DeepSpeed configs
    (``[...]/deepspeed_configs/NAME.json``) and no such file exists; else ``None``."""
    if not isinstance(value, str) or value in PRESETS:
        return None
    path = Path(value).expanduser()
    if path.exists() or path.suffix != ".json" or path.parent.name != "deepspeed_configs" \
            or path.stem not in AXOLOTL_CONFIGS:
        return None
    preset, what = AXOLOTL_CONFIGS[path.stem]
    return preset, (f"deepspeed: '{value}' is Axolotl's shipped config {path.name}, which is not here; ftcore's "
                    f"preset {preset} stands in for it ({what})")


def deepspeed_config(value) -> dict:
    """The DeepSpeed config the recipe's ``deepspeed:`` names, as a dict (a fresh copy)."""
    if isinstance(value, dict):
        return json.loads(json.dumps(value))
    axolotl = axolotl_config(value)
    if axolotl:
        config = deepspeed_config(axolotl[0])
        if Path(value).stem in KEEP_OPTIMIZER_ON_GPU:
            config["zero_optimization"].pop("offload_optimizer", None)
        return config
    path = presets_folder() / f"{value}.json" if value in PRESETS else Path(value).expanduser()
    if not path.is_file():
        axolotl_names = (f"; of Axolotl's deepspeed_configs/ files, ftcore stands in for "
                         f"{', '.join(f'{name}.json' for name in AXOLOTL_CONFIGS)} when they are absent"
                         if Path(str(value)).parent.name == "deepspeed_configs" else "")
        raise FtcoreError(f"deepspeed: no file '{value}'; use one of the shipped configs "
                          f"({', '.join(PRESETS)}) or the path of a DeepSpeed JSON config{axolotl_names}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FtcoreError(f"deepspeed: '{path}' is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise FtcoreError(f"deepspeed: '{path}' must hold a JSON object (a DeepSpeed config), "
                          f"not {type(config).__name__}")
    return config


def zero_stage(config: dict) -> int:
    return int((config.get("zero_optimization") or {}).get("stage", 0) or 0)


def fsdp_enabled(recipe) -> bool:
    """FSDP is on: Axolotl's old list (``fsdp: [full_shard, auto_wrap]``) or its FSDP2 form, an
    ``fsdp_config:`` mapping (with ``fsdp_version: 2`` beside it or inside it)."""
    return bool(recipe.fsdp or recipe.fsdp_config)


def fsdp_config(recipe) -> dict:
    """``TrainingArguments.fsdp_config`` from the recipe's ``fsdp`` and ``fsdp_config`` (Axolotl's spelling)."""
    given = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in (recipe.fsdp_config or {}).items()}
    unknown = sorted(set(given) - set(FSDP_KEYS))
    if unknown:
        raise FtcoreError(f"fsdp_config: unknown key(s) {', '.join(unknown)}; allowed (with or without the "
                          f"fsdp_ prefix): {', '.join(FSDP_KEYS)}")
    config = {}
    options = recipe.fsdp.split() if isinstance(recipe.fsdp, str) else list(recipe.fsdp or [])
    for option in options:
        if option not in FSDP_OPTIONS:
            raise FtcoreError(f"fsdp: unknown option '{option}'; allowed: {', '.join(FSDP_OPTIONS)}")
        if option == "offload":
            config["cpu_offload"] = True
        elif option in ("full_shard", "shard_grad_op"):
            config["reshard_after_forward"] = option == "full_shard"
    for key, value in given.items():
        if FSDP_KEYS[key] is None and key != "sharding_strategy":
            continue
        if key == "sharding_strategy":
            strategy = str(value).upper()
            if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
                raise FtcoreError(f"fsdp_config.sharding_strategy: '{value}' is not available with FSDP2; "
                                  f"use FULL_SHARD or SHARD_GRAD_OP")
            config["reshard_after_forward"] = strategy == "FULL_SHARD"
        else:
            config[FSDP_KEYS[key]] = value
    version = int(config.get("version") or recipe.fsdp_version or 2)
    if version != 2:
        raise FtcoreError(f"fsdp_version: {version} is not supported; ftcore trains with FSDP2 (fsdp_version: 2)")
    config["version"] = 2
    policy = config.setdefault("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
    if policy not in ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"):
        raise FtcoreError(f"fsdp_config.auto_wrap_policy: '{policy}'; allowed: TRANSFORMER_BASED_WRAP, "
                          f"SIZE_BASED_WRAP, NO_WRAP")
    state = str(config.setdefault("state_dict_type", "FULL_STATE_DICT")).upper()
    if state not in STATE_DICT_TYPES:
        raise FtcoreError(f"fsdp_config.state_dict_type: '{state}'; allowed: {', '.join(STATE_DICT_TYPES)}")
    config["state_dict_type"] = state
    return config


INSTALL = {"deepspeed": "pip install 'ftcore[deepspeed]'", "accelerate": "pip install accelerate"}


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (``ftcore validate`` stays light)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _problems(recipe) -> list[tuple[str, str]]:
    """Combinations that cannot work, found before anything loads."""
    problems = []
    if (recipe.deepspeed or recipe.launcher == "deepspeed") and not _installed("deepspeed"):
        key = "deepspeed" if recipe.deepspeed else "launcher"
        return [(key, f"DeepSpeed is not installed; {INSTALL['deepspeed']}")]
    if recipe.launcher == "accelerate" and not _installed("accelerate"):
        return [("launcher", f"accelerate is not installed; {INSTALL['accelerate']}")]
    if recipe.deepspeed and fsdp_enabled(recipe):
        return [("fsdp", "deepspeed and fsdp are both set; choose one engine")]
    if recipe.fsdp_version and not fsdp_enabled(recipe):
        problems.append(("fsdp_version", "is set but FSDP is not configured; add an fsdp_config: mapping "
                                         "(Axolotl's FSDP2 form) or fsdp: [full_shard, auto_wrap]"))
    stage = None
    if recipe.deepspeed:
        try:
            stage = zero_stage(deepspeed_config(recipe.deepspeed))
        except FtcoreError as exc:
            return [("deepspeed", str(exc).removeprefix("deepspeed: "))]
        axolotl = axolotl_config(recipe.deepspeed)
        if axolotl:
            log.info(f"note: {axolotl[1]}")
    if fsdp_enabled(recipe):
        try:
            fsdp_config(recipe)
        except FtcoreError as exc:
            key, _, message = str(exc).partition(": ")
            problems.append((key, message))
    sharded = "ZeRO-3" if stage == 3 else "FSDP" if fsdp_enabled(recipe) else None
    # under FSDP the qlora plugin stores 4-bit weights in bfloat16 unless told otherwise, as Axolotl does
    storage = recipe.get("bnb_4bit_quant_storage")
    if sharded == "FSDP" and storage is None:
        storage = "bfloat16"
    if sharded and recipe.get("load_in_8bit"):
        problems.append(("load_in_8bit", f"8-bit (LLM.int8) weights cannot be sharded by {sharded}; use "
                                         f"adapter: qlora with load_in_4bit, or ZeRO-2 / DDP for 8-bit LoRA"))
    elif sharded and recipe.get("load_in_4bit") and storage in (None, "uint8"):
        problems.append(("bnb_4bit_quant_storage", f"QLoRA under {sharded} shards the 4-bit weights, which "
                                                   f"needs them stored in a float type; set "
                                                   f"bnb_4bit_quant_storage: bfloat16 (the run's precision)"))
    return problems


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for key, message in _problems(recipe):
        error(key, message)


def _let_deepspeed_run_on_cpu():
    """Let accelerate start DeepSpeed over gloo when there is no GPU (tests, CPU-only machines); returns the undo.

    accelerate 1.x starts DeepSpeed only on an accelerator: on CPU its process group
    comes out as one process, and DeepSpeed's batch check then fails. DeepSpeed itself
    runs ZeRO on CPU; until the undo is called, accelerate's backend choice is "gloo,
    several CPU processes" in that one case.
    """
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState.__dict__["_prepare_backend"]

    def prepare_backend(state, cpu=False, sagemaker_dp=False, backend=None):
        chosen, kind = original(state, cpu, sagemaker_dp, backend)
        if (kind == DistributedType.NO and not cpu and launch.world_size() > 1
                and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"):
            return "gloo", DistributedType.MULTI_CPU
        return chosen, kind

    PartialState._prepare_backend = prepare_backend
    return lambda: setattr(PartialState, "_prepare_backend", original)


def _ignore_warning(**rule):
    """``warnings.filterwarnings("ignore", **rule)`` for this run; returns the undo (which removes only this rule)."""
    import warnings

    before = list(warnings.filters)
    warnings.filterwarnings("ignore", **rule)
    added = warnings.filters[0]

    def undo():
        if added not in before and added in warnings.filters:  # a rule that was there already stays
            warnings.filters.remove(added)
    return undo


# What run_started set up for this run, torn down by run_finished.
SETUP: StashKey[list] = StashKey("distributed.setup", "patches and filters to undo at the end of the run")


def _engine_arguments(recipe, world_size: int) -> dict:
    arguments = {}
    if recipe.deepspeed:
        arguments["deepspeed"] = deepspeed_config(recipe.deepspeed)
    if fsdp_enabled(recipe):
        import torch

        if not torch.cuda.is_available():
            raise FtcoreError("fsdp: FSDP runs on GPUs only (accelerate shards across accelerators); on CPU "
                              "use deepspeed: zero3 to shard, or remove fsdp for plain data parallelism")
        arguments["fsdp"] = True
        arguments["fsdp_config"] = fsdp_config(recipe)
    for key in ("ddp_timeout", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_find_unused_parameters"):
        if getattr(recipe, key) is not None:
            arguments[key] = getattr(recipe, key)
    if world_size > 1 and not recipe.deepspeed:
        import torch

        if not torch.cuda.is_available():
            arguments["use_cpu"] = True  # several CPU processes: accelerate's gloo group (DeepSpeed picks its own)
    return arguments


@hookimpl(trylast=True)
def trainer_arguments(recipe):
    return _engine_arguments(recipe, launch.world_size()) or None


@hookimpl(trylast=True)
def launch_processes(recipe, plan, command):
    if not (plan.distributed or recipe.deepspeed or fsdp_enabled(recipe)):  # the engines need a process group, even of one
        return None
    _engine_arguments(recipe, plan.nproc * plan.nnodes)  # an engine that cannot run here fails once, not per process
    return launch.launch(plan, command, recipe.launcher or "torchrun")


@hookimpl(trylast=True)
def run_started(recipe, stash):
    try:
        launch.start_process_group(recipe)  # first: if it fails, nothing below is left to undo
    except Exception as exc:
        _say_if_lost_contact(exc)
        raise
    undo = stash.setdefault(SETUP, [])
    undo.append(_quiet_cpu_accelerator_notice())
    if recipe.deepspeed:
        import torch

        if not torch.cuda.is_available():
            undo.append(_let_deepspeed_run_on_cpu())
        # DeepSpeed 0.19 calls collectives torch 2.13 renamed; the notice helps no user
        undo.append(_ignore_warning(message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning))


@hookimpl(trylast=True)
def run_finished(recipe, stash, status, error):
    undo = stash.get(SETUP, [])
    while undo:  # last set up, first undone; each once
        undo.pop()()
    if error is not None:
        _say_if_lost_contact(error)
    elif status == "completed":
        try:
            launch.end_process_group()
        except Exception as exc:  # its barrier can find another rank gone
            _say_if_lost_contact(exc)
            raise


def _quiet_cpu_accelerator_notice():
    """Drop DeepSpeed's "Setting accelerator to CPU" warning for the run; returns the undo.

    accelerate imports DeepSpeed whenever it is installed, and on a machine without a GPU DeepSpeed
    warns at import that it chose the CPU, in every run, DeepSpeed or not: nothing to act on.
    """
    import logging

    def drop(record) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()

    logger = logging.getLogger("DeepSpeed")  # DeepSpeed's own logger (deepspeed.utils.logging)
    logger.addFilter(drop)
    return lambda: logger.removeFilter(drop)


def _say_if_lost_contact(exc: BaseException) -> None:
    """When ``exc`` says another rank died or hung, raise one line naming this rank instead (no traceback)."""
    lost = launch.lost_contact(exc)
    if lost:
        raise launch.LaunchError(lost) from exc
