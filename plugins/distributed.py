"""Multi-GPU engines: ``deepspeed:`` (ZeRO) and ``fsdp:`` / ``fsdp_config:`` (FSDP2 through accelerate).

Both are handed to ``transformers.Trainer`` as it expects them; ftcore adds no
engine of its own. This plugin turns the recipe's keys into
``TrainingArguments``, checks combinations that cannot work before anything
loads, and ships four DeepSpeed configurations (``recipes/deepspeed/*.json``).

- ``deepspeed: zero1 | zero2 | zero3 | zero3_offload`` picks a shipped config;
  any other string is a path to the user's JSON; a mapping is the config
  itself. ``auto`` values are filled by transformers' DeepSpeed integration
  from the recipe (micro batch, accumulation, clipping, precision) and from
  the model (bucket sizes from ``hidden_size``). Without an ``optimizer``
  section the recipe's ``optimizer`` and ``lr_scheduler`` are used.
- ``fsdp:`` takes Axolotl's list (``[full_shard, auto_wrap]``, ``offload``) or
  ``true``; ``fsdp_config:`` Axolotl's keys, with or without the ``fsdp_``
  prefix (``offload_params``, ``cpu_ram_efficient_loading``,
  ``transformer_layer_cls_to_wrap``, ``state_dict_type``,
  ``reshard_after_forward``, ``activation_checkpointing``,
  ``sharding_strategy``); ``fsdp_version`` (top level or in fsdp_config)
  defaults to 2. Wrapping is per decoder layer: without
  ``transformer_layer_cls_to_wrap`` accelerate wraps the model's own
  ``_no_split_modules`` (``LlamaDecoderLayer`` for Llama).

No torch or transformers at import time: ``ftcore validate`` stays light.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftcore import FtcoreError, hookimpl

FTCORE_CONTRACT = "1"

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
}
FSDP_OPTIONS = ("full_shard", "shard_grad_op", "auto_wrap", "offload")
STATE_DICT_TYPES = ("FULL_STATE_DICT", "SHARDED_STATE_DICT")


def presets_folder() -> Path:
    import ftcore.recipes

    return Path(ftcore.recipes.__file__).parent / "deepspeed"


def deepspeed_config(value) -> dict:
    """The DeepSpeed config the recipe's ``deepspeed:`` names, as a dict (a fresh copy)."""
    if isinstance(value, dict):
        return json.loads(json.dumps(value))
    path = presets_folder() / f"{value}.json" if value in PRESETS else Path(value).expanduser()
    if not path.is_file():
        raise FtcoreError(f"deepspeed: no file '{value}'; use one of the shipped configs "
                          f"({', '.join(PRESETS)}) or the path of a DeepSpeed JSON config")
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


def _problems(recipe) -> list[tuple[str, str]]:
    """Combinations that cannot work, found before anything loads."""
    problems = []
    if recipe.deepspeed and (recipe.fsdp or recipe.fsdp_config):
        return [("fsdp", "deepspeed and fsdp are both set; choose one engine")]
    if recipe.fsdp_config and not recipe.fsdp:
        problems.append(("fsdp_config", "is set but fsdp is not; add fsdp: [full_shard, auto_wrap]"))
    stage = None
    if recipe.deepspeed:
        try:
            stage = zero_stage(deepspeed_config(recipe.deepspeed))
        except FtcoreError as exc:
            return [("deepspeed", str(exc).removeprefix("deepspeed: "))]
    if recipe.fsdp:
        try:
            fsdp_config(recipe)
        except FtcoreError as exc:
            key, _, message = str(exc).partition(": ")
            problems.append((key, message))
    sharded = "ZeRO-3" if stage == 3 else "FSDP" if recipe.fsdp else None
    if sharded and recipe.load_in_8bit:
        problems.append(("load_in_8bit", f"8-bit (LLM.int8) weights cannot be sharded by {sharded}; use "
                                         f"adapter: qlora with load_in_4bit, or ZeRO-2 / DDP for 8-bit LoRA"))
    elif sharded and recipe.load_in_4bit and recipe.bnb_4bit_quant_storage in (None, "uint8"):
        problems.append(("bnb_4bit_quant_storage", f"QLoRA under {sharded} shards the 4-bit weights, which "
                                                   f"needs them stored in a float type; set "
                                                   f"bnb_4bit_quant_storage: bfloat16 (the run's precision)"))
    return problems


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    for key, message in _problems(recipe):
        error(key, message)


def allow_deepspeed_on_cpu() -> None:
    """Let accelerate start DeepSpeed over gloo when there is no GPU (tests, CPU-only machines).

    accelerate 1.x starts DeepSpeed only on an accelerator: on CPU its process group
    comes out as one process, and DeepSpeed's batch check then fails. DeepSpeed itself
    runs ZeRO on CPU; this makes accelerate's backend choice "gloo, several CPU
    processes" in that one case. Nothing changes where a GPU is present.
    """
    import os

    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend
    if getattr(original, "ftcore_cpu", False):
        return

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        chosen, kind = original(self, cpu, sagemaker_dp, backend)
        if (kind == DistributedType.NO and not cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1
                and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"):
            return "gloo", DistributedType.MULTI_CPU
        return chosen, kind

    prepare_backend.ftcore_cpu = True
    PartialState._prepare_backend = prepare_backend


@hookimpl(trylast=True)
def trainer_arguments(recipe):
    arguments = {}
    if recipe.deepspeed:
        arguments["deepspeed"] = deepspeed_config(recipe.deepspeed)
        import torch

        if not torch.cuda.is_available():
            allow_deepspeed_on_cpu()
        import warnings

        # DeepSpeed 0.19 calls collectives torch 2.13 renamed; the notice helps no user
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if recipe.fsdp:
        import torch

        if not torch.cuda.is_available():
            raise FtcoreError("fsdp: FSDP runs on GPUs only (accelerate shards across accelerators); on CPU "
                              "use deepspeed: zero3 to shard, or remove fsdp for plain data parallelism")
        arguments["fsdp"] = True
        arguments["fsdp_config"] = fsdp_config(recipe)
    return arguments or None
