"""Typed calls over the hooks: ``load_model(plugins, recipe) -> model`` and friends.

Each function calls one hook, checks the answer, and turns "nobody answered"
into an error that names the recipe key that asked for it. ``core/run.py``
only ever calls these.
"""

from __future__ import annotations

from pydantic import BaseModel

from ftcore.errors import FtcoreError, PluginError


class MissingPluginError(FtcoreError):
    """No installed plugin provides what the recipe asks for."""


def _need(answer, what, key, value, hint=""):
    result, plugin = answer
    if result is None:
        raise MissingPluginError(
            f"no plugin provides {what} for this recipe ({key}: {value!r}){hint}; "
            f"see `ftcore plugins` for what is installed"
        )
    return result, plugin


# ── registrations (computed once per plugin manager) ───────────────────────


def recipe_sections(plugins) -> dict:
    from ftcore.recipe.schema import CORE_KEYS

    def make(model):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"the section model must be a pydantic BaseModel class, got {model!r}")
        return model

    found = plugins.collect("recipe_sections", "recipe section", make=make)
    for key, (_model, plugin) in found.items():
        if key in CORE_KEYS:
            info = plugins.info[plugin]
            raise PluginError(f"plugin {info.label} claims the core recipe key '{key}' as its section; "
                              f"{info.how_to_disable()}")
    return found


def dataset_formats(plugins) -> dict:
    """``{type name: ((function, options model or None), plugin)}``."""
    return plugins.collect("register_dataset_formats", "dataset format",
                           make=lambda function, options=None: (function, options))


def chat_templates(plugins) -> dict:
    return plugins.collect("register_chat_templates", "chat template")


def evaluators(plugins) -> dict:
    return plugins.collect("register_evaluators", "evaluator")


def named_recipes(plugins) -> dict:
    return {name: path for name, (path, _) in plugins.collect("register_recipes", "recipe").items()}


def commands(plugins) -> dict:
    """``{name: ((help, configure, handler), plugin)}``."""
    return plugins.collect("register_commands", "command",
                           make=lambda help, configure, handler: (help, configure, handler))


# ── the run, step by step ───────────────────────────────────────────────────


def trainer_arguments(plugins, recipe) -> dict:
    """Merge every plugin's ``TrainingArguments`` contributions; conflicts are errors."""
    merged, owner = {}, {}
    for result, plugin in plugins.call_all("trainer_arguments", recipe=recipe):
        for key, value in (result or {}).items():
            if key in merged and merged[key] != value:
                a, b = plugins.info[owner[key]], plugins.info[plugin]
                raise PluginError(f"plugins {a.label} and {b.label} both set the training argument "
                                  f"'{key}' ({merged[key]!r} vs {value!r}); {b.how_to_disable()}")
            merged[key], owner[key] = value, plugin
    for key in ("deepspeed", "fsdp"):
        if getattr(recipe, key) and key not in merged:
            raise MissingPluginError(
                f"no plugin provides {key} for this recipe ({key}: {getattr(recipe, key)!r}); "
                f"multi-GPU engines come with a distributed plugin, which is not installed; "
                f"remove '{key}' to train on one device"
            )
    return merged


def load_tokenizer(plugins, recipe):
    return _need(plugins.call_first("load_tokenizer", recipe=recipe), "a tokenizer",
                 "tokenizer_config" if recipe.tokenizer_config else "base_model",
                 recipe.tokenizer_config or recipe.base_model)[0]


def quantization_config(plugins, recipe):
    config, _ = plugins.call_first("quantization_config", recipe=recipe)
    for key in ("load_in_4bit", "load_in_8bit"):
        if getattr(recipe, key) and config is None:
            raise MissingPluginError(
                f"no plugin provides quantization for this recipe ({key}: true); "
                f"install or enable a quantization plugin, or remove '{key}'"
            )
    return config


def load_model(plugins, recipe, quantization):
    return _need(plugins.call_first("load_model", recipe=recipe, quantization_config=quantization),
                 "a model loader", "base_model", recipe.base_model)[0]


def prepare_model(plugins, recipe, model, tokenizer) -> None:
    plugins.call_all("prepare_model", recipe=recipe, model=model, tokenizer=tokenizer)


def inject_adapter(plugins, recipe, model):
    return _need(plugins.call_first("inject_adapter", recipe=recipe, model=model),
                 "this adapter" if recipe.adapter else "full fine-tuning", "adapter", recipe.adapter)[0]


def build_collator(plugins, recipe, tokenizer):
    return _need(plugins.call_first("build_collator", recipe=recipe, tokenizer=tokenizer),
                 "a collator", "base_model", recipe.base_model)[0]


def trainer_callbacks(plugins, recipe) -> list:
    found = []
    plugins.call_all("trainer_callbacks", recipe=recipe, register=found.append)
    return found


def save_artifacts(plugins, recipe, model, tokenizer, output_dir) -> list[str]:
    written = []
    for result, _plugin in plugins.call_all("save_artifacts", recipe=recipe, model=model,
                                            tokenizer=tokenizer, output_dir=output_dir):
        written.extend(result or [])
    return written
