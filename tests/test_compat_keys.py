"""Axolotl's cheap compatibility keys: each one has an effect, checked here without a whole training run."""

import json
from types import SimpleNamespace

import pytest

from ftcore import hooks
from ftcore.data.prepare import Tokenized, split
from ftcore.errors import DataError, RecipeError
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
from ftcore.stash import Stash
from ftcore.train import training_arguments

PLUGINS = load_plugins()


def recipe(**keys):
    return validate(RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                               **keys}, None), PLUGINS)


def problems(**keys):
    with pytest.raises(RecipeError) as info:
        recipe(**keys)
    return dict(info.value.problems)


def args(r, has_eval=True):
    return training_arguments(r, "out", 100, has_eval, "fp32", hooks.trainer_arguments(PLUGINS, r, Stash()))


# ── loss_watchdog_threshold / loss_watchdog_patience ─────────────────────────

def fake_trainer_step(callback, losses):
    """Feed ``losses`` as successive training logs; return the step at which training was told to stop."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    arguments = TrainingArguments(output_dir="unused", report_to=[])
    state, control = TrainerState(), TrainerControl()
    for step, loss in enumerate(losses, start=1):
        state.global_step = step
        callback.on_log(arguments, state, control, logs={"loss": loss, "learning_rate": 1e-4})
        if control.should_training_stop:
            return step
    return None


def test_loss_watchdog_stops_after_patience_consecutive_logs_above_the_threshold(caplog):
    from ftcore.plugins.compat_keys import STOPPED_EARLY, loss_watchdog

    stash = Stash()
    # above, above, back below (the count restarts), then three above in a row: stop at the 6th log
    assert fake_trainer_step(loss_watchdog(5.0, 3, stash), [6.0, 7.0, 4.0, 6.0, 8.0, 9.0, 9.0]) == 6
    assert stash[STOPPED_EARLY]["by"] == "loss_watchdog" and stash[STOPPED_EARLY]["step"] == 6
    assert stash[STOPPED_EARLY]["loss"] == 9.0
    assert "loss_watchdog_threshold 5" in stash[STOPPED_EARLY]["message"]
    assert fake_trainer_step(loss_watchdog(5.0, 3), [6.0, 6.0, 5.0, 6.0, 6.0]) is None  # 5.0 is not above
    assert fake_trainer_step(loss_watchdog(5.0, 1), [4.0, 5.5]) == 2
    assert fake_trainer_step(loss_watchdog(5.0, 2), [float("nan"), 6.0, 6.0]) == 3  # NaN: the core guard's


def test_loss_watchdog_keys_register_the_callback_with_axolotls_default_patience():
    from ftcore.plugins.compat_keys import loss_watchdog

    registered = hooks.trainer_callbacks(PLUGINS, recipe(loss_watchdog_threshold=5.0), Stash())
    watchdogs = [c for c in registered if type(c).__name__ == "LossWatchdog"]
    assert len(watchdogs) == 1
    assert fake_trainer_step(watchdogs[0], [6.0, 6.0, 6.0]) == 3  # default patience 3
    assert not [c for c in hooks.trainer_callbacks(PLUGINS, recipe(), Stash())
                if type(c).__name__ == "LossWatchdog"]
    assert not [c for c in hooks.trainer_callbacks(PLUGINS, recipe(loss_watchdog_patience=2), Stash())
                if type(c).__name__ == "LossWatchdog"]  # Axolotl's patience alone watches nothing either
    assert "loss_watchdog_threshold" in problems(loss_watchdog_threshold=-1)
    assert loss_watchdog  # the factory is public for plugins that want the same stop


def test_a_stopped_run_records_why_in_the_run_folder(tmp_path):
    from ftcore.plugins.compat_keys import STOPPED_EARLY, save_artifacts

    stash = Stash()
    assert save_artifacts(tmp_path, stash) is None and not (tmp_path / "stopped_early.json").exists()
    stash[STOPPED_EARLY] = {"by": "loss_watchdog", "step": 6}
    assert save_artifacts(tmp_path, stash) == ["stopped_early.json"]
    assert json.loads((tmp_path / "stopped_early.json").read_text())["step"] == 6


# ── early_stopping_patience ──────────────────────────────────────────────────

def test_early_stopping_needs_periodic_evaluation():
    message = problems(early_stopping_patience=2)["early_stopping_patience"]
    assert "val_set_size" in message and "eval_steps" in message
    message = problems(early_stopping_patience=2, val_set_size=0.1)["early_stopping_patience"]
    assert "eval_steps or evals_per_epoch" in message
    assert "loss" in problems(early_stopping_patience=2, val_set_size=0.1, eval_steps=5,
                              evaluators=[])["early_stopping_patience"]
    r = recipe(early_stopping_patience=2, val_set_size=0.1, eval_steps=5)
    a = args(r)
    assert (a["metric_for_best_model"], a["greater_is_better"], a["eval_strategy"]) == ("eval_loss", False, "steps")
    assert "metric_for_best_model" not in args(recipe())


def test_early_stopping_stops_after_patience_evaluations_without_improvement():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ftcore.plugins.compat_keys import STOPPED_EARLY

    r = recipe(early_stopping_patience=2, val_set_size=0.1, eval_steps=5)
    stash = Stash()
    [callback] = [c for c in hooks.trainer_callbacks(PLUGINS, r, stash) if type(c).__name__ == "EarlyStopping"]
    arguments = TrainingArguments(output_dir="unused", report_to=[], **{k: v for k, v in args(r).items() if k in (
        "metric_for_best_model", "greater_is_better")})
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(arguments, state, control)
    stopped = None
    for step, loss in zip((5, 10, 15, 20, 25), (2.0, 1.5, 1.6, 1.5, 1.7)):
        state.global_step = step
        callback.on_evaluate(arguments, state, control, metrics={"eval_loss": loss})  # inside Trainer.evaluate
        if state.best_metric is None or loss < state.best_metric:  # then Trainer._determine_best_metric
            state.best_metric = loss
        if control.should_training_stop:
            stopped = step
            break
    assert stopped == 20  # 1.6 and 1.5 did not beat 1.5
    assert stash[STOPPED_EARLY]["by"] == "early_stopping" and stash[STOPPED_EARLY]["best_eval_loss"] == 1.5


# ── neftune_noise_alpha, shuffle_*, skip_prepare_dataset ─────────────────────

def test_neftune_noise_alpha_reaches_training_arguments():
    assert args(recipe(neftune_noise_alpha=5))["neftune_noise_alpha"] == 5.0
    assert "neftune_noise_alpha" not in args(recipe())
    assert "neftune_noise_alpha" in problems(neftune_noise_alpha=0)


def test_shuffle_merged_datasets_false_trains_in_dataset_order():
    import torch
    from transformers import Trainer, TrainingArguments

    assert args(recipe())["train_sampling_strategy"] == "random"
    a = args(recipe(shuffle_merged_datasets=False))
    assert a["train_sampling_strategy"] == "sequential"
    trainer = Trainer(model=torch.nn.Linear(2, 2), args=TrainingArguments(output_dir="unused", report_to=[],
                                                                           train_sampling_strategy="sequential"),
                      train_dataset=[{"x": i} for i in range(10)])
    assert list(trainer._get_train_sampler()) == list(range(10))
    assert "shuffle_merged_datasets" in problems(shuffle_merged_datasets=False, group_by_length=True)
    assert "shuffle_before_merging_datasets" in problems(shuffle_merged_datasets=False,
                                                         shuffle_before_merging_datasets=True)
    recipe(shuffle_before_merging_datasets=True)  # with the trainer's shuffle: accepted


def test_skip_prepare_dataset_is_accepted_and_says_what_it_means(caplog):
    import logging

    r = recipe(skip_prepare_dataset=True)
    with caplog.at_level(logging.INFO):
        hooks.run_started(PLUGINS, r, Stash())
    assert "always prepares the data" in caplog.text


# ── dataset_exact_deduplication ──────────────────────────────────────────────

def example(i):
    return {"input_ids": [1, i, 2], "labels": [-100, i, 2]}


def test_exact_deduplication_drops_duplicates_and_counts_them():
    train = [example(1), example(2), example(1), example(3), example(2), example(1)]
    tokenized = Tokenized(train, [], [("d.jsonl", n) for n in range(1, 7)], [], {"train": {}})
    data = split(tokenized, recipe(dataset_exact_deduplication=True))
    assert [e["input_ids"][1] for e in data.train] == [1, 2, 3]
    assert data.origins == [("d.jsonl", 1), ("d.jsonl", 2), ("d.jsonl", 4)]
    assert data.stats["duplicates_dropped"] == {"train": 3} and data.stats["train_examples"] == 3
    assert len(split(tokenized, recipe()).train) == 6  # off by default

    # an evaluation example equal to a training one goes too (it would measure memorisation)
    with_test = Tokenized([example(1), example(2)], [example(2), example(5), example(5)],
                          [("t", 1), ("t", 2), ("e", 1), ("e", 2), ("e", 3)], [], {"train": {}, "test": {}})
    data = split(with_test, recipe(dataset_exact_deduplication=True, test_datasets=[{"path": "e.jsonl",
                                                                                     "type": "alpaca"}]))
    assert [e["input_ids"][1] for e in data.eval] == [5] and len(data.train) == 2
    assert data.stats["duplicates_dropped"] == {"train": 0, "test": 2}


def test_exact_deduplication_counts_examples_with_different_labels_as_different():
    a, b = example(1), {"input_ids": [1, 1, 2], "labels": [-100, -100, 2]}  # same tokens, other mask
    data = split(Tokenized([a, b, a], [], [("d", 1), ("d", 2), ("d", 3)], [], {"train": {}}),
                 recipe(dataset_exact_deduplication=True))
    assert len(data.train) == 2


# ── chat_template_jinja ──────────────────────────────────────────────────────

def test_chat_template_jinja_is_used_as_the_template():
    from ftcore.data.prepare import set_chat_template

    jinja = "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
    r = recipe(chat_template="jinja", chat_template_jinja=jinja)
    tokenizer = SimpleNamespace(chat_template=None, get_vocab=lambda: {})
    assert set_chat_template(r, tokenizer, hooks.chat_templates(PLUGINS)) == jinja
    assert tokenizer.chat_template == jinja
    assert "chat_template_jinja" in problems(chat_template="jinja")


# ── model_config / overrides_of_model_config ─────────────────────────────────

def test_model_config_overrides_reach_the_built_model(tiny_llama):
    from ftcore.plugins.huggingface import load_model

    r = recipe(base_model=str(tiny_llama), overrides_of_model_config={"attention_dropout": 0.25, "rms_norm_eps": 0.001})
    model = load_model(r, None)
    assert model.config.attention_dropout == 0.25 and model.config.rms_norm_eps == 0.001
    # built with it, not patched afterwards: the layers read the config when they were made
    assert model.model.layers[0].self_attn.attention_dropout == 0.25
    assert model.model.norm.variance_epsilon == 0.001
    plain = load_model(recipe(base_model=str(tiny_llama)), None)
    assert plain.model.layers[0].self_attn.attention_dropout != 0.25
    # the weights are still base_model's
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def test_overrides_of_model_config_must_be_a_mapping():
    assert "overrides_of_model_config" in problems(overrides_of_model_config=[1, 2])


# ── unfrozen_parameters beside an adapter ────────────────────────────────────

def test_unfrozen_parameters_train_beside_lora_and_a_reload_reproduces_the_model(tiny_llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from ftcore.plugins import full, lora

    lora_recipe = recipe(adapter="lora", lora_r=4)
    # the full plugin reads only these two keys; the validated recipe with both is checked in test_training.py
    unfrozen = SimpleNamespace(adapter="lora", unfrozen_parameters=[r"model\.norm\.weight",
                                                                    r"model\.layers\.0\.self_attn\.q_proj\.weight"])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = lora.inject_adapter(lora_recipe, base, Stash())
    stash = Stash()
    torch.manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 200, (4, 12))]
    trainer = Trainer(model=model, train_dataset=rows, callbacks=[full.unfrozen_callback(unfrozen, stash)],
                      args=TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=2, learning_rate=5e-2,
                                             per_device_train_batch_size=2, report_to=[], save_strategy="no",
                                             use_cpu=True, disable_tqdm=True, remove_unused_columns=False))
    assert sorted(stash[full.UNFROZEN]) == ["model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    trainer.train()
    after = full.base_parameters(model)
    for name in stash[full.UNFROZEN]:  # trained, as the adapter is
        assert (after[name] - before[name]).abs().max() > 1e-4, name
    assert torch.equal(after["model.layers.1.self_attn.q_proj.weight"], before["model.layers.1.self_attn.q_proj.weight"])

    out = tmp_path / "run"
    out.mkdir()
    model.save_pretrained(out)  # what the core saves under an adapter: the adapter only
    assert full.save_artifacts(unfrozen, model, out, stash) == ["unfrozen_parameters.safetensors"]

    probe = torch.randint(3, 200, (1, 10))
    model.eval()
    with torch.no_grad():
        expected = model(probe).logits
        fresh = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        assert full.load_trained_weights(unfrozen, fresh, out) is None  # then the adapter's plugin answers
        reloaded = lora.load_trained_weights(lora_recipe, fresh, out).eval()
        assert torch.allclose(reloaded(probe).logits, expected, atol=1e-5)
        # and through the hook, as ftcore eval / generate / chat load a run: full is asked before lora
        fresh = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
        via_hook = hooks.load_trained_weights(PLUGINS, unfrozen, fresh, out).eval()
        assert torch.allclose(via_hook(probe).logits, expected, atol=1e-5)
        without = lora.load_trained_weights(lora_recipe, AutoModelForCausalLM.from_pretrained(
            tiny_llama, dtype=torch.float32), out).eval()
        assert not torch.allclose(without(probe).logits, expected, atol=1e-3)  # the adapter alone is not the model


def test_unfrozen_parameters_beside_an_adapter_refuse_quantized_weights():
    import torch

    from ftcore.errors import FtcoreError
    from ftcore.plugins import full

    class Quantized(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)

    with pytest.raises(FtcoreError, match="quantized"):
        full.unfreeze_beside_adapter(SimpleNamespace(adapter="qlora", unfrozen_parameters=["weight"]), Quantized(),
                                     Stash())


# ── hub_model_id / hub_strategy / push_dataset_to_hub ────────────────────────

class FakeHub:
    """Stands in for huggingface_hub.HfApi: records what would be sent."""

    calls: list = []
    fail_upload = False

    def whoami(self):
        FakeHub.calls.append(("whoami",))
        return {"name": "me"}

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        if FakeHub.fail_upload:
            raise RuntimeError("403 Forbidden: you have no write access")
        FakeHub.calls.append(("upload_folder", kwargs))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    FakeHub.calls, FakeHub.fail_upload = [], False
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_xxx")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the suite runs offline: the Hub is pretended online
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("RANK", raising=False)
    return FakeHub


def test_a_completed_run_is_pushed_without_its_checkpoints(hub, tmp_path):
    import fnmatch

    out = tmp_path / "run"
    r = recipe(hub_model_id="me/my-model", hub_strategy="end", hub_private_repo=True, output_dir=str(out))
    hooks.run_started(PLUGINS, r, Stash())  # checks the login before anything loads
    assert hub.calls == [("whoami",)]
    for status in ("failed", "interrupted"):
        PLUGINS.call_all("run_finished", recipe=r, stash=Stash(), status=status, error=None)
    assert hub.calls == [("whoami",)]  # only a completed run is pushed
    PLUGINS.call_all("run_finished", recipe=r, stash=Stash(), status="completed", error=None)
    (_, repo, created), (_, upload) = hub.calls[1:]
    assert repo == "me/my-model" and created["private"] is True and created["exist_ok"] is True
    assert upload["repo_id"] == "me/my-model" and upload["folder_path"] == str(out)
    ignored = upload["ignore_patterns"]
    for path in ("checkpoint-10/adapter_model.safetensors", ".lock", ".partial-final/x"):
        assert any(fnmatch.fnmatch(path, p) for p in ignored), path
    for path in ("adapter_model.safetensors", "run.json", "README.md", "tokenizer.json"):
        assert not any(fnmatch.fnmatch(path, p) for p in ignored), path
    assert upload["revision"] is None

    hub.calls = []
    r = recipe(hub_model_id="me/my-model", hub_revision="v2", output_dir=str(out))
    PLUGINS.call_all("run_finished", recipe=r, stash=Stash(), status="completed", error=None)
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert hub.calls[1][2]["branch"] == "v2" and hub.calls[2][1]["revision"] == "v2"


def test_pushing_offline_or_logged_out_is_one_clear_error_before_training(hub, monkeypatch):
    import huggingface_hub

    from ftcore.errors import FtcoreError

    r = recipe(hub_model_id="me/my-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtcoreError, match="HF_HUB_OFFLINE"):
        hooks.run_started(PLUGINS, r, Stash())
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(FtcoreError, match="hf auth login"):
        hooks.run_started(PLUGINS, r, Stash())
    assert hub.calls == []
    hooks.run_started(PLUGINS, recipe(), Stash())  # no hub_model_id: nothing checked


def test_a_failed_push_says_the_run_is_saved_and_how_to_push_it(hub, tmp_path):
    from ftcore.errors import FtcoreError

    hub.fail_upload = True
    r = recipe(hub_model_id="me/my-model", output_dir=str(tmp_path / "run"))
    with pytest.raises(FtcoreError) as info:
        PLUGINS.call_all("run_finished", recipe=r, stash=Stash(), status="completed", error=None)
    message = str(info.value)
    assert "completed and is saved in" in message and "403 Forbidden" in message
    assert f"hf upload me/my-model {tmp_path / 'run'}" in message


def test_hub_keys_that_cannot_be_honoured_are_refused_with_the_reason():
    assert "every save" in problems(hub_model_id="me/m", hub_strategy="every_save")["hub_strategy"]
    recipe(hub_strategy="every_save")  # without hub_model_id it pushes nothing: accepted
    assert "not supported" in problems(push_dataset_to_hub="me/data")["push_dataset_to_hub"]
    assert "hub_strategy" in problems(hub_model_id="me/m", hub_strategy="sometimes")


# ── a whole run ──────────────────────────────────────────────────────────────

@pytest.mark.slow
def test_a_run_the_watchdog_stops_completes_with_its_model_saved(tiny_llama, alpaca_file, tmp_path):
    from conftest import write_recipe
    from test_run import base_recipe, logits, run_recipe
    from transformers import AutoModelForCausalLM

    from ftcore.api import load_trained

    # every loss is above 0.001: the second log (step 2) stops the run; NEFTune noise is on throughout, and
    # the final norm trains beside the LoRA adapter
    path = write_recipe(tmp_path / "r.yaml", **base_recipe(tmp_path, tiny_llama, alpaca_file, adapter="lora",
                                                           loss_watchdog_threshold=0.001, loss_watchdog_patience=2,
                                                           neftune_noise_alpha=5,
                                                           unfrozen_parameters=[r"model\.norm\.weight"]))
    result = run_recipe(path)
    out = result.output_dir
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["status"] == "completed" and "stopped_early.json" in run_json["files"]
    record = json.loads((out / "stopped_early.json").read_text())
    assert record["by"] == "loss_watchdog" and record["step"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2  # of max_steps 12
    assert (out / "adapter_model.safetensors").is_file()  # the work done is saved
    assert "eval_loss_final" in result.metrics  # and evaluated at the step it stopped

    # the unfrozen norm trained, was saved beside the adapter, and a reload (ftcore eval/generate/chat) has it
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(out / "unfrozen_parameters.safetensors"))
    base_norm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).model.norm.weight
    assert list(saved) == ["model.norm.weight"] and (saved["model.norm.weight"] - base_norm).abs().max() > 1e-4
    trained = load_trained(out, load_plugins())
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    torch.testing.assert_close(logits(trained.model, ids), logits(result.model, ids), rtol=0, atol=1e-5)
    # ftcore merge folds them in too: the merged model is the trained one
    from ftcore.cli import main

    assert main(["merge", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    torch.testing.assert_close(merged.model.norm.weight, saved["model.norm.weight"], rtol=0, atol=0)
    torch.testing.assert_close(logits(merged, ids), logits(result.model, ids), rtol=0, atol=1e-4)


def test_merge_builds_the_base_with_the_runs_config_overrides(tiny_llama):
    import torch

    from ftcore.plugins.lora import _merge_load_base

    plain = _merge_load_base(str(tiny_llama), None, torch.float32, "cpu", False, None)
    changed = _merge_load_base(str(tiny_llama), None, torch.float32, "cpu", False, None,
                               {"rms_norm_eps": 0.125, "attention_dropout": 0.0})
    assert changed.config.rms_norm_eps == 0.125 != plain.config.rms_norm_eps
    assert changed.model.norm.variance_epsilon == 0.125  # it reached the built layers
    for (name, a), (_, b) in zip(plain.state_dict().items(), changed.state_dict().items()):
        assert torch.equal(a, b), name  # the weights are the base's
