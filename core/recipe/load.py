"""Read a recipe: YAML file (or a named recipe), ``extends:``, overrides.

The result is a plain dict, not yet validated. Interpolation is limited to
references to other keys (``${learning_rate}``), ``${oc.env:NAME}`` and ``${recipe_dir:}`` (the folder of the file that contains
it; in a command-line override, the folder of the recipe named there), so a recipe can never run code.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

from ftcore.errors import RecipeError
from ftcore.recipe.remote import fetch_remote, is_remote, remote_url

SAFE_RESOLVERS = {"oc.env", "recipe_dir"}
ALLOWED_INTERPOLATION = "${other_key}, ${oc.env:NAME}, ${oc.env:NAME,default} and ${recipe_dir:}"
NO_CODE = f"recipes never run code: the only interpolations are {ALLOWED_INTERPOLATION}"
MAX_VALUES = 200_000  # values a recipe may hold once YAML aliases are expanded (a real recipe: a few hundred)
_ENV = re.compile(r"\$\{\s*oc\.env\s*:\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:,[^}]*)?\}")
_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*:")
_RECIPE_DIR = re.compile(r"\$\{\s*recipe_dir\s*:\s*\}")
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)$")


@dataclass
class RawRecipe:
    data: dict
    path: Path | None
    files: list[Path] = field(default_factory=list)
    env: dict = field(default_factory=dict)  # key path -> the original "${oc.env:NAME}" string
    overrides: dict = field(default_factory=dict)  # key given on the command line -> "key=value"

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "recipe"


def _omegaconf():
    from omegaconf import OmegaConf

    return OmegaConf


PLUGIN_PREFIX = "plugin:"


def _registered(named_recipes) -> dict:
    """``{name: (Path, PluginInfo or None)}`` from ``{name: path}`` or ``{name: (path, PluginInfo)}``."""
    out = {}
    for name, value in (named_recipes or {}).items():
        path, info = value if isinstance(value, tuple) else (value, None)
        out[name] = (Path(path), info)
    return out


def _shipped_by(info) -> str:
    if info is None:
        return "a plugin"
    if info.package and info.package != "ftcore":
        return f"package {info.package}" + (f" {info.version}" if info.version else "")
    return "ftcore" if info.source == "builtin" else f"plugin '{info.name}'"


def _label(path: Path) -> str:
    return remote_url(path) or str(path)


def _plugin_recipe(name: str, named_recipes) -> Path:
    wanted = name[len(PLUGIN_PREFIX):].strip()
    registered = _registered(named_recipes)
    if wanted in registered:
        return registered[wanted][0]
    from ftcore.recipe.suggest import did_you_mean

    listed = "; ".join(f"{n} ({_shipped_by(info)})" for n, (_, info) in sorted(registered.items())) or "none"
    raise RecipeError([(None, f"no installed plugin registers a recipe named '{wanted}'"
                              f"{did_you_mean(wanted, sorted(registered))}; registered recipes: {listed}")],
                      source=name)


def find_recipe(name: str, named_recipes: dict | None = None) -> Path:
    """A path if it exists, else a recipe registered by a plugin under that name (``plugin:NAME``: only that),
    else a URL pinned with ``#sha256=`` (downloaded into the cache)."""
    if is_remote(name):
        return fetch_remote(name)
    if name.startswith(PLUGIN_PREFIX):
        return _plugin_recipe(name, named_recipes)
    path = Path(name).expanduser()
    if path.is_file():
        return path
    registered = _registered(named_recipes)
    for candidate in (name, Path(name).stem):
        if candidate in registered:
            return registered[candidate][0]
    known = sorted(registered)
    from ftcore.recipe.suggest import did_you_mean

    hint = did_you_mean(name, known)
    raise RecipeError(
        [(None, f"no recipe file '{name}' and no recipe registered under that name{hint}; "
                f"named recipes: {', '.join(known) or 'none'}")],
        source=name,
    )


def _read_yaml(path: Path):
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError([(None, f"cannot read the file: {exc.strerror}")], source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise RecipeError([(None, f"not a UTF-8 text file (byte {exc.start}): is this a recipe?")],
                          source=str(path)) from exc
    data = load_yaml_text(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([(None, f"a recipe must be a mapping of keys to values, got {type(data).__name__}")], source=str(path))
    bad = list(interpolation_problems(data))
    if bad:
        raise RecipeError(bad, source=_label(path))
    if remote_url(path):
        _refuse_recipe_dir(data, _label(path))
    return _substitute_recipe_dir(data, path.resolve().parent)


def _refuse_recipe_dir(value, source: str, path: str = "") -> None:
    """A downloaded recipe has no folder of its own: ``${recipe_dir:}`` in it (or set next to it) is refused."""
    bad = [(key or None, "${recipe_dir:} is refused in a remote recipe (it has no folder of its own): use a path "
                         "relative to where you run ftcore, an absolute path, or copy the recipe next to its files")
           for key, text in _strings(value, path) if _RECIPE_DIR.search(text)]
    if bad:
        raise RecipeError(bad, source=source)


def load_yaml_text(text: str, source: str):
    """YAML -> Python values, safely: no object-building tags, no duplicate keys, no alias bombs."""
    import yaml

    try:
        data = yaml.load(text, Loader=_strict_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "could not determine a constructor for the tag" in problem:
            found = re.search(r"tag '([^']*)'", problem)
            tag = (found.group(1) if found else problem).replace("tag:yaml.org,2002:", "!!")
            raise RecipeError([(None, f"{where}the YAML tag '{tag}' is refused: YAML tags that build objects "
                                      f"are not allowed (recipes never run code)")], source=source) from exc
        raise RecipeError([(None, f"YAML syntax error at {where}{problem}")], source=source) from exc
    if _expanded_size(data) > MAX_VALUES:
        line = next((e.start_mark.line + 1 for e in yaml.parse(text, Loader=_strict_loader())
                     if isinstance(e, yaml.AliasEvent)), None)
        raise RecipeError([(None, f"YAML aliases (*name) expand to more than {MAX_VALUES:,} values"
                                  + (f" (first alias on line {line})" if line else "")
                                  + "; refusing to expand them (a recipe needs a few hundred)")], source=source)
    return data


def _expanded_size(value) -> int:
    """How many values ``value`` holds once shared (aliased) lists and mappings are copied out; linear time."""
    sizes: dict[int, int] = {}

    def size(v) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        key = id(v)
        if key not in sizes:
            sizes[key] = 0  # a self-referencing alias counts once
            children = v.values() if isinstance(v, dict) else v
            sizes[key] = min(MAX_VALUES + 1, 1 + sum(size(c) for c in children))
        return sizes[key]

    return size(value)


def _make_strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that rejects duplicate keys (a silent override otherwise)."""

    def flatten_mapping(loader, node):
        yaml.SafeLoader.flatten_mapping(loader, node)
        if len(node.value) > MAX_VALUES:  # merge keys (<<: *a) copy entries: nested ones blow up like aliases
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML merge keys (<<: *name) expand to more than {MAX_VALUES:,} entries; refusing "
                            f"to expand them (a recipe needs a few hundred)", node.start_mark)

    StrictLoader.flatten_mapping = flatten_mapping

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *shared": SafeLoader merges it below (explicit keys win)
            key = loader.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    # Read scalars as OmegaConf does: 1e-4 is a float (YAML 1.1 wants 1.0e-4) and
    # 2024-01-01 stays a string (OmegaConf cannot hold a date).
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    StrictLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in StrictLoader.yaml_implicit_resolvers.items()
    }
    return StrictLoader


_StrictLoader = None  # built on first use by _strict_loader()


def _substitute_recipe_dir(value, folder: Path):
    if isinstance(value, str):
        return _RECIPE_DIR.sub(str(folder).replace("\\", "/"), value)
    if isinstance(value, dict):
        return {k: _substitute_recipe_dir(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_recipe_dir(v, folder) for v in value]
    return value


_ALLOWED_FORMS = re.compile(
    r"\$\{(?:\s*[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*|\.\d+|\[\d+\])*\s*"   # ${other_key}, ${datasets.0.path}
    r"|\s*oc\.env\s*:\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:,[^${}]*)?"              # ${oc.env:NAME[,default]}
    r"|\s*recipe_dir\s*:\s*)\}")                                               # ${recipe_dir:}


def _strings(value, path=""):
    """Yield ``(key_path, string)`` for every string in a recipe's values: ``datasets[0].path``."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def interpolation_problems(value, path=""):
    """``(key, message)`` for every ``${...}`` that is not one of the allowed forms (checked before OmegaConf
    parses anything, so its grammar errors never reach the user)."""
    for key, text in _strings(value, path):
        start = text.find("${")
        while start != -1:
            if not (start and text[start - 1] == "\\") and not _ALLOWED_FORMS.match(text, start):
                shown = text[start:text.find("}", start) + 1 or len(text)][:60]
                name = _RESOLVER.match(text, start)
                what = f"the resolver '{name.group(1)}'" if name else "this interpolation"
                yield key or None, f"'{shown}' is not allowed ({what}): {NO_CODE}"
                break
            start = text.find("${", start + 2)


def _unsafe_resolvers(value, path=""):
    """Yield (key_path, resolver) for interpolations outside SAFE_RESOLVERS."""
    for key, text in _strings(value, path):
        for name in _RESOLVER.findall(text):
            if name not in SAFE_RESOLVERS:
                yield key, name


def _message(exc) -> str:
    """The first line of an OmegaConf error (the rest repeats the key and object type)."""
    message = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
    if "token recognition error" in message or "mismatched input" in message or "no viable alternative" in message:
        return f"'${{...}}' that is not a plain interpolation ({message}): {NO_CODE}"
    return message


def _register_env_secrets(value) -> None:
    """Every ``${oc.env:NAME}`` a recipe reads is a secret: its value is never written (ftcore.secrets)."""
    import os

    from ftcore import secrets

    for _key, text in _strings(value):
        for name in _ENV.findall(text):
            if name in os.environ:
                secrets.register(os.environ[name], f"${{oc.env:{name}}}")


def env_references(value, path=""):
    """Yield ``(key_path, original string)`` for every string that reads ``${oc.env:...}``."""
    return ((key, text) for key, text in _strings(value, path) if _ENV.search(text))


def _create(data: dict, source: str):
    """``OmegaConf.create``; a value OmegaConf cannot hold (a YAML ``!!set``) is a ``RecipeError``."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _omegaconf().create(data)
    except OmegaConfBaseException as exc:
        raise RecipeError([(getattr(exc, "full_key", None), _message(exc))], source=source) from exc


def _load_with_extends(path: Path, named_recipes, chain: list[Path]):
    OmegaConf = _omegaconf()
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(_label(p) for p in chain + [resolved])
        raise RecipeError([("extends", f"recipes extend each other in a cycle: {cycle}")], source=_label(path))
    data = _read_yaml(path)
    files = [path]
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return _create(data, _label(path)), files
    if not isinstance(parent_name, str) or not parent_name.strip():
        raise RecipeError([("extends", "must be a path relative to this recipe, a recipe name, plugin:NAME or a "
                                       "URL pinned with #sha256= (a string)")], source=_label(path))
    parent_path = None
    if not (is_remote(parent_name) or parent_name.startswith(PLUGIN_PREFIX)):
        if remote_url(path):  # a download has no folder: a relative (or local) path would mean this machine's files
            registered = _registered(named_recipes)
            if parent_name not in registered:
                raise RecipeError([("extends", f"'{parent_name}': a remote recipe may extend only a recipe name, "
                                               f"plugin:NAME or another pinned URL, not a path")], source=_label(path))
            parent_path = registered[parent_name][0]  # never a file of that name in the current folder
        elif (path.parent / parent_name).is_file():
            parent_path = path.parent / parent_name
    if parent_path is None:
        try:
            parent_path = find_recipe(parent_name, named_recipes)
        except RecipeError as exc:
            raise RecipeError([("extends", message) for _, message in exc.problems], source=_label(path)) from None
    parent, parent_files = _load_with_extends(parent_path, named_recipes, chain + [resolved])
    # mappings merge key by key (the child's value wins), lists and values are replaced whole (docs/recipes.md)
    return OmegaConf.merge(parent, _create(data, _label(path))), parent_files + files


_INDEX = re.compile(r"\[(\d+)\]")


def parse_override(text: str):
    """``'datasets[0].path=x.jsonl'`` -> ``('datasets.0.path', 'x.jsonl')``; value parsed as YAML."""
    if "=" not in text:
        raise RecipeError([("overrides", f"'{text}' is not key=value")], source=f"the command-line override '{text}'")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.\w+|\[\d+\])*", key):
        raise RecipeError([("overrides", f"'{key}' is not a recipe key path (like learning_rate or datasets[0].path)")], source=f"the command-line override '{text}'")
    source = f"the command-line override '{text}'"
    try:
        value = load_yaml_text(raw, source) if raw.strip() else None
    except RecipeError as exc:
        raise RecipeError([(key, f"cannot parse the value '{raw}': {m}") for _, m in exc.problems], source=source) from None
    bad = [(key + (k[len("<value>"):] if k and k != "<value>" else ""), m)
           for k, m in interpolation_problems(value, "<value>")]
    if bad:
        raise RecipeError(bad, source=source)
    return _INDEX.sub(r".\1", key), value


def _apply_override(cfg, dotted: str, value, original: str):
    from omegaconf import ListConfig, OmegaConf

    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        nxt = node[int(part)] if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node) else None
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError([(original, f"index {part} is out of range: the list has {len(node)} item(s)")], source=f"the command-line override of '{original}'")
            node = nxt
            continue
        if part not in node or node[part] is None:
            node[part] = [] if parts[i + 1].isdigit() else {}
        node = node[part]
        if not OmegaConf.is_config(node):
            raise RecipeError([(original, f"'{'.'.join(parts[: i + 1])}' is a value, not a mapping or list")], source=f"the command-line override of '{original}'")
    last = parts[-1]
    if isinstance(node, ListConfig):
        if not last.isdigit() or int(last) > len(node):
            raise RecipeError([(original, f"index {last} is out of range: the list has {len(node)} item(s)")], source=f"the command-line override of '{original}'")
        if int(last) == len(node):
            node.append(value)
        else:
            node[int(last)] = value
    else:
        node[last] = value


def load_raw(source: str, overrides=(), named_recipes=None) -> RawRecipe:
    """Read a recipe file (or named recipe), follow ``extends``, apply overrides."""
    from omegaconf.errors import OmegaConfBaseException

    OmegaConf = _omegaconf()
    path = find_recipe(source, named_recipes)
    cfg, files = _load_with_extends(path, named_recipes, [])
    for text in overrides:
        dotted, value = parse_override(text)
        key = text.partition("=")[0]
        if remote_url(path):
            _refuse_recipe_dir(value, f"the command-line override '{text}'", key)
        try:
            _apply_override(cfg, dotted, _substitute_recipe_dir(value, path.resolve().parent), key)
        except OmegaConfBaseException as exc:
            raise RecipeError([(key, _message(exc))], source=f"the command-line override '{text}'") from exc
    container = OmegaConf.to_container(cfg, resolve=False)
    bad = list(_unsafe_resolvers(container))
    if bad:
        raise RecipeError(
            [(k, f"interpolation '${{{name}:...}}' is not allowed: {NO_CODE}") for k, name in bad],
            source=str(path),
        )
    _register_env_secrets(container)
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # omegaconf's InterpolationResolutionError and friends
        key = getattr(exc, "full_key", None)
        raise RecipeError([(key, f"cannot resolve interpolation: {_message(exc)}")], source=str(path)) from exc
    raw = RawRecipe(data, path, files)
    raw.env = dict(env_references(container))  # key path -> "${oc.env:NAME}" string, for recipe.yaml
    raw.overrides = {text.partition("=")[0].strip(): text for text in overrides}
    return raw


def _strict_loader():
    global _StrictLoader
    if _StrictLoader is None:
        _StrictLoader = _make_strict_loader()
    return _StrictLoader
