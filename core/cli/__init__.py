"""The ``ftcore`` command. One module per subcommand; plugins add more.

Importing this package, parsing arguments, ``validate``, ``plugins`` and
``--help`` never import torch or transformers (``preprocess`` imports
transformers for the tokenizer only when it runs).
"""

from __future__ import annotations

import argparse
import sys

from ftcore import __version__
from ftcore.errors import FtcoreError


def _recipe_arguments(parser):
    parser.add_argument("recipe", help="recipe file, or the name of a shipped recipe (e.g. quickstart)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override recipe keys, values in YAML: learning_rate=1e-4 'datasets[0].path=x.jsonl'")


def overrides_after_flags(parser) -> None:
    """``ftcore run RECIPE --overwrite key=value``: argparse leaves positionals after a flag unparsed; they
    are overrides (``parse_intermixed_args`` is not available under subcommands)."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, rest = parse(args, namespace)
        late = [a for a in rest if not a.startswith("-")]
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *late]
        return namespace, [a for a in rest if a.startswith("-")]

    parser.parse_known_args = parse_known_args


def _verbosity(parser, default):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print only warnings and errors")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="print debug messages and every upstream warning too")
    parser.add_argument("--log-format", choices=("auto", "rich", "plain", "json"), default=default,
                        help="auto (default): rich with a live progress line on a terminal, plain lines otherwise; "
                             "json: one JSON object per event on stdout, for scripts")


def _level(args):
    import logging

    if getattr(args, "quiet", None):
        return logging.WARNING
    if getattr(args, "verbose", None):
        return logging.DEBUG
    return logging.INFO


def build_parser(plugins=None) -> argparse.ArgumentParser:
    from ftcore.cli import eval as eval_command
    from ftcore.cli import new_plugin, plugins_command, preprocess, report, run, validate

    parser = argparse.ArgumentParser(
        prog="ftcore", description="Fine-tune large language models from one YAML recipe.",
        epilog="Example: ftcore run quickstart learning_rate=1e-4",
    )
    parser.add_argument("--version", action="version", version=f"ftcore {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    _verbosity(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for module in (run, validate, preprocess, eval_command, plugins_command, new_plugin, report):
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        _verbosity(p, default=argparse.SUPPRESS)
        if module.TAKES_RECIPE:
            _recipe_arguments(p)
            overrides_after_flags(p)
        module.configure(p)
        p.set_defaults(handler=module.handle)

    if plugins is not None:
        from ftcore.hooks import commands

        for name, ((help_text, configure, handler), _plugin) in commands(plugins).items():
            p = sub.add_parser(name, help=help_text, description=help_text)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
            _verbosity(p, default=argparse.SUPPRESS)
            configure(p)
            p.set_defaults(handler=handler)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _LOADED.clear()
    debug = "--debug" in argv
    try:
        from ftcore.plugins_manager import load_plugins

        # a plugin that cannot load is listed as refused; --version, --help and `ftcore plugins` still work
        plugins = load_plugins(tolerate_refused=True)
        parser = build_parser(plugins)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 0
        if args.command not in ("plugins", "new-plugin"):  # these need no plugin to work
            plugins.raise_refused()
        args.plugins = plugins
        from ftcore.log import console

        with console(_level(args), getattr(args, "log_format", None)):  # ftcore's messages on stdout while the command runs
            return int(args.handler(args) or 0)
    except FtcoreError as exc:
        if debug:
            raise
        from ftcore.secrets import redact

        if isinstance(exc, RecipeError) and _LOADED and exc.source in (None, _LOADED[-1].source):
            exc = _naming_overrides(exc, _LOADED[-1])  # a path check after loading: an override still says so

        if not getattr(exc, "quiet", False):  # quiet: another process (rank 0) says it for the run
            print(f"error: {redact(str(exc))}", file=sys.stderr)  # a secret read from the environment stays unsaid
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ftcore ... | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


from ftcore.errors import RecipeError  # noqa: E402

_LOADED: list = []  # the raw recipe the running command loaded, so later errors can name its overrides


def load_recipe(args):
    """The validated recipe from ``args.recipe`` and ``args.overrides``; also returns skipped plugins."""
    return load(args.recipe, args.overrides, args.plugins)


def load(source, overrides, plugins):
    """``(recipe, raw, skipped plugins)``: a recipe read as ``ftcore run`` reads it (``ftcore.api.load_recipe``)."""
    from ftcore.hooks import registered_recipes
    from ftcore.recipe import load_raw, validate

    raw = load_raw(source, list(overrides or ()), registered_recipes(plugins))  # {name: (path, PluginInfo)}: errors name the package
    _LOADED[:] = [raw]
    try:
        skipped = plugins.add_recipe_plugins(raw.data.get("plugins"), validate_first=lambda: validate(raw, plugins))
        return validate(raw, plugins), raw, skipped
    except RecipeError as exc:
        raise _naming_overrides(exc, raw) from None


def _naming_overrides(exc, raw):
    """Problems with a key the command line set say so: the recipe file is not where to look."""
    from ftcore.errors import RecipeError

    def override_of(key):
        for given, text in raw.overrides.items():
            plain = given.replace("[", ".").replace("]", "")
            name = (key or "").replace("[", ".").replace("]", "")
            if name == plain or name.startswith(plain + "."):
                return text
        return None

    if exc.source is None:
        exc = RecipeError(exc.problems, source=raw.source)
    problems, given = [], []
    texts = [override_of(key) for key, _ in exc.problems]
    alone = len(set(texts)) == 1 and texts[0] is not None  # one override, every problem: the heading says it
    for (key, message), text in zip(exc.problems, texts):
        if text:
            if text not in given:
                given.append(text)
            if not alone:
                message = f"{message} (set by the command-line override '{text}')"
        problems.append((key, message))
    if not given:
        return exc
    if None in texts:
        source = f"{raw.source} and the command line"
    else:
        source = "the command-line override" + ("s " if len(given) > 1 else " ") + ", ".join(f"'{t}'" for t in given)
    return RecipeError(problems, source=source)
