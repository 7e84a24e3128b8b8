"""Built-in dataset formats (``datasets[].type``) and chat templates."""


def text_field(row, name, required=True):
    """A string field of a row, or ``RowError`` naming what is wrong."""
    from ftcore.data import RowError

    value = row.get(name)
    if value is None:
        if required:
            raise RowError(f"missing field '{name}' (row has: {', '.join(sorted(row)) or 'nothing'})", "missing field")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field '{name}' must be a string, got {type(value).__name__}", "wrong type")
    return value


def glob_match(path: str, pattern: str) -> bool:
    """``path`` (relative, with ``/``) matches ``pattern``: a pattern without ``/`` matches the file name at
    any depth (``*.py``); one with ``/`` matches the whole path, ``*`` crossing folders (``tests/*``), and a
    leading ``**/`` also matches at the top (``**/*.py``)."""
    from fnmatch import fnmatchcase

    if "/" not in pattern:
        return fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatchcase(path, pattern) or (pattern.startswith("**/") and fnmatchcase(path, pattern[3:]))


class SourceFileOptions:
    """Mixin for the options of a format that reads source files whole (``ftcore.data.read``):
    ``include`` and ``exclude`` globs choose the files of a folder or glob."""

    def source_file(self, path: str) -> bool:
        if self.include and not any(glob_match(path, p) for p in self.include):
            return False
        return not any(glob_match(path, p) for p in self.exclude or ())
