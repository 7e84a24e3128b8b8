"""``ftcore estimate``: the models' facts table, the memory arithmetic, the command."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ftcore.api import FtcoreError, registered_models
from ftcore.cli import main
from ftcore.plugins import models as models_plugin
from ftcore.plugins.planning import estimate as estimate_command
from ftcore.plugins.planning.memory import (CPU_OVERHEAD, GB, GiB, NF4_CONSTANTS, NF4_CONSTANTS_DOUBLE, Settings, architecture,
                                            deepspeed_stage, estimate, parameter_counts, parse_size)
from ftcore.plugins_manager import load_plugins

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

SEED = {  # size -> (family, task) of the seed's models, each as base and Instruct
    "meta-llama/Llama-3.1-8B": "chat", "meta-llama/Llama-3.1-70B": "chat", "meta-llama/Llama-3.1-405B": "chat",
    "meta-llama/Llama-3.2-1B": "chat", "meta-llama/Llama-3.2-3B": "chat",
    "meta-llama/Llama-3.2-11B-Vision": "vision", "meta-llama/Llama-3.2-90B-Vision": "vision",
    "Qwen/Qwen2.5-Coder-0.5B": "code", "Qwen/Qwen2.5-Coder-1.5B": "code", "Qwen/Qwen2.5-Coder-3B": "code",
    "Qwen/Qwen2.5-Coder-7B": "code", "Qwen/Qwen2.5-Coder-14B": "code", "Qwen/Qwen2.5-Coder-32B": "code",
}
# A small Llama-shaped config whose every count is worked out by hand below
SMALL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
         "vocab_size": 1000, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


@pytest.fixture(scope="module")
def table(plugins):
    return registered_models(plugins)


def run_cli(capsys, *argv):
    code = main(["estimate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ── the table ────────────────────────────────────────────────────────────────


def test_the_table_has_every_seed_model_base_and_instruct_with_license_facts(table):
    assert len(table) == 26
    for base, task in SEED.items():
        for model_id in (base, base + "-Instruct"):
            facts = table[model_id]
            assert facts.task == task and facts.plugin == "models"
            assert facts.config["model_type"] in ("llama", "qwen2", "mllama")
            if base.startswith("meta-llama/Llama-3.1"):
                assert facts.license == "Llama 3.1 Community License" and facts.gated is True
            elif base.startswith("meta-llama/Llama-3.2"):
                assert facts.license == "Llama 3.2 Community License" and facts.gated is True
            elif base.endswith("-3B"):
                assert "Qwen Research" in facts.license and "non-commercial" in facts.notes
                assert facts.gated is False
            else:
                assert facts.license == "Apache-2.0" and facts.gated is False
            if "Vision" in base:
                assert "European Union" in facts.notes


@pytest.mark.parametrize("model_id", sorted([m for m in SEED] + [m + "-Instruct" for m in SEED]))
def test_each_config_builds_with_transformers_to_exactly_the_counted_parameters(model_id):
    import torch
    import transformers

    facts = dict(models_plugin.entries())[model_id]
    config = transformers.AutoConfig.for_model(**facts["config"])
    with torch.device("meta"):
        model = getattr(transformers, facts["config"]["architectures"][0])(config)
    real = sum(p.numel() for p in model.parameters())
    assert parameter_counts(facts["config"]).total == real
    assert abs(real / facts["parameters"] - 1) < 0.02


# ── the arithmetic ───────────────────────────────────────────────────────────


def test_the_seed_table_8b_is_32gb_in_fp32_16gb_in_16bit_4gb_at_4bit(table):
    config = table["meta-llama/Llama-3.1-8B"].config
    counts = parameter_counts(config)
    assert estimate(config, Settings(method="full", precision="fp32")).weights_bytes == counts.total * 4
    assert 31.5 * GB < counts.total * 4 < 32.5 * GB
    assert estimate(config, Settings(method="full", precision="bf16")).weights_bytes == counts.total * 2
    assert 15.5 * GB < counts.total * 2 < 16.5 * GB
    assert 3.9 * GB < counts.total * 0.5 < 4.1 * GB  # every parameter at 4 bits
    qlora = estimate(config, Settings(method="qlora", load_in_4bit=True, double_quant=True))
    sixteen = (counts.embeddings + counts.head) * 2
    assert qlora.weights_bytes == pytest.approx(counts.linear * (0.5 + NF4_CONSTANTS_DOUBLE) + sixteen
                                                + counts.other * 4, abs=2)
    no_double = estimate(config, Settings(method="qlora", load_in_4bit=True, double_quant=False))
    assert no_double.weights_bytes - qlora.weights_bytes == pytest.approx(
        counts.linear * (NF4_CONSTANTS - NF4_CONSTANTS_DOUBLE), abs=2)
    eight = estimate(config, Settings(method="lora", load_in_8bit=True))
    assert counts.linear < eight.weights_bytes - sixteen < counts.linear * 1.01


def test_parameter_counts_by_kind_of_a_hand_worked_config():
    counts = parameter_counts(SMALL)
    linear_per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128
    assert counts.linear == 2 * linear_per_layer
    assert counts.embeddings == counts.head == 1000 * 64
    assert counts.other == 2 * 2 * 64 + 64
    assert counts.total == counts.linear + 2 * 64000 + counts.other
    tied = parameter_counts({**SMALL, "tie_word_embeddings": True})
    assert tied.head == 0 and tied.total == counts.total - 64000
    qwen = parameter_counts({**SMALL, "model_type": "qwen2"})  # q, k, v biases
    assert qwen.other == counts.other + 2 * (64 + 32 + 32)


def test_each_breakdown_item_of_lora_and_full_fine_tuning():
    counts = parameter_counts(SMALL)
    lora = Settings(method="lora", lora_r=4, lora_targets="all-linear", micro_batch_size=2, sequence_len=10,
                    optimizer="adamw_torch", precision="bf16", device="cpu")
    result = estimate(SMALL, lora)
    adapter_params = 2 * 4 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64))
    b = result.breakdown
    assert result.trainable_parameters == adapter_params
    assert b["weights"] == counts.total * 2
    assert b["adapter"] == adapter_params * 4  # fp32
    assert b["gradients"] == adapter_params * 4
    assert b["optimizer_states"] == adapter_params * 8  # two fp32 AdamW states
    assert b["logits"] == 2 * 10 * 1000 * 16
    per_token = 6 * 64 + 2 * 32 + 4 * 128
    assert b["activations"] == 2 * (20 * per_token * 2) + 20 * 64 * 2  # every layer's tensors
    assert b["overhead"] == CPU_OVERHEAD  # what a CPU run loads besides tensors
    assert result.total_bytes == sum(b.values())
    assert result.peak == "loss" and b["optimizer_step"] == 0  # adapter-sized AdamW temporaries: not the peak
    # with checkpointing the loss's backward holds a hidden state per layer and the logits; the layers'
    # backward a hidden state per layer and one recomputed layer with its gradients: the larger moment counts
    checkpointed = estimate(SMALL, replace(lora, gradient_checkpointing=True))
    assert checkpointed.peak == "loss" and checkpointed.breakdown["activations"] == 2 * 20 * 64 * 2
    assert checkpointed.breakdown["logits"] == b["logits"]
    chunked = estimate(SMALL, replace(lora, gradient_checkpointing=True, chunked_loss=True, chunked_loss_chunks=8))
    assert chunked.peak == "layers" and chunked.breakdown["logits"] == 0
    assert chunked.breakdown["activations"] == 2 * 20 * 64 * 2 + 2 * (20 * per_token * 2)
    assert chunked.total_bytes == sum(chunked.breakdown.values()) < checkpointed.total_bytes
    unchecked_chunked = estimate(SMALL, replace(lora, chunked_loss=True, chunked_loss_chunks=8)).breakdown
    assert unchecked_chunked["logits"] == b["logits"] // 8
    assert estimate(SMALL, replace(lora, device="cuda")).breakdown["overhead"] == GiB
    eight_bit = estimate(SMALL, replace(lora, optimizer="paged_adamw_8bit"))
    assert eight_bit.breakdown["optimizer_states"] == adapter_params * 2
    assert "paged" in eight_bit.notes[0]
    dropout = estimate(SMALL, replace(lora, lora_dropout=0.05)).breakdown["activations"]
    assert dropout > b["activations"]

    full = estimate(SMALL, Settings(method="full", precision="bf16", device="cpu", sequence_len=10))
    assert full.trainable_parameters == counts.total
    assert full.breakdown["optimizer_states"] == counts.total * 4  # torch AdamW: states in bf16 like the weights
    assert full.breakdown["adapter"] == 0
    # torch AdamW's for-loop step on a CPU: two temporaries of the largest trainable tensor (the embeddings)
    assert full.peak == "optimizer step" and full.breakdown["optimizer_step"] == 2 * 64000 * 2
    assert full.breakdown["gradients"] == counts.total * 2
    assert full.breakdown["activations"] == full.breakdown["logits"] == 0  # freed before the step
    assert any("peak is the optimizer step" in note for note in full.notes)
    # on a GPU the default foreach step takes one copy of every trainable weight
    gpu = estimate(SMALL, Settings(method="full", precision="bf16", device="cuda", sequence_len=10))
    assert gpu.breakdown["optimizer_step"] == counts.total * 2
    fused = estimate(SMALL, Settings(method="full", precision="bf16", device="cuda", sequence_len=10,
                                     optimizer="adamw_torch_fused"))
    assert fused.breakdown["optimizer_step"] == 0 and fused.peak == "loss"
    assert fused.total_bytes < gpu.total_bytes
    assert estimate(SMALL, Settings(method="full", precision="bf16", device="cuda", sequence_len=10, zero_stage=2),
                    gpus=2).breakdown["optimizer_step"] == 0  # DeepSpeed's optimizer updates in place
    # tied embeddings, or a chunked loss: the trained head's gradient arrives in pieces, added through one
    # more head-sized buffer during the loss's backward
    tied = {**SMALL, "tie_word_embeddings": True}
    long = Settings(method="full", precision="bf16", device="cpu", sequence_len=4096, optimizer="adamw_8bit")
    for config, settings in ((tied, long), (SMALL, replace(long, chunked_loss=True))):
        piece = estimate(config, settings)
        grads = parameter_counts(config).total * 2
        assert piece.peak == "loss" and piece.breakdown["gradients"] == grads + 1000 * 64 * 2
    untied = estimate(SMALL, long)
    assert untied.peak == "loss" and untied.breakdown["gradients"] == counts.total * 2
    fp16 = estimate(SMALL, Settings(method="full", precision="fp16", device="cpu"))
    assert fp16.weights_bytes == counts.total * 4  # fp16 mixed precision keeps fp32 trainable weights


def test_zero_stages_and_fsdp_divide_what_they_shard_by_the_gpus():
    base = Settings(method="full", precision="bf16", device="cpu", optimizer="adamw_torch")
    one = estimate(SMALL, base).breakdown
    p = parameter_counts(SMALL).total
    z1 = estimate(SMALL, replace(base, zero_stage=1), gpus=4).breakdown
    assert z1["optimizer_states"] == (p * 4 + p * 4) // 4  # AdamW states + ZeRO's fp32 master copy, sharded
    assert z1["gradients"] == one["gradients"] and z1["weights"] == one["weights"]
    z2 = estimate(SMALL, replace(base, zero_stage=2), gpus=4).breakdown
    assert z2["gradients"] == one["gradients"] // 4 and z2["weights"] == one["weights"]
    z3 = estimate(SMALL, replace(base, zero_stage=3), gpus=4).breakdown
    assert z3["weights"] == one["weights"] // 4 and z3["gradients"] == one["gradients"] // 4
    fsdp = estimate(SMALL, replace(base, fsdp=True), gpus=4).breakdown
    assert fsdp["weights"] == one["weights"] // 4 and fsdp["optimizer_states"] == one["optimizer_states"] // 4
    offload = estimate(SMALL, replace(base, zero_stage=3, offload=True, offload_params=True), gpus=4).breakdown
    assert offload["optimizer_states"] == 0 and offload["weights"] == 0
    assert estimate(SMALL, replace(base, zero_stage=3), gpus=8).total_bytes < estimate(
        SMALL, replace(base, zero_stage=3), gpus=2).total_bytes


def test_suggestions_fit_when_applied(table):
    config = table["meta-llama/Llama-3.1-8B-Instruct"].config
    smaller = {m: f.config for m, f in table.items() if f.family == "Llama 3.1" and f.parameters < 8.1e9}
    bad = Settings(method="lora", lora_r=16, lora_targets="all-linear", micro_batch_size=4,
                   gradient_accumulation_steps=4, sequence_len=2048, gradient_checkpointing=False)
    for gpu in (24 * GiB, 40 * GiB, 48 * GiB):
        result = estimate(config, bad, gpu_memory_bytes=gpu, smaller_models=smaller)
        assert result.fits is False
        assert result.suggestions and len(result.suggestions) == len(result.suggestion_changes)
        for text, changes in result.suggestion_changes:
            changes = dict(changes)
            gpus = changes.pop("gpus", 1)
            assert "base_model" not in changes
            applied = estimate(config, replace(bad, **changes), gpu_memory_bytes=gpu, gpus=gpus)
            assert applied.fits, text
            if "micro_batch_size" in changes:  # the same sequences per optimizer step
                assert changes["micro_batch_size"] * changes["gradient_accumulation_steps"] == 16
    texts = " ".join(estimate(config, bad, gpu_memory_bytes=24 * GiB).suggestions)
    assert "QLoRA" in texts or "qlora" in texts
    huge = table["meta-llama/Llama-3.1-405B-Instruct"].config
    zero = estimate(huge, Settings(method="qlora", load_in_4bit=True, gradient_checkpointing=True,
                                   chunked_loss=True), gpu_memory_bytes=80 * GiB)
    assert any("ZeRO-3 over" in s for s in zero.suggestions)
    model = estimate(table["Qwen/Qwen2.5-Coder-32B-Instruct"].config,
                     Settings(method="qlora", load_in_4bit=True, gradient_checkpointing=True, sequence_len=2048),
                     gpu_memory_bytes=12 * GiB,
                     smaller_models={m: f.config for m, f in table.items() if f.family == "Qwen2.5 Coder"})
    picks = [c for _, c in model.suggestion_changes if "base_model" in c]
    assert picks
    assert estimate(table[picks[0]["base_model"]].config, model.settings, gpu_memory_bytes=12 * GiB).fits


def test_a_run_that_fits_has_headroom_and_no_suggestions(table):
    config = table["meta-llama/Llama-3.2-1B-Instruct"].config
    result = estimate(config, Settings(method="qlora", load_in_4bit=True, sequence_len=1024),
                      gpu_memory_bytes=24 * GiB)
    assert result.fits is True and result.headroom_bytes == 24 * GiB - result.total_bytes
    assert result.suggestions == []
    assert estimate(config, Settings()).fits is None  # no GPU size, no verdict


@pytest.mark.parametrize("text, expected", [("24GiB", 24 * GiB), ("24 GiB", 24 * GiB), ("80GB", 80 * GB),
                                            ("16G", 16 * GiB), ("512MiB", 512 * 1024 ** 2), ("1.5gib", int(1.5 * GiB)),
                                            ("1000", 1000), (2048, 2048)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "24XB", "-3GiB", "0", "lots"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(FtcoreError, match="not a memory size"):
        parse_size(text)


def test_settings_from_recipe_reads_the_keys_that_decide_memory(plugins):
    from ftcore.api import load_recipe

    recipe, _ = load_recipe(str(ROOT / "recipes/llama31-qlora.yaml"), [], plugins)
    s = Settings.from_recipe(recipe)
    assert (s.method, s.load_in_4bit, s.double_quant, s.lora_r, s.lora_targets) == ("qlora", True, True, 32,
                                                                                    "all-linear")
    assert (s.micro_batch_size, s.sequence_len, s.gradient_checkpointing, s.optimizer) == (1, 4096, True,
                                                                                          "paged_adamw_8bit")
    assert s.precision == "bf16" and s.chunked_loss is True and s.zero_stage == 0
    assert Settings.from_recipe(recipe, device="cpu").precision == "fp32"  # bf16: auto on a CPU
    full, _ = load_recipe(str(ROOT / "recipes/llama31-full.yaml"), ["deepspeed=zero3_offload", "fp16=true",
                                                                     "bf16=false"], plugins)
    s = Settings.from_recipe(full)
    assert (s.method, s.zero_stage, s.offload, s.offload_params, s.precision) == ("full", 3, True, True, "fp16")
    lora, _ = load_recipe(str(ROOT / "recipes/llama31-lora.yaml"),
                          ["lora_target_linear=null", "lora_target_modules=[q_proj,k_proj]", "fsdp=[full_shard]"],
                          plugins)
    s = Settings.from_recipe(lora)
    assert s.lora_targets == ("q_proj", "k_proj") and s.fsdp is True and s.zero_stage == 0
    # Axolotl's FSDP2 form: an fsdp_config mapping alone shards, and its offload_params offloads
    fsdp2, _ = load_recipe(str(ROOT / "recipes/llama31-lora.yaml"),
                           ["fsdp_version=2", "fsdp_config={offload_params: true, state_dict_type: FULL_STATE_DICT}"],
                           plugins)
    s = Settings.from_recipe(fsdp2)
    assert s.fsdp is True and s.offload_params is True and s.zero_stage == 0


def test_deepspeed_presets_and_json_files():
    assert deepspeed_stage(None) == (0, False, False)
    assert deepspeed_stage("zero1") == (1, False, False)
    assert deepspeed_stage("zero3_offload") == (3, True, True)
    assert deepspeed_stage(str(ROOT / "recipes/deepspeed/zero2.json")) == (2, False, False)
    assert deepspeed_stage(str(ROOT / "recipes/deepspeed/zero3_offload.json")) == (3, True, True)
    assert deepspeed_stage({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}) == (
        2, True, False)
    with pytest.raises(FtcoreError, match="neither a preset"):
        deepspeed_stage("/no/such/ds.json")


# ── where the architecture comes from ────────────────────────────────────────


def test_architecture_from_the_table_a_folder_the_cache_or_an_error(plugins, tmp_path, monkeypatch):
    config, source = architecture("META-LLAMA/Llama-3.1-8B-instruct", plugins)
    assert source == "ftcore's table" and config["hidden_size"] == 4096
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMALL))
    config, source = architecture(str(folder), plugins)
    assert config == SMALL and source == f"local folder {folder}"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FtcoreError, match="has no config.json"):
        architecture(str(empty), plugins)
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--small-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({**SMALL, "hidden_size": 128}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, source = architecture("someone/small-model", plugins)
    assert source == "Hugging Face cache" and config["hidden_size"] == 128
    with pytest.raises(FtcoreError, match="not in ftcore's table.*HF_HUB_OFFLINE"):
        architecture("someone/other-model", plugins)


# ── the command ──────────────────────────────────────────────────────────────


def test_the_qlora_recipe_puts_4bit_weights_of_8b_between_3_5_and_6_5_gb_and_fits(capsys):
    code, out, _ = run_cli(capsys, str(ROOT / "recipes/llama31-qlora.yaml"), "--gpu-memory", "24GiB", "--json")
    assert code == 0
    result = json.loads(out)
    assert 3.5e9 <= result["weights_bytes"] <= 6.5e9
    assert result["fits"] is True and result["gpu_memory_bytes"] == 24 * GiB
    assert result["total_bytes"] == sum(result["breakdown"].values()) < 24 * GiB
    assert set(result["breakdown"]) == {"weights", "adapter", "gradients", "optimizer_states", "activations",
                                        "logits", "optimizer_step", "overhead"}
    assert result["model"] == "meta-llama/Llama-3.1-8B-Instruct" and result["parameters"] == 8_030_261_248
    assert result["license"] == "Llama 3.1 Community License" and result["gated"] is True
    assert result["suggestions"] == []


def test_the_full_recipe_does_not_fit_24gib_and_says_what_would(capsys):
    code, out, _ = run_cli(capsys, str(ROOT / "recipes/llama31-full.yaml"), "--gpu-memory", "24GiB")
    assert code == 0
    assert "verdict: does not fit in 24.00 GiB" in out
    assert "QLoRA instead of full fine-tuning" in out and "ZeRO-3 over" in out
    assert "license: Llama 3.1 Community License" in out and "gated on the Hub" in out
    code, out, _ = run_cli(capsys, str(ROOT / "recipes/llama31-full.yaml"), "--gpu-memory", "24GiB", "--json")
    assert json.loads(out)["fits"] is False


def test_overrides_and_gpus_change_the_estimate(capsys):
    recipe = str(ROOT / "recipes/llama31-full.yaml")
    _, one, _ = run_cli(capsys, recipe, "--gpu-memory", "80GB", "--json")
    _, zero3, _ = run_cli(capsys, recipe, "--gpu-memory", "80GB", "--gpus", "8", "--json", "deepspeed=zero3")
    one, zero3 = json.loads(one), json.loads(zero3)
    assert zero3["gpus"] == 8 and zero3["settings"]["zero_stage"] == 3
    assert zero3["breakdown"]["weights"] == one["breakdown"]["weights"] // 8
    assert zero3["total_bytes"] < one["total_bytes"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_estimates(capsys, recipe):
    code, out, _ = run_cli(capsys, str(recipe), "--gpu-memory", "24GiB", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["total_bytes"] > result["weights_bytes"] > 0 and isinstance(result["fits"], bool)
    code, out, _ = run_cli(capsys, str(recipe), "--gpu-memory", "24GiB")
    assert code == 0 and "verdict:" in out and "total" in out


def test_a_model_from_a_local_folder(capsys, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMALL))
    code, out, _ = run_cli(capsys, "quickstart", f"base_model={folder}", "--gpu-memory", "8GiB", "--json")
    result = json.loads(out)
    assert code == 0 and result["architecture_from"] == f"local folder {folder}"
    assert result["parameters"] == parameter_counts(SMALL).total and result["license"] is None
    assert result["fits"] is True


def test_without_a_gpu_size_the_breakdown_comes_without_a_verdict(capsys, monkeypatch):
    monkeypatch.setattr(estimate_command, "local_gpu_memory", lambda: None)
    code, out, _ = run_cli(capsys, str(ROOT / "recipes/llama31-qlora.yaml"))
    assert code == 0 and "verdict: none" in out and "--gpu-memory" in out
    code, out, _ = run_cli(capsys, str(ROOT / "recipes/llama31-qlora.yaml"), "--json")
    result = json.loads(out)
    assert result["fits"] is None and result["gpu_memory_bytes"] is None and result["total_bytes"] > 0


def test_user_errors_exit_2_with_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, str(ROOT / "recipes/llama31-qlora.yaml"), "--gpu-memory", "lots")
    assert code == 2 and "error: --gpu-memory: 'lots' is not a memory size" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "quickstart", f"base_model={tmp_path}", "--gpu-memory", "8GiB")
    assert code == 2 and "has no config.json" in err
    code, _, err = run_cli(capsys, str(ROOT / "recipes/llama31-qlora.yaml"), "--gpus", "0", "--gpu-memory", "8GiB")
    assert code == 2 and "--gpus" in err


def test_estimate_imports_neither_torch_nor_transformers():
    # how fast it answers is measured by benchmarks/startup.py (no timing in a test: the machine is noisy)
    script = (
        "import contextlib, io, sys\n"
        "from ftcore.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main(['estimate', {str(ROOT / 'recipes/llama31-qlora.yaml')!r}, '--gpu-memory', '24GiB', '--json'])\n"
        "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.split() == ["0", "False", "False"], proc.stdout + proc.stderr
