"""ftcore's messages: module loggers under ``ftcore``, shown on stdout while a command or a run is on.

Library code never prints and never configures logging for the process: each
module logs to ``get_logger(__name__)`` (``ftcore.<module>``; a plugin logs to
its own name or ``ftcore.plugins.<name>``). ``console()`` shows those messages
on stdout for the length of a ``with`` block (the CLI wraps every command in
it, ``ftcore.run.run`` wraps a run started from Python) and then takes its
handler away again. Messages of processes other than rank 0 are dropped below
WARNING, so a run on 8 GPUs prints its summary once.

Levels: ``--quiet`` shows warnings and errors only, ``--verbose`` adds debug
messages (the implementations each hook reached, for one) and every upstream
warning. Notices that a user should read ("notice: resizing token embeddings
...") are warnings.

Formats (``--log-format``): ``rich`` (colour and a live progress line, the
default on a terminal; ``NO_COLOR`` turns the colour off), ``plain`` (plain
lines, the default when stdout is not a terminal) and ``json`` (one JSON object
per line and event, for scripts: ``{"event": "message", "level": "info",
"message": ...}``, and the run's ``start``/``train``/``eval``/``done`` events
from ``ftcore.console``). :func:`output` is what the block set up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass

ROOT = "ftcore"
FORMATS = ("auto", "rich", "plain", "json")

# upstream warnings that tell a user of ftcore nothing they can act on (shown with --verbose)
NOISE = [
    # peft asks for the old name of a transformers property on every adapter injection
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
]


def get_logger(name: str) -> logging.Logger:
    """The logger for a module: ``get_logger(__name__)``; names outside ``ftcore`` are put under it."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


class RankFilter(logging.Filter):
    """Only rank 0 shows ordinary messages; every rank shows warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or main_process()


class RedactFilter(logging.Filter):
    """Secrets (``ftcore.secrets``) replaced by their ``${oc.env:NAME}`` reference in every record shown.

    On ftcore's handler, so it covers ftcore's records and those of transformers, datasets, ... that pass
    through it; an application that logs ftcore's records through its own handlers can add it there too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from ftcore.secrets import redact, secrets

        if not secrets():
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it later
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


@dataclass
class Output:
    """Where the block's messages go: ``mode`` is ``rich``, ``plain`` or ``json``; ``level`` the shown level."""

    mode: str = "plain"
    level: int = logging.INFO

    @property
    def rich(self):
        """A ``rich.console.Console`` on the current ``sys.stdout`` (no colour, no live line unless ``rich``)."""
        from rich.console import Console

        if self.mode == "rich":
            return Console(soft_wrap=True)
        return Console(soft_wrap=True, no_color=True, force_terminal=False, force_interactive=False,
                       width=max(100, Console().width))

    @property
    def live(self) -> bool:
        """Whether a live progress line is shown (a terminal, rank 0, messages at INFO)."""
        return self.mode == "rich" and self.level <= logging.INFO and main_process()

    def event(self, kind: str, text=None, **fields) -> None:
        """One event of a run: a JSON line in ``json`` mode, else ``text`` (a string or a rich renderable) at INFO."""
        if not main_process():
            return
        if self.mode == "json":
            said = {"level": "info", "message": text} if kind == "message" and isinstance(text, str) else {}
            print(json.dumps({"event": kind, **said, **fields}, default=str), flush=True)
        elif text is not None and self.level <= logging.INFO:
            if isinstance(text, str):
                get_logger("console").info(text)
            else:
                _console_for(self).print(text)


_OUTPUT: Output | None = None
_RICH = None  # the rich Console of a rich block: one object, so messages print above the live line


def output() -> Output:
    """The output of the enclosing :func:`console` block (plain lines at INFO outside one)."""
    return _OUTPUT or Output("plain", logging.getLogger(ROOT).getEffectiveLevel())


def _console_for(out: Output):
    return _RICH if out.mode == "rich" and _RICH is not None and out is _OUTPUT else out.rich


class _Handler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time (a test's capture, a pager), in the block's format."""

    def __init__(self, out: Output):
        super().__init__()
        self.out = out

    def emit(self, record):
        try:
            from ftcore.secrets import redact

            message = redact(self.format(record))
            if self.out.mode == "json":
                print(json.dumps({"event": "message", "level": record.levelname.lower(), "message": message}),
                      flush=True)
            elif self.out.mode == "rich":
                style = "yellow" if record.levelno == logging.WARNING else "red" if record.levelno > logging.WARNING else None
                _console_for(self.out).print(message, markup=False, highlight=False, style=style)
            else:
                sys.stdout.write(message + "\n")
                sys.stdout.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def resolve_format(fmt: str | None) -> str:
    """``auto`` (or ``None``) -> ``rich`` on a terminal, ``plain`` otherwise."""
    fmt = fmt or "auto"
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "auto":
        return "rich" if sys.stdout.isatty() and os.environ.get("TERM") != "dumb" else "plain"
    return fmt


_BARS_OFF: list = []  # transformers' progress bars this process turned off, to turn on again


def hush_loading() -> None:
    """Turn transformers' own progress bars ("Loading weights") off until the :func:`console` block ends.

    Called once transformers is imported (``core/run.py`` before the model loads); not with ``--verbose``.
    """
    if _OUTPUT is None or _OUTPUT.level <= logging.DEBUG or "transformers" not in sys.modules or _BARS_OFF:
        return
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        _BARS_OFF.append(hf_logging.enable_progress_bar)


@contextlib.contextmanager
def _quiet_upstream(verbose: bool):
    """Upstream noise off for the block: the warnings in ``NOISE`` (and, see :func:`hush_loading`, progress bars)."""
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        for category, message in NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        try:
            hush_loading()
            yield
        finally:
            while _BARS_OFF:
                _BARS_OFF.pop()()


@contextlib.contextmanager
def console(level: int | None = None, format: str | None = None):
    """Show ftcore's messages on stdout inside the block, at ``level`` (default INFO), in ``format`` (FORMATS).

    Does nothing when the ``ftcore`` logger already has a handler: an application that configured
    logging (or an enclosing ``console()``) keeps its own. Everything is put back on exit.
    """
    global _OUTPUT, _RICH
    logger = logging.getLogger(ROOT)
    if logger.handlers:
        if level is not None:
            previous = logger.level
            logger.setLevel(level)
            if _OUTPUT is not None:
                _OUTPUT.level, previous_output = level, _OUTPUT.level
            try:
                yield logger
            finally:
                logger.setLevel(previous)
                if _OUTPUT is not None:
                    _OUTPUT.level = previous_output
        else:
            yield logger
        return
    out = Output(resolve_format(format), logging.INFO if level is None else level)
    handler = _Handler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RankFilter())
    handler.addFilter(RedactFilter())
    previous_level, previous_propagate = logger.level, logger.propagate
    previous_output, previous_rich = _OUTPUT, _RICH
    logger.addHandler(handler)
    logger.setLevel(out.level)
    logger.propagate = False  # shown once, here, not again by a root handler the application has
    _OUTPUT, _RICH = out, (out.rich if out.mode == "rich" else None)
    try:
        with _quiet_upstream(out.level <= logging.DEBUG):
            yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
        _OUTPUT, _RICH = previous_output, previous_rich
