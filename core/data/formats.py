"""Which function formats a dataset entry: a registered format, or a user function by dotted path.

``datasets[].type`` names a format a plugin registered (``alpaca``,
``chat_template``, ...) or, when no plugin registered that name and it
contains a dot, a function to import: ``type: my_package.formats.qa`` imports
``my_package.formats`` and uses its ``qa``, called like any format,
``qa(row, dataset, ctx)``. The dataset entry's keys that are not dataset keys
(``path``, ``split``, ...) reach the function as ``dataset.options``
(``dataset.options.my_key``, or ``dict(dataset.options)``), unchecked.

The import happens during validation, so a wrong path fails before any work.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel, ConfigDict

USER_FUNCTION = "user function"  # stands where a registered format names its plugin


class UserFunctionOptions(BaseModel):
    """The extra keys of a dataset entry whose ``type`` is a dotted path, passed on as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)


class FormatImportError(ValueError):
    """A dotted ``type`` that does not import, or is not a callable."""


def import_function(dotted: str):
    """``package.module.function`` -> the function; ``FormatImportError`` saying what failed."""
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name or not attribute:
        raise FormatImportError(f"'{dotted}' is not a dotted path module.function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise FormatImportError(f"cannot import module '{module_name}' for '{dotted}': "
                                f"{type(exc).__name__}: {exc} (the module must be importable: installed, "
                                f"on PYTHONPATH, or in the current folder with python -m ftcore)") from exc
    if not hasattr(module, attribute):
        raise FormatImportError(f"module '{module_name}' has no attribute '{attribute}'")
    function = getattr(module, attribute)
    if not callable(function):
        raise FormatImportError(f"'{dotted}' is a {type(function).__name__}, not a callable "
                                f"function(row, dataset, ctx)")
    return function


def resolve_format(type_name: str, formats: dict):
    """``((function, options model or None), plugin)`` for ``type_name``, as ``formats`` holds them.

    A registered name wins; else a dotted path is imported (``FormatImportError`` if it fails);
    else ``KeyError``.
    """
    if type_name in formats:
        return formats[type_name]
    if "." in type_name:
        return (import_function(type_name), UserFunctionOptions), USER_FUNCTION
    raise KeyError(type_name)


def format_function(spec, formats):
    """The function that formats the rows of dataset entry ``spec``."""
    return resolve_format(spec.type, formats)[0][0]
