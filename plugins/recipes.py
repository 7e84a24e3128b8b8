"""The recipes shipped with ftcore, runnable by name (``ftcore run quickstart``), and the commands that share them.

``ftcore recipes list [--task chat|code|vision] [--json]``: every recipe a plugin registered (``register_recipes``),
with its task, model, method, the package that ships it and its first comment line.
``ftcore recipes show NAME_OR_PATH [--resolved]``: the file as written (or resolved), with the model's license.
``ftcore recipes copy NAME DEST``: a copy that still works where it lands (see docs/recipes.md, "Copying").
``ftcore diff A B [--json]``: how two recipes (or two runs' recipe.yaml and run.json) differ, key by key.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from ftcore import hookimpl
from ftcore.api import FtcoreError, load_recipe, model_facts, registered_recipes

FTCORE_CONTRACT = "1"

TASKS = ("chat", "code", "vision")
CODE_FORMATS = {"fim", "code_repo"}


def recipes_folder() -> Path:
    import ftcore.recipes

    return Path(ftcore.recipes.__file__).parent


@hookimpl(trylast=True)
def register_recipes(register):
    for path in sorted(recipes_folder().glob("*.yaml")):
        register(path.stem, str(path))


@hookimpl(trylast=True)
def register_commands(register):
    register("recipes", "list, show and copy the recipes plugins ship (ftcore's and installed packages')",
             configure_recipes, recipes_command)
    register("diff", "how two recipes or two runs differ, key by key (exit 0: the same, 1: they differ)",
             configure_diff, diff_command)


# ── arguments ─────────────────────────────────────────────────────────────────


def configure_recipes(parser):
    sub = parser.add_subparsers(dest="recipes_action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the registered recipes: name, task, model, method, package")
    listing.add_argument("--task", choices=TASKS, help="only the recipes for this task")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    show = sub.add_parser("show", help="a recipe as written (or --resolved), with its model's license")
    show.add_argument("recipe", metavar="NAME_OR_PATH",
                      help="a recipe name, plugin:NAME, a file, or a URL pinned with #sha256=")
    show.add_argument("--resolved", action="store_true",
                      help="after extends: and interpolation (${...}), instead of the file as written")
    copy = sub.add_parser("copy", help="copy a recipe to a file of your own (never overwrites)")
    copy.add_argument("recipe", metavar="NAME", help="a recipe name, plugin:NAME, a file, or a pinned URL")
    copy.add_argument("dest", metavar="DEST", help="the new file (or a folder: DEST/NAME.yaml)")


def configure_diff(parser):
    parser.add_argument("a", metavar="A", help="a recipe (file, name, pinned URL) or a run folder")
    parser.add_argument("b", metavar="B", help="a recipe (file, name, pinned URL) or a run folder")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def recipes_command(args) -> int:
    return {"list": list_recipes, "show": show_recipe, "copy": copy_recipe}[args.recipes_action](args)


# ── facts about one recipe ────────────────────────────────────────────────────


def _shipped_by(info) -> str:
    if info is None:
        return "?"
    if info.source == "builtin" or info.package == "ftcore":
        return "ftcore"
    return info.package or info.name


def _description(text: str) -> str:
    """The first sentence of the first comment paragraph that says something (not an ``ftcore ...`` command)."""
    import re

    paragraph: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            if paragraph or stripped:
                break
            continue
        words = stripped.lstrip("#").strip()
        if not words or words.startswith("(") or "ftcore " in words:
            if paragraph:
                break
            continue
        paragraph.append(words)
    sentence = re.split(r"(?<=\.)\s", " ".join(paragraph), maxsplit=1)[0]
    if len(sentence) > 100:  # a long one: up to its colon ("QLoRA of ... GPU (...): LoRA on a 4-bit base ...")
        sentence = sentence.split(": ", 1)[0]
    return sentence.rstrip(".:")


def _method(data: dict) -> str:
    adapter = data.get("adapter")
    if not adapter:
        return "full"
    if adapter == "lora" and (data.get("load_in_4bit") or data.get("load_in_8bit")):
        return "qlora"
    return str(adapter)


def _task(plugins, data: dict) -> str:
    facts = model_facts(plugins, data.get("base_model"))
    if facts is not None:
        return facts.task
    if data.get("vision"):
        return "vision"
    types = {str(d.get("type")) for d in data.get("datasets") or () if isinstance(d, dict)}
    if types & CODE_FORMATS or data.get("code") or "coder" in str(data.get("base_model", "")).lower():
        return "code"
    return "chat"


def _read_data(path: Path, plugins) -> dict:
    """The recipe's resolved keys (after extends:); when it does not load, its own top-level keys."""
    try:
        _recipe, raw = load_recipe(str(path), (), plugins)
        return raw.data
    except FtcoreError:
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}


def recipe_row(name: str, path, info, plugins) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    data = _read_data(path, plugins)
    return {"name": name, "task": _task(plugins, data), "model": data.get("base_model"), "method": _method(data),
            "package": _shipped_by(info), "plugin": getattr(info, "name", None), "path": str(path),
            "description": _description(text)}


# ── ftcore recipes list | show | copy ─────────────────────────────────────────


def list_recipes(args) -> int:
    rows = [recipe_row(name, path, info, args.plugins)
            for name, (path, info) in sorted(registered_recipes(args.plugins).items())]
    if args.task:
        rows = [row for row in rows if row["task"] == args.task]
    if args.json:
        print(json.dumps({"recipes": rows}))
        return 0
    if not rows:
        print("no recipes" + (f" for the task {args.task}" if args.task else ""))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("name", "task", "model", "method", "package", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c] or "") for c in ("name", "task", "model", "method", "package", "description")))
    Console(width=max(100, _width())).print(table)
    return 0


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((140, 24)).columns


def _facts_lines(plugins, base_model) -> list[str]:
    facts = model_facts(plugins, base_model)
    if facts is None:
        return [f"# model: {base_model} (not in ftcore's facts table: check its license on its model page)"]
    gated = ("gated: yes (accept the license on its Hugging Face page and log in before downloading)"
             if facts.gated else "gated: no")
    return [f"# model: {facts.model_id} ({facts.family} {facts.size}, task {facts.task})",
            f"# license: {facts.license}" + (f" ({facts.license_url})" if facts.license_url else ""),
            f"# {gated}"]


def show_recipe(args) -> int:
    import yaml

    _recipe, raw = load_recipe(args.recipe, (), args.plugins)
    for line in _facts_lines(args.plugins, raw.data.get("base_model")):
        print(line)
    if args.resolved:
        if len(raw.files) > 1:
            print("# resolved from: " + " <- ".join(str(f) for f in raw.files))
        print(yaml.safe_dump(raw.data, sort_keys=False, allow_unicode=True), end="")
    else:
        if "://" in str(args.recipe):  # a remote recipe: the address the user gave, then where it is kept
            print(f"# file: {str(args.recipe).split('#', 1)[0]} (sha256 checked; cached at {raw.path})")
        else:
            print(f"# file: {raw.path}")
        print(Path(raw.path).read_text(encoding="utf-8"), end="")
    return 0


_EXTENDS = re.compile(r"^(extends\s*:\s*)(['\"]?)([^'\"#\n]+?)\2(\s*(?:#.*)?)$", re.MULTILINE)
_RECIPE_DIR = re.compile(r"\$\{\s*recipe_dir\s*:\s*\}")


def portable_text(text: str, source: Path, plugins) -> tuple[str, list[str]]:
    """The recipe ``text`` read from ``source``, rewritten to work from any folder; and what was changed.

    A relative ``extends:`` becomes the registered name of that recipe when it is one, else its absolute path;
    ``${recipe_dir:}`` becomes the absolute folder ``source`` is in (where its files are).
    """
    notes = []
    folder = source.resolve().parent
    by_path = {Path(p).resolve(): name for name, (p, _info) in registered_recipes(plugins).items()}

    def parent(match):
        value = match.group(3).strip()
        if re.match(r"^(https?://|plugin:)", value) or Path(value).is_absolute():
            return match.group(0)
        target = (folder / value)
        if not target.is_file():
            return match.group(0)  # a recipe name (or a missing file: loading says so)
        name = by_path.get(target.resolve())
        new = name or str(target.resolve())
        notes.append(f"extends: {value} -> {new}")
        return f"{match.group(1)}{new}{match.group(4)}"

    text = _EXTENDS.sub(parent, text)
    if _RECIPE_DIR.search(text):
        notes.append(f"recipe_dir: -> {folder}")
        text = _RECIPE_DIR.sub(str(folder).replace("\\", "/"), text)
    return text, notes


def _commands_name_the_copy(text: str, name: str, dest: str) -> str:
    """The header's ``ftcore run recipes/NAME.yaml ...`` lines run the copy, not the original."""
    import re

    path = re.compile(r"(?<![\w./-])(?:[\w.-]+/)*" + re.escape(name) + r"(?![\w.-])")
    return "\n".join(path.sub(lambda _m: dest, line) if line.lstrip().startswith("#") else line
                     for line in text.split("\n"))


def copy_recipe(args) -> int:
    _recipe, raw = load_recipe(args.recipe, (), args.plugins)  # it loads: never copy a broken recipe
    source = Path(raw.path)
    dest = Path(args.dest).expanduser()
    if dest.is_dir():
        dest = dest / f"{source.stem}.yaml"  # the registered (or downloaded) file's name
    if dest.exists():
        raise FtcoreError(f"{dest} exists: `ftcore recipes copy` never overwrites; choose another DEST or "
                          f"delete it first")
    if not dest.parent.is_dir():
        raise FtcoreError(f"cannot copy to {dest}: the folder {dest.parent} does not exist")
    text, notes = portable_text(source.read_text(encoding="utf-8"), source, args.plugins)
    text = _commands_name_the_copy(text, source.name, args.dest if not Path(args.dest).is_dir() else str(dest))
    header = f"# Copied by `ftcore recipes copy` from {args.recipe}"
    if notes:
        header += " (made to work from any folder: " + "; ".join(notes) + ")"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(header + "\n" + text)
        os.replace(tmp, dest)
    except OSError as exc:
        raise FtcoreError(f"cannot write {dest}: {exc.strerror or exc}") from None
    print(f"copied {args.recipe} to {dest}")
    for note in notes:
        print(f"  {note}")
    return 0


# ── ftcore diff A B ───────────────────────────────────────────────────────────


def _side(source: str, plugins):
    """``(resolved recipe dict, run.json dict or None, label)`` of a recipe or a run folder."""
    folder = Path(source).expanduser()
    manifest = None
    if folder.is_dir():
        if not (folder / "recipe.yaml").is_file():
            raise FtcoreError(f"{folder} is a folder without recipe.yaml: give a recipe file, a recipe name or a "
                              f"run folder written by `ftcore run`")
        try:
            manifest = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        source = str(folder / "recipe.yaml")
    recipe, _raw = load_recipe(source, (), plugins)
    return recipe.to_yaml_dict(), manifest


def _flatten(value, path="", out=None) -> dict:
    """``{'datasets[0].path': 'x.jsonl', 'lora_r': 16}``; an empty mapping or list is a value."""
    out = {} if out is None else out
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    else:
        out[path] = value
    return out


def differences(a: dict, b: dict) -> dict:
    fa, fb = _flatten(a), _flatten(b)
    return {"added": {k: fb[k] for k in fb if k not in fa},
            "removed": {k: fa[k] for k in fa if k not in fb},
            "changed": {k: [fa[k], fb[k]] for k in fa if k in fb and fa[k] != fb[k]}}


def _manifest_facts(manifest) -> dict:
    if not isinstance(manifest, dict):
        return {}
    out = {"ftcore": (manifest.get("versions") or {}).get("ftcore")}
    for entry in (manifest.get("data") or {}).get("files") or ():
        if isinstance(entry, dict) and entry.get("path"):
            out[f"data {entry['path']}"] = entry.get("sha256") or entry.get("revision")
    return out


def diff_command(args) -> int:
    a, manifest_a = _side(args.a, args.plugins)
    b, manifest_b = _side(args.b, args.plugins)
    found = differences(a, b)
    runs = {}
    if manifest_a is not None and manifest_b is not None:
        runs = differences(_manifest_facts(manifest_a), _manifest_facts(manifest_b))
    same = not any(found.values()) and not any(runs.values())
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "same": same, **found, **({"runs": runs} if runs else {})},
                         default=str))
        return 0 if same else 1
    if same:
        print(f"{args.a} and {args.b}: the same resolved recipe" + (" and run facts" if runs else ""))
        return 0
    print(f"--- {args.a}\n+++ {args.b}")
    for title, part in (("recipe", found), ("run.json", runs)):
        if title == "run.json" and any(part.values()):
            print("run.json (ftcore version, data sha256):")
        for key, value in part.get("removed", {}).items():
            print(f"- {key}: {json.dumps(value, default=str)}")
        for key, value in part.get("added", {}).items():
            print(f"+ {key}: {json.dumps(value, default=str)}")
        for key, (old, new) in part.get("changed", {}).items():
            print(f"~ {key}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}")
    return 1
