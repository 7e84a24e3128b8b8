"""Axolotl recipes as Axolotl writes them: what ftcore honours, what it accepts as off, and how it refuses.

Each recipe here is YAML in Axolotl's own style, run through the same load + validate path as
``ftcore validate`` (no model is loaded, except for the LoRA target test, which needs a tiny model).
"""

import textwrap

import pytest
from conftest import alpaca_rows, write_jsonl

from ftcore.errors import RecipeError
from ftcore.hooks import registered_recipes
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import load_raw, validate

HEAD = """\
base_model: NousResearch/Meta-Llama-3.1-8B
datasets:
  - path: {data}
    type: alpaca
micro_batch_size: 2
gradient_accumulation_steps: 4
output_dir: {out}
"""


def recipe_text(tmp_path, body: str, head: str = HEAD) -> str:
    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(4))
    return head.format(data=data, out=tmp_path / "out") + textwrap.dedent(body)


def check(tmp_path, body: str, head: str = HEAD):
    path = tmp_path / "axolotl.yml"
    path.write_text(recipe_text(tmp_path, body, head), encoding="utf-8")
    plugins = load_plugins()
    raw = load_raw(str(path), [], registered_recipes(plugins))
    plugins.add_recipe_plugins(raw.data.get("plugins"))
    return validate(raw, plugins)


def problems(tmp_path, body: str, head: str = HEAD) -> dict[str, str]:
    with pytest.raises(RecipeError) as info:
        check(tmp_path, body, head)
    found = {}
    for key, message in info.value.problems:
        found[key] = f"{found[key]} | {message}" if key in found else message
    return found


# ── 1. FSDP2 as Axolotl writes it ───────────────────────────────────────────

FSDP2_PREFIXED = """\
fsdp_version: 2
fsdp_config:
  fsdp_offload_params: true
  fsdp_cpu_ram_efficient_loading: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_activation_checkpointing: true
"""

FSDP2_PLAIN = """\
fsdp_version: 2
fsdp_config:
  offload_params: false
  cpu_ram_efficient_loading: true
  auto_wrap_policy: TRANSFORMER_BASED_WRAP
  transformer_layer_cls_to_wrap: LlamaDecoderLayer
  state_dict_type: SHARDED_STATE_DICT
  reshard_after_forward: true
"""


def test_fsdp2_with_prefixed_keys_validates_and_maps_onto_the_fsdp2_plugin(tmp_path):
    from ftcore.plugins.distributed import fsdp_config, fsdp_enabled

    recipe = check(tmp_path, FSDP2_PREFIXED)
    assert fsdp_enabled(recipe)
    assert fsdp_config(recipe) == {
        "version": 2, "cpu_offload": True, "cpu_ram_efficient_loading": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True, "activation_checkpointing": True}


def test_fsdp2_with_axolotls_unprefixed_keys_gives_the_same_config_as_the_list_form(tmp_path):
    from ftcore.plugins.distributed import fsdp_config

    new = fsdp_config(check(tmp_path, FSDP2_PLAIN))
    assert new == {"version": 2, "cpu_offload": False, "cpu_ram_efficient_loading": True,
                   "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                   "state_dict_type": "SHARDED_STATE_DICT", "reshard_after_forward": True}
    old = fsdp_config(check(tmp_path, """\
        fsdp: [full_shard, auto_wrap]
        fsdp_config:
          fsdp_cpu_ram_efficient_loading: true
          fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
          fsdp_state_dict_type: SHARDED_STATE_DICT
        """))
    assert old == {key: value for key, value in new.items() if key != "cpu_offload"}


def test_fsdp_version_inside_fsdp_config_and_final_state_dict_type_are_accepted(tmp_path):
    from ftcore.plugins.distributed import fsdp_config

    recipe = check(tmp_path, """\
        fsdp_final_state_dict_type: FULL_STATE_DICT
        fsdp_config:
          fsdp_version: 2
          offload_params: true
          mixed_precision_policy: bf16
          cpu_offload_pin_memory: false
          final_state_dict_type: FULL_STATE_DICT
        """)
    config = fsdp_config(recipe)
    assert config["version"] == 2 and config["cpu_offload"] is True
    assert "mixed_precision_policy" not in config and "final_state_dict_type" not in config


def test_fsdp2_trainer_arguments_need_a_gpu_like_the_list_form(tmp_path):
    import torch

    from ftcore.errors import FtcoreError
    from ftcore.plugins.distributed import trainer_arguments

    recipe = check(tmp_path, FSDP2_PLAIN)
    if torch.cuda.is_available():
        args = trainer_arguments(recipe)
        assert args["fsdp"] is True and args["fsdp_config"]["version"] == 2
    else:
        with pytest.raises(FtcoreError, match="FSDP runs on GPUs only"):
            trainer_arguments(recipe)


def test_fsdp2_errors_still_name_the_key(tmp_path):
    found = problems(tmp_path, """\
        fsdp_version: 1
        fsdp_config:
          fsdp_sharding_strategy: HYBRID_SHARD
        """)
    assert "not available with FSDP2" in found["fsdp_config.sharding_strategy"]
    assert "fsdp_version" in problems(tmp_path, "fsdp_version: 2\n")


# ── 2. lora_target_linear with lora_target_modules ──────────────────────────

LORA = """\
adapter: lora
lora_r: 8
lora_alpha: 16
lora_target_linear: true
lora_target_modules:
  - q_proj
  - v_proj
  - embed_tokens
"""


def test_lora_target_linear_with_named_modules_validates(tmp_path):
    recipe = check(tmp_path, LORA)
    assert recipe.lora_target_linear is True and recipe.lora_target_modules == ["q_proj", "v_proj", "embed_tokens"]


def test_target_union_of_names_and_of_a_regex():
    import re

    from ftcore.plugins.lora import target_union

    assert target_union(["k_proj", "q_proj"], ["q_proj", "embed_tokens"]) == ["embed_tokens", "k_proj", "q_proj"]
    assert target_union(["k_proj"], None) == ["k_proj"]
    pattern = target_union(["k_proj", "o_proj"], r".*\.mlp\.gate_proj")
    assert re.fullmatch(pattern, "model.layers.0.mlp.gate_proj")
    assert re.fullmatch(pattern, "model.layers.3.self_attn.o_proj")
    assert not re.fullmatch(pattern, "model.layers.3.self_attn.q_proj")


def test_lora_target_linear_with_named_modules_adapts_every_linear_layer_and_the_named_ones(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    from ftcore.plugins.lora import linear_layer_names, lora_config

    recipe = check(tmp_path, LORA)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    linear = linear_layer_names(model)
    assert set(linear) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    config = lora_config(recipe, model, {})
    assert set(config.target_modules) == set(linear) | {"embed_tokens"}


# ── 3. QLoRA under FSDP without bnb_4bit_quant_storage ──────────────────────

QLORA_FSDP = """\
adapter: qlora
load_in_4bit: true
lora_r: 8
lora_alpha: 16
lora_target_linear: true
fsdp_version: 2
fsdp_config:
  offload_params: true
  cpu_ram_efficient_loading: true
  auto_wrap_policy: TRANSFORMER_BASED_WRAP
  transformer_layer_cls_to_wrap: LlamaDecoderLayer
  state_dict_type: FULL_STATE_DICT
"""


def test_qlora_under_fsdp_defaults_the_quant_storage_to_bfloat16(tmp_path):
    from ftcore.plugins.qlora import quant_storage

    recipe = check(tmp_path, QLORA_FSDP)
    assert recipe.bnb_4bit_quant_storage is None and quant_storage(recipe) == "bfloat16"
    old_form = check(tmp_path, QLORA_FSDP.replace("fsdp_version: 2\n", "fsdp: [full_shard, auto_wrap]\n"))
    assert quant_storage(old_form) == "bfloat16"
    without_fsdp = check(tmp_path, "adapter: qlora\nload_in_4bit: true\n")
    assert quant_storage(without_fsdp) is None  # bitsandbytes' own uint8


def test_qlora_under_fsdp_with_integer_storage_is_still_refused(tmp_path):
    found = problems(tmp_path, QLORA_FSDP + "bnb_4bit_quant_storage: uint8\n")
    assert "float type" in found["bnb_4bit_quant_storage"]


def test_qlora_under_fsdp_builds_a_bfloat16_storage_config(tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch

    from ftcore.plugins.qlora import quantization_config

    config = quantization_config(check(tmp_path, QLORA_FSDP))
    assert config.bnb_4bit_quant_storage == torch.bfloat16


# ── 4. blank deprecated keys, values that mean off, liger, gradient_checkpointing: offload ──


def test_blank_deprecated_keys_are_accepted(tmp_path):
    check(tmp_path, """\
        max_packed_sequence_len:
        rope_scaling:
        noisy_embedding_alpha:
        dpo_beta:
        evaluation_strategy:
        flash_attn_rms_norm:
        s2_attention:
        gptq_groupsize:
        gptq_model_v1:
        landmark_attention:
        xpos_rope:
        sample_packing_eff_est:
        """)


def test_a_set_deprecated_key_says_deprecated_with_no_wrong_suggestion(tmp_path):
    found = problems(tmp_path, "max_packed_sequence_len: 2048\nevaluation_strategy: steps\n")
    message = found["max_packed_sequence_len"]
    assert "deprecated" in message and "sample_packing" in message and "did you mean" not in message
    assert "use eval_strategy" in found["evaluation_strategy"]


@pytest.mark.parametrize("line", [
    "cosine_constant_lr_ratio: 0", "context_parallel_size: 1", "sequence_parallel_degree: 1",
    "tensor_parallel_size: 1", "dp_shard_size: 1", "dp_replicate_size: 1", "heads_k_stride: 1",
    "experts_implementation: eager", "torch_compile: false", "relora: false", "fp8: false",
])
def test_values_meaning_off_are_accepted(tmp_path, line):
    check(tmp_path, line + "\n")


@pytest.mark.parametrize("line,key,words", [
    ("context_parallel_size: 2", "context_parallel_size", "context / sequence parallelism"),
    ("tensor_parallel_size: 4", "tensor_parallel_size", "tensor parallelism"),
    ("cosine_constant_lr_ratio: 0.1", "cosine_constant_lr_ratio", "learning-rate schedule"),
])
def test_the_same_keys_turned_on_are_refused_by_name(tmp_path, line, key, words):
    assert words in problems(tmp_path, line + "\n")[key]


def test_liger_rms_norm_gated_is_a_hint_like_the_other_liger_keys(tmp_path, capsys):
    from ftcore.cli.validate import print_notes

    recipe = check(tmp_path, """\
        plugins:
          - axolotl.integrations.liger.LigerPlugin
        liger_rope: true
        liger_rms_norm: true
        liger_rms_norm_gated: true
        liger_glu_activation: true
        """)
    print_notes(recipe, [])
    assert "liger_rms_norm_gated" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["offload", "offload_disk"])
def test_gradient_checkpointing_offload_trains_with_checkpointing_and_says_so(tmp_path, capsys, value):
    from ftcore.cli.validate import print_notes

    recipe = check(tmp_path, f"gradient_checkpointing: {value}\n")
    assert recipe.gradient_checkpointing == value and bool(recipe.gradient_checkpointing)
    print_notes(recipe, [])
    out = capsys.readouterr().out
    assert f"gradient_checkpointing: {value} trains with plain gradient checkpointing" in out


def test_gradient_checkpointing_with_another_string_is_a_readable_error(tmp_path):
    message = problems(tmp_path, "gradient_checkpointing: sometimes\n")["gradient_checkpointing"]
    assert "offload" in message and "sometimes" in message


# ── 5. Axolotl's preference-data strategies ─────────────────────────────────

@pytest.mark.parametrize("strategy", ["chat_template.default", "llama3.ultra", "chatml.ultra", "chatml.intel",
                                      "llama3.argilla", "chatml.argilla_chat", "user_defined.default",
                                      "chatml.icr", "zephyr.nectar"])
def test_axolotls_preference_strategies_are_named_as_such(tmp_path, strategy):
    head = HEAD.replace("type: alpaca", f"type: {strategy}")
    message = problems(tmp_path, "", head)["datasets[0].type"]
    assert "Axolotl's name for a preference-data format" in message
    assert "preference tuning (DPO/KTO/ORPO) is not supported" in message
    assert "PYTHONPATH" not in message and "No module" not in message


def test_rl_dpo_with_a_preference_strategy_names_both(tmp_path):
    head = HEAD.replace("type: alpaca", "type: chatml.intel")
    found = problems(tmp_path, "rl: dpo\nrl_beta: 0.1\n", head)
    assert "preference tuning" in found["rl"] and "train supervised" in found["rl"]
    assert "preference tuning" in found["rl_beta"]
    assert "preference-data format" in found["datasets[0].type"]


def test_a_users_own_dotted_function_still_resolves_as_before(tmp_path, monkeypatch):
    import sys

    (tmp_path / "compat_user_formats.py").write_text("def rows(example):\n    return example\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "compat_user_formats", raising=False)  # imported here: gone after the test
    head = HEAD.replace("type: alpaca", "type: compat_user_formats.nothing_here")
    message = problems(tmp_path, "", head)["datasets[0].type"]
    assert "preference" not in message


# ── 6. honest messages for what ftcore does not implement ───────────────────

@pytest.mark.parametrize("line,key,feature,effect", [
    ("rl: dpo", "rl", "preference tuning (DPO/KTO/ORPO", "would train supervised on the data"),
    ("rl: kto", "rl", "preference tuning", "not what it means"),
    ("orpo_alpha: 0.1", "orpo_alpha", "preference tuning", "train supervised"),
    ("reward_model: true", "reward_model", "reward-model", "as a language model"),
    ("llama4_linearized_experts: true", "llama4_linearized_experts", "mixture-of-experts kernels",
     "standard expert layers"),
    ("tensor_parallel_size: 2", "tensor_parallel_size", "tensor parallelism", "data parallelism only"),
    ("sequence_parallel_degree: 4", "sequence_parallel_degree", "sequence parallelism", "one GPU"),
    ("deepcompile: true", "deepcompile", "torch.compile", "uncompiled"),
    ("relora: true", "relora", "ReLoRA", "one plain LoRA adapter"),
    ("lisa_n_layers: 4", "lisa_n_layers", "LISA", "every layer"),
    ("qat: {weight_dtype: int4}", "qat", "quantization-aware training", "simulated quantization"),
    ("fp8: true", "fp8", "FP8 training", "bf16/fp16"),
    ("gptq: true", "gptq", "GPTQ", "load_in_4bit"),
    ("use_pose: true", "use_pose", "PoSE", "as they are"),
    ("spectrum_top_fraction: 0.5", "spectrum_top_fraction", "Spectrum", "every parameter"),
    ("loraplus_lr_ratio: 16", "loraplus_lr_ratio", "LoRA+", "learning_rate"),
    ("layer_offloading: true", "layer_offloading", "offloading", "more memory"),
    ("use_ray: true", "use_ray", "Ray", "this machine"),
    ("use_comet: true", "use_comet", "experiment tracker", "run folder"),
    ("do_bench_eval: true", "do_bench_eval", "benchmark", "lm_eval"),
    ("kd_online_server_model: x", "kd_online_server_model", "distillation", "teacher"),
    ("use_dft: true", "use_dft", "training objective", "cross-entropy"),
])
def test_unsupported_features_are_named_with_what_removing_them_changes(tmp_path, line, key, feature, effect):
    message = problems(tmp_path, line + "\n")[key]
    assert feature in message and effect in message, message
    assert "plugin could provide it" in message or key in ("cosine_constant_lr_ratio",)


def test_every_axolotl_key_ftcore_refuses_gets_a_feature_or_an_alternative():
    """No refusal is the bare "remove it": each names a feature group, a deprecation or an alternative."""
    from ftcore.recipe.axolotl import ADVICE, AXOLOTL_KEYS, DEPRECATED, HINTS, PLUGIN_FEATURES, feature_of
    from ftcore.recipe.schema import CORE_KEYS

    plugins = load_plugins()
    from ftcore.hooks import recipe_keys, recipe_sections

    owned = set(recipe_keys(plugins)) | set(recipe_sections(plugins)) | set(CORE_KEYS)
    from ftcore.recipe.validate import AXOLOTL_SPELLINGS

    owned |= set(AXOLOTL_SPELLINGS) | {"auto_resume_from_checkpoints"}
    bare = sorted(k for k in AXOLOTL_KEYS - HINTS - owned - set(PLUGIN_FEATURES)
                  if feature_of(k) is None and k not in DEPRECATED and k not in ADVICE)
    assert bare == []


def test_unsupported_message_groups_keys_by_feature():
    from ftcore.recipe.axolotl import unsupported_message

    assert unsupported_message("dpo_loss_type", ["sigmoid"]).startswith('["sigmoid"] — preference tuning')
    assert unsupported_message("rl", "dpo").startswith("dpo — preference tuning (DPO/KTO/ORPO")
    assert "mixture-of-experts" in unsupported_message("llama4_linearized_experts", True)
    long = unsupported_message("deepcompile", {"k" * 80: 1})
    assert "..." in long and len(long) < 300


# ── 7. unknown chat_template names ──────────────────────────────────────────


@pytest.mark.parametrize("name", ["qwen3_unknown_family", "llama9", "gemma99", "phi_7"])
def test_unknown_template_lists_the_names_and_tokenizer_default_without_a_wrong_suggestion(tmp_path, name):
    from ftcore.hooks import chat_templates

    message = problems(tmp_path, f"chat_template: {name}\n")["chat_template"]
    assert f"unknown template '{name}'" in message and "did you mean" not in message
    assert "tokenizer_default uses the model's own chat template" in message
    for known in chat_templates(load_plugins()):
        assert known in message


def test_template_suggestions_stay_within_the_family_and_version():
    from ftcore.recipe.validate import template_problem

    names = ["chatml", "llama3", "llama3_2_vision", "qwen_25", "tokenizer_default", "jinja"]
    assert "did you mean" not in template_problem("qwen3", names)
    assert "did you mean" not in template_problem("llama4", names)
    assert "did you mean 'chatml'" in template_problem("chatlm", names)
    assert "did you mean 'llama3'" in template_problem("llama_3", names)


# ── 8. flash attention on a machine that cannot run it ──────────────────────


@pytest.mark.parametrize("line", ["flash_attention: true", "attn_implementation: flash_attention_2",
                                  "attn_implementation: flash_attention_3"])
def test_validate_reports_flash_attention_the_machine_cannot_run(tmp_path, monkeypatch, line):
    import torch

    import ftcore.cli.validate as cli

    recipe = check(tmp_path, line + "\n")
    # a CUDA machine without the package: a problem (run refuses it before any data is prepared)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli, "_installed", lambda module: False)
    [(key, message)] = cli.attention_problems(recipe)
    assert key == line.split(":")[0]
    assert "not installed" in message and "pip install flash-attn" in message and "sdpa" in message
    assert cli.attention_fallback(recipe) is None
    monkeypatch.setattr(cli, "_installed", lambda module: True)
    assert cli.attention_problems(recipe) == []
    # no CUDA at all: the model loads with sdpa, and validate says so
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "_installed", lambda module: False)
    assert cli.attention_problems(recipe) == []
    assert "loads with attn_implementation: sdpa" in cli.attention_fallback(recipe)
    assert cli.attention_problems(check(tmp_path, "attn_implementation: sdpa\n")) == []
    assert cli.attention_fallback(check(tmp_path, "attn_implementation: sdpa\n")) is None


def test_flex_attention_is_axolotls_spelling_of_attn_implementation(tmp_path):
    assert check(tmp_path, "flex_attention: true\n").attention == "flex_attention"
    assert "flex_attention" in problems(tmp_path, "flex_attention: true\nattn_implementation: sdpa\n")


# ── Axolotl's other spellings of ftcore's keys ──────────────────────────────


def test_axolotls_spellings_are_read_as_ftcores_keys(tmp_path):
    recipe = check(tmp_path, "model_revision: v2\ndataset_num_proc: 4\nauto_resume_from_checkpoints: true\n")
    assert (recipe.revision_of_model, recipe.dataset_processes, recipe.resume_from_checkpoint) == ("v2", 4, "auto")
    blank = check(tmp_path, "model_revision:\ndataset_num_proc:\nauto_resume_from_checkpoints: false\n")
    assert (blank.revision_of_model, blank.resume_from_checkpoint) == (None, None)
    found = problems(tmp_path, "model_revision: v2\nrevision_of_model: v3\n")
    assert "keep one of them" in found["model_revision"]


def test_axolotls_custom_prompt_mapping_as_type_is_named(tmp_path):
    head = HEAD.replace("type: alpaca", "type:\n      field_instruction: q\n      format: '{{instruction}}'")
    message = problems(tmp_path, "", head)["datasets[0].type"]
    assert "Axolotl's custom prompt format" in message and "input_output" in message


def test_run_refuses_flash_attention_a_cuda_machine_lacks_before_preparing_data(tmp_path, monkeypatch, capsys):
    """`ftcore run` stops at the recipe (exit 2, the key and the fix named), before a model or the data is touched."""
    import torch

    import ftcore.cli.validate as cli
    from ftcore.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cli, "_installed", lambda module: False)
    path = tmp_path / "axolotl.yml"
    path.write_text(recipe_text(tmp_path, "flash_attention: true\n"), encoding="utf-8")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "flash_attention" in err and "pip install flash-attn" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_speed_only_keys_are_hints_and_the_ones_that_change_something_say_what(tmp_path, capsys):
    """use_kernels / experts_implementation / torch_compile train the same model: accepted; the hints whose
    absence a user would notice (mistral-common tokenization, activation offloading) print what ftcore does."""
    from ftcore.cli import main

    path = tmp_path / "axolotl.yml"
    path.write_text(recipe_text(tmp_path, "use_kernels: true\nexperts_implementation: grouped_mm\n"
                                          "torch_compile: true\ntokenizer_use_mistral_common: true\n"
                                          "activation_offloading: true\nnf4_backend: bitsandbytes\n"
                                          "quantize_moe_experts: true\n"),
                    encoding="utf-8")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    ignored = next(line for line in out.splitlines() if line.startswith("note: ignored Axolotl keys"))
    for key in ("use_kernels", "experts_implementation", "torch_compile", "tokenizer_use_mistral_common",
                "activation_offloading", "quantize_moe_experts"):
        assert key in ignored
    assert "nf4_backend" not in ignored  # bitsandbytes is what load_in_4bit uses: not ignored, honoured
    assert "not mistral-common" in out and "activations stay on the GPU" in out and "trains uncompiled" in out
    assert "expert weights stay in 16-bit" in out and "far more GPU memory" in out
    found = problems(tmp_path, "nf4_backend: torchao\nuse_onebitllms: true\n")
    assert "bitsandbytes" in found["nf4_backend"] and "BitNet" in found["use_onebitllms"]


def test_model_config_is_axolotls_older_spelling_of_overrides_of_model_config(tmp_path):
    recipe = check(tmp_path, "model_config:\n  rope_theta: 1000000.0\n")
    assert recipe.get("overrides_of_model_config") == {"rope_theta": 1000000.0}
    found = problems(tmp_path, "model_config: {rope_theta: 1.0}\noverrides_of_model_config: {rope_theta: 2.0}\n")
    assert "keep one of them" in found["model_config"]


@pytest.mark.parametrize("hub,local", [("kernels-community/vllm-flash-attn3", "flash_attention_3"),
                                       ("kernels-community/flash-attn2", "flash_attention_2"),
                                       ("flash_attention_4", "flash_attention_4")])
def test_flash_attention_named_by_its_hub_kernel_runs_the_local_kernel(tmp_path, hub, local):
    assert check(tmp_path, f"attn_implementation: {hub}\n").attention == local


def test_keys_of_axolotls_integrations_are_hints_or_named_features(tmp_path):
    """Axolotl's kernels integration (skipped with its plugins: entry) only picks kernels: its keys are hints;
    its expert parallelism, and the swanlab / diffusion integrations, are named features, not unknown keys."""
    recipe = check(tmp_path, "plugins:\n  - axolotl.integrations.kernels.KernelsPlugin\nuse_kernels: true\n"
                             "use_scattermoe: true\nuse_sonicmoe: true\nautotune_neighborhood: 2\n"
                             "flex_attn_compile_kwargs: {dynamic: false}\ngemma4_hybrid_attn_impl: true\n"
                             "fused_attn_kernel: true\n")
    assert recipe.compat["use_scattermoe"] is True
    found = problems(tmp_path, "expert_parallel_size: 4\nuse_swanlab: true\nswanlab_project: p\ndiffusion: {a: 1}\n"
                               "swanlab_workspace: w\ndiffusion_decision: {b: 2}\n")
    assert "expert parallelism" in found["expert_parallel_size"]
    assert "SwanLab" in found["use_swanlab"] and "SwanLab" in found["swanlab_project"]
    assert "alternative training objective" in found["diffusion"] and "objective" in found["diffusion_decision"]
    assert "SwanLab" in found["swanlab_workspace"]
    assert all("unknown key" not in message for message in found.values())
