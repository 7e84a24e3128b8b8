"""``ftcore merge``: a run's LoRA adapter folded into its base, saved as a plain transformers model.

The numerical claim is tested as a number: on CPU in fp32, the merged model's
logits equal the base-plus-adapter (PeftModel) logits within 1e-5 absolute.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import write_recipe
from test_run import base_recipe, logits, run_recipe, sample_ids

ATOL = 1e-5  # fp32 on CPU: merging reorders one matmul-add; the difference is rounding


def ftcore(*args):
    return subprocess.run([sys.executable, "-m", "ftcore", "merge", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def lora_run(tiny_llama, tmp_path_factory):
    """A real LoRA run folder (a few steps on the tiny Llama, so the adapter is not zero)."""
    from conftest import alpaca_rows, write_jsonl

    tmp = tmp_path_factory.mktemp("merge-run")
    data = write_jsonl(tmp / "alpaca.jsonl", alpaca_rows(16))
    keys = base_recipe(tmp, tiny_llama, data, adapter="lora", lora_r=8, lora_alpha=16, lora_target_linear=True,
                       max_steps=3, val_set_size=0, eval_on_start=False, chat_template="llama3")
    return run_recipe(write_recipe(tmp / "r.yaml", **keys)).output_dir


def peft_logits(base, adapter, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    return logits(model, ids)


def assert_plain_model(folder):
    names = {p.name for p in folder.iterdir()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not [p for p in folder.parent.iterdir() if ".merging-" in p.name]  # no temp folder left behind


def test_merge_run_folder_matches_base_plus_adapter(lora_run, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = ftcore(lora_run)
    assert result.returncode == 0, result.stderr
    out = lora_run / "merged"
    assert "merge: base" in result.stdout and f"merged: {out}" in result.stdout
    assert_plain_model(out)

    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    assert merged.dtype == torch.float32  # fp32 on CPU
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    run_tokenizer = AutoTokenizer.from_pretrained(lora_run)
    assert tokenizer.chat_template == run_tokenizer.chat_template and "<|start_header_id|>" in tokenizer.chat_template
    assert (out / "chat_template.jinja").is_file()

    ids = sample_ids(tokenizer)
    expected = peft_logits(tiny_llama, lora_run, ids)
    torch.testing.assert_close(logits(merged, ids), expected, rtol=0, atol=ATOL)
    # the adapter really changed the model, so the comparison means something
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert (logits(plain, ids) - expected).abs().max() > 1e-3

    # a second merge into the same folder needs --overwrite
    again = ftcore(lora_run)
    assert again.returncode == 2 and "not empty" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def test_merge_base_and_adapter_from_elsewhere(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))  # random B: a non-zero update
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    assert not (adapter / "tokenizer_config.json").exists()

    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("replaced")  # a non-empty --out is replaced with --overwrite
    result = ftcore("--base", tiny_llama, "--adapter", adapter, "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert_plain_model(out)
    assert not (out / "old.txt").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)  # from the base, since the adapter has none
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_llama).chat_template

    ids = sample_ids(tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(merged, ids), peft_logits(tiny_llama, adapter, ids), rtol=0, atol=ATOL)


def error(*args):
    result = ftcore(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "\nerror: " in "\n" + result.stderr  # libraries may warn first
    return result.stderr


def test_merge_refuses_what_it_cannot_do(lora_run, tiny_llama, tmp_path):
    # a folder with an adapter but no recipe.yaml is not a run folder
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(lora_run / name, bare / name)
    message = error(bare)
    assert "no recipe.yaml" in message and "--adapter" in message

    # a full fine-tuning run: nothing to merge
    full = tmp_path / "full"
    full.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / name, full / name)
    write_recipe(full / "recipe.yaml", base_model=str(tiny_llama), output_dir=str(full))
    message = error(full)
    assert "nothing to merge" in message and "full fine-tuning" in message
    assert not (full / "merged").exists()

    # never in place: --out is the run folder itself
    message = error(lora_run, "--out", lora_run)
    assert "never merges in place" in message and "4-bit" in message
    message = error(lora_run, "--out", lora_run.parent, "--overwrite")  # would delete the run
    assert "in place" in message

    # never into a quantized base: the original 16-bit model is needed
    quantized = tmp_path / "quantized-base"
    shutil.copytree(tiny_llama, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                     "bnb_4bit_quant_type": "nf4"}
    (quantized / "config.json").write_text(json.dumps(config))
    message = error("--base", quantized, "--adapter", lora_run, "--out", tmp_path / "q-merged")
    assert "quantized checkpoint (bitsandbytes)" in message and "16-bit" in message
    assert not (tmp_path / "q-merged").exists()

    # a non-empty --out
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    message = error(lora_run, "--out", taken)
    assert "not empty" in message and "--overwrite" in message
    assert (taken / "keep.txt").read_text() == "mine"

    # wrong usage
    assert "either RUN_DIR" in error(lora_run, "--adapter", lora_run, "--out", tmp_path / "x")
    assert "--out DIR is required" in error("--adapter", lora_run)
    assert "nothing to merge" in error()
    assert not [p for p in tmp_path.iterdir() if ".merging-" in p.name]


def test_merge_help_does_not_import_torch():
    code = ("import sys; from ftcore.cli import main\n"
            "try: main(['merge', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--adapter" in result.stdout and "--overwrite" in result.stdout
