"""Secrets never leave in what ftcore writes: run folders, the data cache, logs, errors.

Two kinds of value count as secret:

- anything a recipe read through ``${oc.env:NAME}`` (registered while the recipe loads,
  with ``${oc.env:NAME}`` as what to write instead);
- the values of environment variables whose names say they hold one (``HF_TOKEN``,
  ``WANDB_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``*_TOKEN``, ``*_SECRET*``, ``*_PASSWORD``,
  ``*_API_KEY``, ...), whether or not a recipe names them.

:func:`redact` replaces each such value in a text by its reference; :func:`redact_obj` does it
through dicts and lists. Writers call them on what they write (``recipe.yaml``, ``run.json``,
``training_args.bin``'s ``run_name``, the cache's ``meta.json``, log records, error messages).
"""

from __future__ import annotations

import os
import re

# Environment variable names whose values are secrets.
SECRET_NAMES = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|AUTH)",
                          re.IGNORECASE)
MIN_LENGTH = 4  # shorter values ("1", "yes") are not treated as secrets: they would be replaced everywhere

_registered: dict[str, str] = {}  # value -> what to write instead


def register(value, reference: str) -> None:
    """Treat ``value`` as a secret, written as ``reference`` (e.g. ``${oc.env:AWS_SECRET_ACCESS_KEY}``)."""
    if isinstance(value, str) and len(value) >= MIN_LENGTH:
        _registered[value] = reference


def clear() -> None:
    """Forget the registered values (tests; an application loading several recipes)."""
    _registered.clear()


def environment_secrets() -> dict[str, str]:
    """``{value: "${oc.env:NAME}"}`` for environment variables named like secrets."""
    return {value: f"${{oc.env:{name}}}" for name, value in os.environ.items()
            if SECRET_NAMES.search(name) and len(value) >= MIN_LENGTH}


def secrets() -> dict[str, str]:
    """Every known secret value and its reference, longest first (so a secret inside another goes second)."""
    known = {**environment_secrets(), **_registered}
    return dict(sorted(known.items(), key=lambda kv: -len(kv[0])))


def redact(text):
    """``text`` with every secret value replaced by its reference; non-strings are returned unchanged."""
    if not isinstance(text, str) or not text:
        return text
    for value, reference in secrets().items():
        if value in text:
            text = text.replace(value, reference)
    return text


def redact_obj(obj):
    """:func:`redact` through dicts, lists and tuples (keys too)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def contains_secret(text) -> str | None:
    """The reference of the first secret found in ``text``, or None."""
    if not isinstance(text, str):
        return None
    for value, reference in secrets().items():
        if value in text:
            return reference
    return None
