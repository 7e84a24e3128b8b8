"""ftcore.testing: the plugin-author kit. Test a plugin the way ftcore runs it, offline.

Everything here goes through the same core code a run uses (recipe loading and
validation, the plugin manager, formatting and tokenizing, the trainer), so a
test that passes here describes what users of the plugin will see. Nothing is
downloaded: the tiny models are built on the spot. Importing this package does
not import torch or transformers; each helper imports what it needs.

A plugin's test, with the pytest fixtures this kit registers (see below)::

    import my_plugin
    from ftcore.testing import load_recipe, recipe_problems, run_format

    def test_my_format(ftcore_tiny_llama, ftcore_register):
        plugins = ftcore_register(my_plugin)
        example = run_format("my_format", {"text": "hi"}, ftcore_tiny_llama, plugins=plugins)
        assert len(example["input_ids"]) == len(example["labels"])

    def test_my_section():
        assert recipe_problems({"base_model": "x/y", "plugins": ["my_plugin"], "my": {"typo": 1}})

Recipes

- ``load_recipe(path_or_mapping, overrides=(), plugins=None)`` -> the validated
  ``Recipe``. A path (or a recipe registered by name) is read as ``ftcore run``
  reads it (``extends:``, interpolation); a mapping is taken as the parsed
  contents of such a file (no interpolation), a ``Recipe`` is returned as is
  (or re-validated with the overrides). ``overrides`` are ``key=value`` strings
  as on the command line. The modules under ``plugins:`` are imported onto
  ``plugins`` as in a run. An invalid recipe raises ``ftcore.errors.RecipeError``;
  its ``.problems`` is the list of ``(key_path, message)``.
- ``recipe_problems(...)``: same arguments; that list, empty when the recipe is valid.

Plugins

- ``fresh_plugins(*extra, block=())`` -> a new plugin manager, as every ``ftcore``
  command builds it (built-ins, then installed entry points), plus ``extra``
  plugins registered as installed ones would be: a module, any object with
  ``@hookimpl`` functions, an importable module path, or ``(name, plugin)``.
  ``block`` names plugins to leave out, exactly as ``FTCORE_DISABLE_PLUGINS``
  does (added to what that variable already blocks).
- ``add_plugin(plugins, plugin, name=None)``: register one more on a manager.
  The name defaults to a module's name, else ``"throwaway"`` (``_2``, ... when taken).

Data

- ``run_format(name, row, tokenizer, recipe=None, dataset=None, *, plugins=None, **options)``
  -> the example the dataset format ``name`` makes of ``row``: ``input_ids``,
  ``labels`` (``-100`` where untrained) and any extras the core keeps, through
  the core's own formatting and tokenizing code, so segments are tokenized and
  masked exactly as in a run. ``tokenizer`` is a tokenizer or a model folder
  (loaded by the plugins' ``load_tokenizer``, as in a run). ``recipe`` holds
  recipe keys (``chat_template``, ``train_on_inputs``, a plugin section, ...);
  ``dataset`` and ``options`` are the dataset entry's keys. A bad row raises
  ``ftcore.data.RowError``. Length rules (``sequence_len``) and a format's
  ``combine`` step are not applied: this is one row through its format.
- ``format_context(tokenizer, recipe=None, *, plugins=None, **fields)`` -> the
  ``ftcore.data.FormatContext`` a format function gets (the recipe's chat
  template put on the tokenizer as a run does, the plugins' content-part
  handlers, a fresh per-run stash); ``fields`` set or override any field.
- ``trained_runs(tokenizer, example)`` / ``trained_text(tokenizer, example)``:
  the trained tokens decoded, one string per contiguous run / joined.

Evaluation

- ``eval_context(model, tokenizer, dataset, recipe=None, collator=None, batch_size=2, *, plugins=None, **fields)``
  -> the ``ftcore.evaluation.EvalContext`` an evaluator gets: ``dataset`` is a
  list of tokenized examples, the collator defaults to the plugins'
  ``build_collator`` for the recipe (the tokenizer needs a pad token: pass the
  model folder to get a run's tokenizer), ``device`` to the model's, and any
  other field (``stash``, ``step``, ``max_steps``, ``phase``, ...) to ``fields``
  or the dataclass's default.

Runs

- ``run_recipe(recipe_or_mapping_or_path, overrides=(), plugins=None, output_dir=None)``
  -> ``RecipeRun`` (``.output_dir``, ``.metrics``: the run's summary metrics as
  in ``run.json``, ``.records``: ``metrics.jsonl``, ``.recipe``, ``.model``,
  ``.tokenizer``). Trains with ``ftcore.run.run(recipe, plugins, overwrite=True)``
  in ``output_dir``, else the recipe's own ``output_dir`` if it sets one, else
  a new temporary folder. In pytest, pass ``output_dir=tmp_path / "out"``.

Tiny models (``ftcore.testing.tiny``; ``python -m ftcore.testing.tiny llama3 OUT``)

- ``build_tiny("llama3" | "qwen2", out_dir, corpus=None, vocab_size=512, **sizes)``,
  ``build_tiny_mllama(out_dir, ...)``, ``train_tokenizer(family, corpus, vocab_size)``:
  random-weight models of the real architectures with tokenizers that carry
  the family's real special tokens and chat template.

Rows and files: ``COLORS``, ``alpaca_rows(n)``, ``chat_rows(n)``, ``corpus()``
(what the fixtures' tokenizers are trained on), ``write_jsonl(path, rows)``,
``write_recipe(path, **keys)``. ``offline()``: a context manager setting
``OFFLINE_ENV`` (no Hub, no wandb, no tokenizers threads) where not already set.

pytest fixtures (``ftcore.testing.pytest_plugin``, registered through the
``pytest11`` entry point whenever ftcore is installed; nothing is autouse):

- ``ftcore_tiny_llama``, ``ftcore_tiny_qwen``, ``ftcore_tiny_mllama``: session-scoped
  model folders (Llama 3, Qwen2.5, Llama 3.2 Vision), built once per session.
- ``ftcore_plugins``: a fresh plugin manager for the test.
- ``ftcore_register(plugin, name=None)``: registers ``plugin`` on that test's
  manager and returns the manager; nothing leaks into other tests.
- ``ftcore_env``: ``OFFLINE_ENV`` set for the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from ftcore.errors import RecipeError
from ftcore.testing.samples import COLORS, alpaca_rows, chat_rows, corpus, write_jsonl, write_recipe
from ftcore.testing.tiny import build as build_tiny
from ftcore.testing.tiny import build_mllama as build_tiny_mllama
from ftcore.testing.tiny import train_tokenizer

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "WANDB_MODE": "disabled"}

#: The base_model of recipes the kit completes when none is given (never loaded).
PLACEHOLDER_MODEL = "unused/model"


@contextlib.contextmanager
def offline(force: bool = False):
    """Set ``OFFLINE_ENV`` for the block (only variables not already set, unless ``force``)."""
    saved = {key: os.environ.get(key) for key in OFFLINE_ENV}
    for key, value in OFFLINE_ENV.items():
        if force or key not in os.environ:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ── plugins ─────────────────────────────────────────────────────────────────

_BLOCKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # manager -> names fresh_plugins blocked


@contextlib.contextmanager
def _blocking(names):
    """``FTCORE_DISABLE_PLUGINS`` extended by ``names`` for the block: the core's own blocking applies."""
    from ftcore.plugins_manager import DISABLE_ENV, disabled_names

    names = set(names or ())
    if not names:
        yield
        return
    saved = os.environ.get(DISABLE_ENV)
    os.environ[DISABLE_ENV] = ",".join(sorted(disabled_names() | names))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(DISABLE_ENV, None)
        else:
            os.environ[DISABLE_ENV] = saved


def _default_name(plugins, plugin) -> str:
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    name, n = "throwaway", 1
    while name in plugins.info or name in plugins.blocked:
        n += 1
        name = f"throwaway_{n}"
    return name


def add_plugin(plugins, plugin, name: str | None = None):
    """Register ``plugin`` on ``plugins`` as an installed plugin would be; return ``plugins``.

    ``plugin``: a module, an object with ``@hookimpl`` functions, an importable
    module path, or a ``(name, plugin)`` pair. It is checked like any plugin
    (contract, hook names, signatures: ``PluginError`` otherwise) and listed as
    ``name`` from package ``<name>-pkg 0.0.0``.
    """
    from ftcore.plugins_manager import PluginInfo

    if isinstance(plugin, tuple):
        name, plugin = plugin
    with _blocking(_BLOCKED.get(plugins)):
        if isinstance(plugin, str):
            name = name or plugin
            plugins.add_module(plugin, PluginInfo(name, plugin, "entry point", f"{name}-pkg", "0.0.0"))
            return plugins
        name = name or _default_name(plugins, plugin)
        if isinstance(plugin, ModuleType):
            module = plugin.__name__
        else:
            cls = plugin if isinstance(plugin, type) else type(plugin)
            module = f"{cls.__module__}.{cls.__qualname__}"
        plugins.add(plugin, PluginInfo(name, module, "entry point", f"{name}-pkg", "0.0.0"))
    return plugins


def fresh_plugins(*extra, block=()):
    """A new plugin manager (built-ins, installed entry points) plus ``extra``, without ``block``.

    ``block``: plugin names (built-in short names, entry-point names, module
    paths) left out as ``FTCORE_DISABLE_PLUGINS`` leaves them out; they stay
    blocked for recipe ``plugins:`` added to this manager by the kit.
    """
    from ftcore.plugins_manager import load_plugins

    block = {block} if isinstance(block, str) else set(block)
    with _blocking(block):
        plugins = load_plugins()
    if block:
        _BLOCKED[plugins] = block
    for plugin in extra:
        add_plugin(plugins, plugin)
    return plugins


# ── recipes ─────────────────────────────────────────────────────────────────


def _is_recipe(value) -> bool:
    return hasattr(value, "to_yaml_dict") and hasattr(value, "section")


def _plain(value):
    """Paths -> str, tuples -> lists, mappings -> dicts: what a YAML file could hold."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _with_overrides(data: dict, overrides) -> dict:
    """``key=value`` overrides on a mapping, with the command line's parser and rules."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ftcore.recipe import load

    cfg = load._create(data, "recipe")
    for text in overrides:
        dotted, value = load.parse_override(text)
        key = text.partition("=")[0]
        try:
            load._apply_override(cfg, dotted, value, key)
        except OmegaConfBaseException as exc:
            raise RecipeError([(key, load._message(exc))], source="command line") from exc
    return OmegaConf.to_container(cfg, resolve=False)


def _raw(source, overrides, plugins):
    from ftcore.hooks import registered_recipes
    from ftcore.recipe.load import RawRecipe, load_raw

    if _is_recipe(source):
        source = source.to_yaml_dict()
    if isinstance(source, Mapping):
        data = _plain(source)
        return RawRecipe(_with_overrides(data, overrides) if overrides else data, None)
    return load_raw(os.fspath(source), list(overrides), registered_recipes(plugins))


def load_recipe(path_or_mapping, overrides=(), plugins=None):
    """The validated ``Recipe``; ``RecipeError`` (``.problems``: ``[(key_path, message)]``) if invalid."""
    from ftcore.recipe import validate

    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    if _is_recipe(path_or_mapping) and not overrides:
        return path_or_mapping
    plugins = plugins if plugins is not None else fresh_plugins()
    raw = _raw(path_or_mapping, overrides, plugins)
    with _blocking(_BLOCKED.get(plugins)):
        plugins.add_recipe_plugins(raw.data.get("plugins"))
    return validate(raw, plugins)


def recipe_problems(path_or_mapping, overrides=(), plugins=None) -> list[tuple]:
    """``[(key_path, message)]`` for the recipe, as ``ftcore validate`` lists them; ``[]`` when valid."""
    try:
        load_recipe(path_or_mapping, overrides, plugins)
    except RecipeError as exc:
        return list(exc.problems)
    return []


def _recipe(recipe, plugins, **defaults):
    """A validated recipe: a ``Recipe`` as is; a mapping (or ``None``) completed by ``defaults`` and validated."""
    if _is_recipe(recipe):
        return recipe
    keys = _plain(recipe or {})
    for key, value in defaults.items():
        keys.setdefault(key, value)
    keys.setdefault("base_model", PLACEHOLDER_MODEL)
    return load_recipe(keys, plugins=plugins)


# ── contexts (dataclasses that gain fields: anything new is passed through) ──


def _new_stash():
    for module in ("ftcore.stash", "ftcore.api"):
        try:
            return __import__(module, fromlist=["Stash"]).Stash()
        except (ImportError, AttributeError):
            continue
    return None


_FILL = {"stash": lambda recipe: _new_stash(), "step": lambda recipe: 0,
         "max_steps": lambda recipe: getattr(recipe, "max_steps", None)}


def _build(cls, values: dict, extra: dict):
    """``cls(**values, **extra)``, filling the required fields the kit knows sensible values for."""
    values = {**values, **extra}
    for f in fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        if required and f.name not in values and f.name in _FILL:
            values[f.name] = _FILL[f.name](values.get("recipe"))
    return cls(**values)


def _accepts(function, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _stash_of(extra: dict):
    stash = extra.get("stash")
    return stash if stash is not None else _new_stash()


def _load_tokenizer(tokenizer, recipe, plugins, stash):
    """A tokenizer object as given; a model folder through the plugins' ``load_tokenizer``, as a run loads it."""
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from ftcore import hooks

    kwargs = {"stash": stash} if _accepts(hooks.load_tokenizer, "stash") else {}
    return hooks.load_tokenizer(plugins, recipe, **kwargs)


def _has_field(cls, name: str) -> bool:
    return name in {f.name for f in fields(cls)}


def _with_stash(cls, extra, stash):
    if stash is not None and _has_field(cls, "stash") and "stash" not in extra:
        return {**extra, "stash": stash}
    return extra


def format_context(tokenizer, recipe=None, *, plugins=None, **fields_):
    """The ``FormatContext`` a format function gets, for ``tokenizer`` (an object or a model folder)."""
    from ftcore import hooks
    from ftcore.data import FormatContext
    from ftcore.data.prepare import set_chat_template

    plugins = plugins if plugins is not None else fresh_plugins()
    base = {"base_model": os.fspath(tokenizer)} if isinstance(tokenizer, (str, os.PathLike)) else {}
    recipe = _recipe(recipe, plugins, **base)
    stash = _stash_of(fields_)
    tokenizer = _load_tokenizer(tokenizer, recipe, plugins, stash)
    if "chat_template" not in fields_:
        fields_["chat_template"] = set_chat_template(recipe, tokenizer, hooks.chat_templates(plugins))
    if "parts" not in fields_ and _has_field(FormatContext, "parts") and hasattr(hooks, "content_parts"):
        fields_["parts"] = dict(hooks.content_parts(plugins))  # content-part handlers, as a run passes them
    return _build(FormatContext, {"tokenizer": tokenizer, "recipe": recipe}, _with_stash(FormatContext, fields_, stash))


def run_format(name, row, tokenizer, recipe=None, dataset=None, *, plugins=None, **options):
    """The example dataset format ``name`` makes of ``row``, as in a run (see the module docstring)."""
    from ftcore import hooks
    from ftcore.data import RowError
    from ftcore.data.formats import format_function
    from ftcore.data.prepare import format_one

    plugins = plugins if plugins is not None else fresh_plugins()
    keys = recipe.to_yaml_dict() if _is_recipe(recipe) else _plain(recipe or {})
    if isinstance(tokenizer, (str, os.PathLike)):
        keys.setdefault("base_model", os.fspath(tokenizer))
    keys["datasets"] = [{"path": "unused.jsonl", **_plain(dataset or {}), "type": name, **_plain(options)}]
    validated = _recipe(keys, plugins)
    ctx = format_context(tokenizer, validated, plugins=plugins)
    spec = validated.datasets[0]
    example = format_one(row, spec, format_function(spec, hooks.dataset_formats(plugins)), ctx, (spec.path, 1))
    if isinstance(example, RowError):
        raise example
    return example


def trained_runs(tokenizer, example) -> list[str]:
    """The trained tokens of ``example`` (labels not ``-100``) decoded, one string per contiguous run."""
    from ftcore.data import IGNORE_INDEX

    runs, run = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return [tokenizer.decode(r, clean_up_tokenization_spaces=False) for r in runs]


def trained_text(tokenizer, example) -> str:
    """The trained tokens of ``example`` decoded, joined."""
    return "".join(trained_runs(tokenizer, example))


def _device(model):
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return None


def eval_context(model, tokenizer, dataset, recipe=None, collator=None, batch_size=2, *, plugins=None, **fields_):
    """The ``EvalContext`` an evaluator gets (see the module docstring)."""
    from ftcore import hooks
    from ftcore.evaluation import EvalContext

    plugins = plugins if plugins is not None else fresh_plugins()
    base = {"base_model": os.fspath(tokenizer)} if isinstance(tokenizer, (str, os.PathLike)) else {}
    recipe = _recipe(recipe, plugins, **base)
    stash = _stash_of(fields_)
    tokenizer = _load_tokenizer(tokenizer, recipe, plugins, stash)
    if collator is None:
        if getattr(tokenizer, "pad_token_id", 0) is None:
            raise ValueError("the tokenizer has no pad token, which the collator needs: pass the model folder "
                             "instead (loaded as a run loads it, with its pad fallback), set "
                             "tokenizer.pad_token, or pass collator=")
        kwargs = {"stash": stash} if _accepts(hooks.build_collator, "stash") else {}
        collator = hooks.build_collator(plugins, recipe, tokenizer, **kwargs)
    fields_.setdefault("device", _device(model))
    values = {"model": model, "tokenizer": tokenizer, "recipe": recipe, "dataset": list(dataset),
              "collator": collator, "batch_size": batch_size}
    return _build(EvalContext, values, _with_stash(EvalContext, fields_, stash))


# ── runs ────────────────────────────────────────────────────────────────────


@dataclass
class RecipeRun:
    """What ``run_recipe`` gives back."""

    output_dir: Path
    metrics: dict  # the run's summary metrics (run.json's): train_loss_first/last, eval_*_initial/final
    records: list  # metrics.jsonl: one dict per logging step and evaluation
    recipe: Any  # the validated recipe that ran
    model: Any = None  # the trained model, in memory
    tokenizer: Any = None


def run_recipe(recipe_or_mapping_or_path, overrides=(), plugins=None, output_dir=None) -> RecipeRun:
    """Train as the recipe says, with the core's ``run``, into ``output_dir`` (see the module docstring)."""
    from ftcore.artifacts import read_metrics
    from ftcore.run import run

    plugins = plugins if plugins is not None else fresh_plugins()
    recipe = load_recipe(recipe_or_mapping_or_path, overrides, plugins)
    if output_dir is None and "output_dir" not in recipe.model_fields_set:
        output_dir = tempfile.mkdtemp(prefix="ftcore-run-")
    if output_dir is not None:
        recipe = load_recipe(recipe, [f"output_dir={json.dumps(os.fspath(output_dir))}"], plugins)
    with offline():
        result = run(recipe, plugins, overwrite=True)
    out = Path(result.output_dir)
    return RecipeRun(out, dict(result.metrics), read_metrics(out), recipe, result.model, result.tokenizer)


def tree_without(builtins, dest) -> str:
    """A copy of the installed ``ftcore`` package under ``dest`` with the named built-in plugins deleted.

    Each built-in's module (or package) is removed and its line in ``ftcore.plugins.BUILTINS``
    dropped, as someone moving it into its own pip package would. Returns the folder to put first
    on ``PYTHONPATH`` of a subprocess, which then imports the copy as ``ftcore`` (and nothing of the
    original installation's ``ftcore``, editable or not).
    """
    import importlib.util
    import re
    import shutil

    from ftcore.plugins import BUILTINS

    site = Path(dest)
    root = site / "ftcore"
    for package, folder in (("ftcore", root), ("ftcore.plugins", root / "plugins"),
                            ("ftcore.recipes", root / "recipes"), ("ftcore.testing", root / "testing")):
        source = Path(importlib.util.find_spec(package).origin).parent
        shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    listing = root / "plugins" / "__init__.py"
    text = listing.read_text(encoding="utf-8")
    for name in [builtins] if isinstance(builtins, str) else builtins:
        module = BUILTINS[name].split(".")[-1]
        path = root / "plugins" / module
        shutil.rmtree(path) if path.is_dir() else (root / "plugins" / f"{module}.py").unlink()
        text, removed = re.subn(rf'^\s*"{re.escape(name)}": "[^"]+",.*\n', "", text, flags=re.M)
        if removed != 1:
            raise ValueError(f"no BUILTINS line for {name!r} in {listing}")
    listing.write_text(text, encoding="utf-8")
    # An editable install of ftcore adds an import hook that would still find the deleted modules in
    # the checkout; in processes run on this copy it is taken out again (site imports sitecustomize).
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n", encoding="utf-8")
    return str(site)


__all__ = [
    "load_recipe", "recipe_problems", "fresh_plugins", "add_plugin", "run_format", "format_context",
    "trained_runs", "trained_text", "eval_context", "run_recipe", "RecipeRun", "build_tiny",
    "build_tiny_mllama", "train_tokenizer", "COLORS", "alpaca_rows", "chat_rows", "corpus", "write_jsonl",
    "write_recipe", "offline", "OFFLINE_ENV", "PLACEHOLDER_MODEL", "tree_without",
]
