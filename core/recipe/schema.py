"""The recipe schema, in Axolotl's key language.

Keys follow Axolotl's names wherever Axolotl has the concept, so an Axolotl
recipe validates with few or no edits. ftcore's own additions are marked
"ftcore:" in their description. Rules:

- Unknown keys are errors (with a suggestion), never silently dropped.
- Keys Axolotl has but ftcore does not act on are handled in ``axolotl.py``:
  accepted while empty, errors when set (a few harmless hints pass).
- Contradictions between keys are checked in ``Recipe.cross_checks``;
  checks that belong to a plugin live in that plugin's ``validate_recipe``.
- The schema holds only what every run needs. Plugins own the rest: flat
  keys in Axolotl's names (``lora_r``, ``load_in_4bit``, ``deepspeed``:
  ``recipe_keys``) and namespaced sections (``recipe_sections``), validated
  with these and read as ``recipe.lora_r`` / ``recipe.section("vision")``.

The models are frozen: plugins read the recipe, they never mutate it.
"""

from __future__ import annotations

from typing import Any, Literal

import types
import typing

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

# The optimizer and scheduler names transformers accepts (its OptimizerNames
# and SchedulerType), listed here so validation never imports transformers.
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor",
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad",
    "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
    "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit",
    "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
    "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw",
    "apollo_adamw_layerwise", "stable_adamw",
)
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")
# Axolotl's boolean spellings of attn_implementation, in the order they are read
ATTENTION_SPELLINGS = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager",
                       "flex_attention": "flex_attention"}
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token",
                      "additional_special_tokens")


def _numbers_only(annotation) -> bool:
    """True for ``int``, ``float`` and their optional forms: fields where a YAML ``true`` is a mistake."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


class _Strict(BaseModel):
    # allow_inf_nan=False: `learning_rate: .inf` or `1e400` is refused instead of training to NaN
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, protected_namespaces=(),
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value, info):
        # pydantic reads `true` as 1 for an int field: `lora_r: true` would train with r=1
        if isinstance(value, bool) and info.field_name in cls.model_fields \
                and _numbers_only(cls.model_fields[info.field_name].annotation):
            raise ValueError("a number is needed, not a boolean (true/false)")
        return value


class RecipeKeys(_Strict):
    """Base for a plugin's flat recipe keys (``recipe_keys``) or section (``recipe_sections``): strict and frozen.

    A key that names a local file or folder says so with ``Field(..., json_schema_extra=PATH)``:
    ``ftcore validate`` and ``ftcore run`` then report it when it does not exist.
    """


    def cross_checks(self) -> list[tuple[str, str]]:
        """Contradictions among these keys, as ``(key, message)`` pairs; reported with every other problem.

        Override for rules that need only the plugin's own keys (``validate_recipe`` sees the whole
        recipe, but runs only once every key passed its type check).
        """
        return []


PATH = {"path": True}  # json_schema_extra of a plugin key that names a local file or folder
SECRET = {"secret": True}  # json_schema_extra of a key that takes a secret (a token): ${oc.env:...} may go out


class DatasetSpec(BaseModel):
    """One entry of ``datasets:`` or ``test_datasets:``.

    The keys here are common to every format. The keys of the chosen ``type``
    (``field_instruction``, ``field_messages``, ...) are validated by that
    format's own options model and available as ``spec.options``.
    """

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    path: str = Field(description="local file or folder, or a Hugging Face Hub dataset name")
    type: str | None = Field(None, description="format name, e.g. alpaca, chat_template, completion")
    split: str | None = Field(None, description="split to read (default: train)")
    data_files: str | list[str] | None = Field(None, description="files inside path to read")
    name: str | None = Field(None, description="Hub dataset configuration name")
    revision: str | None = Field(None, description="Hub dataset revision")
    ds_type: Literal["json", "jsonl", "csv", "parquet", "arrow", "text"] | None = Field(
        None, description="file format when the extension does not tell"
    )
    trust_remote_code: bool | None = None
    shards: int | None = Field(None, ge=1, description="read 1/shards of the data")

    _options: BaseModel | None = PrivateAttr(None)

    @property
    def options(self):
        """The format's own options, a pydantic model (set by validation)."""
        return self._options


class Recipe(_Strict):
    """A validated, read-only recipe. Built by ``ftcore.recipe.validate``."""

    # ── model ──
    base_model: str = Field(description="Hub id or local folder of the base model")
    base_model_config: str | None = Field(None, description="config to use instead of base_model's")
    revision_of_model: str | None = None
    model_type: str | None = Field(None, description="transformers class or auto class to load with")
    tokenizer_type: str | None = Field(None, description="tokenizer class, e.g. AutoTokenizer")
    tokenizer_config: str | None = Field(None, description="tokenizer to use instead of base_model's")
    trust_remote_code: bool = Field(False, description="run the Python code a model repository ships (printed when true)")
    allow_pickle: bool = Field(False, description="ftcore: load pickle-based weights (.bin, .pt, .pth) for the base "
                                                  "model, adapters and checkpoints; safetensors otherwise")
    attn_implementation: Literal[ATTENTION] | None = Field(  # type: ignore[valid-type]
        None, description="attention kernel; default sdpa")
    flash_attention: bool | None = Field(None, description="Axolotl spelling of attn_implementation: flash_attention_2")
    sdp_attention: bool | None = Field(None, description="Axolotl spelling of attn_implementation: sdpa")
    eager_attention: bool | None = None
    flex_attention: bool | None = Field(None, description="Axolotl spelling of attn_implementation: flex_attention")

    # ── adapter ──
    adapter: str | None = Field(None, description="an adapter a plugin registers (`ftcore plugins`); absent: full fine-tuning")

    # ── data ──
    datasets: list[DatasetSpec] | None = None
    test_datasets: list[DatasetSpec] | None = None
    val_set_size: float = Field(0.0, ge=0, description="fraction (< 1) or number of rows held out for evaluation")
    dataset_prepared_path: str | None = None
    dataset_processes: int | None = Field(None, ge=1, le=1024)
    sequence_len: int = Field(2048, ge=8, le=1_048_576)
    sample_packing: bool = False
    eval_sample_packing: bool | None = None
    pad_to_sequence_len: bool | None = None
    train_on_inputs: bool = False
    chat_template: str | None = None
    chat_template_jinja: str | None = None
    default_system_message: str | None = None
    special_tokens: dict[str, str | list[str] | None] | None = None
    tokens: list[str] | None = None
    on_invalid_example: Literal["error", "skip"] = "error"
    excess_length_strategy: Literal["drop", "truncate"] = "drop"

    # ── training ──
    micro_batch_size: int = Field(1, ge=1, le=65_536)
    eval_batch_size: int | None = Field(None, ge=1, le=65_536)
    gradient_accumulation_steps: int = Field(1, ge=1, le=65_536)
    batch_size: int | None = Field(None, ge=1, le=16_777_216, description="global batch; sets gradient_accumulation_steps to "
                                                          "batch_size / (micro_batch_size x processes)")
    group_by_length: bool = False
    num_epochs: float = Field(1, gt=0, le=10_000)
    max_steps: int | None = Field(None, ge=1, le=1_000_000_000)
    learning_rate: float = Field(2e-4, gt=0, le=10)
    optimizer: Literal[OPTIMIZERS] = "adamw_torch"  # type: ignore[valid-type]
    lr_scheduler: Literal[SCHEDULERS] = "cosine"  # type: ignore[valid-type]
    lr_scheduler_kwargs: dict[str, Any] | None = None
    cosine_min_lr_ratio: float | None = Field(None, ge=0, le=1)
    warmup_steps: int | None = Field(None, ge=0, le=1_000_000_000)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, le=100)
    adam_beta1: float | None = Field(None, gt=0, lt=1)
    adam_beta2: float | None = Field(None, gt=0, lt=1)
    adam_epsilon: float | None = Field(None, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, le=1e6)
    bf16: Literal["auto"] | bool | None = "auto"
    fp16: bool | None = None
    tf32: bool | None = None
    gradient_checkpointing: Literal["offload", "offload_disk"] | bool | None = Field(
        False, description="recompute activations in the backward; Axolotl's offload / offload_disk (activations "
                           "moved to CPU / disk) train as plain gradient checkpointing in ftcore")
    gradient_checkpointing_kwargs: dict[str, Any] | None = None
    seed: int = Field(42, ge=0, le=2**32 - 1)

    # ── outputs, logging, checkpoints ──
    output_dir: str = Field("./outputs/run", description="where the run folder goes; default ./outputs/<recipe file "
                                                        "name without .yaml> (./outputs/run for a recipe built in Python)")
    logging_steps: int = Field(1, ge=1, le=1_000_000_000)
    save_steps: float | None = Field(None, gt=0, le=1_000_000_000, description="steps between checkpoints (< 1: fraction of the run)")
    saves_per_epoch: int | None = Field(None, ge=1, le=1_000_000)
    save_total_limit: int | None = Field(None, ge=1, le=1_000_000)
    save_strategy: Literal["steps", "epoch", "no"] | None = None
    save_only_model: bool | None = None
    eval_steps: float | None = Field(None, gt=0, le=1_000_000_000, description="steps between evaluations (< 1: fraction of the run)")
    evals_per_epoch: int | None = Field(None, ge=0, le=1_000_000)
    eval_strategy: Literal["steps", "epoch", "no"] | None = None
    eval_on_start: bool = Field(False, description="ftcore: evaluate before the first step too")
    evaluators: list[str] = Field(default_factory=lambda: ["loss"], description="ftcore: evaluators to run")
    resume_from_checkpoint: str | bool | None = Field(
        None, description="a checkpoint folder, true or auto (ftcore: the newest complete checkpoint in output_dir; "
                          "`ftcore run --resume`)")

    # ── plugins ──
    plugins: list[str] | None = Field(None, description="extra plugin modules to import")

    # Axolotl keys ftcore accepts without acting on them (see axolotl.py).
    compat: dict[str, Any] = Field(default_factory=dict, exclude=True)
    _sections: dict = PrivateAttr(default_factory=dict)  # section key -> validated model (or None)
    _sections_set: set = PrivateAttr(default_factory=set)  # section keys the recipe gave
    _key_models: dict = PrivateAttr(default_factory=dict)  # plugin name -> its validated flat-key model
    _plugin_keys: dict = PrivateAttr(default_factory=dict)  # flat plugin key -> plugin name
    _section_owners: dict = PrivateAttr(default_factory=dict)  # section key -> plugin name
    _env_refs: dict = PrivateAttr(default_factory=dict)  # key path -> "${oc.env:NAME}" as the recipe wrote it

    def cross_checks(self) -> list[tuple[str, str]]:
        """Contradictions between keys, as ``(key, message)`` pairs."""
        problems = []
        if self.batch_size is not None:
            if "gradient_accumulation_steps" in self.model_fields_set:
                problems.append(("batch_size", "set batch_size or gradient_accumulation_steps, not both"))
            elif self.batch_size % self.micro_batch_size:
                problems.append(("batch_size", f"must be a multiple of micro_batch_size ({self.micro_batch_size})"))
        if self.warmup_steps is not None and self.warmup_ratio is not None:
            problems.append(("warmup_ratio", "set warmup_steps or warmup_ratio, not both"))
        if self.save_steps is not None and self.saves_per_epoch is not None:
            problems.append(("saves_per_epoch", "set save_steps or saves_per_epoch, not both"))
        if self.eval_steps is not None and self.evals_per_epoch is not None:
            problems.append(("evals_per_epoch", "set eval_steps or evals_per_epoch, not both"))
        if self.bf16 is True and self.fp16:
            problems.append(("fp16", "bf16 and fp16 are both true; choose one"))
        chosen = [key for key in ATTENTION_SPELLINGS if getattr(self, key)]
        if len(chosen) > 1:
            problems.append((chosen[1], f"{' and '.join(chosen)} are all true; choose one"))
        if chosen and self.attn_implementation:
            if ATTENTION_SPELLINGS[chosen[0]] != self.attn_implementation:
                problems.append((chosen[0], f"contradicts attn_implementation: {self.attn_implementation}"))
        if self.val_set_size >= 1 and self.val_set_size != int(self.val_set_size):
            problems.append(("val_set_size", "must be a fraction below 1 or a whole number of rows"))
        if self.val_set_size and self.test_datasets:
            problems.append(("val_set_size", "set val_set_size or test_datasets, not both"))
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            problems.append(("chat_template_jinja", "chat_template: jinja needs chat_template_jinja (a template or a file)"))
        for key in (self.special_tokens or {}):
            if key not in SPECIAL_TOKEN_KEYS:
                from ftcore.recipe.suggest import did_you_mean

                problems.append((f"special_tokens.{key}",
                                 f"unknown special token{did_you_mean(key, SPECIAL_TOKEN_KEYS)}; "
                                 f"allowed: {', '.join(SPECIAL_TOKEN_KEYS)}"))
        return problems

    # ── derived values: one place for each default that depends on others ──

    @property
    def attention(self) -> str | None:
        """The attention implementation asked for, from either spelling."""
        if self.attn_implementation:
            return self.attn_implementation
        return next((value for key, value in ATTENTION_SPELLINGS.items() if getattr(self, key)), None)

    @property
    def per_device_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.micro_batch_size

    # ── what plugins contributed: flat keys (recipe_keys) and sections (recipe_sections) ──

    def __getattr__(self, name: str):
        # pydantic resolves private attributes here; a plugin's flat key comes next
        if not name.startswith("_"):
            private = object.__getattribute__(self, "__pydantic_private__") or {}
            owner = (private.get("_plugin_keys") or {}).get(name)
            if owner is not None:
                return getattr(private["_key_models"][owner], name)
        return super().__getattr__(name)

    def get(self, key: str, default: Any = None) -> Any:
        """A core or plugin key's value, or ``default`` when no installed plugin owns ``key``.

        For code that must work whether or not the plugin owning a key is there
        (a rule that spans two plugins' keys, say).
        """
        if key in type(self).model_fields and key != "compat":
            return getattr(self, key)
        owner = self._plugin_keys.get(key)
        return default if owner is None else getattr(self._key_models[owner], key)

    def is_set(self, key: str) -> bool:
        """True when the recipe gave ``key`` a value (a core key, a plugin's flat key or a section)."""
        if key in type(self).model_fields:
            return key in self.model_fields_set
        if key in self._plugin_keys:
            return key in self._key_models[self._plugin_keys[key]].model_fields_set
        return key in self._sections_set

    def path_keys(self) -> list[str]:
        """The plugins' flat keys that name a file or folder (``Field(json_schema_extra=PATH)``)."""
        return [key for plugin, instance in self._key_models.items() for key, field in type(instance).model_fields.items()
                if (field.json_schema_extra or {}).get("path")]

    def section(self, key: str):
        """The validated section a plugin contributed under ``key``."""
        return self._sections.get(key)

    def to_yaml_dict(self, used_plugins=None) -> dict:
        """The fully resolved recipe, as written to ``recipe.yaml``: runnable as is.

        A plugin's flat keys and sections are included with their defaults when
        the recipe set one of them or the plugin is in ``used_plugins`` (it
        answered a firstresult hook of the run); otherwise they are left out,
        so the file validates where that plugin is not installed.
        ``used_plugins=None`` means every plugin counts as used.
        """
        data = self.model_dump(mode="json", exclude_none=True, exclude={"compat"})
        data.update(self.compat)
        for entry_key in ("datasets", "test_datasets"):
            specs = getattr(self, entry_key)
            if specs:
                data[entry_key] = [
                    {**spec.model_dump(mode="json", exclude_none=True),
                     **(spec.options.model_dump(mode="json", exclude_none=True) if spec.options else {})}
                    for spec in specs
                ]

        def wanted(plugin, given: bool) -> bool:
            return given or used_plugins is None or plugin in used_plugins

        for plugin, instance in self._key_models.items():
            if wanted(plugin, bool(instance.model_fields_set)):
                data.update(instance.model_dump(mode="json", exclude_none=True))
        for key, section in self._sections.items():
            if section is not None and wanted(self._section_owners.get(key), key in self._sections_set):
                data[key] = section.model_dump(mode="json", exclude_none=True)
        for path, reference in self._env_refs.items():  # what came from the environment is written as read
            _set_path(data, path, reference)
        from ftcore.secrets import redact_obj

        return redact_obj(data)


def _set_path(data: dict, path: str, value) -> None:
    """``data["datasets"][0]["path"] = value`` for ``path`` "datasets[0].path"; absent paths are left alone."""
    import re

    parts = [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]", path) if p != ""]
    node = data
    for part in parts[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    try:
        if isinstance(node, dict) or (isinstance(node, list) and isinstance(parts[-1], int) and parts[-1] < len(node)):
            node[parts[-1]] = value
    except TypeError:
        pass


CORE_KEYS = tuple(k for k in Recipe.model_fields if k != "compat")
DATASET_KEYS = tuple(DatasetSpec.model_fields)
