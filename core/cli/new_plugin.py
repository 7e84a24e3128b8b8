"""``ftcore new-plugin NAME [--dir DIR]``: start a plugin as a pip-installable package.

Writes into DIR (default ``./NAME``), which must be absent or empty:

- ``pyproject.toml``: setuptools, a dependency on ftcore, the entry point
  ``[project.entry-points.ftcore] NAME = "MODULE"`` that makes ftcore find it;
- ``MODULE.py``: ``FTCORE_CONTRACT``, a dataset format ``type: MODULE_upper``
  and a recipe section ``MODULE:`` the format reads;
- ``tests/test_MODULE.py``: tests with ftcore's plugin-author kit (``ftcore.testing``);
- ``README.md``: how to install, test and use it.

``MODULE`` is NAME in lower case with ``-`` and ``.`` turned into ``_``. A NAME
that is not a valid distribution name, or whose module name would be invalid
or shadow another module, is refused (exit 2) before anything is written.
Imports nothing heavy.
"""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path

from ftcore.errors import FtcoreError

NAME = "new-plugin"
HELP = "create a plugin package: a dataset format, a recipe section, its tests (ftcore.testing) and a README"
TAKES_RECIPE = False

# PEP 508 / the packaging spec: letters, digits, and . _ - inside
_DISTRIBUTION = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_RESERVED = {"ftcore", "test", "tests", "setup", "conftest", "pytest", "torch", "transformers", "peft", "pydantic"}

#: What the generated module imports from ftcore: its public surface for plugins.
PLUGIN_IMPORTS = "from ftcore.api import hookimpl"
ROW_ERROR_IMPORT = "from ftcore.api import RowError"


def configure(parser):
    parser.add_argument("name", help="the package's distribution name, e.g. ftcore-shout (module: ftcore_shout)")
    parser.add_argument("--dir", metavar="DIR", help="the folder to write (default: ./NAME); must be absent or empty")


def module_name(name: str) -> str:
    """The importable module for distribution ``name``: ``ftcore-Shout.x`` -> ``ftcore_shout_x``."""
    return re.sub(r"[-.]+", "_", name).lower()


def check_name(name: str) -> str:
    """The module name for ``name``; ``FtcoreError`` saying why when ``name`` cannot be used."""
    if not _DISTRIBUTION.match(name):
        raise FtcoreError(f"'{name}' is not a valid package name: use letters, digits and . _ - "
                          f"(starting and ending with a letter or digit), e.g. ftcore-shout")
    module = module_name(name)
    if not module.isidentifier() or keyword.iskeyword(module):
        raise FtcoreError(f"'{name}' would give the module name '{module}', which is not a valid Python "
                          f"identifier (it must start with a letter or _); choose another name")
    if module in _RESERVED or module in sys.stdlib_module_names:
        raise FtcoreError(f"'{name}' would give the module name '{module}', which shadows an existing module; "
                          f"choose another name, e.g. ftcore-{module}")
    from ftcore.recipe.schema import CORE_KEYS

    if module in CORE_KEYS:
        raise FtcoreError(f"'{name}' would make '{module}' the plugin's recipe section, but that is a core "
                          f"recipe key; choose another name, e.g. ftcore-{module}")
    return module


def check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise FtcoreError(f"{target} exists and is not a folder; choose another --dir")
    if target.is_dir() and any(target.iterdir()):
        raise FtcoreError(f"{target} is not empty; choose an empty or new folder with --dir (nothing was written)")


def plugin_files(name: str) -> dict[str, str]:
    """``{relative path: text}`` of the package for ``name`` (checked with ``check_name``)."""
    from ftcore import CONTRACT_VERSION, __version__

    module = check_name(name)
    values = {"__NAME__": name, "__MODULE__": module, "__CONTRACT__": CONTRACT_VERSION.split(".")[0],
              "__VERSION__": __version__, "__PLUGIN_IMPORTS__": PLUGIN_IMPORTS,
              "__ROW_ERROR_IMPORT__": ROW_ERROR_IMPORT}

    def fill(text: str) -> str:
        for marker, value in values.items():
            text = text.replace(marker, value)
        return text

    return {
        "pyproject.toml": fill(PYPROJECT),
        f"{module}.py": fill(MODULE),
        f"tests/test_{module}.py": fill(TESTS),
        "README.md": fill(README),
    }


def handle(args) -> int:
    files = plugin_files(args.name)  # refuses a bad name before anything is written
    target = Path(args.dir) if args.dir else Path(args.name)
    check_target(target)
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    module = module_name(args.name)
    print(f"created {target}/ ({args.name}, module {module}):")
    for relative in files:
        print(f"  {relative}")
    print(f"next: cd {target} && pip install -e . && python -m pytest")
    print(f"then: ftcore plugins  (lists '{args.name}'); recipes use type: {module}_upper and the section {module}:")
    return 0


# ── the package's files (markers: __NAME__, __MODULE__, __CONTRACT__, __VERSION__) ──

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "__NAME__"
version = "0.1.0"
description = "An ftcore plugin: the __MODULE___upper dataset format and the __MODULE__ recipe section"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["ftcore>=__VERSION__"]

[project.optional-dependencies]
test = ["pytest>=8"]

# how ftcore finds the plugin: the group is "ftcore", the name is what `ftcore plugins`
# shows and FTCORE_DISABLE_PLUGINS takes, the value the module to import
[project.entry-points.ftcore]
"__NAME__" = "__MODULE__"

[tool.setuptools]
py-modules = ["__MODULE__"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
'''

MODULE = '''\
"""__NAME__: an ftcore plugin.

- dataset format ``type: __MODULE___upper``: a prompt and a response; the
  response is trained, in upper case, followed by the end-of-sequence token;
- recipe section ``__MODULE__:`` with ``suffix``, text the format adds after
  every response.

Nothing heavy is imported at module level: ftcore imports every plugin
whenever the ``ftcore`` command starts. See ftcore's docs/plugins.md for the
other hooks (evaluators, callbacks, model loaders, commands, ...).
"""

from pydantic import BaseModel, ConfigDict, Field

__PLUGIN_IMPORTS__

FTCORE_CONTRACT = "__CONTRACT__"  # the major version of ftcore's hook contract this plugin is written for


# ── recipe section ``__MODULE__:`` ─────────────────────────────────────────


class Settings(BaseModel):
    """The recipe's ``__MODULE__:`` section; unknown keys in it are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suffix: str = Field("", description="text added after every upper-cased response")


@hookimpl
def recipe_sections(register):
    register("__MODULE__", Settings)


def settings(recipe) -> Settings:
    """The recipe's section, or the defaults when it has none."""
    return recipe.section("__MODULE__") or Settings()


# ── dataset format ``type: __MODULE___upper`` ──────────────────────────────


class UpperOptions(BaseModel):
    """The dataset entry's own keys (``field_prompt: question``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field_prompt: str = "prompt"
    field_response: str = "response"


def upper(row, dataset, ctx):
    """One row -> ``(text, trained)`` segments; the core tokenizes them and masks the untrained ones."""
    __ROW_ERROR_IMPORT__

    options = dataset.options
    prompt, response = row.get(options.field_prompt), row.get(options.field_response)
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise RowError(f"needs string fields '{options.field_prompt}' and '{options.field_response}'",
                       "missing prompt or response")
    return [(prompt + "\\n", ctx.recipe.train_on_inputs),
            (response.upper() + settings(ctx.recipe).suffix, True),
            (ctx.eos_token, True)]


@hookimpl
def register_dataset_formats(register):
    register("__MODULE___upper", upper, UpperOptions)
'''

TESTS = '''\
"""Tests of __NAME__ with ftcore's plugin-author kit (``ftcore.testing``).

The fixtures (``ftcore_tiny_llama``, ``ftcore_register``, ...) come with ftcore:
its pytest plugin is registered whenever ftcore is installed. The tiny model is
built on the spot; nothing is downloaded. Run: ``python -m pytest``.
"""

import pytest

import __MODULE__
from ftcore.testing import load_recipe, recipe_problems, run_format, trained_runs

FORMAT = "__MODULE___upper"
ROW = {"prompt": "Say the colours.", "response": "red green"}


def recipe(**keys):
    """A recipe using the plugin; listed under ``plugins:``, it loads whether or not it is installed."""
    return {"base_model": "unused/model", "plugins": ["__MODULE__"],
            "datasets": [{"path": "data.jsonl", "type": FORMAT}], **keys}


@pytest.fixture
def tokenizer(ftcore_tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ftcore_tiny_llama)


def test_the_response_is_trained_in_upper_case(tokenizer, ftcore_register):
    plugins = ftcore_register(__MODULE__)
    example = run_format(FORMAT, ROW, tokenizer, plugins=plugins)
    assert len(example["input_ids"]) == len(example["labels"])
    assert trained_runs(tokenizer, example) == ["RED GREEN" + tokenizer.eos_token]


def test_the_section_reaches_the_format(tokenizer, ftcore_register):
    plugins = ftcore_register(__MODULE__)
    example = run_format(FORMAT, ROW, tokenizer, recipe={"__MODULE__": {"suffix": "!"}}, plugins=plugins)
    assert trained_runs(tokenizer, example) == ["RED GREEN!" + tokenizer.eos_token]


def test_field_names_are_dataset_options(tokenizer, ftcore_register):
    plugins = ftcore_register(__MODULE__)
    row = {"question": "Say the colours.", "answer": "red green"}
    example = run_format(FORMAT, row, tokenizer, plugins=plugins, field_prompt="question", field_response="answer")
    assert trained_runs(tokenizer, example) == ["RED GREEN" + tokenizer.eos_token]


def test_a_bad_row_is_a_row_error(tokenizer, ftcore_register):
    from ftcore.data import RowError

    with pytest.raises(RowError, match="needs string fields"):
        run_format(FORMAT, {"prompt": "no response"}, tokenizer, plugins=ftcore_register(__MODULE__))


def test_a_recipe_without_the_section_gets_its_defaults():
    assert load_recipe(recipe()).section("__MODULE__").suffix == ""


def test_a_recipe_with_the_section():
    assert load_recipe(recipe(__MODULE__={"suffix": "!"})).section("__MODULE__").suffix == "!"
    assert load_recipe(recipe(), ["__MODULE__.suffix=END"]).section("__MODULE__").suffix == "END"


def test_unknown_keys_are_errors():
    assert [key for key, _ in recipe_problems(recipe(__MODULE__={"sufix": "!"}))] == ["__MODULE__.sufix"]
    assert [key for key, _ in recipe_problems(recipe(datasets=[{"path": "data.jsonl", "type": FORMAT,
                                                                "field_promt": "q"}]))] == ["datasets[0].field_promt"]
'''

README = '''\
# __NAME__

An [ftcore](https://pypi.org/project/ftcore/) plugin, started with `ftcore new-plugin __NAME__`. It adds:

- the dataset format `type: __MODULE___upper`: rows with `prompt` and `response`; the response
  is trained in upper case (the prompt only with `train_on_inputs: true`);
- the recipe section `__MODULE__:` with `suffix`, text added after every response.

Edit `__MODULE__.py` to make it yours; ftcore's `docs/plugins.md` describes every hook.

## Install

```sh
pip install -e .        # while you work on it (pip install . for a plain install)
ftcore plugins          # now lists __NAME__ and its hooks
```

ftcore finds the plugin through the entry point in `pyproject.toml`
(`[project.entry-points.ftcore]`). `FTCORE_DISABLE_PLUGINS=__NAME__` turns it off.

## Test

```sh
pip install -e ".[test]"
python -m pytest
```

The tests use ftcore's plugin-author kit, `ftcore.testing`: `run_format` puts a row
through the format exactly as a run does (tokens and labels), `load_recipe` and
`recipe_problems` validate recipes as `ftcore validate` does, and the fixtures
`ftcore_tiny_llama` (a tiny Llama 3 with the real special tokens, built on the spot,
nothing downloaded) and `ftcore_register` (the plugin on a fresh plugin manager, for
one test) come with ftcore's pytest plugin.

## Use

**data.jsonl**

```json
{"prompt": "Say the colours.", "response": "red green"}
{"prompt": "Say the animals.", "response": "cat dog"}
```

**recipe.yaml**

```yaml
# ftcore run recipe.yaml max_steps=10
base_model: ./tiny            # python -m ftcore.testing.tiny llama3 ./tiny
datasets:
  - path: data.jsonl
    type: __MODULE___upper
    field_prompt: prompt      # the default; name your own fields here
__MODULE__:
  suffix: "!"
micro_batch_size: 2
output_dir: ./out
```

```sh
ftcore validate recipe.yaml
ftcore preprocess recipe.yaml --show 2     # the tokens and which of them train
ftcore run recipe.yaml max_steps=10
```

Without installing the package, list the module in the recipe and put this folder
on `PYTHONPATH`:

```yaml
plugins:
  - __MODULE__
```
'''
