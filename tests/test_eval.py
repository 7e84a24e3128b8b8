"""Loading a trained run (``ftcore.api.load_trained``) and ``ftcore eval RUN [--baseline]``.

One tiny LoRA run is shared by the module; the numerical claims are tested as
numbers: the loaded model's logits equal the in-memory trained model's, and
``eval.json``'s losses equal a token-weighted cross-entropy recomputed with
plain transformers and peft on the same validation examples.
"""

import json

import pytest
import torch

from ftcore.errors import FtcoreError
from ftcore.testing import alpaca_rows, fresh_plugins, run_recipe, write_jsonl

ATOL = 1e-5


def recipe_keys(model, data, out, **keys):
    return {**dict(base_model=str(model), datasets=[{"path": str(data), "type": "alpaca"}], val_set_size=0.25,
                   sequence_len=256, micro_batch_size=4, max_steps=8, learning_rate=5e-3, lr_scheduler="constant",
                   eval_on_start=False, logging_steps=1, chat_template="llama3", output_dir=str(out), seed=3),
            **keys}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("eval-data") / "alpaca.jsonl", alpaca_rows(24))


@pytest.fixture(scope="module")
def lora_run(ftcore_tiny_llama, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-lora") / "out"
    return run_recipe(recipe_keys(ftcore_tiny_llama, data_file, out, adapter="lora", lora_r=8, lora_alpha=16,
                                  lora_target_linear=True), output_dir=out)


def sample_ids(tokenizer):
    return torch.tensor([tokenizer("Reverse the words: red green blue")["input_ids"]])


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def load(run_dir, **kwargs):
    from ftcore.api import load_trained

    return load_trained(run_dir, fresh_plugins(), **kwargs)


# ── load_trained ──────────────────────────────────────────────────────────────


def test_a_loaded_lora_run_gives_the_trained_models_logits(lora_run, ftcore_tiny_llama):
    from transformers import AutoModelForCausalLM

    trained = load(lora_run.output_dir)
    assert trained.label == "fine-tuned" and not trained.model.training
    assert type(trained.model).__name__.startswith("PeftModel")
    assert trained.tokenizer.chat_template == lora_run.tokenizer.chat_template
    assert "<|start_header_id|>" in trained.tokenizer.chat_template
    ids = sample_ids(trained.tokenizer)
    expected = logits(lora_run.model, ids)
    torch.testing.assert_close(logits(trained.model, ids), expected, rtol=0, atol=ATOL)

    base = load(lora_run.output_dir, base=True)
    assert base.label == "base" and not hasattr(base.model, "peft_config")
    assert base.tokenizer.chat_template == trained.tokenizer.chat_template
    plain = AutoModelForCausalLM.from_pretrained(ftcore_tiny_llama, dtype=torch.float32)
    torch.testing.assert_close(logits(base.model, ids), logits(plain, ids), rtol=0, atol=ATOL)
    assert (logits(base.model, ids) - expected).abs().max() > 1e-3  # the adapter changed something


def test_a_loaded_full_run_gives_the_trained_models_logits(ftcore_tiny_llama, data_file, tmp_path):
    out = tmp_path / "out"
    run = run_recipe(recipe_keys(ftcore_tiny_llama, data_file, out, max_steps=2, val_set_size=0,
                                 tokens=[f"<t{i}>" for i in range(40)]), output_dir=out)  # beyond 384 rows
    rows = run.model.get_input_embeddings().num_embeddings
    trained = load(out)
    assert not hasattr(trained.model, "peft_config") and not trained.model.training
    assert len(trained.tokenizer) == rows > 384  # the tokens the run added
    assert trained.model.config.use_cache  # training saved it off; generation wants it on
    ids = sample_ids(trained.tokenizer)
    torch.testing.assert_close(logits(trained.model, ids), logits(run.model, ids), rtol=0, atol=ATOL)
    base = load(out, base=True)
    assert base.model.get_input_embeddings().num_embeddings == rows  # resized for the added tokens
    assert (logits(base.model, ids) - logits(run.model, ids)).abs().max() > 1e-3


def test_a_qlora_run_loads_its_base_in_4_bits_unless_told_otherwise(ftcore_tiny_llama, data_file, tmp_path):
    out = tmp_path / "out"
    run_recipe(recipe_keys(ftcore_tiny_llama, data_file, out, max_steps=1, val_set_size=0, adapter="qlora",
                           load_in_4bit=True, lora_r=4, lora_target_linear=True), output_dir=out)

    def layers(model):
        return {type(m.base_layer).__name__ for name, m in model.named_modules() if name.endswith("q_proj")
                and hasattr(m, "base_layer")}

    assert layers(load(out).model) == {"Linear4bit"}
    assert layers(load(out, quantize=False).model) == {"Linear"}


def test_loading_what_is_not_a_finished_run_says_why(lora_run, tmp_path):
    import shutil

    with pytest.raises(FtcoreError, match="no such folder"):
        load(tmp_path / "nowhere")
    with pytest.raises(FtcoreError, match=r"not an ftcore run folder \(it has no recipe.yaml\)"):
        load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(lora_run.output_dir, copy)
    manifest = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    from ftcore.trained import run_state  # not completed: a warning now, eval/generate/chat go on (test_after_run_safety)

    assert "run.json says the run was interrupted" in run_state(copy).problem
    (copy / "run.json").write_text(json.dumps(manifest))
    (copy / "adapter_model.safetensors").unlink()
    with pytest.raises(FtcoreError, match=r"has no trained adapter \(adapter_config.json"):
        load(copy)


# ── ftcore eval ───────────────────────────────────────────────────────────────


def cli(*args):
    from ftcore.cli import main

    return main([str(a) for a in args])


def token_weighted_loss(model, examples):
    """Mean cross-entropy over trained tokens (plugins/loss.py's definition), one example at a time."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in examples:
            ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            trained = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[trained], labels[trained], reduction="sum"))
            count += int(trained.sum())
    return total / count, count


@pytest.fixture(scope="module")
def evaluated(lora_run):
    """``ftcore eval RUN --baseline`` once, in process: (exit code, stdout, eval.json)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli("eval", lora_run.output_dir, "--baseline")
    return code, out.getvalue(), json.loads((lora_run.output_dir / "eval.json").read_text())


def test_eval_baseline_prints_base_fine_tuned_and_difference(evaluated, lora_run):
    code, stdout, result = evaluated
    assert code == 0
    fine, base = (result["models"][m]["metrics"] for m in ("fine_tuned", "base"))
    header = next(line for line in stdout.splitlines() if "fine-tuned" in line)
    assert header.split() == ["metric", "base", "fine-tuned", "difference"]
    row = next(line for line in stdout.splitlines() if line.split()[:1] == ["loss"]).split()
    assert [float(v) for v in row[1:]] == pytest.approx(
        [base["eval_loss"], fine["eval_loss"], fine["eval_loss"] - base["eval_loss"]], abs=1e-4)
    assert f"wrote {lora_run.output_dir / 'eval.json'}" in stdout
    assert not list(lora_run.output_dir.glob(".eval.json*"))  # the temporary file is gone


def test_eval_json_numbers_match_plain_transformers_and_peft(evaluated, lora_run, ftcore_tiny_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, _, result = evaluated
    run = lora_run.output_dir
    dump = tmp_path / "dump.jsonl"  # the run's examples, as `ftcore preprocess` prepares them
    assert cli("preprocess", run / "recipe.yaml", "--dump", dump) == 0
    examples = [r for r in map(json.loads, dump.read_text().splitlines()) if r["split"] == "eval"]
    assert result["split"] == "validation" and result["examples"] == len(examples) == 6
    assert result["evaluators"] == ["loss"]

    base = AutoModelForCausalLM.from_pretrained(ftcore_tiny_llama, dtype=torch.float32)
    base_loss, tokens = token_weighted_loss(base, examples)
    fine_loss, _ = token_weighted_loss(PeftModel.from_pretrained(base, str(run)), examples)
    fine, plain = (result["models"][m]["metrics"] for m in ("fine_tuned", "base"))
    assert fine["eval_loss"] == pytest.approx(fine_loss, abs=1e-4)
    assert plain["eval_loss"] == pytest.approx(base_loss, abs=1e-4)
    assert fine["eval_tokens"] == plain["eval_tokens"] == tokens
    assert result["difference"]["eval_loss"] == pytest.approx(fine_loss - base_loss, abs=1e-4)
    assert fine["eval_loss"] < plain["eval_loss"] - 0.1  # fine-tuning helped on its own task
    # the same split the run evaluated at its end
    assert fine["eval_loss"] == pytest.approx(lora_run.metrics["eval_loss_final"], abs=1e-4)
    assert "fine_tuned" in result["models"] and result["models"]["base"]["model"] == str(ftcore_tiny_llama)


def test_eval_of_a_recipe_with_overrides_evaluates_its_run(lora_run, tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load((lora_run.output_dir / "recipe.yaml").read_text()),
                                      "output_dir": str(lora_run.output_dir)}))
    assert cli("eval", recipe, "evaluators=[loss]", "--debug", "eval_batch_size=2") == 0
    stdout = capsys.readouterr().out
    result = json.loads((lora_run.output_dir / "eval.json").read_text())
    assert set(result["models"]) == {"fine_tuned"} and "difference" not in result
    assert next(line for line in stdout.splitlines() if "fine-tuned" in line).split() == ["metric", "fine-tuned"]
    assert result["models"]["fine_tuned"]["metrics"]["eval_loss"] == pytest.approx(
        lora_run.metrics["eval_loss_final"], abs=1e-4)  # batch size does not change a token-weighted loss


def test_eval_errors_are_clear(lora_run, tmp_path, capsys):
    import yaml

    assert cli("eval", tmp_path) == 2
    assert "not an ftcore run folder" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load((lora_run.output_dir / "recipe.yaml").read_text()),
                                      "output_dir": str(tmp_path / "never")}))
    assert cli("eval", recipe) == 2
    err = capsys.readouterr().err
    assert "has no run to evaluate" in err and "ftcore run" in err and "Traceback" not in err
    assert cli("eval", lora_run.output_dir, "evaluators=[no_such]") == 2
    assert "evaluators" in capsys.readouterr().err
    assert cli("eval", lora_run.output_dir, "val_set_size=0") == 2
    assert "no validation examples" in capsys.readouterr().err
