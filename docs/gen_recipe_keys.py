"""Regenerate the key reference in docs/recipes.md from the recipe schema.

    python docs/gen_recipe_keys.py           # rewrite the table in docs/recipes.md
    python docs/gen_recipe_keys.py --check   # exit 1 if the table is out of date

Keys, groups, types and defaults come from ``ftcore.recipe.schema`` (the
pydantic models and the ``# ── group ──`` banners in that file). The meaning of
each key comes from ``MEANINGS`` below, or else from the field's description in
the schema; a key with neither stops the script, so a new key cannot slip into
the schema undocumented.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path

from ftcore.recipe import schema
from ftcore.recipe.schema import DatasetSpec, Recipe
from pydantic_core import PydanticUndefined

PAGE = Path(__file__).with_name("recipes.md")
START, END = "<!-- recipe-keys:start -->", "<!-- recipe-keys:end -->"
LONG_CHOICES = 8  # Literal types with more values are listed under the table

MEANINGS = {
    # model
    "base_model": "Hub id or local folder of the model to fine-tune.",
    "base_model_config": "Hub id or folder of a config used instead of `base_model`'s own.",
    "revision_of_model": "Hub revision (branch, tag or commit) of the model and tokenizer.",
    "model_type": "transformers class to load the model with, e.g. `LlamaForCausalLM`; unset: `AutoModelForCausalLM`.",
    "tokenizer_type": "transformers tokenizer class; unset: `AutoTokenizer`.",
    "tokenizer_config": "Hub id or folder of a tokenizer used instead of `base_model`'s.",
    "processor_type": "Accepted; not used yet (multimodal processors come with a vision plugin).",
    "trust_remote_code": "Let transformers run code shipped in the model's repository.",
    "attn_implementation": "Attention kernel; unset: `sdpa`. `flash_attention_*` needs a CUDA GPU (without one: `sdpa`, with a notice).",
    "flash_attention": "Axolotl's spelling of `attn_implementation: flash_attention_2`.",
    "sdp_attention": "Axolotl's spelling of `attn_implementation: sdpa`.",
    "eager_attention": "Axolotl's spelling of `attn_implementation: eager`.",
    # adapter
    "adapter": "An adapter a plugin registers: `lora`, `qlora` (LoRA on a 4-bit base; needs `load_in_4bit: true`), "
               "or absent for full fine-tuning. `lora` with `load_in_8bit: true` is 8-bit LoRA.",
    "lora_r": "LoRA rank.",
    "lora_alpha": "LoRA scaling numerator (the update is scaled by alpha / r).",
    "lora_dropout": "Dropout on the LoRA path.",
    "lora_target_modules": "Module names to adapt (a list), or one regular expression over full module names.",
    "lora_target_parameters": "Parameters (not modules) to adapt, by full name or its ending, e.g. a MoE model's fused "
                              "experts `mlp.experts.gate_up_proj`; needs `lora_dropout: 0`.",
    "lora_target_linear": "Adapt every linear layer except the output head.",
    "lora_modules_to_save": "Modules trained in full and saved with the adapter (e.g. `embed_tokens`, `lm_head`).",
    "lora_model_dir": "Continue training the adapter in this folder instead of creating a new one.",
    "lora_fan_in_fan_out": "peft's `fan_in_fan_out` (for layers that store weights transposed, like GPT-2's Conv1D).",
    "peft_use_dora": "Use DoRA (weight-decomposed LoRA).",
    "peft_use_rslora": "Use rank-stabilized scaling, alpha / sqrt(r).",
    "peft_layers_to_transform": "Adapt only the layers with these indices.",
    "unfrozen_parameters": "Full fine-tuning only: regular expressions matched at the start of parameter names; "
                           "only matching parameters train. An error with an adapter (use `lora_modules_to_save`).",
    # quantization
    "load_in_4bit": "Load the base model's linear layers in 4 bits with bitsandbytes (the `qlora` plugin); "
                    "embeddings, output head and norms stay in 16/32 bits. Needs an adapter (`qlora`). "
                    "Not with `load_in_8bit`.",
    "load_in_8bit": "Load the base model's linear layers in 8 bits (LLM.int8) with bitsandbytes. Needs an "
                    "adapter (`lora`).",
    "bnb_4bit_quant_type": "4-bit data type: `nf4` (NormalFloat, QLoRA's) or `fp4`. The compute dtype follows "
                           "the run's precision (bf16, fp16 or fp32).",
    "bnb_4bit_use_double_quant": "Quantize the 4-bit blocks' scale constants too (saves about 0.4 bit per "
                                 "parameter).",
    "bnb_4bit_quant_storage": "dtype the packed 4-bit weights are stored in; unset: `uint8`. FSDP with QLoRA "
                              "wants the training dtype (`bfloat16`).",
    "bnb_config_kwargs": "Extra `BitsAndBytesConfig` arguments (e.g. `llm_int8_threshold`, "
                         "`llm_int8_skip_modules`), applied last so they override the keys above; unknown "
                         "names are errors at run start. Needs `load_in_4bit` or `load_in_8bit`.",
    # data
    "datasets": "Training data: a list of dataset entries (below). Required to run.",
    "test_datasets": "Evaluation data, same entry format; instead of `val_set_size`.",
    "val_set_size": "Hold out this fraction (< 1) or number (>= 1) of the formatted training examples for "
                    "evaluation, chosen with `seed`.",
    "dataset_prepared_path": "Folder for the prepared-data cache: tokenized examples are stored under a key of "
                             "everything they depend on and reused by later runs (see data.md, Cache).",
    "dataset_processes": "Worker processes that format and tokenize the rows (entries of 2,000 rows or more); "
                         "the examples are the same as with one.",
    "sequence_len": "Longest example in tokens; longer ones follow `excess_length_strategy`.",
    "sample_packing": "Bin-pack training examples into rows of `sequence_len` tokens (first-fit decreasing); "
                      "each example still sees only itself, so the loss is the same as unpacked. "
                      "`micro_batch_size` then counts rows. See [data.md](data.md#packing).",
    "eval_sample_packing": "Pack the evaluation split too; unset: follow `sample_packing`. The evaluation loss is "
                           "the same either way.",
    "pad_to_sequence_len": "Pad every batch to `sequence_len` tokens instead of its longest example.",
    "train_on_inputs": "Train on prompt tokens too, not only on responses.",
    "chat_template": "Chat template by name: `llama3`, `llama3_2_vision`, `chatml`, `qwen_25`, `tokenizer_default`, "
                     "`jinja`, or one a plugin registers; unset: the tokenizer's own.",
    "chat_template_jinja": "With `chat_template: jinja`: the template text, or a path to a `.jinja`/`.j2`/`.txt` file.",
    "default_system_message": "`chat_template` and `sharegpt` data: a system message put first in conversations "
                              "that have none.",
    "special_tokens": "Special tokens to set or add (`bos_token`, `eos_token`, `pad_token`, ...); the embeddings "
                      "grow if the vocabulary does, and under LoRA a token new to the vocabulary makes `embed_tokens` "
                      "and `lm_head` train (see data.md).",
    "tokens": "Extra tokens to add to the vocabulary; under LoRA, new ones make `embed_tokens` and `lm_head` train "
              "and be saved with the adapter (a notice says so).",
    "on_invalid_example": "`error`: stop at the first bad row, naming file and row. `skip`: drop bad rows and "
                          "count them by reason.",
    "excess_length_strategy": "Examples longer than `sequence_len`: `drop` them (counted) or `truncate` them.",
    # training
    "micro_batch_size": "Examples per device per step.",
    "eval_batch_size": "Examples per device per evaluation batch; unset: `micro_batch_size`.",
    "gradient_accumulation_steps": "Micro batches per optimizer step.",
    "batch_size": "The global batch: sets `gradient_accumulation_steps` to `batch_size` / (`micro_batch_size` x processes); must divide evenly. Set it or `gradient_accumulation_steps`, not both.",
    "group_by_length": "Sample batches of similar lengths (less padding).",
    "num_epochs": "Passes over the training data (fractions allowed).",
    "max_steps": "Stop after this many optimizer steps; wins over `num_epochs`.",
    "learning_rate": "Peak learning rate.",
    "optimizer": "A transformers optimizer name (list below). Checked on this machine before the model "
                 "loads; on CPU, bitsandbytes runs the 8-bit and `paged_adamw_*`/`paged_lion_*` ones (without "
                 "paging), not `paged_ademamix_*`.",
    "lr_scheduler": "A transformers scheduler name (list below).",
    "lr_scheduler_kwargs": "Extra arguments for the scheduler.",
    "cosine_min_lr_ratio": "With `lr_scheduler: cosine`: decay to this fraction of `learning_rate`, not to 0.",
    "warmup_steps": "Warm-up in steps; not together with `warmup_ratio`.",
    "warmup_ratio": "Warm-up as a fraction of all steps; not together with `warmup_steps`.",
    "weight_decay": "Weight decay.",
    "adam_beta1": "Adam beta1; unset: transformers' default.",
    "adam_beta2": "Adam beta2; unset: transformers' default.",
    "adam_epsilon": "Adam epsilon; unset: transformers' default.",
    "max_grad_norm": "Gradient clipping norm.",
    "bf16": "`auto`: bf16 on a GPU that supports it, else fp32 (fp32 on CPU). `true`: bf16 (an error on a GPU "
            "without it). `false`: fp32 unless `fp16`.",
    "fp16": "fp16 mixed precision; needs a CUDA GPU.",
    "tf32": "TF32 matrix multiplies on NVIDIA GPUs; ignored elsewhere.",
    "gradient_checkpointing": "Recompute activations in the backward pass to save memory.",
    "gradient_checkpointing_kwargs": "Arguments for it; unset: `{use_reentrant: false}`.",
    "seed": "Seed for weight init, dropout, shuffling and the `val_set_size` split.",
    # outputs
    "output_dir": "The run folder (see runs.md).",
    "logging_steps": "Log (and append to `metrics.jsonl`) every this many steps; step 1 is always logged.",
    "save_steps": "Checkpoint every this many steps (< 1: that fraction of the run).",
    "saves_per_epoch": "Checkpoints per epoch; not together with `save_steps`.",
    "save_total_limit": "Keep at most this many checkpoints.",
    "save_strategy": "`epoch`, `no`, or `steps` (implied by `save_steps`/`saves_per_epoch`).",
    "save_only_model": "Checkpoints hold only the model, no optimizer state: smaller, but not resumable.",
    "eval_steps": "Evaluate every this many steps (< 1: that fraction of the run).",
    "evals_per_epoch": "Evaluations per epoch; not together with `eval_steps`. Unset or 0 (and no `eval_steps`): "
                       "evaluate only at the end.",
    "eval_strategy": "`epoch`, `no`, or `steps` (implied by `eval_steps`/`evals_per_epoch`).",
    "eval_on_start": "Also evaluate before the first step (gives the before/after numbers).",
    "evaluators": "Evaluators to run on the validation split, by registered name.",
    "resume_from_checkpoint": "`true`: resume from the last `checkpoint-*` in `output_dir`; or a checkpoint path.",
    # scale-out
    "deepspeed": "DeepSpeed ZeRO: `zero1`, `zero2`, `zero3`, `zero3_offload` (shipped), a JSON file, or a mapping; "
                 "see [scaling.md](scaling.md#deepspeed-zero).",
    "fsdp": "FSDP2 options, Axolotl's list: `full_shard` or `shard_grad_op`, `auto_wrap`, `offload`; GPUs only; "
            "see [scaling.md](scaling.md#fsdp-fsdp2-through-accelerate).",
    "fsdp_config": "Axolotl's FSDP keys, `fsdp_` prefix optional (`offload_params`, `cpu_ram_efficient_loading`, "
                   "`state_dict_type`, `transformer_layer_cls_to_wrap`, ...).",
    "fsdp_version": "2 (the only one supported; FSDP1 is deprecated).",
    "ddp_timeout": "Seconds a process waits for the others in a collective before the run stops (default 1800); "
                   "set on the process group ftcore starts.",
    "ddp_bucket_cap_mb": "Passed to `TrainingArguments`.",
    "ddp_broadcast_buffers": "Passed to `TrainingArguments`.",
    "ddp_find_unused_parameters": "Passed to `TrainingArguments`.",
    # tracking
    "wandb_project": "Log to Weights & Biases in this project (needs `pip install wandb`).",
    "wandb_entity": "W&B entity (`WANDB_ENTITY`).",
    "wandb_name": "W&B run name (also the trainer's `run_name`).",
    "wandb_run_id": "W&B run id (`WANDB_RUN_ID`).",
    "wandb_watch": "`WANDB_WATCH`.",
    "wandb_log_model": "`WANDB_LOG_MODEL`.",
    "wandb_mode": "`WANDB_MODE` (e.g. `offline`).",
    # plugins
    "plugins": "Extra plugin modules to import for this recipe (see plugins.md).",
}

DATASET_MEANINGS = {
    "path": "Local file or folder, or a Hugging Face Hub dataset id. Required.",
    "type": "Format name: `alpaca`, `completion`, `chat_template`, `sharegpt`, `input_output`, `pretrain`, or one a "
            "plugin registers; or `module.function`, a function of your own (see data.md). Required.",
    "split": "Hub datasets: the split to read; unset: `train`.",
    "data_files": "File name(s) or glob(s) to read under `path`; for a Hub dataset, passed to its loader.",
    "name": "Hub datasets: the configuration name.",
    "revision": "Hub datasets: the revision.",
    "ds_type": "File format when the extension does not tell; `text`: one row `{text: line}` per non-empty line.",
    "trust_remote_code": "Accepted; not used (Hub datasets are loaded without remote code).",
    "shards": "Keep every n-th row (reads 1/n of the data).",
}


def _type(annotation) -> str:
    """A short readable type: ``int``, ``str | list[str]``, ``"a" or "b"``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        if len(values) > LONG_CHOICES:
            return "name (list below)"
        return " or ".join(f"`{v}`" if isinstance(v, str) else str(v) for v in values)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type(a) for a in parts)
    if origin in (list, dict):
        args = ", ".join(_type(a) for a in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, DatasetSpec):
        return "dataset entry"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field) -> str:
    """`` ≥ 1``, `` > 0, < 1`` from the field's constraints."""
    marks = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                marks.append(f"{sign} {getattr(item, attr)}")
    return f", {', '.join(marks)}" if marks else ""


def _default(field) -> str:
    if field.default_factory is not None:
        return f"`{_yaml(field.default_factory())}`"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "unset"
    return f"`{_yaml(field.default)}`"


def _yaml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _groups() -> dict[str, str]:
    """Field name -> the ``# ── group ──`` banner above it in schema.py."""
    groups, current = {}, None
    for line in Path(schema.__file__).read_text(encoding="utf-8").split("class Recipe", 1)[1].splitlines():
        banner = re.match(r"\s+# ── (.+?) ──", line)
        if banner:
            current = banner.group(1)
        field = re.match(r"    (\w+): ", line)
        if field and current:
            groups.setdefault(field.group(1), current)
    return groups


def _meaning(name, field, meanings) -> str:
    text = meanings.get(name) or field.description
    if not text:
        sys.exit(f"gen_recipe_keys: no meaning for '{name}'; add it to MEANINGS in {__file__}")
    return text.replace("|", "\\|")


def _plugin_keys() -> dict[str, dict]:
    """``{plugin: {key: field}}`` of the built-in plugins' flat keys (``recipe_keys``), in BUILTINS order."""
    from ftcore.hooks import recipe_keys
    from ftcore.plugins_manager import load_plugins

    owned: dict[str, dict] = {}
    for key, (model, plugin) in recipe_keys(load_plugins(installed=False)).items():  # built-ins only
        owned.setdefault(plugin, {})[key] = model.model_fields[key]
    return owned


PLUGIN_GROUPS = {"lora": "LoRA", "qlora": "Quantization (bitsandbytes)", "full": "Full fine-tuning",
                 "vision": "Vision models", "distributed": "Several processes", "chunked_loss": "Chunked loss",
                 "wandb": "Tracking"}


def _rows(fields, meanings) -> list[str]:
    return [f"| `{name}` | {_type(field.annotation)}{_bounds(field)} | {_default(field)} | "
            f"{_meaning(name, field, meanings)} |" for name, field in fields.items()]


def render() -> str:
    plugin_keys = _plugin_keys()
    known = set(Recipe.model_fields) | {key for keys in plugin_keys.values() for key in keys}
    stale = sorted(set(MEANINGS) - known) + sorted(set(DATASET_MEANINGS) - set(DatasetSpec.model_fields))
    if stale:
        sys.exit(f"gen_recipe_keys: MEANINGS names keys the schema no longer has: {', '.join(stale)}")
    groups = _groups()
    out, current = [], None
    for name, field in Recipe.model_fields.items():
        if field.exclude:
            continue  # internal (compat)
        group = groups.get(name, "other")
        if group != current:
            current = group
            out += ["", f"#### {group[0].upper()}{group[1:]}", "", "| key | type | default | meaning |",
                    "| --- | --- | --- | --- |"]
        out.append(f"| `{name}` | {_type(field.annotation)}{_bounds(field)} | {_default(field)} | "
                   f"{_meaning(name, field, MEANINGS)} |")
    for plugin, fields in plugin_keys.items():
        title = PLUGIN_GROUPS.get(plugin, plugin)
        out += ["", f"#### {title} (keys of the `{plugin}` plugin)", "", "| key | type | default | meaning |",
                "| --- | --- | --- | --- |", *_rows(fields, MEANINGS)]
    out += ["", "#### Dataset entries (`datasets:` and `test_datasets:`)", "",
            "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in DatasetSpec.model_fields.items():
        out.append(f"| `{name}` | {_type(field.annotation)}{_bounds(field)} | {_default(field)} | "
                   f"{_meaning(name, field, DATASET_MEANINGS)} |")
    out += ["", "Allowed `optimizer` values: " + ", ".join(f"`{v}`" for v in schema.OPTIMIZERS) + ".",
            "", "Allowed `lr_scheduler` values: " + ", ".join(f"`{v}`" for v in schema.SCHEDULERS) + "."]
    return "\n".join(out).strip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/recipes.md is out of date")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    before, rest = page.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n\n{render()}\n{END}{after}"
    if args.check:
        if new != page:
            print(f"{PAGE} is out of date: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
