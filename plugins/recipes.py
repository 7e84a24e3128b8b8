"""The recipes shipped with ftcore, runnable by name: ``ftcore run quickstart``."""

from pathlib import Path

from ftcore import hookimpl

FTCORE_CONTRACT = "1"


def recipes_folder() -> Path:
    import ftcore.recipes

    return Path(ftcore.recipes.__file__).parent


@hookimpl(trylast=True)
def register_recipes(register):
    for path in sorted(recipes_folder().glob("*.yaml")):
        register(path.stem, str(path))
