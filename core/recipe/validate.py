"""Turn a raw recipe mapping into a ``Recipe``, reporting every problem at once.

Order: split the keys (core, plugins' flat keys, plugin sections, Axolotl
compatibility, unknown), validate dataset entries against their format's
options, validate the core schema, each plugin's flat keys and each plugin
section, then cross-key checks and plugins' ``validate_recipe`` hooks. Any problem anywhere -> one ``RecipeError`` listing
them all, each with its key path and what is allowed.
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError

from ftcore.data.formats import USER_FUNCTION, FormatImportError, UserFunctionOptions, resolve_format
from ftcore.errors import RecipeError
from ftcore.recipe.axolotl import AXOLOTL_KEYS, HINTS, PLUGIN_FEATURES, is_empty, is_off, unsupported_message
from ftcore.recipe.schema import CORE_KEYS, DATASET_KEYS, DatasetSpec, Recipe
from ftcore.recipe.suggest import did_you_mean

_TYPE_TAGS = {"bool", "int", "str", "float", "dict", "list", "none", "tuple", "literal", "nullable"}


def _is_tag(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS or part.startswith("function-"))


def key_path(loc, prefix="") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_tag(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def allowed_range(model, name) -> str | None:
    """``"0 to 4294967295"``, ``"above 0, at most 10"`` for a field with numeric bounds, else None."""
    field = getattr(model, "model_fields", {}).get(name) if model is not None else None
    if field is None:
        return None
    low = high = None
    for m in field.metadata:
        for attr, kind in (("ge", "low"), ("gt", "low"), ("le", "high"), ("lt", "high")):
            value = getattr(m, attr, None)
            if value is not None:
                if kind == "low":
                    low = (attr, value)
                else:
                    high = (attr, value)
    if low is None and high is None:
        return None
    fmt = lambda v: f"{v:,}" if isinstance(v, int) and abs(v) >= 10_000 else repr(v)  # noqa: E731
    if low and high and low[0] == "ge" and high[0] == "le":
        return f"{fmt(low[1])} to {fmt(high[1])}"
    parts = []
    if low:
        parts.append(f"{'at least' if low[0] == 'ge' else 'above'} {fmt(low[1])}")
    if high:
        parts.append(f"{'at most' if high[0] == 'le' else 'below'} {fmt(high[1])}")
    return ", ".join(parts)


def pydantic_problems(exc: ValidationError, prefix="", known=(), model=None) -> list[tuple[str, str]]:
    """Readable ``(key_path, message)`` pairs; union alternatives merged per key."""
    grouped: dict[str, list[dict]] = {}
    for err in exc.errors(include_url=False):
        grouped.setdefault(key_path(err["loc"], prefix), []).append(err)
    problems = []
    for path, errs in grouped.items():
        kinds = {e["type"] for e in errs}
        first = errs[0]
        got = first.get("input")
        names = [p for p in first["loc"] if isinstance(p, str) and not _is_tag(p)]
        span = allowed_range(model, names[0]) if len(names) == 1 and "extra_forbidden" not in kinds else None
        if span:
            message = first["msg"] if len(errs) == 1 else "; ".join(dict.fromkeys(e["msg"] for e in errs))
            problems.append((path, f"{message} (got {got!r}); allowed: {span}"))
        elif "extra_forbidden" in kinds:
            name = path.rsplit(".", 1)[-1]
            problems.append((path, f"unknown key{did_you_mean(name, known)}"
                                   + (f"; allowed: {', '.join(sorted(known))}" if known and len(known) <= 12 else "")))
        elif "missing" in kinds:
            problems.append((path, "required, but missing or empty"))
        elif kinds == {"literal_error"}:
            expected = first.get("ctx", {}).get("expected", "")
            options = re.findall(r"'([^']*)'", expected)
            problems.append((path, f"{got!r} is not allowed{did_you_mean(got, options)}; allowed: {', '.join(options)}"))
        elif len(errs) == 1:
            problems.append((path, f"{first['msg']} (got {got!r})"))
        else:
            wants = []
            for e in errs:
                msg = e["msg"].removeprefix("Input should be ")
                if msg not in wants:
                    wants.append(msg)
            problems.append((path, f"got {got!r}; expected {' or '.join(wants)}"))
    return problems


# The modules of Axolotl's preference prompt strategies (axolotl.prompt_strategies.dpo / kto / orpo):
# ``type: chatml.intel``, ``llama3.ultra``, ``chat_template.default``, ``user_defined.default``, ...
AXOLOTL_PREFERENCE_MODULES = ("chat_template", "chatml", "llama3", "zephyr", "user_defined", "passthrough",
                              "bradley_terry")


def axolotl_preference_type(type_name: str) -> bool:
    """True for a dataset ``type`` that names one of Axolotl's DPO/KTO/ORPO prompt strategies."""
    module, dot, _function = type_name.partition(".")
    return bool(dot) and module in AXOLOTL_PREFERENCE_MODULES


def template_problem(name: str, names) -> str:
    """The message for an unknown ``chat_template``: the supported names, ``tokenizer_default``, and a
    suggestion only for a typo of a name of the same family and version (qwen3 is not a typo of qwen_25)."""
    import difflib

    def digits(text):
        return re.sub(r"\D", "", text)

    def same_version(a, b):  # llama33 ~ llama3, phi_3 ~ phi_35; never qwen3 ~ qwen_25, llama4 ~ llama3, gemma3 ~ gemma
        a, b = digits(a), digits(b)
        return a == b or bool(a and b) and (a.startswith(b) or b.startswith(a))

    close = [c for c in difflib.get_close_matches(name, list(names), n=3, cutoff=0.75) if same_version(c, name)]
    suggestion = f" (did you mean '{close[0]}'?)" if close else ""
    return (f"unknown template '{name}'{suggestion}; allowed: {', '.join(sorted(names))}; "
            f"tokenizer_default uses the model's own chat template (the one its tokenizer ships), "
            f"chat_template_jinja takes any Jinja template")


def _split_dataset_entry(entry, path, formats, problems, hint="", deferred=None):
    """Validate one ``datasets[i]`` entry; return a DatasetSpec or None.

    A dotted ``type`` (the user's own function) is not imported here: it goes to ``deferred``, and is
    imported only once the rest of the recipe is valid (no code runs for a broken recipe)."""
    if not isinstance(entry, dict):
        problems.append((path, f"must be a mapping with at least path and type (got {entry!r})"))
        return None
    if isinstance(entry.get("type"), dict):  # Axolotl's custom prompt: type: {field_instruction: ..., format: ...}
        problems.append((f"{path}.type", "a mapping here is Axolotl's custom prompt format (field_instruction, "
                                         "format, no_input_format, ...), which ftcore does not support yet; use "
                                         "type: input_output (text in, text out), type: alpaca with your field "
                                         "names, or a dotted path to your own function, module.function"))
        return None
    core = {k: v for k, v in entry.items() if k in DATASET_KEYS}
    extra = {k: v for k, v in entry.items() if k not in DATASET_KEYS}
    try:
        spec = DatasetSpec.model_validate(core)
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, path, DATASET_KEYS, DatasetSpec))
        return None
    if spec.type is None:
        problems.append((f"{path}.type", f"required; registered formats: {', '.join(sorted(formats))}"))
        return None
    if spec.type not in formats and axolotl_preference_type(spec.type):
        problems.append((f"{path}.type", f"'{spec.type}' is Axolotl's name for a preference-data format "
                                         f"(its DPO/KTO/ORPO prompt strategies); preference tuning (DPO/KTO/ORPO) "
                                         f"is not supported by ftcore yet, and these rows (prompt, chosen, "
                                         f"rejected) cannot train a supervised model as they are"))
        return None
    if deferred is not None and spec.type not in formats and "." in spec.type:
        deferred.append((f"{path}.type", spec.type))
        spec._options = UserFunctionOptions.model_validate(extra)
        return spec
    try:
        (_, options_model), plugin = resolve_format(spec.type, formats)
    except KeyError:
        problems.append((f"{path}.type", f"unknown format '{spec.type}'{did_you_mean(spec.type, formats)}; "
                                         f"registered formats: {', '.join(sorted(formats))}; "
                                         f"or a dotted path to your own function, module.function{hint}"))
        return None
    except FormatImportError as exc:
        problems.append((f"{path}.type", f"{exc}"))
        return None
    if plugin == USER_FUNCTION:  # the function's own keys are its business: passed on unchecked
        spec._options = options_model.model_validate(extra)
        return spec
    option_keys = tuple(options_model.model_fields) if options_model else ()
    if options_model is None:
        for key in extra:
            problems.append((f"{path}.{key}", f"unknown key for type '{spec.type}'"
                                             f"{did_you_mean(key, DATASET_KEYS)}"))
        return spec
    # A blank option ("field_system:") means "not set", as at the top level; unknown keys are still reported.
    extra = {k: v for k, v in extra.items() if v is not None or k not in option_keys}
    spec._options = validate_model(options_model, extra, path, problems, DATASET_KEYS)
    return spec if spec._options is not None else None


def validate_model(model, value, path, problems, also_known=()):
    """A plugin's pydantic model over ``value``, strictly: unknown keys are errors whatever the
    model's own ``extra`` setting. Returns the instance, or None after recording problems."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.append((path, f"must be a mapping (got {value!r})"))
        return None
    names = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    unknown = [k for k in value if k not in names]
    allowed = sorted(names | set(also_known))
    for key in unknown:
        problems.append((f"{path}.{key}", f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"))
    try:
        instance = model.model_validate({k: v for k, v in value.items() if k in names})
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, path, tuple(names) + tuple(also_known), model))
        return None
    return None if unknown else instance


def _without_failed_keys(data, compat, exc: ValidationError):
    """The recipe minus the keys that failed, so cross-key checks still run (every problem at once)."""
    failed = {err["loc"][0] for err in exc.errors() if err["loc"]}
    kept = {k: v for k, v in data.items() if k not in failed}
    kept.setdefault("base_model", "")  # already reported as missing
    try:
        return Recipe.model_validate({**kept, "compat": compat})
    except ValidationError:
        return None


def _plugin_hint(plugins) -> str:
    """What to add to "unknown ..." when plugins are disabled: one of them may provide it."""
    blocked = getattr(plugins, "blocked", None)
    if blocked:
        return f" (plugins disabled by FTCORE_DISABLE_PLUGINS may provide it: {', '.join(blocked)})"
    return ""


def _validate_plugin_keys(given, key_models, problems, known):
    """Each plugin's flat keys through its own model: ``{plugin: instance}``; ``complete`` is False on errors."""
    by_plugin: dict[str, tuple] = {}
    for key, (model, plugin) in key_models.items():
        by_plugin.setdefault(plugin, (model, {}))
    for key, value in given.items():
        model, plugin = key_models[key]
        by_plugin[plugin][1][key] = value
    instances, complete = {}, True
    for plugin, (model, values) in by_plugin.items():
        try:
            instances[plugin] = model.model_validate(values)
            # rules among the plugin's own keys, reported with everything else even when other keys failed
            problems.extend(getattr(instances[plugin], "cross_checks", list)())
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, "", known, model))
            complete = False
            failed = {err["loc"][0] for err in exc.errors() if err["loc"]}
            try:  # the keys that passed, so later checks read something; defaults for the rest
                instances[plugin] = model.model_validate({k: v for k, v in values.items() if k not in failed})
            except ValidationError:
                instances[plugin] = model.model_construct()
    return instances, complete


# keys whose value names something on the network when it is not a local path (a Hub id, a URL)
NETWORK_KEYS = re.compile(r"^(base_model|base_model_config|tokenizer_config|hub_model_id|hub_strategy|"
                          r"(test_)?datasets\[\d+\]\.(path|data_files|name|revision)(\[\d+\])?)$")
NOT_SENT = "environment values are never sent over the network unless the key takes a secret"


def _value_at(data, path: str):
    node = data
    for part in [p for p in re.split(r"\.|\[|\]", path) if p != ""]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return node


def _takes_secret(path: str, key_models) -> bool:
    """A top-level key marked ``Field(json_schema_extra=SECRET)`` in the core schema or a plugin's keys."""
    if path in key_models:
        field = key_models[path][0].model_fields.get(path)
    else:
        field = Recipe.model_fields.get(path)
    return bool(field is not None and (field.json_schema_extra or {}).get("secret"))


def env_network_problems(raw, key_models) -> list[tuple[str, str]]:
    """A value built with ``${oc.env:...}`` that would leave the machine (a URL, a Hub id): refused."""
    from pathlib import Path

    problems = []
    for path, original in (getattr(raw, "env", None) or {}).items():
        value = _value_at(raw.data, path)
        if not isinstance(value, str) or _takes_secret(path, key_models):
            continue
        if "://" in value:
            problems.append((path, f"'{original}' makes a URL from an environment variable: {NOT_SENT} "
                                   f"(write the URL without ${{oc.env:...}}, or download the file and name its path)"))
        elif NETWORK_KEYS.match(path) and not value.startswith(("/", ".", "~")) \
                and not Path(value).expanduser().exists():
            problems.append((path, f"'{original}' is not an existing local path, so it would be looked up on the "
                                   f"Hugging Face Hub: {NOT_SENT}"))
    return problems


# Axolotl's other names for ftcore's keys: read as those keys (Axolotl remaps them the same way)
AXOLOTL_SPELLINGS = {"model_revision": "revision_of_model", "dataset_num_proc": "dataset_processes",
                     "model_config": "overrides_of_model_config"}


# Axolotl recipes name flash attention by its Hugging Face Hub kernel; ftcore runs the same kernel from the
# locally installed flash-attn package and fetches no binary code from the Hub
HUB_ATTENTION = {"kernels-community/flash-attn": "flash_attention_2", "kernels-community/flash-attn2": "flash_attention_2",
                 "kernels-community/flash-attn3": "flash_attention_3",
                 "kernels-community/vllm-flash-attn3": "flash_attention_3",
                 "kernels-community/flash-attn4": "flash_attention_4"}


def _axolotl_spellings(data: dict, problems) -> None:
    """``model_revision``, ``dataset_num_proc``, ``model_config``, ``auto_resume_from_checkpoints`` and the Hub
    kernels' names of flash attention as ftcore's keys, in place."""
    if data.get("attn_implementation") in HUB_ATTENTION:
        data["attn_implementation"] = HUB_ATTENTION[data["attn_implementation"]]
    for axolotl, ours in AXOLOTL_SPELLINGS.items():
        if axolotl not in data:
            continue
        value = data.pop(axolotl)
        if value is None:
            continue
        if data.get(ours) is not None and data[ours] != value:
            problems.append((axolotl, f"is Axolotl's spelling of {ours}, which the recipe sets to "
                                      f"{data[ours]!r}; keep one of them"))
        else:
            data[ours] = value
    if "auto_resume_from_checkpoints" in data:
        value = data.pop("auto_resume_from_checkpoints")
        if value not in (None, False, True):
            problems.append(("auto_resume_from_checkpoints", f"must be true or false (got {value!r})"))
        elif value and data.get("resume_from_checkpoint") is None:
            data["resume_from_checkpoint"] = "auto"  # the newest complete checkpoint in output_dir, as Axolotl


def validate(raw, plugins) -> Recipe:
    """Validate ``raw`` (a ``RawRecipe``) with the schema and the plugins' keys and sections."""
    from ftcore.hooks import adapters, chat_templates, dataset_formats, evaluators, recipe_keys, recipe_sections

    data = dict(raw.data)
    problems: list[tuple[str, str]] = []
    key_models = recipe_keys(plugins)
    sections = recipe_sections(plugins)
    formats = dataset_formats(plugins)
    known = CORE_KEYS + tuple(key_models) + tuple(sections)
    hint = _plugin_hint(plugins)

    problems.extend(env_network_problems(raw, key_models))
    _axolotl_spellings(data, problems)
    section_raw, compat, flat = {}, {}, {}
    for key in list(data):
        if key in sections:
            section_raw[key] = data.pop(key)
        elif key in key_models:
            flat[key] = data.pop(key)
        elif key in AXOLOTL_KEYS and key not in CORE_KEYS:
            value = data.pop(key)
            if key in PLUGIN_FEATURES and not is_empty(value):  # a built-in plugin's key, that plugin is absent
                problems.append((key, f"no plugin provides {PLUGIN_FEATURES[key]} for this recipe ({key}: "
                                      f"{json.dumps(value, default=str)}); install or enable a plugin that does{hint}, or remove '{key}'"))
            elif key not in HINTS and not is_off(key, value):
                problems.append((key, f"{unsupported_message(key, value)}{hint}"))
            compat[key] = value
        elif key not in CORE_KEYS:
            problems.append((key, f"unknown key{did_you_mean(key, known)}{hint}"))
            data.pop(key)

    # Axolotl writes "key:" with no value for "not set"; treat it as absent.
    data = {k: v for k, v in data.items() if v is not None}
    flat = {k: v for k, v in flat.items() if v is not None}
    section_raw = {k: v for k, v in section_raw.items() if v is not None and v != ""}
    if "output_dir" not in data and getattr(raw, "path", None) is not None:
        data["output_dir"] = f"./outputs/{raw.path.stem}"  # not ./outputs: the parent of other recipes' runs

    dataset_problems = False
    deferred: list[tuple[str, str]] = []  # (key, dotted type): imported only when nothing else is wrong
    for list_key in ("datasets", "test_datasets"):
        entries = data.pop(list_key, None)
        if entries is None:
            continue
        if not isinstance(entries, list):
            entries = [entries] if isinstance(entries, dict) else entries
        if not isinstance(entries, list):
            problems.append((list_key, f"must be a list of dataset entries (got {entries!r})"))
            dataset_problems = True
            continue
        specs = [_split_dataset_entry(e, f"{list_key}[{i}]", formats, problems, hint, deferred)
                 for i, e in enumerate(entries)]
        if None not in specs:
            data[list_key] = specs  # validated instances pass through pydantic unchanged
        else:
            dataset_problems = True

    complete = not dataset_problems  # plugins' checks run only on a fully valid recipe
    try:
        recipe = Recipe.model_validate({**data, "compat": compat})
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, "", known, Recipe))
        recipe = _without_failed_keys(data, compat, exc)
        complete = False

    key_instances, keys_ok = _validate_plugin_keys(flat, key_models, problems, known)
    complete = complete and keys_ok

    validated_sections = {}
    for key, (model, _plugin) in sections.items():
        if key not in section_raw:
            # Not configured (absent, blank or null): the defaults if the section has them, else None.
            # A plugin with required keys must not break recipes that do not use it.
            try:
                validated_sections[key] = model.model_validate({})
            except ValidationError:
                validated_sections[key] = None
            continue
        validated_sections[key] = validate_model(model, section_raw[key], key, problems)
        if validated_sections[key] is None:
            complete = False

    if recipe is not None:
        recipe._sections.update(validated_sections)
        recipe._sections_set.update(section_raw)
        recipe._section_owners.update({key: plugin for key, (_model, plugin) in sections.items()})
        recipe._key_models.update(key_instances)
        recipe._plugin_keys.update({key: plugin for key, (_model, plugin) in key_models.items()})
        problems.extend(recipe.cross_checks())
        names = sorted(adapters(plugins))
        if recipe.adapter is not None and recipe.adapter not in names:
            problems.append(("adapter", f"{recipe.adapter!r} is not allowed{did_you_mean(recipe.adapter, names)}; "
                                        f"allowed: {', '.join(names) or 'none (no adapter plugin is installed)'}"
                                        f" (absent: full fine-tuning){hint}"))
            complete = False
        if recipe.chat_template and recipe.chat_template not in chat_templates(plugins):
            names = sorted(chat_templates(plugins))
            problems.append(("chat_template", f"{template_problem(recipe.chat_template, names)}{hint}"))
        names = sorted(evaluators(plugins))
        for name in recipe.evaluators:
            if name not in names:
                problems.append(("evaluators", f"unknown evaluator '{name}'{did_you_mean(name, names)}; "
                                               f"registered: {', '.join(names)}{hint}"))
        if not problems:
            for key, type_name in deferred:
                try:
                    from ftcore.plugins_manager import named_module_path

                    with named_module_path():  # named by the recipe: found in the current folder too
                        resolve_format(type_name, formats)
                except FormatImportError as exc:
                    problems.append((key, f"{exc}"))
                    complete = False
        if complete:  # plugins' rules would misfire on a recipe missing its invalid keys
            plugins.call_all("validate_recipe", recipe=recipe, error=lambda k, m: problems.append((k, m)))
    if problems:
        raise RecipeError(problems, source=raw.source)
    recipe._env_refs.update(getattr(raw, "env", None) or {})
    return recipe
