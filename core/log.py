"""ftcore's messages: module loggers under ``ftcore``, shown on stdout while a command or a run is on.

Library code never prints and never configures logging for the process: each
module logs to ``get_logger(__name__)`` (``ftcore.<module>``; a plugin logs to
its own name or ``ftcore.plugins.<name>``). ``console()`` shows those messages
on stdout for the length of a ``with`` block (the CLI wraps every command in
it, ``ftcore.run.run`` wraps a run started from Python) and then takes its
handler away again. Messages of processes other than rank 0 are dropped below
WARNING, so a run on 8 GPUs prints its summary once.

Levels: ``--quiet`` shows warnings and errors only, ``--verbose`` adds debug
messages (the implementations each hook reached, for one). Notices that a user
should read ("notice: resizing token embeddings ...") are warnings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

ROOT = "ftcore"


def get_logger(name: str) -> logging.Logger:
    """The logger for a module: ``get_logger(__name__)``; names outside ``ftcore`` are put under it."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class RankFilter(logging.Filter):
    """Only rank 0 shows ordinary messages; every rank shows warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or os.environ.get("RANK", "0") == "0"


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a test's capture, a pager)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it
        pass


@contextlib.contextmanager
def console(level: int | None = None):
    """Show ftcore's messages on stdout inside the block, at ``level`` (default INFO).

    Does nothing when the ``ftcore`` logger already has a handler: an application that configured
    logging (or an enclosing ``console()``) keeps its own. Everything is put back on exit.
    """
    logger = logging.getLogger(ROOT)
    if logger.handlers:
        if level is not None:
            previous = logger.level
            logger.setLevel(level)
            try:
                yield logger
            finally:
                logger.setLevel(previous)
        else:
            yield logger
        return
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RankFilter())
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if level is None else level)
    logger.propagate = False  # shown once, here, not again by a root handler the application has
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
