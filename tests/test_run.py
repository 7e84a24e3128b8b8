"""End-to-end runs on tiny real architectures: LoRA, full SFT, chat data, shipped recipes.

Each run trains a few steps on CPU and checks what a user relies on: the loss
falls, the files load with plain transformers/peft, and reloaded models give
the same logits as the model that was trained.
"""

import hashlib
import json
from importlib.metadata import version
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import alpaca_rows, write_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[1]


def run_recipe(path, *overrides):
    """Load, validate and run a recipe in this process; return the RunResult."""
    from ftcore.hooks import registered_recipes
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import load_raw, validate
    from ftcore.run import run

    plugins = load_plugins()
    raw = load_raw(str(path), list(overrides), registered_recipes(plugins))
    plugins.add_recipe_plugins(raw.data.get("plugins"))
    return run(validate(raw, plugins), plugins)


def logits(model, input_ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def sample_ids(tokenizer):
    return torch.tensor([tokenizer("Reverse the words: red green blue")["input_ids"]])


def base_recipe(tmp_path, model, data, **keys):
    return {**dict(base_model=str(model), datasets=[{"path": str(data), "type": "alpaca"}], val_set_size=0.25,
                   sequence_len=512, micro_batch_size=4, max_steps=12, learning_rate=5e-3, lr_scheduler="constant",
                   eval_on_start=True, logging_steps=1, output_dir=str(tmp_path / "out")), **keys}


def test_lora_run_trains_and_the_adapter_reloads_with_plain_peft(tiny_llama, alpaca_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = write_recipe(tmp_path / "r.yaml", **base_recipe(tmp_path, tiny_llama, alpaca_file, adapter="lora",
                                                             lora_r=8, lora_alpha=16, lora_target_linear=True))
    result = run_recipe(recipe)
    m = result.metrics
    assert m["eval_loss_final"] < m["eval_loss_initial"]
    assert m["train_loss_last"] < m["train_loss_first"]

    out = result.output_dir
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}  # every linear layer but the head

    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, out)
    ids = sample_ids(tokenizer)
    torch.testing.assert_close(logits(reloaded, ids), logits(result.model, ids), rtol=0, atol=1e-5)
    # and the adapter really changed the model
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert (logits(plain, ids) - logits(reloaded, ids)).abs().max() > 1e-3


def test_full_fine_tuning_trains_every_weight_and_reloads_with_plain_transformers(tiny_llama, alpaca_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = write_recipe(tmp_path / "r.yaml", **base_recipe(tmp_path, tiny_llama, alpaca_file, learning_rate=1e-3))
    result = run_recipe(recipe)
    assert result.metrics["eval_loss_final"] < result.metrics["eval_loss_initial"]
    out = result.output_dir
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()

    before, after = load_file(tiny_llama / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), "every weight should have been trained"

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = sample_ids(AutoTokenizer.from_pretrained(out))
    torch.testing.assert_close(logits(reloaded, ids), logits(result.model, ids), rtol=0, atol=1e-5)


def test_chat_data_run_saves_the_template_used_in_training(tiny_qwen, chat_file, tmp_path):
    from transformers import AutoTokenizer

    from ftcore.api import CHAT_TEMPLATES

    CHATML = CHAT_TEMPLATES["chatml"]

    keys = base_recipe(tmp_path, tiny_qwen, chat_file, adapter="lora", lora_target_modules=["q_proj", "v_proj"],
                       chat_template="chatml", max_steps=4)
    keys["datasets"] = [{"path": str(chat_file), "type": "chat_template", "field_messages": "messages"}]
    result = run_recipe(write_recipe(tmp_path / "r.yaml", **keys))
    saved = AutoTokenizer.from_pretrained(result.output_dir)
    assert saved.chat_template == CHATML
    text = saved.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_run_folder_records_what_happened(tiny_llama, alpaca_file, tmp_path):
    from ftcore.plugins_manager import load_plugins
    from ftcore.recipe import load_raw, validate

    recipe = write_recipe(tmp_path / "r.yaml", **base_recipe(tmp_path, tiny_llama, alpaca_file, adapter="lora",
                                                             max_steps=4, evals_per_epoch=2))
    result = run_recipe(recipe)
    out = result.output_dir

    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["finished"]
    assert manifest["versions"]["torch"] == version("torch")
    assert manifest["versions"]["ftcore"] == version("ftcore")
    assert {"lora", "full", "alpaca", "huggingface"} <= {p["name"] for p in manifest["plugins"]}
    files = manifest["data"]["files"]
    assert files == [{"path": str(alpaca_file), "sha256": hashlib.sha256(alpaca_file.read_bytes()).hexdigest(),
                      "revision": None, "rows": 48}]
    assert manifest["data"]["train_examples"] == 36 and manifest["data"]["eval_examples"] == 12
    assert manifest["metrics"]["eval_loss_final"] == pytest.approx(result.metrics["eval_loss_final"])
    assert manifest["hardware"]["cpu_count"] >= 1

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == [1, 2, 3, 4]
    evals = [r for r in records if "eval_loss" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 4 and "eval_perplexity" in evals[-1]
    assert [r["step"] for r in evals].count(4) == 1  # the final evaluation is not run twice

    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # recipe.yaml is the resolved recipe and runs as is
    plugins = load_plugins()
    again = validate(load_raw(str(out / "recipe.yaml")), plugins)
    original = validate(load_raw(str(recipe)), plugins)
    assert again.to_yaml_dict() == original.to_yaml_dict()


def test_eval_loss_is_token_weighted_and_independent_of_batch_size(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftcore.data.collate import PaddingCollator
    from ftcore.evaluation import EvalContext
    from ftcore.plugins.loss import evaluate_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    examples = []
    for i, row in enumerate(alpaca_rows(9)):  # lengths differ, and so do trained spans
        ids = tokenizer(row["instruction"] + " " + row["input"] * (1 + i % 3) + " " + row["output"])["input_ids"]
        labels = [-100] * (len(ids) // 2) + ids[len(ids) // 2:]
        examples.append({"input_ids": ids, "labels": labels})
    collator = PaddingCollator(tokenizer.eos_token_id)
    losses = [evaluate_loss(EvalContext(model, tokenizer, None, examples, collator, bs))["loss"] for bs in (1, 4, 9)]
    # the definition: every trained token's cross-entropy, averaged over all of them
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            out = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            target = torch.tensor(e["labels"][1:])
            keep = target != -100
            total += torch.nn.functional.cross_entropy(out[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    for loss in losses:
        assert loss == pytest.approx(total / count, rel=1e-5)


@pytest.mark.slow
def test_quickstart_improves_the_evaluation_loss(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ftcore", "run", "quickstart", f"output_dir={tmp_path / 'q'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval loss:" in done.stdout
    metrics = json.loads((tmp_path / "q" / "run.json").read_text())["metrics"]
    assert metrics["eval_loss_final"] < 0.6 * metrics["eval_loss_initial"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["llama31-lora", "llama31-full"])
def test_shipped_llama_recipes_run_on_a_tiny_model(recipe, tiny_llama, tmp_path):
    """The issue's check: the real recipe with base model and data swapped for tiny local ones."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "data.jsonl", alpaca_rows(40))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ftcore", "run", str(REPO / "recipes" / f"{recipe}.yaml"), f"base_model={tiny_llama}",
         f"datasets=[{{path: {data}, type: alpaca}}]", "max_steps=3", f"output_dir={out}", "optimizer=adamw_torch",
         "attn_implementation=sdpa", "micro_batch_size=2", "gradient_accumulation_steps=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if recipe == "llama31-lora":
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out)
        assert model.peft_config["default"].r == 16
    else:
        AutoModelForCausalLM.from_pretrained(out)
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
