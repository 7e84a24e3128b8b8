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
