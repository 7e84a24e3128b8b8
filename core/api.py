"""The public surface of ftcore for plugin authors: import from here, and only from here.

Everything a plugin needs is named below, documented in docs/plugins.md and
versioned with the hook contract (``CONTRACT_VERSION``): a name here changes
only with a new contract version. Every other module of the ``ftcore``
package is private, however it is spelled; the built-in plugins import only
this module (and ``ftcore.testing`` in tests), which a test enforces, so any
of them could live in its own pip package.

Importing this module is cheap (no torch or transformers); the names that
need them (``FtcoreTrainer``) are loaded on first use.

Hooks and contract
    ``hookimpl``, ``CONTRACT_VERSION``, ``__version__``
Messages
    ``get_logger(__name__)``: a logger ftcore shows on the console (``--quiet``, ``--verbose``, rank 0 only)
Errors
    ``FtcoreError`` (a message for the user, exit 2), ``RecipeError``,
    ``DataError``, ``MissingPluginError`` (no plugin provides what the recipe asks for),
    ``PluginError`` (exit 3), ``RowError`` (a bad data row)
Recipes
    ``Recipe`` (read-only; ``recipe.get(key)``, ``recipe.section(key)``,
    ``recipe.is_set(key)``), ``RecipeKeys`` (base for a plugin's keys or
    section), ``PATH`` (marks a key that names a local path), ``DatasetSpec``
The run's stash
    ``Stash``, ``StashKey`` and the documented keys ``PROCESSOR``,
    ``NEW_TOKENS``, ``NEW_TOKEN_IDS``, ``ADAPTER_TARGETS``, ``ADAPTER_SCOPE``,
    ``FROZEN_MODULES``, ``EVAL_SAMPLES`` (what evaluators recorded with ``EvalContext.record``)
Data
    ``IGNORE_INDEX``, ``FormatContext``, ``ContentPart`` / ``ContentRow`` (what a content-part
    handler gets), ``format_chat`` / ``ChatOptions`` (the conversation format and its keys),
    ``conversation_segments(messages, ctx)``, ``CHAT_TEMPLATES`` (the named templates' text),
    ``ALPACA_PREAMBLE`` / ``ALPACA_PREAMBLE_WITH_INPUT``, ``document_segments(row, name, ctx)``,
    ``tokenize_segments(segments, tokenizer)``, ``packs(recipe)``,
    ``PaddingCollator``, ``PackedCollator``, ``text_field(row, name)``,
    ``SourceFileOptions`` / ``glob_match`` (formats reading source files),
    ``has_glob(path)`` / ``source_root(spec)`` (a source path's wildcards, the folder its files are under),
    ``chunk_documents`` (a ``combine`` cutting documents into ``sequence_len``)
Loading
    ``transformers_class``, ``from_pretrained``, ``finish_tokenizer``,
    ``precision(recipe)``, ``torch_dtype(name)``
Training and evaluation
    ``FtcoreTrainer``, ``trainer_kwargs``, ``EvalContext``, ``run_evaluators``,
    ``Plan`` (what ``launch_processes`` gets)
Trained runs
    ``load_trained(run_dir, plugins, *, base=False, quantize=None, overrides=())`` -> ``Trained``
    (model, tokenizer, recipe, run_dir, stash, processor, label): a run folder's model for inference
    ``run_state(run_dir)`` -> ``RunState`` (status, problem, advice, has_model; ``need_model()``, ``check()``);
    ``require_base(key, model)``: one clear line when a base model Hub id is needed offline
Commands, recipes and models (for plugins that add commands)
    ``recipe_arguments(parser)``: a command's ``RECIPE [key=value ...]`` arguments, as ``ftcore run`` takes them;
    ``load_recipe(source, overrides, plugins)`` -> ``(Recipe, RawRecipe)``: validated, as ``ftcore run`` reads it
    (a path, a registered name or a pinned URL; ``key=value`` overrides; the recipe's ``plugins:`` join ``plugins``);
    ``registered_recipes(plugins)`` -> ``{name: (path, PluginInfo)}``;
    ``ModelFacts``, ``registered_models(plugins)`` -> ``{model_id: ModelFacts}``, ``model_facts(plugins, model_id)``
"""

from __future__ import annotations

from ftcore import CONTRACT_VERSION, __version__, hookimpl
from ftcore.data import IGNORE_INDEX, ContentPart, ContentRow, FormatContext, RowError
from ftcore.data.chat import ChatOptions, conversation_segments, format_chat
from ftcore.data.collate import PackedCollator, PaddingCollator
from ftcore.data.fields import SourceFileOptions, chunk_documents, document_segments, glob_match, text_field
from ftcore.data.pack import packs
from ftcore.data.read import has_glob, source_root
from ftcore.data.templates import ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, CHAT_TEMPLATES
from ftcore.data.tokenize import tokenize_segments
from ftcore.device import precision, torch_dtype
from ftcore.errors import DataError, FtcoreError, MissingPluginError, PluginError, RecipeError
from ftcore.evaluation import PHASES, EvalContext, run_evaluators
from ftcore.launch import Plan
from ftcore.log import get_logger
from ftcore.loading import check_source, check_weights, finish_tokenizer, from_pretrained, transformers_class
from ftcore.recipe.schema import PATH, DatasetSpec, Recipe, RecipeKeys
from ftcore.stash import (ADAPTER_SCOPE, ADAPTER_TARGETS, EVAL_SAMPLES, FROZEN_MODULES, NEW_TOKEN_IDS, NEW_TOKENS,
                          PROCESSOR, Stash, StashKey)
from ftcore.train import trainer_kwargs
from ftcore.trained import Trained, load_trained
from ftcore.trained import RunState, require_base, run_state  # is a run folder finished (eval, generate, chat, merge)
from ftcore.guards import SIGNAL_EXIT, launcher_signals  # a launcher's Ctrl-C / SIGTERM (distributed plugin)

__all__ = [  # FtcoreTrainer is loaded on first use (__getattr__ below)
    "__version__", "ADAPTER_SCOPE", "ADAPTER_TARGETS", "ALPACA_PREAMBLE", "ALPACA_PREAMBLE_WITH_INPUT",
    "CHAT_TEMPLATES", "ChatOptions", "check_source", "check_weights", "chunk_documents", "ContentPart", "ContentRow", "CONTRACT_VERSION",
    "conversation_segments", "DataError", "DatasetSpec", "document_segments", "EVAL_SAMPLES", "EvalContext", "finish_tokenizer",
    "format_chat", "FormatContext", "from_pretrained", "FROZEN_MODULES", "FtcoreError", "FtcoreTrainer",
    "get_logger", "glob_match", "has_glob", "hookimpl", "IGNORE_INDEX", "MissingPluginError", "NEW_TOKEN_IDS",
    "NEW_TOKENS", "PackedCollator", "packs", "PaddingCollator", "PATH", "PHASES", "Plan", "PluginError",
    "precision", "PROCESSOR", "Recipe", "RecipeError", "RecipeKeys", "RowError", "run_evaluators", "source_root",
    "SourceFileOptions", "Stash", "StashKey", "text_field", "tokenize_segments", "torch_dtype", "Trained",
    "trainer_kwargs", "load_trained", "transformers_class",
]

__all__ += ["RunState", "require_base", "run_state"]  # what a run folder's run.json says, in words

from ftcore.hooks import ModelFacts, model_facts, registered_models, registered_recipes  # noqa: E402


def recipe_arguments(parser) -> None:
    """Add ``RECIPE [key=value ...]`` to a command's ``argparse`` parser (``args.recipe``, ``args.overrides``),
    overrides also accepted after a flag, exactly as ``ftcore run`` takes them."""
    from ftcore.cli import _recipe_arguments, overrides_after_flags

    _recipe_arguments(parser)
    overrides_after_flags(parser)


def load_recipe(source, overrides=(), plugins=None):
    """``(Recipe, RawRecipe)``: ``source`` read and validated as ``ftcore run`` reads it; errors are ``RecipeError``."""
    from ftcore.cli import load

    if plugins is None:
        from ftcore.plugins_manager import load_plugins

        plugins = load_plugins()
    recipe, raw, _skipped = load(source, overrides, plugins)
    return recipe, raw


__all__ += ["recipe_arguments", "load_recipe", "ModelFacts", "model_facts", "registered_models", "registered_recipes"]


def __getattr__(name):
    if name == "FtcoreTrainer":  # a transformers.Trainer subclass: transformers loads only now
        from ftcore import train

        return train.FtcoreTrainer
    raise AttributeError(f"module 'ftcore.api' has no attribute {name!r}")
