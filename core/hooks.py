"""Typed calls over the hooks: ``load_model(plugins, recipe) -> model`` and friends.

Each function calls one hook, checks the answer, and turns "nobody answered"
into an error that names the recipe key that asked for it. ``core/run.py``
only ever calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import BaseModel

from ftcore.errors import MissingPluginError, PluginError


def _need(answer, what, key, value, hint=""):
    result, plugin = answer
    if result is None:
        raise MissingPluginError(
            f"no plugin provides {what} for this recipe ({key}: {value!r}){hint}; "
            f"see `ftcore plugins` for what is installed"
        )
    return result, plugin


# ── registrations (computed once per plugin manager) ───────────────────────


def recipe_keys(plugins) -> dict:
    """``{flat key: (model, plugin)}`` from every plugin's ``recipe_keys``; a key claimed twice is an error."""
    from ftcore.recipe.schema import CORE_KEYS

    found: dict[str, tuple] = {}
    for model, (_, plugin) in plugins.collect("recipe_keys", "recipe key model", make=lambda: None).items():
        info = plugins.info[plugin]
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise PluginError(f"plugin {info.label} called register() in hook 'recipe_keys' with {model!r}; "
                              f"it takes a pydantic BaseModel class whose fields are the keys; "
                              f"{info.how_to_disable()}")
        for key in model.model_fields:
            if key in CORE_KEYS:
                raise PluginError(f"plugin {info.label} claims the core recipe key '{key}'; "
                                  f"{info.how_to_disable()}")
            if key in found:
                first = plugins.info[found[key][1]]
                raise PluginError(f"recipe key '{key}' is claimed by two plugins, {first.label} and {info.label}; "
                                  f"{info.how_to_disable()}")
            found[key] = (model, plugin)
    return found


def recipe_sections(plugins) -> dict:
    from ftcore.recipe.schema import CORE_KEYS

    def make(model):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"the section model must be a pydantic BaseModel class, got {model!r}")
        return model

    found = plugins.collect("recipe_sections", "recipe section", make=make)
    flat = recipe_keys(plugins)
    for key, (_model, plugin) in found.items():
        info = plugins.info[plugin]
        if key in CORE_KEYS:
            raise PluginError(f"plugin {info.label} claims the core recipe key '{key}' as its section; "
                              f"{info.how_to_disable()}")
        if key in flat:
            other = plugins.info[flat[key][1]]
            raise PluginError(f"recipe key '{key}' is claimed by two plugins, {other.label} (a flat key) and "
                              f"{info.label} (a section); {info.how_to_disable()}")
    return found


def adapters(plugins) -> dict:
    """``{adapter name: (description, plugin)}``: the values ``adapter:`` may take."""
    return plugins.collect("register_adapters", "adapter")


def content_parts(plugins) -> dict:
    """``{part type: (handler, plugin)}`` for the non-text parts of chat messages."""
    return plugins.collect("register_content_parts", "content part type")


def dataset_formats(plugins) -> dict:
    """``{type name: ((function, options model or None), plugin)}``."""
    return plugins.collect("register_dataset_formats", "dataset format",
                           make=lambda function, options=None: (function, options))


def chat_templates(plugins) -> dict:
    return plugins.collect("register_chat_templates", "chat template")


def evaluators(plugins) -> dict:
    return plugins.collect("register_evaluators", "evaluator")


def chosen_evaluators(plugins, recipe) -> dict:
    """``{name: function}`` of the recipe's ``evaluators``, each naming its plugin when it raises."""
    registered = evaluators(plugins)
    return {name: plugins.attributed(registered[name][0], registered[name][1], f"its evaluator '{name}'")
            for name in recipe.evaluators}


def registered_recipes(plugins) -> dict:
    """``{name: (path, PluginInfo)}``: every recipe registered by name, with the plugin that ships it."""
    return {name: (path, plugins.info[plugin])
            for name, (path, plugin) in plugins.collect("register_recipes", "recipe").items()}


@dataclass(frozen=True)
class ModelFacts:
    """What a plugin registered about one Hub model (``register_models``); ``plugin`` is who registered it."""

    model_id: str
    family: str
    task: str  # "chat", "code" or "vision"
    size: str  # as people say it: "8B", "11B Vision"
    parameters: int  # the published count
    license: str
    license_url: str
    gated: bool  # the Hub asks you to accept the license before downloading
    config: dict  # the model's config.json content
    notes: str = ""
    plugin: str = ""


TASKS = ("chat", "code", "vision")


def registered_models(plugins) -> dict:
    """``{model_id: ModelFacts}`` from every plugin's ``register_models``; bad facts are the plugin's error."""

    def make(family, task, size, parameters, license, license_url, gated, config, notes=""):
        if task not in TASKS or not isinstance(config, dict) or not isinstance(parameters, int):
            raise TypeError(f"task must be one of {', '.join(TASKS)}, config a dict, parameters an int")
        return ModelFacts("", family, task, size, parameters, license, license_url, bool(gated), config, notes)

    return {model_id: replace(facts, model_id=model_id, plugin=plugin)
            for model_id, (facts, plugin) in plugins.collect("register_models", "model", make=make).items()}


def model_facts(plugins, model_id) -> ModelFacts | None:
    """The registered facts of ``model_id`` (a Hub id, any case), or None."""
    if not isinstance(model_id, str):
        return None
    wanted = model_id.strip().rstrip("/").lower()
    return next((facts for name, facts in registered_models(plugins).items() if name.lower() == wanted), None)


def commands(plugins) -> dict:
    """``{name: ((help, configure, handler), plugin)}``."""
    return plugins.collect("register_commands", "command",
                           make=lambda help, configure, handler: (help, configure, handler))


# ── launching ───────────────────────────────────────────────────────────────


def launch_processes(plugins, recipe, plan, command):
    """The exit code of a multi-process launch, or ``None`` to train in this process."""
    code, _plugin = plugins.call_first("launch_processes", recipe=recipe, plan=plan, command=command)
    if code is None and plan.distributed:
        raise MissingPluginError(f"no plugin provides launching several processes for this run "
                                 f"(--nproc {plan.nproc} --nnodes {plan.nnodes}); install or enable a plugin "
                                 f"that launches (the built-in distributed plugin), or drop --nproc/--nnodes")
    return code


def dry_run(plugins, recipe, workdir, train) -> int:
    """The exit code of ``ftcore run --dry-run``: the plugin that rehearses runs answers."""
    code, _plugin = plugins.call_first("dry_run", recipe=recipe, workdir=workdir, train=train, plugins=plugins)
    if code is None:
        raise MissingPluginError("no plugin provides a dry run for this recipe (--dry-run); install or enable one "
                                 "(the built-in planning plugin), or run without --dry-run")
    return int(code)


# ── the run, step by step ───────────────────────────────────────────────────
# ``stash`` is the run's; calls outside a run (tests, ``ftcore preprocess``) may leave it out.


def _stash(stash):
    from ftcore.stash import Stash

    return Stash() if stash is None else stash



def run_started(plugins, recipe, stash=None) -> None:
    stash = _stash(stash)
    plugins.call_all("run_started", recipe=recipe, stash=stash)


def trainer_arguments(plugins, recipe, stash=None) -> dict:
    """Merge every plugin's ``TrainingArguments`` contributions; conflicts are errors."""
    stash = _stash(stash)
    merged, owner = {}, {}
    for result, plugin in plugins.call_all("trainer_arguments", recipe=recipe, stash=stash):
        for key, value in (result or {}).items():
            if key in merged and merged[key] != value:
                a, b = plugins.info[owner[key]], plugins.info[plugin]
                raise PluginError(f"plugins {a.label} and {b.label} both set the training argument "
                                  f"'{key}' ({merged[key]!r} vs {value!r}); {b.how_to_disable()}")
            merged[key], owner[key] = value, plugin
    return merged


def load_tokenizer(plugins, recipe, stash=None):
    stash = _stash(stash)
    return _need(plugins.call_first("load_tokenizer", recipe=recipe, stash=stash), "a tokenizer",
                 "tokenizer_config" if recipe.tokenizer_config else "base_model",
                 recipe.tokenizer_config or recipe.base_model)[0]


def quantization_config(plugins, recipe, stash=None):
    stash = _stash(stash)
    return plugins.call_first("quantization_config", recipe=recipe, stash=stash)[0]


def load_model(plugins, recipe, quantization, stash=None):
    stash = _stash(stash)
    return _need(plugins.call_first("load_model", recipe=recipe, quantization_config=quantization, stash=stash),
                 "a model loader", "base_model", recipe.base_model)[0]


def prepare_model(plugins, recipe, model, tokenizer, stash=None) -> None:
    stash = _stash(stash)
    plugins.call_all("prepare_model", recipe=recipe, model=model, tokenizer=tokenizer, stash=stash)


def inject_adapter(plugins, recipe, model, stash=None):
    stash = _stash(stash)
    return _need(plugins.call_first("inject_adapter", recipe=recipe, model=model, stash=stash),
                 "this adapter" if recipe.adapter else "full fine-tuning", "adapter", recipe.adapter)[0]


def build_collator(plugins, recipe, tokenizer, stash=None):
    stash = _stash(stash)
    return _need(plugins.call_first("build_collator", recipe=recipe, tokenizer=tokenizer, stash=stash),
                 "a collator", "base_model", recipe.base_model)[0]


def trainer_callbacks(plugins, recipe, stash=None) -> list:
    """The plugins' callbacks, each wrapped so an exception in it names the plugin."""
    stash = _stash(stash)
    found = []

    def register_for(plugin):
        return lambda callback: found.append(plugins.attributed_callback(callback, plugin))

    plugins.call_all("trainer_callbacks", recipe=recipe, stash=stash, per_plugin={"register": register_for})
    return found


def training_loss(plugins, recipe, model, stash=None):
    stash = _stash(stash)
    return plugins.call_first("training_loss", recipe=recipe, model=model, stash=stash)[0]


def build_trainer(plugins, recipe, model, tokenizer, arguments, train_dataset, eval_dataset, collator,
                  callbacks, evaluators, loss, stash=None):
    return _need(plugins.call_first("build_trainer", recipe=recipe, model=model, tokenizer=tokenizer,
                                    arguments=arguments, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                    collator=collator, callbacks=callbacks, evaluators=evaluators, loss=loss,
                                    stash=stash),
                 "a trainer", "base_model", recipe.base_model)[0]


def save_artifacts(plugins, recipe, model, tokenizer, output_dir, stash=None) -> list[str]:
    stash = _stash(stash)
    written = []
    for result, _plugin in plugins.call_all("save_artifacts", recipe=recipe, model=model,
                                            tokenizer=tokenizer, output_dir=output_dir, stash=stash):
        written.extend(result or [])
    return written


def run_finished(plugins, recipe, stash, status, error) -> None:
    """Every plugin's teardown, even when one raises; the first error is raised after all ran."""
    plugins.call_all("run_finished", keep_going=True, recipe=recipe, stash=stash, status=status, error=error)


# ── after a run: loading what it trained (ftcore.api.load_trained) ─────────


def load_trained_weights(plugins, recipe, model, run_dir, stash=None):
    """The base ``model`` with the run's trained weights on it (the adapter's plugin decides how)."""
    stash = _stash(stash)
    return _need(plugins.call_first("load_trained_weights", recipe=recipe, model=model, run_dir=run_dir, stash=stash),
                 "loading this run's trained weights", "adapter", recipe.adapter or "none (full fine-tuning)")[0]
