"""ftcore: fine-tune large language models from one YAML recipe.

The public surface for plugin authors is small and lives here:

- ``hookimpl``: the marker for hook implementations (``@hookimpl``).
- ``CONTRACT_VERSION``: the version of the hook contract this core speaks.
  A plugin module declares ``FTCORE_CONTRACT = "1"`` (the major number it was
  written for); the core refuses a plugin written for another major version.
- ``FtcoreError`` / ``RecipeError``: errors that reach the user as a message,
  not a traceback.

Nothing here imports torch or transformers: ``ftcore validate`` and
``ftcore plugins`` stay fast.
"""

import pluggy

__version__ = "0.1.0"

#: Version of the hook contract: "MAJOR.MINOR". A plugin written for the same
#: MAJOR works; MINOR grows when hooks are added without breaking old ones.
CONTRACT_VERSION = "1.3"

PROJECT = "ftcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

from ftcore.errors import FtcoreError, RecipeError  # noqa: E402

__all__ = ["hookimpl", "hookspec", "CONTRACT_VERSION", "FtcoreError", "RecipeError", "__version__"]
