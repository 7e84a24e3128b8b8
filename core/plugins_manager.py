"""The plugin manager: finds plugins, registers them, and calls their hooks.

Discovery order (later ones are asked first in firstresult hooks):

1. built-in plugins (``ftcore.plugins.BUILTINS``), registered like any other;
2. installed packages that declare an entry point in the group ``ftcore``;
3. modules listed under ``plugins:`` in the recipe.

``FTCORE_DISABLE_PLUGINS=name1,name2`` blocks plugins by name (the entry-point
name, the built-in's short name, or the module path from the recipe).

Every failure names the plugin, its package and version, the hook, and how to
disable it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field

import pluggy

from ftcore import CONTRACT_VERSION, PROJECT, hookspecs
from ftcore.errors import FtcoreError, PluginError

ENTRY_POINT_GROUP = "ftcore"
DISABLE_ENV = "FTCORE_DISABLE_PLUGINS"


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


def disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def _entry_points():
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


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
            raise PluginError(
                f"plugin {info.label} was written for hook contract {declared}, "
                f"but this ftcore speaks {CONTRACT_VERSION}; upgrade the plugin or "
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

    def add_recipe_plugins(self, modules) -> list[str]:
        """Import the modules a recipe lists under ``plugins:``; return those skipped.

        Axolotl's own integrations (``axolotl.integrations...``) are skipped: an
        Axolotl recipe that lists them still validates, and their keys are
        accepted as hints.
        """
        skipped = []
        if not isinstance(modules, list):
            return skipped  # the schema reports a wrong type
        for module in modules:
            if not isinstance(module, str) or module in self.info:
                continue
            if module.startswith("axolotl."):
                skipped.append(module)
                continue
            self.add_module(module, _module_info(module))
        return skipped

    def hook_names(self) -> list[str]:
        return sorted(n for n in dir(hookspecs) if not n.startswith("_") and callable(getattr(hookspecs, n)) and n != "hookspec")

    # ── calling ───────────────────────────────────────────────────────────

    def _impls(self, hook_name):
        hook = getattr(self.pm.hook, hook_name)
        # pluggy calls implementations last-registered first, trylast at the end
        return list(reversed(hook.get_hookimpls()))

    def _call_one(self, impl, hook_name, kwargs):
        args = [kwargs[a] for a in impl.argnames]
        try:
            return impl.function(*args)
        except FtcoreError:
            raise
        except Exception as exc:
            info = self.info.get(impl.plugin_name)
            label = info.label if info else f"'{impl.plugin_name}'"
            disable = info.how_to_disable() if info else ""
            raise PluginError(
                f"plugin {label} raised in hook '{hook_name}': {type(exc).__name__}: {exc}"
                + (f"; {disable}" if disable else "")
                + " (run with --debug for the traceback)"
            ) from exc

    def call_first(self, hook_name, **kwargs):
        """Call a firstresult hook; return ``(answer, plugin_name)`` or ``(None, None)``."""
        for impl in self._impls(hook_name):
            result = self._call_one(impl, hook_name, kwargs)
            if result is not None:
                return result, impl.plugin_name
        return None, None

    def call_all(self, hook_name, **kwargs):
        """Call every implementation; return ``[(result, plugin_name), ...]``."""
        return [
            (self._call_one(impl, hook_name, kwargs), impl.plugin_name)
            for impl in self._impls(hook_name)
        ]

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
        for impl in self._impls(hook_name):

            def register(name, *args, _plugin=impl.plugin_name, **kw):
                info = self.info[_plugin]
                if name in found:
                    first = self.info[found[name][1]]
                    raise PluginError(
                        f"{kind} '{name}' is registered by two plugins, {first.label} and "
                        f"{info.label}; {info.how_to_disable()}"
                    )
                try:
                    found[name] = (make(*args, **kw), _plugin)
                except TypeError as exc:
                    raise PluginError(
                        f"plugin {info.label} called register() in hook '{hook_name}' "
                        f"with bad arguments: {exc}; {info.how_to_disable()}"
                    ) from exc

            self._call_one(impl, hook_name, {**kwargs, "register": register})
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


def load_plugins(recipe_plugins=()) -> Plugins:
    """Build the plugin manager: built-ins, entry points, then the recipe's list."""
    from ftcore.plugins import BUILTINS

    plugins = Plugins()
    for short, module in BUILTINS.items():
        plugins.add_module(module, _builtin_info(short, module))
    for ep in _entry_points():
        info = _entry_point_info(ep)
        if info.name in disabled_names():
            plugins.blocked.append(info.name)
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {info.label} failed to import: {type(exc).__name__}: {exc}; "
                f"{info.how_to_disable()}"
            ) from exc
        plugins.add(obj, info)
    plugins.add_recipe_plugins(recipe_plugins)
    # ``add`` already refuses hooks without a spec, naming the plugin; pluggy's own
    # check stays as the backstop should a plugin be registered another way.
    plugins.pm.check_pending()
    return plugins
