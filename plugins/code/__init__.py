"""Code (Qwen2.5-Coder): the ``fim`` and ``code_repo`` dataset formats and the ``code_exec`` evaluator.

One plugin, short name ``code`` (``FTCORE_DISABLE_PLUGINS=code`` turns all of it off):

- ``fim.py``: ``type: fim``, source code -> fill-in-the-middle examples;
- ``code_repo.py``: ``type: code_repo``, a repository's files as one document;
- ``evaluator.py``: ``code_exec``, pass@k of generated code, with its ``code_exec:`` section;
- ``sandbox.py`` (with ``sandbox_child.py``, run as its own Python process): where that code runs.

It imports only ``ftcore.api`` and its own modules. Its recipes
(``recipes/qwen25-coder-*.yaml``) and problem set (``recipes/code/``) ship with ftcore.
"""

from __future__ import annotations

from ftcore.api import DataError, hookimpl

from .code_repo import CodeRepoOptions, repo_file
from .evaluator import CodeExecSection, evaluate_code, load_problems, shipped_problems
from .fim import FimOptions, fim

FTCORE_CONTRACT = "1"


@hookimpl(trylast=True)
def register_dataset_formats(register):
    register("fim", fim, FimOptions)
    register("code_repo", repo_file, CodeRepoOptions)


@hookimpl(trylast=True)
def recipe_sections(register):
    register("code_exec", CodeExecSection)


@hookimpl(trylast=True)
def validate_recipe(recipe, error):
    if "code_exec" not in recipe.evaluators:
        return
    if not recipe.val_set_size and not recipe.test_datasets:
        error("evaluators", "code_exec runs at evaluations, and this recipe has no evaluation split: "
                            "set val_set_size (e.g. 0.01) or test_datasets")
    settings = recipe.section("code_exec")
    try:
        load_problems(settings.problems or shipped_problems())
    except DataError as exc:
        error("code_exec.problems", str(exc))


@hookimpl(trylast=True)
def register_evaluators(register):
    register("code_exec", evaluate_code)
