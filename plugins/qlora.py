"""QLoRA and k-bit loading through bitsandbytes: ``adapter: qlora``, ``load_in_4bit``, ``load_in_8bit``.

- ``quantization_config``: ``load_in_4bit`` gives a 4-bit ``BitsAndBytesConfig``
  (``bnb_4bit_quant_type``, nf4 by default; double quantization per
  ``bnb_4bit_use_double_quant``; compute dtype following the run's precision,
  bf16/fp16/fp32; storage dtype ``bnb_4bit_quant_storage``, bfloat16 by default under FSDP as in
  Axolotl); ``load_in_8bit``
  an 8-bit one (LLM.int8). ``bnb_config_kwargs`` are passed through last, so
  they override any of these, as in Axolotl.
- ``prepare_model``: k-bit preparation of a quantized model (every base weight
  frozen, norm layers in fp32, input gradients on so checkpointed layers get
  gradients, gradient checkpointing non-reentrant unless the recipe says
  otherwise). Unlike peft's ``prepare_model_for_kbit_training`` it leaves the
  embeddings and output head in 16 bits: upcasting them costs 2 GB on Llama
  3.1 8B for nothing, as they are frozen.
- the adapter: ``adapter: qlora`` (registered here) is LoRA on the 4-bit base,
  which the lora plugin injects exactly as ``adapter: lora``; so does
  ``adapter: lora`` with ``load_in_8bit`` (8-bit LoRA).

No torch or transformers at import time: ``ftcore validate`` stays light.
"""

from typing import Any, Literal

from pydantic import Field

from ftcore.api import FtcoreError, RecipeKeys, hookimpl

FTCORE_CONTRACT = "1"


class QuantizationKeys(RecipeKeys):
    """Axolotl's bitsandbytes keys (top level)."""

    load_in_4bit: bool = Field(False, description="load the base in 4 bits (NF4 by default): QLoRA")
    load_in_8bit: bool = Field(False, description="load the base in 8 bits (LLM.int8)")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    bnb_4bit_use_double_quant: bool = Field(True, description="quantize the quantization constants too")
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] | None = Field(
        None, description="storage dtype of the packed 4-bit weights; a float type to shard them (ZeRO-3, FSDP)")
    bnb_config_kwargs: dict[str, Any] | None = Field(None, description="more BitsAndBytesConfig arguments; win over the above")


    def cross_checks(self):
        if self.load_in_4bit and self.load_in_8bit:
            return [("load_in_8bit", "load_in_4bit and load_in_8bit are both true; choose one")]
        return []


@hookimpl(trylast=True)
def recipe_keys(register):
    register(QuantizationKeys)


@hookimpl(trylast=True)
def register_adapters(register):
    register("qlora", "LoRA on a 4-bit base (needs load_in_4bit: true)")


def quantized(recipe) -> bool:
    return bool(recipe.load_in_4bit or recipe.load_in_8bit)


def quant_storage(recipe) -> str | None:
    """``bnb_4bit_quant_storage``, or bfloat16 under FSDP when unset: FSDP shards the packed 4-bit weights
    only in a float type, and Axolotl (which has no such key) always stores them in bfloat16 there."""
    if recipe.bnb_4bit_quant_storage:
        return recipe.bnb_4bit_quant_storage
    if recipe.get("fsdp") or recipe.get("fsdp_config"):
        return "bfloat16"
    return None


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if recipe.load_in_4bit and recipe.load_in_8bit:
        return  # QuantizationKeys.cross_checks reports it; the rules below assume one of them
    if recipe.adapter == "qlora" and not recipe.load_in_4bit:
        hint = ("for LoRA on an 8-bit base use adapter: lora with load_in_8bit: true"
                if recipe.load_in_8bit else "or use adapter: lora for a 16-bit base")
        error("adapter", f"qlora trains LoRA on a 4-bit base and needs load_in_4bit: true; set it, {hint}")
    if recipe.adapter is None:
        for key in ("load_in_4bit", "load_in_8bit"):
            if getattr(recipe, key):
                error(key, "a quantized base cannot be fine-tuned in full (its weights are frozen integers); "
                           "train an adapter on it (adapter: qlora with load_in_4bit, adapter: lora with "
                           f"load_in_8bit), or remove {key} for full fine-tuning")
    if recipe.bnb_config_kwargs and not quantized(recipe):
        error("bnb_config_kwargs", "is set but nothing is quantized; set load_in_4bit or load_in_8bit, "
                                   "or remove bnb_config_kwargs")


@hookimpl(trylast=True)
def quantization_config(recipe):
    if not quantized(recipe):
        return None
    import inspect

    import torch
    from transformers import BitsAndBytesConfig

    from ftcore.api import precision, torch_dtype

    if recipe.load_in_8bit:
        kwargs = {"load_in_8bit": True}
    else:
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": recipe.bnb_4bit_quant_type,
                  "bnb_4bit_use_double_quant": recipe.bnb_4bit_use_double_quant,
                  "bnb_4bit_compute_dtype": torch_dtype(precision(recipe))}
        storage = quant_storage(recipe)
        if storage:
            kwargs["bnb_4bit_quant_storage"] = getattr(torch, storage)
    extra = dict(recipe.bnb_config_kwargs or {})
    allowed = set(inspect.signature(BitsAndBytesConfig).parameters) - {"self", "kwargs"}
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise FtcoreError(f"bnb_config_kwargs: {', '.join(unknown)} not BitsAndBytesConfig argument(s); "
                          f"allowed: {', '.join(sorted(allowed))}")
    kwargs.update(extra)
    try:
        return BitsAndBytesConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise FtcoreError(f"bnb_config_kwargs: {exc}") from exc


@hookimpl(trylast=True)
def prepare_model(recipe, model):
    """k-bit preparation; runs after the ``embeddings`` built-in resized the vocabulary (BUILTINS order)."""
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return
    import torch

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in model.modules():  # RMSNorm / LayerNorm: small, and precision-sensitive in 16 bits
        if "norm" in type(module).__name__.lower():
            module.to(torch.float32)
    if not torch.cuda.is_available():
        # On CPU, bitsandbytes repacks a 4-bit layer's weight for its own kernel at the first forward
        # without gradients (an evaluation) and unpacks it at the next training step. The round trip
        # moves the weights (logits by ~3e-3) and breaks layers with a bias (Qwen2's q/k/v: "a view of a
        # leaf Variable ... in-place"). Keeping the unpacked format makes evaluation use the training path.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    # the embeddings' output needs a gradient so checkpointed layers above it are differentiated
    model.enable_input_require_grads()
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=recipe.gradient_checkpointing_kwargs or {"use_reentrant": False})


class _QuietCpuKernels:
    """bitsandbytes warns on CPU that an optional kernel package (which would download from the Hub)
    is missing, and falls back to its own kernels: say nothing, for this run only."""

    LOGGER = "bitsandbytes.backends.cpu.ops"

    @staticmethod
    def filter(record):
        return record.levelno >= 40  # errors still show


@hookimpl(trylast=True)
def run_started():
    # every run: peft imports bitsandbytes for LoRA too, and the notice comes at that import
    import logging

    logging.getLogger(_QuietCpuKernels.LOGGER).addFilter(_QuietCpuKernels)


@hookimpl(trylast=True)
def run_finished():
    import logging

    logging.getLogger(_QuietCpuKernels.LOGGER).removeFilter(_QuietCpuKernels)
