"""Recipe keys -> TrainingArguments: the mapping a user relies on, checked without training."""

import pytest

from ftcore.errors import FtcoreError, RecipeError
from ftcore.plugins_manager import load_plugins
from ftcore.recipe import validate
from ftcore.recipe.load import RawRecipe
from ftcore import hooks
from ftcore.plugins.wandb import environment as wandb_environment
from ftcore.stash import Stash
from ftcore.train import accumulation_steps, training_arguments

PLUGINS = load_plugins()


def recipe(**keys):
    return validate(RawRecipe({"base_model": "org/model", "datasets": [{"path": "d.jsonl", "type": "alpaca"}],
                               **keys}, None), PLUGINS)


def args(r, n_train=100, has_eval=True, precision="fp32", world_size=1, cuda=False):
    """What a run passes: the core's mapping with every plugin's trainer_arguments on top."""
    return training_arguments(r, "out", n_train, has_eval, precision, hooks.trainer_arguments(PLUGINS, r, Stash()),
                              world_size, cuda)


def test_core_keys_map_to_training_arguments():
    a = args(recipe(micro_batch_size=4, gradient_accumulation_steps=2, learning_rate=1e-4, optimizer="sgd",
                    lr_scheduler="linear", weight_decay=0.1, max_grad_norm=0.5, seed=7, logging_steps=3,
                    num_epochs=2, eval_batch_size=8, group_by_length=True))
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"], a["learning_rate"]) == (4, 2, 1e-4)
    assert (a["optim"], a["lr_scheduler_type"], a["weight_decay"], a["max_grad_norm"]) == ("sgd", "linear", 0.1, 0.5)
    assert (a["seed"], a["logging_steps"], a["num_train_epochs"], a["per_device_eval_batch_size"]) == (7, 3, 2, 8)
    assert a["max_steps"] == -1 and a["train_sampling_strategy"] == "group_by_length"
    assert a["report_to"] == [] and a["bf16"] is False and a["fp16"] is False


def test_per_epoch_counts_become_step_intervals():
    # 100 examples / (4 x 2) per step = 13 steps an epoch
    a = args(recipe(micro_batch_size=4, gradient_accumulation_steps=2, evals_per_epoch=4, saves_per_epoch=2))
    assert (a["eval_strategy"], a["eval_steps"]) == ("steps", 3)
    assert (a["save_strategy"], a["save_steps"]) == ("steps", 6)
    a = args(recipe(eval_steps=0.25, save_steps=10, max_steps=40))
    assert (a["eval_steps"], a["save_steps"]) == (10, 10)  # a fraction of the run, or a count
    a = args(recipe(evals_per_epoch=4), has_eval=False)
    assert a["eval_strategy"] == "no"  # nothing to evaluate on


def test_warmup_and_min_lr():
    assert args(recipe(warmup_ratio=0.1))["warmup_steps"] == 0.1  # a float below 1 is a ratio to transformers
    assert args(recipe(warmup_steps=7))["warmup_steps"] == 7
    a = args(recipe(lr_scheduler="cosine", cosine_min_lr_ratio=0.1))
    assert a["lr_scheduler_type"] == "cosine_with_min_lr" and a["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}


def test_batch_size_sets_accumulation_from_micro_batch_and_processes():
    r = recipe(batch_size=32, micro_batch_size=4)
    assert accumulation_steps(r, 1) == 8 and accumulation_steps(r, 2) == 4
    assert args(r, world_size=2)["gradient_accumulation_steps"] == 4
    with pytest.raises(FtcoreError, match="not a multiple"):
        accumulation_steps(r, 3)
    with pytest.raises(RecipeError) as info:
        recipe(batch_size=32, gradient_accumulation_steps=4)
    assert info.value.problems[0][0] == "batch_size"
    with pytest.raises(RecipeError):
        recipe(batch_size=30, micro_batch_size=4)


def test_precision_tf32_and_checkpointing():
    a = args(recipe(tf32=True, gradient_checkpointing=True), precision="bf16", cuda=False)
    assert a["bf16"] is True and "tf32" not in a  # TF32 exists on NVIDIA GPUs only
    assert a["gradient_checkpointing"] is True and a["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert args(recipe(tf32=True), cuda=True)["tf32"] is True


def test_wandb_keys_become_the_environment_wandb_reads():
    r = recipe(wandb_project="p", wandb_entity="e", wandb_name="n", wandb_log_model="end")
    assert wandb_environment(r) == {"WANDB_PROJECT": "p", "WANDB_ENTITY": "e", "WANDB_LOG_MODEL": "end"}
    a = args(r)
    assert a["report_to"] == ["wandb"] and a["run_name"] == "n"


def test_adapter_and_full_fine_tuning_rules():
    # with an adapter, unfrozen_parameters train beside it (as in Axolotl; tests/test_compat_keys.py trains them)
    assert recipe(adapter="lora", unfrozen_parameters=["model.layers.0.*"]).unfrozen_parameters == ["model.layers.0.*"]
    with pytest.raises(RecipeError) as info:
        recipe(adapter="lora", unfrozen_parameters=["model.(layers"])
    assert info.value.problems[0][0] == "unfrozen_parameters[0]"
    with pytest.raises(RecipeError) as info:
        recipe(unfrozen_parameters=["model.(layers"])
    assert info.value.problems[0][0] == "unfrozen_parameters[0]"
    with pytest.raises(RecipeError) as info:
        recipe(lora_target_linear=True)  # no adapter: it would be silently ignored
    assert info.value.problems[0][0] == "lora_target_linear"


def test_unfrozen_parameters_train_only_what_matches(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from ftcore.plugins.full import inject_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    inject_adapter(recipe(unfrozen_parameters=[r"model\.layers\.1\..*", "lm_head.weight"]), model, Stash())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("model.layers.1.") or n == "lm_head.weight" for n in trained)
    assert "lm_head.weight" in trained and "model.embed_tokens.weight" not in trained


def test_resume_needs_a_checkpoint_to_resume_from(tmp_path):
    from ftcore.artifacts import check_output_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{}")
    with pytest.raises(FtcoreError, match="no checkpoint-"):
        check_output_dir(out, overwrite=False, resume=True)
    (out / "checkpoint-10").mkdir()
    check_output_dir(out, overwrite=False, resume=True)  # non-empty is expected when resuming
    with pytest.raises(FtcoreError, match="no such checkpoint folder"):
        check_output_dir(out, overwrite=False, resume=str(out / "checkpoint-99"))
    check_output_dir(out, overwrite=False, resume=str(out / "checkpoint-10"))
