"""``ftcore run RECIPE --dry-run``: a tiny model of the same architecture through the real pipeline, offline.

The issue's check: the dry run of every shipped recipe passes offline (subprocess, HF_HUB_OFFLINE=1),
prints the real run's plan, and never creates the real output_dir. Unit tests: the config shrinking
keeps the class and the family's special tokens; made-up rows follow the declared format; a pipeline
that fails makes the dry run fail with the real error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftcore.testing import write_jsonl

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))

LLAMA31 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": False, "rope_theta": 500000.0,
           "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
           "max_position_embeddings": 131072, "attention_bias": False, "bos_token_id": 128000,
           "eos_token_id": [128001, 128008, 128009]}
QWEN7B = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584,
          "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
          "vocab_size": 152064, "tie_word_embeddings": False, "rope_theta": 1000000.0,
          "max_position_embeddings": 32768, "max_window_layers": 28, "use_sliding_window": False,
          "layer_types": ["full_attention"] * 28}


def ftcore(*args, cwd, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ftcore", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


# ── the shrinking ───────────────────────────────────────────────────────────


@pytest.mark.parametrize("config, family, special", [(LLAMA31, "llama3", "<|eot_id|>"),
                                                      (QWEN7B, "qwen2", "<|im_end|>")])
def test_shrinking_keeps_the_class_rope_and_the_heads_grouping(config, family, special):
    from ftcore.plugins.planning.dry_run import build_config, build_model, family_of, shrink

    assert family_of(config) == family
    small = shrink(config, vocab_size=500)
    assert small["model_type"] == config["model_type"] and small["architectures"] == config["architectures"]
    assert small["num_hidden_layers"] == 2 and small["intermediate_size"] == 128 and small["vocab_size"] == 512
    ratio = config["num_attention_heads"] // config["num_key_value_heads"]
    assert small["num_attention_heads"] // small["num_key_value_heads"] == ratio
    assert small["rope_theta"] == config["rope_theta"]
    assert small.get("rope_scaling") == config.get("rope_scaling")
    assert small["tie_word_embeddings"] is False
    assert "layer_types" not in small and "bos_token_id" not in small
    model = build_model(build_config(small))
    assert type(model).__name__ == config["architectures"][0]
    import torch

    outputs = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert outputs and all(n % 32 == 0 for n in outputs), outputs  # bitsandbytes' 4-bit CPU path needs it


def test_the_vision_architecture_keeps_a_cross_attention_layer():
    from ftcore.plugins.planning.dry_run import build_config, shrink

    config = {"model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"],
              "text_config": {**{k: v for k, v in LLAMA31.items() if k not in ("architectures",)},
                              "model_type": "mllama_text_model", "num_hidden_layers": 40,
                              "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38]},
              "vision_config": {"model_type": "mllama_vision_model", "hidden_size": 1280, "image_size": 560,
                                "max_num_tiles": 4, "supported_aspect_ratios": [[1, 1]]}}
    small = shrink(config, 520)
    assert small["text_config"]["cross_attention_layers"] == [1] and small["text_config"]["num_hidden_layers"] == 2
    built = build_config(small)
    assert type(built).__name__ == "MllamaConfig" and built.vision_config.image_size == 28
    assert built.vision_config.max_num_tiles == 4


def test_the_tiny_tokenizer_carries_the_familys_special_tokens_and_template(tmp_path):
    from ftcore.plugins.planning.dry_run import tiny_model
    from ftcore.testing import load_recipe

    recipe = load_recipe({"base_model": "Qwen/Qwen2.5-Coder-7B-Instruct"})
    folder, said = tiny_model(recipe, QWEN7B, tmp_path)
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_end|>" in tokenizer.get_vocab() and "<|fim_prefix|>" in tokenizer.get_vocab()
    assert "<|im_start|>" in tokenizer.chat_template and "tiny tokenizer" in said
    config = AutoConfig.from_pretrained(folder)
    assert config.architectures == ["Qwen2ForCausalLM"] and config.eos_token_id == tokenizer.eos_token_id


# ── made-up rows ────────────────────────────────────────────────────────────


@pytest.mark.parametrize("dataset, check", [
    ({"type": "alpaca", "field_instruction": "q", "field_output": "a"}, lambda r: r["q"] and r["a"]),
    ({"type": "chat_template", "field_messages": "conv"},
     lambda r: [m["role"] for m in r["conv"]] == ["user", "assistant"]),
    ({"type": "sharegpt"}, lambda r: [m["from"] for m in r["conversations"]] == ["human", "gpt"]),
    ({"type": "completion", "field": "body"}, lambda r: isinstance(r["body"], str)),
])
def test_made_up_rows_follow_the_declared_format_and_pass_it(dataset, check, tmp_path, llama):
    from ftcore.plugins.planning.dry_run import made_up_rows
    from ftcore.testing import load_recipe

    recipe = load_recipe({"base_model": "m", "datasets": [{"path": "org/not-here", **dataset}]})
    rows = made_up_rows(recipe.datasets[0], n=4)
    assert len(rows) == 4 and all(check(r) for r in rows)
    # the format itself accepts them: every row becomes an example with trained tokens
    from ftcore.testing import run_format

    for row in rows:
        example = run_format(dataset["type"], row, llama, dataset={k: v for k, v in dataset.items() if k != "type"})
        assert any(label != -100 for label in example["labels"])


def test_made_up_conversations_carry_an_image_part_for_a_vision_model():
    from ftcore.plugins.planning.dry_run import made_up_rows
    from ftcore.testing import load_recipe

    recipe = load_recipe({"base_model": "m", "datasets": [{"path": "org/x", "type": "chat_template"}]})
    row = made_up_rows(recipe.datasets[0], n=1, images=True)[0]
    assert row["messages"][0]["content"][0] == {"type": "image", "path": "image.png"}


# ── the shipped recipes, offline (the check) ───────────────────────


@pytest.mark.e2e
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_dry_run_of_a_shipped_recipe_passes_offline(path, tmp_path):
    started = time.monotonic()
    done = ftcore("run", path, "--dry-run", cwd=tmp_path)
    took = time.monotonic() - started
    print(f"{path.stem}: dry run took {took:.1f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "dry run: passed" in out and "the result saved and loaded back" in out
    assert "the real run (" in out
    assert "tokens per step:" in out and "optimizer steps:" in out
    assert "memory per GPU:" in out
    # the real output_dir (relative to where ftcore ran) was never created
    assert not (tmp_path / "outputs").exists() and not list(tmp_path.iterdir())
    if "quickstart" not in path.stem:  # the shipped models' data is on the Hub: not here offline
        assert "the real data's rows were not checked" in out
        assert "a tiny random" in out and "tiny tokenizer" in out


@pytest.mark.e2e
def test_dry_run_never_touches_a_finished_run_in_output_dir_and_counts_local_data(tmp_path, tiny_llama):
    from ftcore.testing import alpaca_rows

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(80))
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"status": "completed"}')
    before = sorted(p.name for p in out.iterdir())
    done = ftcore("run", REPO / "recipes" / "llama31-qlora.yaml", f"base_model={tiny_llama}",
                  f"datasets=[{{path: {data}, type: alpaca}}]", f"output_dir={out}", "--dry-run", "--keep-dry-run",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == before
    assert "the real tokenizer" in done.stdout
    import re

    # 80 rows, val_set_size 0.01 holds one out; tokens counted by the real (local) tokenizer on the sample
    found = re.search(r"data: 79 training examples \(counted\), about ([\d,]+) tokens", done.stdout)
    assert found and int(found.group(1).replace(",", "")) > 79, done.stdout[-2000:]
    assert re.search(r"tokens per step: 65,536 at most", done.stdout)  # 1 x 16 x 4,096 packed
    steps = int(re.search(r"optimizer steps: about ([\d,]+)", done.stdout).group(1).replace(",", ""))
    assert steps == 1  # a few thousand tokens fill one step of 65,536
    kept = Path(done.stdout.split("dry run kept in ", 1)[1].split()[0])
    assert (kept / "run" / "adapter_model.safetensors").is_file()
    assert json.loads((kept / "run" / "run.json").read_text())["status"] == "completed"
    import shutil

    shutil.rmtree(kept)


@pytest.mark.e2e
def test_a_pipeline_that_fails_fails_the_dry_run_with_its_own_error(tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "hello"}]}] * 8)
    template = "{{ raise_exception('this template cannot render the data') }}"
    done = ftcore("run", REPO / "recipes" / "llama31-lora.yaml", f"datasets=[{{path: {data}, type: chat_template}}]",
                  "chat_template=jinja", f"chat_template_jinja=\"{template}\"", "--dry-run", cwd=tmp_path)
    assert done.returncode == 2  # a data error, as the real run reports it
    assert "the chat template refused this conversation" in done.stderr
    assert "this template cannot render the data" in done.stderr
    assert "raised in hook 'dry_run'" not in done.stderr  # the pipeline's error, not the plugin's
    assert not (tmp_path / "outputs").exists()


@pytest.mark.e2e
def test_a_bad_row_is_reported_in_the_users_file_not_the_sample(tmp_path):
    rows = [{"instruction": "hi", "output": "there"}, {"instruction": "no output here"},
            {"instruction": "a", "output": "b"}]
    data = write_jsonl(tmp_path / "mine.jsonl", rows)
    done = ftcore("run", REPO / "recipes" / "llama31-lora.yaml", f"datasets=[{{path: {data.name}, type: alpaca}}]",
                  "--dry-run", cwd=tmp_path)
    assert done.returncode == 2
    assert f"error: {data.name}: row 2: missing field 'output'" in done.stderr
    assert "sample.jsonl" not in done.stderr and "ftcore-dry-run" not in done.stderr


def test_the_cpu_settings_validate_for_a_recipe_with_early_stopping(tmp_path):
    """The dry run drops periodic evaluation: a recipe with early_stopping_patience (which needs it) must
    still validate with the dry run's overrides, so early stopping goes off too, said in a changed line."""
    import yaml

    from ftcore.plugins.planning.dry_run import cpu_settings
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import load_raw, validate

    plugins = load_plugins()
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                                    "val_set_size": 0.1, "eval_steps": 10, "early_stopping_patience": 3}))
    recipe = validate(load_raw(str(path)), plugins)
    overrides, changed = cpu_settings(recipe, has_eval=True)
    shrunk = validate(load_raw(str(path), overrides), plugins)  # raises if early stopping stayed on
    assert shrunk.get("early_stopping_patience") is None
    assert any("early_stopping_patience: off" in line for line in changed)
