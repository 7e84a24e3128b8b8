"""Recipe loading (YAML, overrides, extends, interpolation) and validation.

No model is built or loaded here: everything runs on the recipe layer, the
same calls ``ftcore validate`` makes, so these tests take well under a second.
"""

from pathlib import Path

import pytest
from conftest import alpaca_rows, write_jsonl, write_recipe

from ftcore.errors import RecipeError
from ftcore.hooks import registered_recipes
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import load_raw, validate

AXOLOTL_RECIPES = sorted((Path(__file__).parent / "axolotl_recipes").glob("*.yml"))


# ── helpers ────────────────────────────────────────────────────────────────


def check(path, *overrides, named=None):
    """Load and validate like ``ftcore validate`` does; return the Recipe."""
    plugins = load_plugins()
    raw = load_raw(str(path), list(overrides), {**registered_recipes(plugins), **(named or {})})
    plugins.add_recipe_plugins(raw.data.get("plugins"))
    return validate(raw, plugins)


def problems(path, *overrides, named=None) -> list[tuple[str, str]]:
    """The ``(key path, message)`` problems the recipe gets; fails if it validates."""
    with pytest.raises(RecipeError) as info:
        check(path, *overrides, named=named)
    return info.value.problems


def messages(found, key) -> list[str]:
    return [message for k, message in found if k == key]


def only(found, key) -> str:
    """The one message for ``key``; fails with everything found when there is not exactly one."""
    hits = messages(found, key)
    assert len(hits) == 1, f"expected one problem at {key!r}, got {found}"
    return hits[0]


def write_text(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", alpaca_rows(4))


@pytest.fixture
def recipe(tmp_path, data):
    """A small valid recipe with two dataset entries; no model is ever loaded from it."""
    return write_recipe(
        tmp_path / "recipe.yaml",
        base_model="org/model",
        adapter="lora",
        datasets=[{"path": str(data), "type": "alpaca"}, {"path": "org/other", "type": "completion"}],
        micro_batch_size=4,
        output_dir=str(tmp_path / "out"),
    )


def test_a_valid_recipe_validates_with_defaults(recipe):
    r = check(recipe)
    assert r.base_model == "org/model"
    assert r.adapter == "lora" and r.lora_r == 8 and r.lora_model_dir is None
    assert [d.type for d in r.datasets] == ["alpaca", "completion"]
    assert r.learning_rate == pytest.approx(2e-4) and r.trust_remote_code is False


# ── overrides: key=value, the value parsed as YAML ──────────────────────────


def test_override_learning_rate_1e_4_is_a_float(recipe):
    raw = load_raw(str(recipe), ["learning_rate=1e-4"])
    assert isinstance(raw.data["learning_rate"], float) and raw.data["learning_rate"] == pytest.approx(1e-4)
    assert check(recipe, "learning_rate=1e-4").learning_rate == pytest.approx(1e-4)


def test_exponent_floats_are_floats_in_files_and_untyped_mappings(tmp_path):
    # PyYAML's YAML 1.1 reads 1e-4 as a string; a key typed Any would then pass a string on.
    path = write_text(tmp_path / "r.yaml",
                      "base_model: org/model\nlearning_rate: 1e-4\nlr_scheduler_kwargs:\n  min_lr: 1e-6\n")
    raw = load_raw(str(path))
    assert raw.data["learning_rate"] == pytest.approx(1e-4)
    assert isinstance(raw.data["lr_scheduler_kwargs"]["min_lr"], float)
    assert check(path).lr_scheduler_kwargs == {"min_lr": pytest.approx(1e-6)}


@pytest.mark.parametrize("override, key, expected", [
    ("lora_r=16", "lora_r", 16),
    ("bf16=false", "bf16", False),
    ("bf16=auto", "bf16", "auto"),
    ("num_epochs=0.5", "num_epochs", 0.5),
    ("lora_target_modules=[q_proj, v_proj]", "lora_target_modules", ["q_proj", "v_proj"]),
    ("special_tokens={pad_token: <|end_of_text|>}", "special_tokens", {"pad_token": "<|end_of_text|>"}),
    ("wandb_name=2024-01-01", "wandb_name", "2024-01-01"),  # a date stays a string
    ("wandb_name='123'", "wandb_name", "123"),
])
def test_override_values_are_parsed_as_yaml(recipe, override, key, expected):
    assert load_raw(str(recipe), [override]).data[key] == expected
    assert getattr(check(recipe, override), key) == expected


def test_override_replaces_the_whole_datasets_list(recipe, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", alpaca_rows(2))
    r = check(recipe, f"datasets=[{{path: {other}, type: alpaca}}]")
    assert [(d.path, d.type) for d in r.datasets] == [(str(other), "alpaca")]


def test_override_one_field_of_one_dataset(recipe):
    r = check(recipe, "datasets[0].path=x.jsonl")
    assert (r.datasets[0].path, r.datasets[0].type) == ("x.jsonl", "alpaca")
    assert (r.datasets[1].path, r.datasets[1].type) == ("org/other", "completion")


def test_override_a_format_option_of_a_dataset(recipe):
    r = check(recipe, "datasets[0].field_instruction=question")
    assert r.datasets[0].options.field_instruction == "question"


def test_override_index_equal_to_length_appends(recipe):
    r = check(recipe, "datasets[2]={path: org/third, type: alpaca}")
    assert [d.path for d in r.datasets][-1] == "org/third" and len(r.datasets) == 3


@pytest.mark.parametrize("override, key", [
    ("datasets[5].path=x.jsonl", "datasets[5].path"),
    ("datasets[3]={path: x, type: alpaca}", "datasets[3]"),
    ("test_datasets[0].path=x.jsonl", "test_datasets[0].path"),  # no such list yet: index 0 is out of range
])
def test_override_index_out_of_range(recipe, override, key):
    found = problems(recipe, override)
    assert "out of range" in only(found, key)


def test_override_can_create_a_list_that_is_not_there(recipe):
    r = check(recipe, "test_datasets[0]={path: org/eval, type: alpaca}")
    assert [d.path for d in r.test_datasets] == ["org/eval"]


def test_empty_override_means_not_set(tmp_path):
    path = write_recipe(tmp_path / "with-adapter.yaml", base_model="org/model", adapter="lora",
                        lora_model_dir=str(tmp_path), wandb_project="p")
    assert load_raw(str(path), ["lora_model_dir="]).data["lora_model_dir"] is None
    r = check(path, "lora_model_dir=", "wandb_project=")
    assert r.lora_model_dir is None and r.wandb_project is None


@pytest.mark.parametrize("override", [
    "learning_rate",            # no '='
    "=3",                       # no key
    "learning rate=1",          # not a key path
    "datasets[x].path=a",       # index is not a number
    "datasets..path=a",
    "datasets[0]path=a",
    "learning_rate=[1,",        # value is not YAML
    "x=!!python/object/apply:os.system [echo]",  # YAML that would run code
])
def test_bad_override_syntax_is_a_recipe_error(recipe, override):
    with pytest.raises(RecipeError) as info:
        load_raw(str(recipe), [override])
    assert len(info.value.problems) == 1


def test_unparsable_override_value_names_the_key(recipe):
    with pytest.raises(RecipeError) as info:
        load_raw(str(recipe), ["learning_rate=[1,"])
    (key, message), = info.value.problems
    assert key == "learning_rate" and "YAML" in message


def test_override_below_a_plain_value_is_an_error(recipe):
    with pytest.raises(RecipeError) as info:
        load_raw(str(recipe), ["base_model.name=x"])
    assert "is a value" in info.value.problems[0][1]


def test_override_with_a_value_omegaconf_cannot_hold_is_a_recipe_error(recipe):
    with pytest.raises(RecipeError) as info:
        load_raw(str(recipe), ["tokens=!!set {a, b}"])
    assert info.value.problems[0][0] == "tokens"


def test_override_with_a_typo_gets_a_suggestion(recipe):
    assert "did you mean 'learning_rate'" in only(problems(recipe, "lerning_rate=1e-4"), "lerning_rate")


def test_later_override_wins(recipe):
    assert check(recipe, "lora_r=4", "lora_r=32").lora_r == 32


# ── extends ─────────────────────────────────────────────────────────────────


def test_extends_a_relative_path_from_the_childs_folder(tmp_path, monkeypatch):
    (tmp_path / "shared").mkdir()
    write_recipe(tmp_path / "shared" / "base.yaml", base_model="org/base", lora_r=8, learning_rate=0.001)
    child = write_text(tmp_path / "team" / "child.yaml", "extends: ../shared/base.yaml\nlora_r: 32\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the parent is found from the child's folder, not the cwd
    r = check(child)
    assert (r.base_model, r.lora_r, r.learning_rate) == ("org/base", 32, 0.001)


def test_extends_a_chain_of_two(tmp_path):
    write_recipe(tmp_path / "grand.yaml", base_model="org/grand", lora_r=4, lora_alpha=8, seed=1)
    write_recipe(tmp_path / "parent.yaml", extends="grand.yaml", lora_r=16, lora_alpha=32)
    child = write_recipe(tmp_path / "child.yaml", extends="parent.yaml", lora_r=64)
    raw = load_raw(str(child))
    assert [p.name for p in raw.files] == ["grand.yaml", "parent.yaml", "child.yaml"]
    assert "extends" not in raw.data
    r = check(child)
    assert (r.base_model, r.seed, r.lora_alpha, r.lora_r) == ("org/grand", 1, 32, 64)


def test_extends_then_override_on_the_command_line(tmp_path):
    write_recipe(tmp_path / "parent.yaml", base_model="org/base", lora_r=8)
    child = write_recipe(tmp_path / "child.yaml", extends="parent.yaml", lora_r=16)
    assert check(child, "lora_r=2").lora_r == 2


def test_extends_replaces_lists_instead_of_merging_them(tmp_path):
    write_recipe(tmp_path / "parent.yaml", base_model="org/base", adapter="lora",
                 lora_target_modules=["q_proj", "k_proj", "v_proj"],
                 datasets=[{"path": "org/a", "type": "alpaca"}, {"path": "org/b", "type": "alpaca"}])
    child = write_recipe(tmp_path / "child.yaml", extends="parent.yaml", lora_target_modules=["o_proj"],
                         datasets=[{"path": "org/c", "type": "completion"}])
    r = check(child)
    assert r.lora_target_modules == ["o_proj"]
    assert [(d.path, d.type) for d in r.datasets] == [("org/c", "completion")]


def test_extends_merges_mappings_key_by_key(tmp_path):
    write_recipe(tmp_path / "parent.yaml", base_model="org/base", special_tokens={"pad_token": "<pad>"})
    child = write_recipe(tmp_path / "child.yaml", extends="parent.yaml", special_tokens={"eos_token": "</s>"})
    assert check(child).special_tokens == {"pad_token": "<pad>", "eos_token": "</s>"}


def test_child_can_blank_a_parents_value(tmp_path):
    write_recipe(tmp_path / "parent.yaml", base_model="org/base", adapter="lora", lora_model_dir="/some/adapter",
                 wandb_project="proj")
    child = write_text(tmp_path / "child.yaml", "extends: parent.yaml\nlora_model_dir:\nwandb_project:\n")
    r = check(child)
    assert r.lora_model_dir is None and r.wandb_project is None


def test_extends_a_cycle_is_an_error(tmp_path):
    write_recipe(tmp_path / "a.yaml", extends="b.yaml", base_model="org/a")
    write_recipe(tmp_path / "b.yaml", extends="a.yaml")
    with pytest.raises(RecipeError) as info:
        load_raw(str(tmp_path / "a.yaml"))
    (key, message), = info.value.problems
    assert key == "extends" and "cycle" in message and "a.yaml" in message and "b.yaml" in message


def test_extends_itself_is_a_cycle(tmp_path):
    path = write_recipe(tmp_path / "self.yaml", extends="self.yaml", base_model="org/a")
    with pytest.raises(RecipeError, match="cycle"):
        load_raw(str(path))


def test_extends_a_missing_parent_names_the_key_and_the_child(tmp_path):
    child = write_recipe(tmp_path / "child.yaml", extends="nowhere.yaml", base_model="org/a")
    with pytest.raises(RecipeError) as info:
        load_raw(str(child))
    (key, message), = info.value.problems
    assert key == "extends" and "nowhere.yaml" in message
    assert info.value.source == str(child)


def test_extends_must_be_a_string(tmp_path):
    child = write_text(tmp_path / "child.yaml", "extends: [a.yaml, b.yaml]\nbase_model: org/a\n")
    with pytest.raises(RecipeError) as info:
        load_raw(str(child))
    assert info.value.problems[0][0] == "extends"


def test_extends_a_named_recipe(tmp_path):
    (tmp_path / "lib").mkdir()
    shipped = write_recipe(tmp_path / "lib" / "starter.yaml", base_model="org/starter", lora_r=8)
    child = write_recipe(tmp_path / "mine.yaml", extends="starter", lora_r=12)
    r = check(child, named={"starter": str(shipped)})
    assert (r.base_model, r.lora_r) == ("org/starter", 12)


# ── interpolation: only ${key}, ${oc.env:NAME} and ${recipe_dir:} ─────────────


def test_interpolation_of_another_key(tmp_path):
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\nmicro_batch_size: 4\n"
                                           "eval_batch_size: ${micro_batch_size}\n"
                                           "wandb_name: lr-${learning_rate}\nlearning_rate: 0.001\n")
    r = check(path)
    assert r.eval_batch_size == 4 and r.wandb_name == "lr-0.001"
    assert check(path, "micro_batch_size=8").eval_batch_size == 8  # resolved after overrides


def test_interpolation_of_an_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCORE_TEST_PROJECT", "my-project")
    monkeypatch.delenv("FTCORE_TEST_UNSET", raising=False)
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\nwandb_project: ${oc.env:FTCORE_TEST_PROJECT}\n"
                                           "wandb_entity: ${oc.env:FTCORE_TEST_UNSET,team}\n")
    r = check(path)
    assert (r.wandb_project, r.wandb_entity) == ("my-project", "team")


def test_unset_environment_variable_is_a_recipe_error_with_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FTCORE_TEST_UNSET", raising=False)
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\nwandb_project: ${oc.env:FTCORE_TEST_UNSET}\n")
    with pytest.raises(RecipeError) as info:
        load_raw(str(path))
    (key, message), = info.value.problems
    assert key == "wandb_project" and "FTCORE_TEST_UNSET" in message and "\n" not in message


def test_interpolation_of_a_missing_key_is_a_recipe_error(tmp_path):
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\nwandb_name: ${no_such_key}\n")
    with pytest.raises(RecipeError) as info:
        load_raw(str(path))
    assert info.value.problems[0][0] == "wandb_name"


def test_recipe_dir_is_the_folder_of_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    write_jsonl(folder / "data.jsonl", alpaca_rows(2))
    write_text(folder / "r.yaml", "base_model: org/model\noutput_dir: ${recipe_dir:}/out\n"
                                         "datasets:\n  - path: ${recipe_dir:}/data.jsonl\n    type: alpaca\n")
    monkeypatch.chdir(tmp_path)
    r = check("recipes/r.yaml")
    assert Path(r.datasets[0].path) == folder.resolve() / "data.jsonl"
    assert Path(r.output_dir) == folder.resolve() / "out"


def test_recipe_dir_in_a_parent_is_the_parents_folder(tmp_path):
    write_text(tmp_path / "base" / "parent.yaml", "base_model: org/model\noutput_dir: ${recipe_dir:}/out\n")
    child = write_text(tmp_path / "child" / "child.yaml", "extends: ../base/parent.yaml\n")
    assert Path(check(child).output_dir) == (tmp_path / "base").resolve() / "out"


def test_recipe_dir_in_an_override_is_the_recipes_folder(recipe, tmp_path):
    assert Path(check(recipe, "output_dir=${recipe_dir:}/run2").output_dir) == tmp_path.resolve() / "run2"


@pytest.mark.parametrize("value, resolver", [
    ("${oc.create:{a: 1}}", "oc.create"),
    ("${oc.decode:'[1, 2]'}", "oc.decode"),
    ("${oc.select:base_model}", "oc.select"),
    ("${oc.deprecated:base_model}", "oc.deprecated"),
    ("${shell:rm -rf /}", "shell"),
    ("prefix-${ myres : x }", "myres"),
    ("${oc.env:${oc.decode:'HOME'}}", "oc.decode"),  # nested inside an allowed one
])
def test_other_resolvers_are_rejected_with_the_key_path(tmp_path, value, resolver):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        datasets=[{"path": "org/data", "type": "alpaca", "split": value}])
    with pytest.raises(RecipeError) as info:
        load_raw(str(path))
    keys = [k for k, _ in info.value.problems]
    assert keys and set(keys) == {"datasets[0].split"}
    assert any(resolver in m for _, m in info.value.problems)


def test_a_registered_custom_resolver_is_rejected_and_never_called(tmp_path):
    from omegaconf import OmegaConf

    calls = []
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # 2.4 / 2.3
    register("ftcore_test_run", lambda *a: calls.append(a) or "ran")
    try:
        path = write_text(tmp_path / "r.yaml", "base_model: org/model\nwandb_name: ${ftcore_test_run:x}\n")
        with pytest.raises(RecipeError) as info:
            load_raw(str(path))
        with pytest.raises(RecipeError):
            load_raw(str(tmp_path / "r.yaml"), ["wandb_project=${ftcore_test_run:y}"])
    finally:
        OmegaConf.clear_resolver("ftcore_test_run")
    assert calls == []
    assert info.value.problems[0][0] == "wandb_name"


# ── validation: every problem, with its key path and what is allowed ────────


def test_unknown_key_gets_did_you_mean(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", lerning_rate=1e-4)
    assert "did you mean 'learning_rate'" in only(problems(path), "lerning_rate")


def test_unknown_key_is_an_error_even_when_blank(tmp_path):
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\nlearnig_rate:\n")
    assert "did you mean 'learning_rate'" in only(problems(path), "learnig_rate")


def test_missing_base_model(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", lora_r=8)
    assert "required" in only(problems(path), "base_model")


def test_empty_recipe_file_reports_base_model(tmp_path):
    path = write_text(tmp_path / "r.yaml", "# nothing yet\n")
    assert messages(problems(path), "base_model")


@pytest.mark.parametrize("key, value", [
    ("lora_r", "abc"),
    ("learning_rate", "fast"),
    ("micro_batch_size", [1, 2]),
    ("load_in_4bit", "maybe"),
    ("bf16", "sometimes"),
    ("lora_target_modules", 3),
    ("special_tokens", "pad"),
    ("datasets", "data.jsonl"),
    ("evaluators", "loss"),
])
def test_wrong_types_name_the_key(tmp_path, key, value):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", **{key: value})
    found = problems(path)
    assert messages(found, key), found
    assert all(k == key for k, _ in found), found


@pytest.mark.parametrize("key, value, words", [
    ("lora_dropout", 1.5, "less than 1"),
    ("lora_dropout", -0.1, "greater than or equal to 0"),
    ("micro_batch_size", 0, "greater than or equal to 1"),
    ("lora_r", 0, "greater than or equal to 1"),
    ("learning_rate", 0, "greater than 0"),
    ("warmup_ratio", 1.5, "less than 1"),
    ("gradient_accumulation_steps", -1, "greater than or equal to 1"),
    ("sequence_len", 4, "greater than or equal to 8"),
    ("val_set_size", 1.5, "whole number"),
])
def test_out_of_range_values(tmp_path, key, value, words):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", **{key: value})
    assert words in only(problems(path), key)


@pytest.mark.parametrize("key, typo, right", [
    ("optimizer", "adamw_torh", "adamw_torch"),
    ("optimizer", "paged_adamw_8bt", "paged_adamw_8bit"),
    ("lr_scheduler", "cosin", "cosine"),
    ("adapter", "lorra", "lora"),
    ("attn_implementation", "sdap", "sdpa"),
    ("chat_template", "llama33", "llama3"),
])
def test_choices_get_a_suggestion_and_the_allowed_values(tmp_path, key, typo, right):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", **{key: typo})
    message = only(problems(path), key)
    assert f"did you mean '{right}'" in message and "allowed:" in message and typo in message


def test_unknown_special_token_gets_a_suggestion(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", special_tokens={"pad_tokn": "<pad>"})
    assert "did you mean 'pad_token'" in only(problems(path), "special_tokens.pad_tokn")


@pytest.mark.parametrize("keys, reported", [
    ({"warmup_steps": 10, "warmup_ratio": 0.1}, "warmup_ratio"),
    ({"load_in_4bit": True, "load_in_8bit": True}, "load_in_8bit"),
    ({"flash_attention": True, "attn_implementation": "eager"}, "flash_attention"),
    ({"sdp_attention": True, "attn_implementation": "flash_attention_2"}, "sdp_attention"),
    ({"val_set_size": 0.1, "test_datasets": [{"path": "org/eval", "type": "alpaca"}]}, "val_set_size"),
    ({"save_steps": 100, "saves_per_epoch": 2}, "saves_per_epoch"),
    ({"eval_steps": 100, "evals_per_epoch": 2}, "evals_per_epoch"),
    ({"bf16": True, "fp16": True}, "fp16"),
    ({"flex_attention": True, "sdp_attention": True}, "flex_attention"),
    ({"chat_template": "jinja"}, "chat_template_jinja"),
])
def test_contradictions(tmp_path, keys, reported):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", **keys)
    found = problems(path)
    assert [k for k, _ in found] == [reported], found


def test_flash_attention_agreeing_with_attn_implementation_is_fine(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", flash_attention=True,
                        attn_implementation="flash_attention_2")
    assert check(path).attention == "flash_attention_2"


def test_lora_keys_without_an_adapter(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", lora_target_linear=True)
    assert "adapter" in only(problems(path), "lora_target_linear")


# ── dataset entries ──


def test_unknown_dataset_type_gets_a_suggestion_and_the_registered_formats(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", datasets=[{"path": "org/d", "type": "alpacca"}])
    message = only(problems(path), "datasets[0].type")
    assert "did you mean 'alpaca'" in message
    assert all(name in message for name in ("alpaca", "completion", "chat_template"))


@pytest.mark.parametrize("entry, key, right", [
    ({"type": "alpaca", "field_instructon": "q"}, "datasets[0].field_instructon", "field_instruction"),
    ({"type": "chat_template", "field_mesages": "conversations"}, "datasets[0].field_mesages", "field_messages"),
    ({"type": "chat_template", "roles_to_trian": ["gpt"]}, "datasets[0].roles_to_trian", "roles_to_train"),
    ({"type": "alpaca", "splt": "train"}, "datasets[0].splt", "split"),
])
def test_unknown_key_in_a_dataset_entry_is_format_specific(tmp_path, entry, key, right):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", datasets=[{"path": "org/d", **entry}])
    assert f"did you mean '{right}'" in only(problems(path), key)


def test_another_formats_option_is_unknown_for_this_format(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        datasets=[{"path": "org/d", "type": "alpaca", "field_messages": "conversations"}])
    assert messages(problems(path), "datasets[0].field_messages")


def test_format_options_are_validated_by_type(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        datasets=[{"path": "org/d", "type": "chat_template", "train_on_eos": "turns",
                                   "roles_to_train": "assistant"}])
    found = problems(path)
    assert "did you mean 'turn'" in only(found, "datasets[0].train_on_eos")
    assert messages(found, "datasets[0].roles_to_train")


def test_format_options_are_read_into_the_spec(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        datasets=[{"path": "org/d", "type": "chat_template", "field_messages": "conversations",
                                   "message_property_mappings": {"role": "from", "content": "value"},
                                   "roles_to_train": ["gpt"], "train_on_eos": "turn"}])
    options = check(path).datasets[0].options
    assert options.field_messages == "conversations" and options.roles_to_train == ["gpt"]
    assert (options.role_key(), options.content_key()) == ("from", "value")


def test_blank_format_option_means_not_set_but_a_blank_unknown_one_is_still_an_error(tmp_path):
    ok = write_text(tmp_path / "ok.yaml", "base_model: org/model\ndatasets:\n  - path: org/d\n    type: alpaca\n"
                                          "    field_system:\n    split:\n")
    assert check(ok).datasets[0].options.field_system == "system"
    bad = write_text(tmp_path / "bad.yaml", "base_model: org/model\ndatasets:\n  - path: org/d\n    type: alpaca\n"
                                            "    field_instructon:\n")
    assert messages(problems(bad), "datasets[0].field_instructon")


def test_dataset_entry_without_path(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", datasets=[{"type": "alpaca"}])
    assert "required" in only(problems(path), "datasets[0].path")


def test_dataset_entry_without_type(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", datasets=[{"path": "org/d"}])
    assert "alpaca" in only(problems(path), "datasets[0].type")


def test_dataset_entry_that_is_not_a_mapping(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", datasets=["data.jsonl"])
    assert messages(problems(path), "datasets[0]")


def test_test_datasets_entries_are_checked_too(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        test_datasets=[{"path": "org/d", "type": "alpaca", "field_outptu": "a"}])
    assert "did you mean 'field_output'" in only(problems(path), "test_datasets[0].field_outptu")


# ── YAML itself ──


@pytest.mark.parametrize("text, line", [
    ("base_model: org/model\nlora_r: [8, 16\n", 3),
    ("base_model: org/model\ndatasets:\n  - path: a\n   type: alpaca\n", 4),
    ("base_model: org/model\nlora_r: 8\n\twandb_name: x\n", 3),
    ("base_model: org/model\nwandb_name: \"unclosed\n", 3),
    ("base_model: org/model\nlora_r: 8: 9\n", 2),
])
def test_yaml_syntax_errors_carry_the_line_number(tmp_path, text, line):
    path = write_text(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as info:
        load_raw(str(path))
    (key, message), = info.value.problems
    assert f"line {line}," in message and "YAML" in message


def test_duplicate_keys_are_rejected_with_both_lines(tmp_path):
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\nlora_r: 8\nlearning_rate: 0.001\nlora_r: 16\n")
    with pytest.raises(RecipeError) as info:
        load_raw(str(path))
    message = info.value.problems[0][1]
    assert "duplicate key 'lora_r'" in message and "line 4" in message and "line 2" in message


def test_duplicate_keys_inside_a_dataset_entry_are_rejected(tmp_path):
    path = write_text(tmp_path / "r.yaml", "base_model: org/model\ndatasets:\n  - path: a\n    type: alpaca\n"
                                           "    path: b\n")
    with pytest.raises(RecipeError, match="duplicate key 'path'"):
        load_raw(str(path))


def test_a_recipe_must_be_a_mapping(tmp_path):
    path = write_text(tmp_path / "r.yaml", "- base_model\n- lora_r\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_raw(str(path))


@pytest.mark.parametrize("text", [
    "base_model: org/model\ntokens: !!set {a, b}\n",                # a value OmegaConf cannot hold
    "base_model: org/model\n? [a, b]\n: 1\n",                       # a key that is a list
    "base_model: !!python/object/apply:os.system [echo hi]\n",     # YAML that would run code
])
def test_yaml_python_can_hold_but_a_recipe_cannot_is_a_recipe_error(tmp_path, text):
    path = write_text(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError):
        load_raw(str(path))


def test_a_missing_recipe_file_suggests_a_named_recipe(tmp_path):
    with pytest.raises(RecipeError) as info:
        load_raw(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in str(info.value)
    with pytest.raises(RecipeError, match="did you mean 'starter'"):
        load_raw("startr", named_recipes={"starter": str(tmp_path / "starter.yaml")})


# ── every problem at once ──


def test_four_distinct_mistakes_are_four_problems_in_one_error(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        lerning_rate=1e-4,            # unknown key
                        lora_dropout=1.5,             # out of range
                        optimizer="adamw_torh",       # not a choice
                        warmup_steps=10, warmup_ratio=0.1)  # contradiction
    with pytest.raises(RecipeError) as info:
        check(path)
    assert sorted(k for k, _ in info.value.problems) == ["lerning_rate", "lora_dropout", "optimizer", "warmup_ratio"]
    text = str(info.value)
    assert text.startswith("4 problems in") and str(path) in text
    for key, message in info.value.problems:
        assert f"  {key}: {message}" in text


def test_every_kind_of_problem_in_one_recipe(tmp_path):
    path = write_recipe(
        tmp_path / "r.yaml",
        base_model="org/model",
        lerning_rate=1e-4,
        lora_r="abc",
        micro_batch_size=0,
        optimizer="adamw_torh",
        load_in_4bit=True, load_in_8bit=True,
        flash_attention=True, attn_implementation="eager",
        val_set_size=0.1,
        test_datasets=[{"path": "org/eval", "type": "alpaca"}],
        datasets=[{"path": "org/a", "type": "alpacca"},
                  {"path": "org/b", "type": "alpaca", "field_instructon": "q"},
                  {"type": "alpaca"}],
        rl="dpo",
    )
    found = problems(path)
    assert {k for k, _ in found} == {
        "lerning_rate", "lora_r", "micro_batch_size", "optimizer", "load_in_8bit", "flash_attention",
        "val_set_size", "datasets[0].type", "datasets[1].field_instructon", "datasets[2].path", "rl",
    }, found
    assert len(found) == 11


def test_overrides_are_validated_with_the_rest(recipe):
    found = problems(recipe, "lora_dropout=2", "optimizer=sgdd", "warmup_steps=1", "warmup_ratio=0.5")
    assert sorted(k for k, _ in found) == ["lora_dropout", "optimizer", "warmup_ratio"]


# ── Axolotl compatibility ───────────────────────────────────────────────────


def test_there_are_axolotl_style_recipes():
    assert len(AXOLOTL_RECIPES) >= 3


@pytest.mark.parametrize("path", AXOLOTL_RECIPES, ids=lambda p: p.name)
def test_axolotl_style_recipes_validate_unchanged(path):
    r = check(path)
    assert r.datasets and r.val_set_size > 0
    assert r.attention == "flash_attention_2"
    assert r.special_tokens == {"pad_token": "<|end_of_text|>"}
    assert r.lora_model_dir is None and r.wandb_project is None and r.fp16 is None


def test_axolotl_lora_recipe_reads_as_axolotl_means_it():
    r = check(Path(__file__).parent / "axolotl_recipes" / "llama3-lora.yml")
    assert (r.adapter, r.lora_r, r.lora_target_linear) == ("lora", 32, True)
    assert (r.optimizer, r.lr_scheduler, r.learning_rate, r.bf16, r.tf32) == ("adamw_bnb_8bit", "cosine", 0.0002,
                                                                              "auto", False)
    assert (r.evals_per_epoch, r.saves_per_epoch, r.warmup_steps) == (4, 1, 10)
    assert (r.sample_packing, r.pad_to_sequence_len, r.eval_sample_packing) == (True, True, False)
    assert r.chat_template == "llama3"
    spec = r.datasets[0]
    assert (spec.path, spec.type, spec.split) == ("mlabonne/FineTome-100k", "chat_template", "train[:20%]")
    assert spec.options.roles_to_train == ["gpt"] and spec.options.train_on_eos == "turn"
    assert r.compat["liger_rms_norm"] is True and r.compat["lora_mlp_kernel"] is True


@pytest.mark.parametrize("key, value", [
    ("rl", "dpo"),
    ("tensor_parallel_size", 2),  # hub_model_id and neftune_noise_alpha are honoured now (compat plugins)
    ("deepcompile", True),  # torch_compile is a hint now: the same model trains uncompiled
    ("relora", True),
    ("reward_model", True),
])
def test_axolotl_only_key_with_a_real_value_is_an_error_naming_it(tmp_path, key, value):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", **{key: value})
    message = only(problems(path), key)  # the problem is reported at the key; the message names the feature
    assert "not supported" in message


@pytest.mark.parametrize("key", ["rl", "tensor_parallel_size", "torch_compile", "relora"])
def test_axolotl_only_key_left_blank_or_false_is_accepted(tmp_path, key):
    blank = write_text(tmp_path / "blank.yaml", f"base_model: org/model\n{key}:\n")
    assert check(blank).compat == {key: None}
    off = write_text(tmp_path / "off.yaml", f"base_model: org/model\n{key}: false\n")
    check(off)


def test_axolotl_hints_are_accepted_with_any_value(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model", lora_mlp_kernel=True, dataloader_num_workers=4,
                        liger_rms_norm=True, debug=True, strict=True)
    assert check(path).compat["dataloader_num_workers"] == 4


def test_axolotl_plugins_are_skipped_not_imported(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", base_model="org/model",
                        plugins=["axolotl.integrations.liger.LigerPlugin"], liger_rms_norm=True)
    assert check(path).plugins == ["axolotl.integrations.liger.LigerPlugin"]


def test_a_binary_file_is_a_clear_error_not_a_traceback(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(RecipeError) as info:
        load_raw(str(path))
    assert "not a UTF-8 text file" in str(info.value) and str(path) in str(info.value)
