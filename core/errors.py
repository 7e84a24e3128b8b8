"""Errors that reach the user as a clear message and an exit code, not a traceback."""


class FtcoreError(Exception):
    """A problem the user can fix (bad recipe, bad data, missing plugin).

    The CLI prints ``str(error)`` and exits with ``exit_code``; ``--debug``
    shows the traceback too.
    """

    exit_code = 2


class RecipeError(FtcoreError):
    """One or more problems in a recipe, all reported at once.

    ``problems`` is a list of ``(key_path, message)``; ``source`` names the
    recipe file (or "overrides").
    """

    def __init__(self, problems, source=None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self):
        where = f" in {self.source}" if self.source else ""
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''}{where}:"
        lines = [head]
        for key, message in self.problems:
            lines.append(f"  {key or '<recipe>'}: {message}")
        return "\n".join(lines)


class DataError(FtcoreError):
    """A data file or row that cannot be used; names the file and row."""


class MissingPluginError(FtcoreError):
    """No installed plugin provides what the recipe asks for (exit 2: install or enable one, or change the recipe)."""


class PluginError(FtcoreError):
    """A plugin failed to load, declared a bad hook, or raised inside a hook."""

    exit_code = 3
