"""The plugin manager: finds plugins, registers them, and calls their hooks.

Discovery order (later ones are asked first in firstresult hooks):

1. built-in plugins (``ftcore.plugins.BUILTINS``), registered like any other;
2. installed packages that declare an entry point in the group ``ftcore``;
3. modules listed under ``plugins:`` in the recipe.

An installed plugin whose entry-point name is a built-in's short name replaces that built-in (the
built-in is not loaded; ``ftcore plugins`` lists it as replaced): a package may ship a fuller version
of a built-in feature, as ``examples/ftcore-neftune`` does for ``neftune``.

``FTCORE_DISABLE_PLUGINS=name1,name2`` blocks plugins by name (the entry-point
name, the built-in's short name, or the module path from the recipe).
``FTCORE_TRACE_PLUGINS=1`` prints every hook call to stderr: the
implementations it reached and what each returned.

Every failure names the plugin, its package and version, the hook, and how to
disable it: in a hook, and in what a plugin registered (a format, an
evaluator, a content-part handler, a trainer callback) when it is called later.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field

import pluggy

from ftcore import CONTRACT_VERSION, PROJECT, hookspecs
from ftcore.errors import FtcoreError, PluginError

ENTRY_POINT_GROUP = "ftcore"
DISABLE_ENV = "FTCORE_DISABLE_PLUGINS"
TRACE_ENV = "FTCORE_TRACE_PLUGINS"


@dataclass
class PluginInfo:
    """What ``ftcore plugins`` shows about one plugin."""

    name: str
    module: str
    source: str  # "builtin", "entry point" or "recipe"
    package: str | None = None
    version: str | None = None
    contract: str | None = None
    hooks: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        pkg = f"{self.package} {self.version}" if self.package else "no package"
        return f"'{self.name}' ({self.module}, {pkg})"

    def how_to_disable(self) -> str:
        if self.source == "recipe":
            return f"remove '{self.module}' from the recipe's plugins: list"
        return f"disable it with {DISABLE_ENV}={self.name}"


def _major(version) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


def disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def tracing() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _trace(message: str) -> None:
    import sys

    print(f"[ftcore trace] {message}", file=sys.stderr, flush=True)


def _entry_points():
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


@contextlib.contextmanager
def named_module_path():
    """The current folder on ``sys.path`` while importing a module a recipe names explicitly.

    ``python -m ftcore`` takes the current folder off ``sys.path`` (``core/__main__.py``) so no stray
    ``.py`` there is imported by name; a ``plugins:`` module or dotted ``type:`` in that folder still works.
    """
    folder = os.environ.get("FTCORE_MODULE_FOLDER")
    if not folder or folder in sys.path:
        yield
        return
    sys.path.append(folder)  # last: an installed module of the same name wins
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


class Plugins:
    """A pluggy ``PluginManager`` plus what we know about each plugin.

    Calls go through ``call_first`` / ``call_all`` so that a plugin raising
    inside a hook is reported by name.
    """

    def __init__(self):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.blocked: list[str] = []
        self.replaced: dict[str, str] = {}  # built-in short name -> the installed plugin's label that replaced it
        self.refused: list[tuple[PluginInfo, PluginError]] = []  # failed to load, when loading tolerated it
        self.answered: set[str] = set()  # plugins that answered a firstresult hook (what a run "used")
        self._collected: dict[str, dict] = {}

    # ── registration ──────────────────────────────────────────────────────

    def add(self, obj, info: PluginInfo):
        """Register one plugin module/object after checking its contract and its hooks."""
        if info.name in disabled_names():
            self.blocked.append(info.name)
            return
        if self.pm.is_registered(obj):
            return  # already loaded under another name: installed, and listed in the recipe too
        if info.name in self.info:
            other = self.info[info.name]
            raise PluginError(
                f"two plugins are named '{info.name}': {other.label} and {info.label}; "
                f"{info.how_to_disable()}"
            )
        declared = getattr(obj, "FTCORE_CONTRACT", None)
        info.contract = None if declared is None else str(declared)
        if declared is not None and str(declared).split(".")[0] != CONTRACT_VERSION.split(".")[0]:
            newer = _major(declared) > _major(CONTRACT_VERSION)
            fix = ("upgrade ftcore to a version that speaks it (docs/plugins.md lists which do)" if newer
                   else "upgrade the plugin to a release written for this contract")
            raise PluginError(
                f"plugin {info.label} was written for hook contract {declared}, "
                f"but this ftcore speaks {CONTRACT_VERSION}; {fix}, or "
                f"{info.how_to_disable()}"
            )
        # checked before registering, so a refused plugin leaves nothing behind
        impls = {}  # hook name -> pluggy's options, for every marked function
        for attr in dir(obj):
            opts = self.pm.parse_hookimpl_opts(obj, attr)
            if opts is not None:
                impls[opts.get("specname") or attr] = opts
        unknown = [name for name in impls if name not in self.hook_names()]
        if unknown:
            from ftcore.recipe.suggest import did_you_mean

            hints = "; ".join(
                f"'{n}'{did_you_mean(n, self.hook_names())}" for n in unknown
            )
            raise PluginError(
                f"plugin {info.label} implements hooks that do not exist: {hints}; "
                f"{info.how_to_disable()}"
            )
        wrappers = [n for n, opts in impls.items() if opts.get("wrapper") or opts.get("hookwrapper")]
        if wrappers:
            raise PluginError(
                f"plugin {info.label} marks {', '.join(repr(n) for n in wrappers)} as a hook wrapper; "
                f"ftcore calls each implementation itself and does not support wrappers: "
                f"implement the hook without wrapper=True/hookwrapper=True, or {info.how_to_disable()}"
            )
        try:
            self.pm.register(obj, name=info.name)
        except pluggy.PluginValidationError as exc:
            if self.pm.get_plugin(info.name) is obj:
                self.pm.unregister(obj)  # pluggy leaves a half-registered plugin behind
            raise PluginError(
                f"plugin {info.label} has a bad hook: {exc}; {info.how_to_disable()}"
            ) from exc
        info.hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(obj) or []
        )
        self.info[info.name] = info
        self._collected.clear()  # registrations must include the new plugin

    def add_module(self, module_name: str, info: PluginInfo):
        if info.name in disabled_names():
            self.blocked.append(info.name)
            return
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # any import failure is the plugin's
            raise PluginError(
                f"plugin {info.label} failed to import: {type(exc).__name__}: {exc}; "
                f"{info.how_to_disable()}"
            ) from exc
        self.add(module, info)

    def add_recipe_plugins(self, modules, validate_first=None) -> list[str]:
        """Import the modules a recipe lists under ``plugins:``; return those skipped.

        Axolotl's own integrations (``axolotl.integrations...``) are skipped: an
        Axolotl recipe that lists them still validates, and their keys are
        accepted as hints.

        No code runs for a broken recipe: a module that cannot be found is a recipe error (exit 2), and
        ``validate_first`` (validation without these modules) runs before anything is imported; its
        problems stop here unless every one is an unknown key (which the module may own).
        """
        from ftcore.errors import RecipeError

        skipped, wanted, missing = [], [], []
        if not isinstance(modules, list):
            return skipped  # the schema reports a wrong type
        for i, module in enumerate(modules):
            if not isinstance(module, str) or module in self.info:
                continue
            if module.startswith("axolotl."):
                skipped.append(module)
                continue
            try:  # the top-level package only: finding a submodule would import its parents
                with named_module_path():
                    found = importlib.util.find_spec(module.split(".")[0]) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append((f"plugins[{i}]", f"no module named '{module}' can be found (is the package installed, "
                                                 f"or its folder on PYTHONPATH?)"))
            wanted.append(module)
        if missing:
            raise RecipeError(missing)
        if wanted and validate_first is not None:
            try:
                validate_first()
            except RecipeError as exc:
                # what the modules may register (keys, formats, evaluators, templates, adapters) is not wrong yet
                if not all(_plugin_may_fix(key, message) for key, message in exc.problems):
                    raise
        for module in wanted:
            with named_module_path():
                self.add_module(module, _module_info(module))
        return skipped

    def raise_refused(self) -> None:
        """Raise the first plugin refused at loading (for commands that need every plugin)."""
        if self.refused:
            raise self.refused[0][1]

    def hook_names(self) -> list[str]:
        return sorted(n for n, fn in vars(hookspecs).items() if hasattr(fn, f"{PROJECT}_spec"))

    # ── calling ───────────────────────────────────────────────────────────

    def impls(self, hook_name):
        """The implementations of a hook in the order they are asked: ``tryfirst`` ones, then the
        others, then ``trylast`` ones; within each group the last registered first.

        One rule for every group (pluggy itself asks ``trylast`` ones first-registered first), so an
        installed plugin is asked before the built-ins even when it marks its answers ``trylast``.
        """
        registered = {name: i for i, name in enumerate(self.info)}

        def rank(impl):
            group = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return group, -registered.get(impl.plugin_name, len(registered))

        return sorted(getattr(self.pm.hook, hook_name).get_hookimpls(), key=rank)

    def _label(self, plugin_name):
        info = self.info.get(plugin_name)
        return (info.label, info.how_to_disable()) if info else (f"'{plugin_name}'", "")

    def call_impl(self, impl, hook_name, kwargs):
        """Call one implementation; an exception other than ``FtcoreError`` becomes a ``PluginError`` naming it."""
        args = [kwargs[a] for a in impl.argnames]
        try:
            result = impl.function(*args)
        except FtcoreError:
            raise
        except Exception as exc:
            label, disable = self._label(impl.plugin_name)
            raise PluginError(
                f"plugin {label} raised in hook '{hook_name}': {type(exc).__name__}: {exc}"
                + (f"; {disable}" if disable else "")
                + " (run with --debug for the traceback)"
            ) from exc
        if tracing():
            _trace(f"  {impl.plugin_name}.{hook_name} -> {_short(result)}")
        return result

    def _start_trace(self, hook_name, impls):
        if tracing():
            _trace(f"{hook_name}: {', '.join(i.plugin_name for i in impls) or 'no implementations'}")

    def call_first(self, hook_name, **kwargs):
        """Call a firstresult hook; return ``(answer, plugin_name)`` or ``(None, None)``."""
        impls = self.impls(hook_name)
        self._start_trace(hook_name, impls)
        for impl in impls:
            result = self.call_impl(impl, hook_name, kwargs)
            if result is not None:
                self.answered.add(impl.plugin_name)
                return result, impl.plugin_name
        return None, None

    def call_all(self, hook_name, per_plugin=None, keep_going=False, **kwargs):
        """Call every implementation; return ``[(result, plugin_name), ...]``.

        ``per_plugin``: ``{parameter: make(plugin_name)}`` for arguments that differ per plugin (a
        ``register`` that records who registered). ``keep_going``: call the rest when one raises,
        then raise the first error.
        """
        impls = self.impls(hook_name)
        self._start_trace(hook_name, impls)
        results, first_error = [], None
        for impl in impls:
            arguments = {**kwargs, **{k: make(impl.plugin_name) for k, make in (per_plugin or {}).items()}}
            try:
                results.append((self.call_impl(impl, hook_name, arguments), impl.plugin_name))
            except Exception as exc:
                if not keep_going:
                    raise
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return results

    # ── what plugins registered, called later: failures are the plugin's ──

    def attributed(self, function, plugin_name, what, passthrough=()):
        """``function`` wrapped so an exception it raises names the plugin (``what`` says which callable).

        ``FtcoreError`` and the exception types in ``passthrough`` (a format's ``RowError``) pass
        unchanged: they are the plugin speaking to the user on purpose.
        """
        import functools

        @functools.wraps(function)
        def call(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except (FtcoreError, *passthrough):
                raise
            except Exception as exc:
                label, disable = self._label(plugin_name)
                raise PluginError(f"plugin {label} raised in {what}: {type(exc).__name__}: {exc}"
                                  + (f"; {disable}" if disable else "")
                                  + " (run with --debug for the traceback)") from exc

        return call

    def attributed_callback(self, callback, plugin_name):
        """The ``TrainerCallback``, its event methods wrapped so they name the plugin when they raise."""
        for event in dir(callback):
            if event.startswith("on_") and callable(getattr(callback, event)):
                # an instance attribute shadows the class's method: same object, isinstance still holds
                setattr(callback, event, self.attributed(
                    getattr(callback, event), plugin_name, f"its trainer callback {type(callback).__name__}.{event}"))
        return callback

    def collect(self, hook_name, kind, make=lambda value: value, **kwargs):
        """Call a ``register(name, ...)`` hook; return ``{name: (value, plugin_name)}``.

        ``make(*args, **kwargs)`` turns the rest of each ``register`` call into
        the stored value. A name registered twice is an error naming both
        plugins. Registrations without arguments are computed once per manager.
        """
        cacheable = not kwargs  # registrations that do not depend on a recipe
        if cacheable and hook_name in self._collected:
            return self._collected[hook_name]
        found: dict[str, tuple] = {}
        impls = self.impls(hook_name)
        self._start_trace(hook_name, impls)
        for impl in impls:

            def register(name, *args, _plugin=impl.plugin_name, **kw):
                info = self.info[_plugin]
                if name in found:
                    first = self.info[found[name][1]]
                    raise PluginError(
                        f"{kind} '{name}' is registered by two plugins, {first.label} and "
                        f"{info.label}; {info.how_to_disable()}"
                    )
                if tracing():
                    _trace(f"  {_plugin} registered {kind} {_short(name, 60)}")
                try:
                    found[name] = (make(*args, **kw), _plugin)
                except TypeError as exc:
                    raise PluginError(
                        f"plugin {info.label} called register() in hook '{hook_name}' "
                        f"with bad arguments: {exc}; {info.how_to_disable()}"
                    ) from exc

            self.call_impl(impl, hook_name, {**kwargs, "register": register})
        if cacheable:
            self._collected[hook_name] = found
        return found


def _builtin_info(short: str, module: str) -> PluginInfo:
    from ftcore import __version__

    return PluginInfo(short, module, "builtin", "ftcore", __version__)


def _entry_point_info(ep) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    return PluginInfo(
        ep.name,
        ep.value,
        "entry point",
        dist.metadata["Name"] if dist is not None else None,
        dist.version if dist is not None else None,
    )


def _module_info(module: str) -> PluginInfo:
    return PluginInfo(module, module, "recipe")


def load_plugins(recipe_plugins=(), tolerate_refused: bool = False, installed: bool = True) -> Plugins:
    """Build the plugin manager: built-ins, entry points, then the recipe's list.

    ``tolerate_refused``: a plugin that fails to load is recorded in ``plugins.refused`` instead
    of stopping everything (``ftcore --version``, ``--help`` and ``ftcore plugins`` still work);
    ``raise_refused()`` raises the first one for commands that need every plugin.
    ``installed=False`` leaves out the entry-point plugins (the built-ins alone).
    """
    from ftcore.plugins import BUILTINS

    plugins = Plugins()

    def attempt(info, register):
        try:
            register()
        except PluginError as exc:
            if not tolerate_refused:
                raise
            plugins.refused.append((info, exc))

    entry_points = list(_entry_points()) if installed else []
    installed_names = {ep.name: _entry_point_info(ep) for ep in entry_points}
    for short, module in BUILTINS.items():
        if short in installed_names and short not in disabled_names():
            plugins.replaced[short] = installed_names[short].label  # the installed plugin of that name instead
            continue
        info = _builtin_info(short, module)
        attempt(info, lambda module=module, info=info: plugins.add_module(module, info))
    for ep in entry_points:
        info = installed_names[ep.name]
        if info.name in disabled_names():
            plugins.blocked.append(info.name)
            continue

        def load(ep=ep, info=info):
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {info.label} failed to import: {type(exc).__name__}: {exc}; "
                    f"{info.how_to_disable()}"
                ) from exc
            plugins.add(obj, info)

        attempt(info, load)
    plugins.add_recipe_plugins(recipe_plugins)
    # ``add`` already refuses hooks without a spec, naming the plugin; pluggy's own
    # check stays as the backstop should a plugin be registered another way.
    plugins.pm.check_pending()
    return plugins


def _plugin_may_fix(key, message: str) -> bool:
    """A problem a recipe's own plugin module could make go away by registering what is missing."""
    key = key or ""
    return (message.startswith(("unknown key", "unknown format", "unknown evaluator", "unknown template",
                                "no plugin provides", "required; registered formats"))
            or (key == "adapter" and "is not allowed" in message)
            or (key.endswith(".type") and "unknown" in message))
